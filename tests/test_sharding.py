"""Sharded forward passes equal the single-device result; the rules table behaves."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import vpgtrans_jax
from tests import torch_reference as F
from vpgtrans_jax import sharding


@pytest.fixture(scope="module", params=["opt", "llama"])
def loaded(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"shard_{request.param}")
    F.tiny_blip2(request.param, seed=7).save_pretrained(path)
    return str(path)


def _sharded_logits(path, mesh_shape, scan):
    mesh = sharding.make_mesh(mesh_shape)
    model = vpgtrans_jax.load(path, mesh=mesh, scan_layers=scan)
    graphdef, state = nnx.split(model)
    state_sh = sharding.state_shardings(state, mesh, sharding.DEFAULT_RULES)
    batch_sh = NamedSharding(
        mesh, sharding.logical_to_spec(("activation_batch",), sharding.DEFAULT_RULES, mesh)
    )

    def fwd(state, pixels, ids, mask):
        with sharding.use_mesh(mesh):
            return nnx.merge(graphdef, state)(pixels, ids, mask)

    pixels, ids, mask = F.inputs(batch=8, seed=11)
    fn = jax.jit(fwd, in_shardings=(state_sh, batch_sh, batch_sh, batch_sh))
    out = fn(state, pixels, ids, mask)
    return np.asarray(out), model


@pytest.mark.parametrize("scan", [False, True])
def test_meshes_match_single_device(loaded, scan):
    assert jax.device_count() == 8, "conftest must provide 8 CPU devices"
    single = vpgtrans_jax.load(loaded, scan_layers=scan)
    pixels, ids, mask = F.inputs(batch=8, seed=11)
    ref = np.asarray(single(pixels, ids, mask))
    for shape in [(8, 1, 1), (2, 2, 2), (1, 2, 4)]:
        out, model = _sharded_logits(loaded, shape, scan)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0, err_msg=f"mesh {shape}")
    # The params really are distributed on the last mesh (1, 2, 4).
    specs = {
        str(v.get_value().sharding.spec)
        for _, v in nnx.to_flat_state(nnx.state(model))
        if hasattr(v.get_value(), "sharding")
    }
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((4, 2, 2))
    assert sharding.make_mesh((1, 1, 1)).devices.size == 1  # explicit smaller mesh: first devices
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh((-1, -1, 1))
    assert sharding.make_mesh((-1, 2, 1)).shape == {"data": 4, "fsdp": 2, "tensor": 1}


def test_logical_to_spec_rules():
    mesh = sharding.make_mesh((2, 2, 2))
    rules = sharding.DEFAULT_RULES
    assert sharding.logical_to_spec(("embed", "mlp"), rules, mesh) == P("fsdp", "tensor")
    # A mesh axis is used once; a non-divisible dimension stays replicated.
    assert sharding.logical_to_spec(("mlp", "heads"), rules, mesh) == P("tensor", None)
    assert sharding.logical_to_spec(("embed", "mlp"), rules, mesh, shape=(3, 4)) == P(
        None, "tensor"
    )
    assert sharding.logical_to_spec(("activation_batch", None), rules, mesh) == P(
        ("data", "fsdp"), None
    )
    assert sharding.logical_to_spec(("layers", "unknown"), rules, mesh) == P(None, None)


def test_constrain_is_noop_without_mesh():
    x = np.ones((4, 4), np.float32)
    assert sharding.constrain(x, ("activation_batch", None)) is x
