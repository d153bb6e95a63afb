"""Projector merge: merged projector = converter ∘ source projector; VPG copied; output loadable."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers as T
from flax import nnx

import vpgtrans_jax
from tests import torch_reference as F
from vpgtrans_jax import sharding
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.fill import abstract, fill_abstract
from vpgtrans_jax.models.parts import VPG_PARTS
from vpgtrans_jax.models.qformer import QFormer
from vpgtrans_jax.models.vl_model import VLModel
from vpgtrans_jax.train.builder import apply_vpg_init
from vpgtrans_jax.transfer.merge import merge_linear, merge_projector
from vpgtrans_jax.transfer.word_converter import WordConverter

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "merge_projector.py")

TGT_DIM = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny HF BLIP-2 (OPT, prompt width 32), a tiny target LLaMA (width 24), a converter."""
    root = tmp_path_factory.mktemp("merge")
    src_model = F.tiny_blip2("opt", seed=7)
    src = str(root / "blip2")
    src_model.save_pretrained(src)
    torch.manual_seed(0)
    tgt = str(root / "llama")
    T.LlamaForCausalLM(
        T.LlamaConfig(
            vocab_size=50,
            hidden_size=TGT_DIM,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(tgt)
    rng = np.random.default_rng(0)
    conv = WordConverter(
        rng.standard_normal((32, TGT_DIM)).astype(np.float32),
        rng.standard_normal(TGT_DIM).astype(np.float32),
        {"tgt_llm": tgt, "src_llm": "opt-src", "metrics": {}},
    )
    conv_dir = str(root / "conv")
    conv.save(conv_dir)
    out = str(root / "merged")
    manifest = merge_projector(src, conv_dir, out, log=None)
    return {
        "src": src,
        "pt": src_model,
        "tgt": tgt,
        "conv": conv,
        "conv_dir": conv_dir,
        "out": out,
        "manifest": manifest,
        "root": root,
    }


def vpg(path: str, **overrides) -> dict:
    """The VPG parts of a checkpoint, nested (layer keys as ints)."""
    return model_dir.load_params(path, VPG_PARTS, **overrides)


def test_merged_projector_equals_converter_after_projector(setup):
    parts = vpg(setup["out"])
    assert sorted(parts) == ["ln_vision", "projector", "qformer", "query_tokens"]
    lp = setup["pt"].language_projection
    w_s = lp.weight.detach().double().numpy()  # torch [out, in]
    b_s = lp.bias.detach().double().numpy()
    conv = setup["conv"]
    q = np.random.default_rng(1).standard_normal((5, w_s.shape[1]))
    want = (q @ w_s.T + b_s) @ conv.kernel.astype(np.float64) + conv.bias
    proj = parts["projector"]
    assert proj["kernel"].dtype == np.float32 and proj["kernel"].shape == (32, TGT_DIM)
    got = q @ proj["kernel"].astype(np.float64) + proj["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    # The formula of the issue in torch layout: W_t = W_w @ W_s, b_t = W_w @ b_s + b_w.
    w_w = conv.kernel.T.astype(np.float64)
    np.testing.assert_allclose(proj["kernel"].T, w_w @ w_s, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(proj["bias"], w_w @ b_s + conv.bias, rtol=1e-6, atol=1e-5)


def test_vpg_copied_from_source(setup):
    parts = vpg(setup["out"])
    ref = nnx.to_pure_dict(nnx.state(vpgtrans_jax.load(setup["src"])))
    for name in ("ln_vision", "query_tokens", "qformer"):
        jax.tree.map(
            np.testing.assert_array_equal, parts[name], jax.tree.map(np.asarray, ref[name])
        )


def test_output_is_the_target_model(setup):
    """The merge is a model directory of the target VL model: VPG stored, ViT and LLM referenced;
    it loads whole, and the training side takes its VPG as model.vpg_init."""
    manifest = setup["manifest"]
    assert manifest["info"]["stage"] == "merge"
    parts = manifest["parts"]
    assert {p for p, e in parts.items() if e["stored"]} == set(VPG_PARTS)
    assert parts["llm"]["source"]["path"] == os.path.abspath(setup["tgt"])
    assert parts["vision"]["source"]["path"] == os.path.abspath(setup["src"])
    model = vpgtrans_jax.load(setup["out"])
    assert model.config.llm_type == "llama" and model.config.llm.input_embed_dim == TGT_DIM
    np.testing.assert_array_equal(
        np.asarray(model.projector.kernel[...]), vpg(setup["out"])["projector"]["kernel"]
    )
    fresh = VLModel(model.config, rngs=nnx.Rngs(1))
    mesh = sharding.make_mesh((-1, 1, 1))
    assert apply_vpg_init(fresh, setup["out"], mesh, sharding.DEFAULT_RULES) == list(VPG_PARTS)
    np.testing.assert_array_equal(
        np.asarray(fresh.qformer.layernorm.scale[...]),
        np.asarray(model.qformer.layernorm.scale[...]),
    )


def test_scanned_qformer_layout_gives_same_outputs(setup):
    qcfg = model_dir.read_config(setup["out"]).qformer
    unscanned = vpg(setup["out"])["qformer"]
    scanned = vpg(setup["out"], qformer={"scan_layers": True})["qformer"]
    outs = []
    for cfg, pure in ((qcfg, unscanned), (dataclasses.replace(qcfg, scan_layers=True), scanned)):
        abstract_model = abstract(lambda cfg=cfg: QFormer(cfg, rngs=nnx.Rngs(0)))
        model = fill_abstract(abstract_model, pure)
        rng = np.random.default_rng(2)
        queries = rng.standard_normal((2, 4, qcfg.hidden_size)).astype(np.float32)
        image = rng.standard_normal((2, 17, qcfg.encoder_hidden_size)).astype(np.float32)
        outs.append(np.asarray(model(queries, image)))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=0)
    # The merge can also write the scanned layout directly.
    out = str(setup["root"] / "merged_scan")
    merge_projector(setup["src"], setup["conv_dir"], out, qformer_scan_layers=True, log=None)
    assert model_dir.read_config(out).qformer.scan_layers
    jax.tree.map(np.testing.assert_array_equal, vpg(out)["qformer"], scanned)


@pytest.mark.parametrize("scan", [False, True])
def test_project_model_dir_source_gives_same_merge(setup, tmp_path, scan):
    """A vpgtrans-jax model directory (any Q-Former layout) merges like the HF original."""
    from vpgtrans_jax.checkpoint.convert import hf_to_orbax

    src_dir = str(tmp_path / "model")
    hf_to_orbax(setup["src"], src_dir, scan_layers=scan, log=lambda *_: None)
    out = str(tmp_path / "merged")
    merge_projector(src_dir, setup["conv_dir"], out, log=None)
    jax.tree.map(np.testing.assert_array_equal, vpg(out), vpg(setup["out"]))


def test_merge_errors(setup, tmp_path):
    with pytest.raises(ValueError, match="converter was trained for another source LLM"):
        merge_linear(np.zeros((4, 8)), np.zeros(8), np.zeros((6, 3)), np.zeros(3))
    bad = WordConverter(
        np.zeros((16, TGT_DIM), np.float32),
        np.zeros(TGT_DIM, np.float32),
        {"tgt_llm": setup["tgt"]},
    )
    bad.save(str(tmp_path / "conv16"))
    with pytest.raises(ValueError, match="from width 16 but the source projector writes width 32"):
        merge_projector(setup["src"], str(tmp_path / "conv16"), str(tmp_path / "o"), log=None)
    with pytest.raises(FileNotFoundError, match="not a word converter directory"):
        merge_projector(setup["src"], str(tmp_path), str(tmp_path / "o"), log=None)
    no_target = WordConverter(bad.kernel, bad.bias, {})
    no_target.save(str(tmp_path / "conv_nt"))
    with pytest.raises(ValueError, match="records no target LLM"):
        merge_projector(setup["src"], str(tmp_path / "conv_nt"), str(tmp_path / "o"), log=None)
    meta = json.loads(open(os.path.join(setup["conv_dir"], "converter.json")).read())
    assert meta["format"] == "vpgtrans_jax.word_converter"


def test_cli(setup, tmp_path):
    out = str(tmp_path / "m")
    run = lambda *a: subprocess.run([sys.executable, SCRIPT, *a], capture_output=True, text=True)
    done = run("--src_checkpoint", setup["src"], "--converter", setup["conv_dir"], "--out", out)
    assert done.returncode == 0, done.stderr
    jax.tree.map(np.testing.assert_array_equal, vpg(out), vpg(setup["out"]))
    missing = str(tmp_path / "none")
    done = run("--src_checkpoint", missing, "--converter", setup["conv_dir"], "--out", out + "2")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "not a model directory" in done.stderr
