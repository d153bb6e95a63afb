"""Every bad input gives a clear error and leaves no output behind."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import Blip2ForConditionalGeneration

from tests import torch_reference as F
from tests.scripts_util import run_script
from vpgtrans_jax.checkpoint import convert as tools
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.fill import flat_params
from vpgtrans_jax.checkpoint.store import atomic_output
from vpgtrans_jax.errors import CheckpointError

from .test_convert_lavis import to_lavis


def quiet(msg: str) -> None:
    pass


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny OPT BLIP-2 as HF dir, HF LLM dir and LAVIS .pth."""
    root = tmp_path_factory.mktemp("world")
    model = F.tiny_blip2("opt", seed=21)
    model.save_pretrained(root / "hf")
    model.language_model.save_pretrained(root / "opt")
    sd = to_lavis(model, "opt_proj")
    torch.save({"model": sd}, root / "blip2.pth")
    return root, sd


def _no_output(out) -> None:
    out = str(out)
    parent = os.path.dirname(out)
    assert not os.path.exists(out)
    leftovers = [f for f in os.listdir(parent) if f.startswith("." + os.path.basename(out))]
    assert not leftovers, leftovers


def _lavis(world, out, src=None, **kw):
    root, _ = world
    kw.setdefault("vpg_config", str(root / "hf" / "config.json"))
    return tools.lavis_to_orbax(
        str(src or root / "blip2.pth"), kw.pop("llm", str(root / "opt")), str(out), log=quiet, **kw
    )


