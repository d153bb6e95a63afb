"""Streaming generation: the same tokens as ``generate``, one step at a time, compiled once;
``TextStream`` turns them into the same text as ``decode_outputs``, increment by increment."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from vpgtrans_jax.generation import GenerationConfig, decode_outputs, generate
from vpgtrans_jax.generation.stream import TRACES, TextStream, stream_tokens
from vpgtrans_jax.models.vl_model import VLModel
from vpgtrans_jax.train import config_base, presets
from vpgtrans_jax.train.builder import random_model_config

MAX_NEW = 10
PAD = 0


@pytest.fixture(scope="module")
def setup():
    c = config_base.base_config()
    presets.tiny(c, llm_type="llama")
    c.model.arch.vision.num_layers = c.model.arch.llm.num_layers = 1  # quick to compile
    model = VLModel(random_model_config(c), rngs=nnx.Rngs(params=jax.random.key(1)))
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    ids = rng.integers(4, 512, size=(2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding
    ids[1, :3] = PAD
    free = np.asarray(
        generate(model, pixels, ids, mask, max_new_tokens=MAX_NEW, eos_token_id=3, pad_token_id=PAD)
    )
    eos = int(free[0, 3])  # row 0 ends at step 3, row 1 later (or never)
    return model, pixels, ids, mask, eos


def _stream(model, pixels, ids, mask, cfg, seed=0, **kw):
    return np.stack(
        list(stream_tokens(model, pixels, ids, mask, cfg, jax.random.key(seed), **kw)), 1
    )


@pytest.mark.parametrize(
    "settings",
    [{}, {"do_sample": True, "temperature": 1.5, "top_p": 0.9, "repetition_penalty": 1.3}],
    ids=["greedy", "sample"],
)
def test_stream_equals_generate(setup, settings):
    model, pixels, ids, mask, eos = setup
    ref = np.asarray(
        generate(model, pixels, ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos,
                 pad_token_id=PAD, seed=5, **settings)
    )  # fmt: skip
    cfg = GenerationConfig.make(eos_token_id=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW,
                                **settings)  # fmt: skip
    out = _stream(model, pixels, ids, mask, cfg, seed=5, room=16)  # more room: same tokens
    # The stream stops with the last row's EOS; generate pads the rest.
    assert out.shape[1] <= MAX_NEW
    np.testing.assert_array_equal(out, ref[:, : out.shape[1]])
    assert (ref[:, out.shape[1] :] == PAD).all()
    if not settings:
        assert out[0, 3] == eos and (out[0, 4:] == PAD).all()  # a row ends at its EOS


def test_beam_search_arrives_at_the_end(setup):
    model, pixels, ids, mask, eos = setup
    ref = np.asarray(generate(model, pixels, ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos,
                              pad_token_id=PAD, num_beams=3))  # fmt: skip
    cfg = GenerationConfig.make(eos_token_id=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW,
                                num_beams=3)  # fmt: skip
    out = _stream(model, pixels, ids, mask, cfg)
    np.testing.assert_array_equal(out, ref[:, : out.shape[1]])


def test_compiled_once_per_shape(setup):
    """Requests of one prompt length and room reuse both programs; a new room compiles anew."""
    model, pixels, ids, mask, eos = setup
    cfg = GenerationConfig.make(eos_token_id=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW)
    _stream(model, pixels, ids, mask, cfg, room=16)
    before = dict(TRACES)
    for n in (4, 7, 16):  # other answer lengths within the same room
        short = GenerationConfig.make(eos_token_id=eos, pad_token_id=PAD, max_new_tokens=n)
        _stream(model, pixels, (ids + 7 * n) % 500 + 4, mask, short, room=16)
    assert dict(TRACES) == before
    _stream(model, pixels, ids, mask, cfg, room=20)
    assert TRACES["prefill"] == before["prefill"] + 1 and TRACES["step"] == before["step"] + 1


def test_room_smaller_than_max_new_tokens_is_refused(setup):
    model, pixels, ids, mask, eos = setup
    cfg = GenerationConfig.make(eos_token_id=eos, pad_token_id=PAD, max_new_tokens=MAX_NEW)
    with pytest.raises(ValueError, match="room=4"):
        _stream(model, pixels, ids, mask, cfg, room=4)


class ByteTokenizer:
    """Token i < 256 is byte i; decoding is UTF-8 with replacement, as byte-level BPE."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def _increments(tokens, end, eos=(), pad=255):
    s = TextStream(ByteTokenizer(), eos, pad, end)
    parts = [s.push(t) for t in tokens]
    if not s.done:
        parts.append(s.finish())
    return parts, s


@pytest.mark.parametrize(
    "text,end",
    [(" a cat ## on a mat###Human: more", "###"), ("naïve café ☕ ok\nnext", "\n"),
     ("  two words  ", None), ("ends with #", "###")],
)  # fmt: skip
def test_text_stream_equals_decoding_the_whole_row(text, end):
    tokens = list(text.encode())
    parts, s = _increments(tokens, end)
    want = decode_outputs(ByteTokenizer(), [tokens], [], 255, end)[0]
    assert "".join(parts) == want == s.text
    assert "\ufffd" not in "".join(parts)  # half a character is never shown


def test_text_stream_holds_back_what_may_become_the_end():
    s = TextStream(ByteTokenizer(), (), 255, "###")
    assert "".join(s.push(t) for t in b"ab#") == "ab"  # "#" may start "###"
    assert "".join(s.push(t) for t in b"##more") == "" and s.done and s.text == "ab"


def test_text_stream_stops_at_eos():
    parts, s = _increments(list(b"yes") + [4] + list(b"no"), None, eos=(4,))
    assert "".join(parts) == "yes" and s.done
