"""The chunked loss: same loss and gradients as the whole-logits loss (fp32), and the compiled
training step holds no float32 [B, T, V] logits buffer when it is on."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tiny_vl
from vpgtrans_jax.nn.loss import chunked_cross_entropy, cross_entropy


@pytest.mark.parametrize("chunk", [1, 3, 20])
def test_chunked_equals_whole_loss_and_gradients(chunk):
    b, t, e, v = 2, 7, 16, 40
    rng = np.random.default_rng(chunk)
    hidden = jnp.asarray(rng.standard_normal((b, t, e)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((e, v)) * 0.5, jnp.float32)
    labels = jnp.asarray(rng.integers(0, v, (b, t)))
    labels = labels.at[0, :2].set(-100).at[1, 5].set(-100)

    def whole(h, w):
        return cross_entropy(h @ w, labels)[0]

    def chunked(h, w):
        return chunked_cross_entropy(h, labels, lambda x: x @ w, chunk)[0]

    (l0, g0), (l1, g1) = (
        jax.value_and_grad(f, argnums=(0, 1))(hidden, w) for f in (whole, chunked)
    )
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b_ in zip(g1, g0):
        np.testing.assert_allclose(a, b_, atol=1e-6, rtol=1e-5)
    _, aux = chunked_cross_entropy(hidden, labels, lambda x: x @ w, chunk)
    assert int(aux["num_tokens"]) == int((labels != -100).sum())
    with pytest.raises(ValueError, match="loss chunk"):
        chunked_cross_entropy(hidden, labels, lambda x: x @ w, 0)


def _largest_f32_buffer(hlo: str) -> int:
    sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) for dims in
             re.findall(r"\bf32\[([\d,]*)\]", hlo)]  # fmt: skip
    return max(sizes)


@pytest.mark.parametrize("llm_type", ["llama"])
def test_compiled_step_same_update_without_f32_logits(llm_type):
    """The stage-2 step (VPG trained, stage-3 prompt layout so the gather path runs too):
    chunked and whole losses give the same loss, grad norm and new params; with the chunked loss
    no f32 buffer is as large as [B, T, V], with the whole one there is (so the check can fail).
    """
    b, t = 4, 24
    cfg = tiny_vl.config(llm_type)
    data = tiny_vl.batch(b, t)
    data["image_offset"] = jnp.asarray([0, 2, 1, 3])
    full_logits = b * t * tiny_vl.VOCAB  # larger than every weight and other activation
    largest, temp, out = {}, {}, {}
    for chunk in (0, 4):
        step, state, frozen = tiny_vl.train_step(cfg, ("qformer", "projector"), loss_chunk=chunk)
        compiled = step.lower(state, frozen, data).compile()
        largest[chunk] = _largest_f32_buffer(compiled.as_text())
        temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
        out[chunk] = compiled(state, frozen, data)
    assert largest[0] >= full_logits, largest
    assert largest[4] < full_logits, largest
    assert temp[4] < temp[0], temp
    (s0, m0), (s1, m1) = out[0], out[4]
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-5)
    for a, b_ in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(a, b_, atol=1e-6, rtol=1e-5)