def test_pickle_needing_code_is_refused(world, tmp_path, capsys):
    torch.save({"model": {"x": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused to unpickle.*weights_only=True"):
        _lavis(world, tmp_path / "out", src=tmp_path / "evil.pth")
    assert "must never run" not in capsys.readouterr().out
    _no_output(tmp_path / "out")


def test_truncated_pth_and_safetensors(world, tmp_path):
    root, _ = world
    data = (root / "blip2.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        _lavis(world, tmp_path / "out", src=tmp_path / "cut.pth")
    _no_output(tmp_path / "out")

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_bytes((root / "hf" / "config.json").read_bytes())
    st = (root / "hf" / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(st[: len(st) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        tools.hf_to_orbax(str(hf), str(tmp_path / "out2"), log=quiet)
    _no_output(tmp_path / "out2")


def test_wrong_model_type(world, tmp_path, capsys):
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    done = run_script("convert/hf_to_orbax.py", "--src", str(bad), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert (
        done.stderr.startswith("error:") and "model_type 'bert' cannot be converted" in done.stderr
    )
    with pytest.raises(CheckpointError, match="neither BLIP-2 nor an LLM"):
        _lavis(world, tmp_path / "o", llm=str(bad))
    _no_output(tmp_path / "o")


def test_llm_hidden_size_must_match_projector(world, tmp_path):
    big = F.tiny_blip2("opt", seed=22, hidden_size=48, word_embed_proj_dim=48)
    big.language_model.save_pretrained(tmp_path / "opt48")
    with pytest.raises(CheckpointError, match="hidden size 48 but .* projects to 32"):
        _lavis(world, tmp_path / "out", llm=str(tmp_path / "opt48"))
    _no_output(tmp_path / "out")


def test_missing_and_unexpected_keys_are_listed(world, tmp_path):
    _, sd = world
    broken = dict(sd)
    del broken["Qformer.bert.encoder.layer.1.output_query.dense.weight"]
    broken["mystery.weight"] = torch.zeros(2)
    torch.save({"model": broken}, tmp_path / "b.pth")
    with pytest.raises(CheckpointError) as e:
        _lavis(world, tmp_path / "out", src=tmp_path / "b.pth")
    msg = str(e.value)
    assert "missing 1: Qformer.bert.encoder.layer.1.output_query.dense.weight" in msg
    assert "unexpected 1: mystery.weight" in msg
    _no_output(tmp_path / "out")

    extra = dict(sd, **{"mystery.weight": torch.zeros(2)})
    torch.save({"model": extra}, tmp_path / "e.pth")
    with pytest.raises(CheckpointError, match="unexpected 1: mystery.weight"):
        _lavis(world, tmp_path / "out", src=tmp_path / "e.pth")
    _lavis(world, tmp_path / "out", src=tmp_path / "e.pth", allow_unexpected=[r"mystery\..*"])
    assert model_dir.is_model_dir(str(tmp_path / "out"))


def test_missing_vit_needs_flag(world, tmp_path):
    _, sd = world
    torch.save({"model": {k: v for k, v in sd.items() if "visual_encoder" not in k}},
               tmp_path / "t.pth")  # fmt: skip
    with pytest.raises(CheckpointError, match="pass --vit"):
        _lavis(world, tmp_path / "out", src=tmp_path / "t.pth")
    _no_output(tmp_path / "out")


def test_shape_and_dtype_mismatch(world, tmp_path):
    root, sd = world
    cfg = json.loads((root / "hf" / "config.json").read_text())
    cfg["vision_config"]["intermediate_size"] = 48
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"fc1.weight' has shape \(64, 32\).*needs \(48, 32\)"
    ):
        _lavis(world, tmp_path / "out", vpg_config=str(tmp_path / "cfg.json"))
    _no_output(tmp_path / "out")

    ints = dict(sd, **{"ln_vision.weight": torch.ones(32, dtype=torch.int32)})
    torch.save({"model": ints}, tmp_path / "i.pth")
    with pytest.raises(
        CheckpointError, match="'ln_vision.weight' has dtype int32, expected a floating"
    ):
        _lavis(world, tmp_path / "out", src=tmp_path / "i.pth")
    _no_output(tmp_path / "out")


def test_nonzero_vit_k_bias_is_dropped(tmp_path):
    model = F.tiny_blip2("opt", seed=23)
    with torch.no_grad():
        model.vision_model.encoder.layers[0].self_attn.qkv.bias[40] = 1.0
    model.save_pretrained(tmp_path / "hf")
    tools.hf_to_orbax(str(tmp_path / "hf"), str(tmp_path / "out"), log=quiet)
    # Exported back, the k bias is zero (the model has none; dropping it changes no output).
    tools.orbax_to_hf(str(tmp_path / "out"), str(tmp_path / "back"), log=quiet)
    back = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "back")
    bias = back.vision_model.encoder.layers[0].self_attn.qkv.bias.detach()
    assert float(bias[32:64].abs().max()) == 0.0
    assert torch.equal(bias[:32], model.vision_model.encoder.layers[0].self_attn.qkv.bias[:32])


def test_existing_output_needs_overwrite(world, tmp_path):
    root, _ = world
    out = tmp_path / "out"
    tools.hf_to_orbax(str(root / "opt"), str(out), log=quiet)
    with pytest.raises(FileExistsError, match="--overwrite"):
        tools.hf_to_orbax(str(root / "opt"), str(out), log=quiet)
    tools.hf_to_orbax(str(root / "opt"), str(out), dtype="bfloat16", overwrite=True, log=quiet)
    assert model_dir.read_manifest(str(out))["parts"]["llm"]["dtype"] == "bfloat16"
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []


def test_atomic_output_cleans_up_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(str(tmp_path / "o")) as tmp:
            open(os.path.join(tmp, "half"), "w").close()
            raise RuntimeError("boom")
    _no_output(tmp_path / "o")


def test_model_dir_errors(world, tmp_path):
    import vpgtrans_jax

    root, _ = world
    model = vpgtrans_jax.load(str(root / "hf"))
    qf = flat_params(model.qformer)
    with pytest.raises(CheckpointError, match="part 'vision' is neither given nor referenced"):
        model_dir.save_model_dir({"qformer": qf}, str(tmp_path / "a"), model.config)
    partial = dict(list(qf.items())[1:])
    with pytest.raises(CheckpointError, match="part 'qformer' is incomplete"):
        model_dir.save_model_dir({"qformer": partial}, str(tmp_path / "a"), model.config,
                                 sources={"vision": str(root / "hf"), "llm": str(root / "hf"),
                                          "ln_vision": str(root / "hf"),
                                          "query_tokens": str(root / "hf"),
                                          "projector": str(root / "hf")})  # fmt: skip
    _no_output(tmp_path / "a")

    out = tmp_path / "b"
    model_dir.save_model_dir(model, str(out), model.config)
    m = json.loads((out / model_dir.MANIFEST).read_text())
    m["version"] = 99
    (out / model_dir.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        vpgtrans_jax.load(str(out))
    with pytest.raises(CheckpointError, match="holds only an LLM"):
        tools.hf_to_orbax(str(root / "opt"), str(tmp_path / "llm"), log=quiet)
        vpgtrans_jax.load(str(tmp_path / "llm"))
    other = F.tiny_blip2("opt", seed=24, num_hidden_layers=3)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="different architecture.*num_layers: 3 vs 2"):
        model_dir.save_model_dir({"qformer": qf}, str(tmp_path / "c"), model.config,
                                 sources={"vision": str(root / "hf"), "vpg": str(root / "hf"),
                                          "llm": str(tmp_path / "other")})  # fmt: skip
        vpgtrans_jax.load(str(tmp_path / "c"))
    assert np.isfinite(np.asarray(model.query_tokens[...])).all()
