"""HF BLIP-2 / HF LLM → model directory → HF: identical tensors, equal logits, sharded inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T

import vpgtrans_jax
from tests import torch_reference as F
from tests.scripts_util import run_script
from vpgtrans_jax import sharding
from vpgtrans_jax.checkpoint import convert as tools
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.sources import open_hf_weights
from vpgtrans_jax.train.optim import split_trainable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quiet(msg: str) -> None:
    pass


def _tensors(directory: str) -> dict[str, np.ndarray]:
    src = open_hf_weights(directory)
    return {k: src.read(k) for k in src.keys()}


@pytest.fixture(scope="module", params=["opt", "llama"])
def hf_dir(request, tmp_path_factory):
    model = F.tiny_blip2(request.param)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(path)
    return model, str(path)


@pytest.mark.parametrize("scan", [False, True])
def test_hf_roundtrip_identical_and_logits(hf_dir, tmp_path, scan):
    pt_model, src = hf_dir
    ox, back = str(tmp_path / "ox"), str(tmp_path / "back")
    done = run_script(
        "convert/hf_to_orbax.py", "--src", src, "--out", ox, *["--scan-layers"] * scan
    )
    assert done.returncode == 0, done.stderr
    m = model_dir.read_manifest(ox)
    assert m["config"]["llm"]["scan_layers"] is scan
    assert all(p["stored"] for p in m["parts"].values())
    done = run_script("convert/orbax_to_hf.py", "--src", ox, "--out", back)
    assert done.returncode == 0, done.stderr

    a, b = _tensors(src), _tensors(back)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k

    pixels, ids, mask = F.inputs()
    ref = F.torch_logits(pt_model, pixels, ids, mask)[:, F.NUM_QUERY :]
    ours = np.asarray(
        vpgtrans_jax.load(ox)(jnp.asarray(pixels), jnp.asarray(ids), jnp.asarray(mask))
    )
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    reloaded = T.Blip2ForConditionalGeneration.from_pretrained(back).eval()
    np.testing.assert_allclose(
        F.torch_logits(reloaded, pixels, ids, mask)[:, F.NUM_QUERY :], ours, atol=1e-4, rtol=0
    )


def test_load_relayouts_scan_and_bf16_storage(hf_dir, tmp_path):
    pt_model, src = hf_dir
    ox = str(tmp_path / "ox")
    tools.hf_to_orbax(src, ox, dtype="bfloat16", log=_quiet)
    assert model_dir.read_manifest(ox)["parts"]["llm"]["dtype"] == "bfloat16"
    pixels, ids, mask = F.inputs()
    ref = F.torch_logits(pt_model, pixels, ids, mask)[:, F.NUM_QUERY :]
    flat = vpgtrans_jax.load(ox, param_dtype="float32")(pixels, ids, mask)
    scanned = vpgtrans_jax.load(ox, param_dtype="float32", scan_layers=True)(pixels, ids, mask)
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(flat), atol=1e-5, rtol=0)
    assert np.abs(np.asarray(flat) - ref).max() < 0.1 * np.abs(ref).max()
    mesh = sharding.make_mesh((2, 2, 2))
    placed = vpgtrans_jax.load(ox, mesh=mesh, param_dtype="float32")
    kernel = (
        placed.llm.layers[0].fc1.kernel
        if pt_model.config.text_config.model_type == "opt"
        else (placed.llm.layers[0].mlp.up_proj.kernel)
    )
    assert len(kernel[...].sharding.device_set) > 1
    np.testing.assert_allclose(np.asarray(placed(pixels, ids, mask)), np.asarray(flat), atol=1e-5)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_inputs_and_outputs(tmp_path, fmt):
    pt_model = F.tiny_blip2("opt", seed=4)
    src = tmp_path / "src"
    pt_model.save_pretrained(src, max_shard_size="40KB")
    if fmt == "bin":  # rewrite the shards as pytorch_model-*.bin with an index
        index = json.loads((src / "model.safetensors.index.json").read_text())
        bin_map = {}
        for shard in sorted(set(index["weight_map"].values())):
            st = _tensors(str(src))
            keys = [k for k, v in index["weight_map"].items() if v == shard]
            name = shard.replace("model", "pytorch_model").replace(".safetensors", ".bin")
            torch.save({k: torch.from_numpy(st[k].copy()) for k in keys}, src / name)
            bin_map.update({k: name for k in keys})
        for f in src.glob("model*.safetensors*"):
            f.unlink()
        (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": bin_map}))
    ox, back = tmp_path / "ox", tmp_path / "back"
    tools.hf_to_orbax(str(src), str(ox), group_bytes=20_000, log=_quiet)
    groups = model_dir.read_manifest(str(ox))["parts"]["llm"]["groups"]
    assert len(groups) > 1  # written in bounded groups
    tools.orbax_to_hf(str(ox), str(back), max_shard_bytes=30_000, log=_quiet)
    assert (back / "model.safetensors.index.json").exists()
    a, b = _tensors(str(src)), _tensors(str(back))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    reloaded = T.Blip2ForConditionalGeneration.from_pretrained(back).eval()
    pixels, ids, mask = F.inputs(seed=2)
    np.testing.assert_allclose(
        F.torch_logits(reloaded, pixels, ids, mask),
        F.torch_logits(pt_model, pixels, ids, mask),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("text", ["opt", "llama"])
def test_hf_llm_dir_and_reference(tmp_path, text):
    """An LLM-only directory; a VL directory that references it (and a HF BLIP-2) loads equal."""
    pt_model = F.tiny_blip2(text, seed=6)
    blip, llm = tmp_path / "blip", tmp_path / "llm"
    pt_model.save_pretrained(blip)
    pt_model.language_model.save_pretrained(llm, max_shard_size="20KB")
    tools.hf_to_orbax(str(llm), str(tmp_path / "llm_ox"), scan_layers=True, log=_quiet)
    m = model_dir.read_manifest(str(tmp_path / "llm_ox"))
    assert m["kind"] == "llm" and list(m["parts"]) == ["llm"]

    full = vpgtrans_jax.load(str(blip))
    cfg = full.config
    _, trainable, _ = split_trainable(full, ["ln_vision", "query_tokens", "qformer", "projector"])
    for name, llm_source in (("ref_ox", tmp_path / "llm_ox"), ("ref_hf", llm)):
        out = tmp_path / name
        sources = {"vision": str(blip), "llm": str(llm_source)}
        model_dir.save_model_dir(trainable, str(out), cfg, sources=sources)
        parts = model_dir.read_manifest(str(out))["parts"]
        assert not parts["llm"]["stored"] and not parts["vision"]["stored"]
        assert parts["qformer"]["stored"] and not os.path.exists(out / "params" / "llm")
        pixels, ids, mask = F.inputs()
        np.testing.assert_allclose(
            np.asarray(vpgtrans_jax.load(str(out))(pixels, ids, mask)),
            np.asarray(full(pixels, ids, mask)),
            atol=1e-5,
            rtol=0,
        )


def test_scripts_help():
    for name in ("hf_to_orbax", "lavis_to_orbax", "orbax_to_hf", "orbax_to_lavis"):
        r = subprocess.run(
            [sys.executable, os.path.join(ROOT, "convert", f"{name}.py"), "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "--src" in r.stdout and "--out" in r.stdout and "--[no]overwrite" in r.stdout
