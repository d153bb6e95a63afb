"""LAVIS / VPGTrans checkpoints → model directory → logits equal to PyTorch; and back to LAVIS."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vpgtrans_jax
from tests import torch_reference as F
from tests.scripts_util import run_script
from vpgtrans_jax.checkpoint import convert as tools
from vpgtrans_jax.checkpoint import model_dir

LAVIS_EPS = 1e-5


def to_lavis(model, proj: str) -> dict[str, torch.Tensor]:
    """A HF BLIP-2 state dict in LAVIS names (docs/checkpoints.md), written out independently."""
    sd, d = {}, model.config.vision_config.hidden_size
    for k, v in model.state_dict().items():
        v = v.clone()
        if k.startswith("language_model."):
            continue
        if k.endswith("self_attn.qkv.bias"):  # LAVIS keeps q and v biases apart, no k bias
            blk = k.replace("vision_model.encoder.layers.", "visual_encoder.blocks.")
            blk = blk.replace("self_attn.qkv.bias", "attn.")
            sd[blk + "q_bias"], sd[blk + "v_bias"] = v[:d], v[2 * d :]
            continue
        for a, b in (
            ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
            ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
            ("vision_model.embeddings.patch_embedding", "visual_encoder.patch_embed.proj"),
            ("vision_model.encoder.layers.", "visual_encoder.blocks."),
            (".layer_norm1.", ".norm1."),
            (".layer_norm2.", ".norm2."),
            ("self_attn.qkv.", "attn.qkv."),
            ("self_attn.projection.", "attn.proj."),
            ("vision_model.post_layernorm.", "ln_vision."),
            ("qformer.layernorm.", "Qformer.bert.embeddings.LayerNorm."),
            ("qformer.encoder.", "Qformer.bert.encoder."),
            ("attention.attention.", "attention.self."),
            ("language_projection.", f"{proj}."),
        ):
            k = k.replace(a, b)
        sd[k] = v
    return sd


def lavis_reference(model):
    """The PyTorch model with LAVIS's ln_vision eps (HF ties it to the ViT's 1e-6)."""
    model.vision_model.post_layernorm.eps = LAVIS_EPS
    return model


def _logits_match(ox: str, pt_model) -> None:
    pixels, ids, mask = F.inputs()
    ref = F.torch_logits(lavis_reference(pt_model), pixels, ids, mask)[:, F.NUM_QUERY :]
    ours = np.asarray(vpgtrans_jax.load(ox)(pixels, ids, mask))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_lavis_blip2_opt(tmp_path, capsys):
    pt_model = F.tiny_blip2("opt", seed=11)
    sd = to_lavis(pt_model, "opt_proj")
    # Known-optional extras of real LAVIS files: Q-Former text path and a frozen LLM copy.
    sd["Qformer.bert.embeddings.position_ids"] = torch.arange(8)[None]
    sd["Qformer.cls.predictions.bias"] = torch.zeros(8)
    sd["opt_model.model.decoder.embed_tokens.weight"] = torch.zeros(2, 2)
    torch.save({"model": sd}, tmp_path / "blip2.pth")
    pt_model.language_model.save_pretrained(tmp_path / "opt")
    pt_model.save_pretrained(tmp_path / "hf")  # only for its config.json (--vpg-config)
    out = tmp_path / "ox"
    done = run_script(
        "convert/lavis_to_orbax.py",
        "--src", str(tmp_path / "blip2.pth"), "--llm", str(tmp_path / "opt"), "--out", str(out),
        "--vpg-config", str(tmp_path / "hf" / "config.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = done.stdout
    assert "vision" in log and "blip2.pth" in log and "skipped 3 known-optional" in log
    _logits_match(str(out), pt_model)
    cfg = model_dir.read_config(str(out))
    assert cfg.ln_vision_eps == LAVIS_EPS and cfg.num_query_tokens == F.NUM_QUERY


@pytest.mark.parametrize("scan", [False, True])
def test_vpgtrans_llama_with_separate_vit(tmp_path, scan):
    """Trainable parts only (llama_proj), ViT from an eva_vit_g-style file with an extra block."""
    pt_model = F.tiny_blip2("llama", seed=12)
    lavis = to_lavis(pt_model, "llama_proj")
    trainable = {k: v for k, v in lavis.items() if not k.startswith("visual_encoder.")}
    vit = {
        k[len("visual_encoder.") :]: v for k, v in lavis.items() if k.startswith("visual_encoder.")
    }
    for k in [k for k in vit if k.startswith("blocks.1.")]:  # EVA-CLIP has one block more
        vit[k.replace("blocks.1.", "blocks.2.")] = vit[k].clone()
    torch.save({"model": trainable}, tmp_path / "vl-llama.pth")
    torch.save(vit, tmp_path / "eva_vit_g.pth")
    pt_model.language_model.save_pretrained(tmp_path / "llama")
    cfg_json = tmp_path / "vpg.json"
    hf = pt_model.config
    cfg_json.write_text(json.dumps({
        "vision": {"image_size": 28, "patch_size": 7, "hidden_size": 32, "num_layers": 2,
                   "num_heads": 4, "mlp_dim": 64, "layer_norm_eps": 1e-6},
        "qformer": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
                    "encoder_hidden_size": hf.vision_config.hidden_size},
    }))  # fmt: skip
    out = tmp_path / "ox"
    tools.lavis_to_orbax(
        str(tmp_path / "vl-llama.pth"), str(tmp_path / "llama"), str(out),
        vit=str(tmp_path / "eva_vit_g.pth"), vpg_config=str(cfg_json), scan_layers=scan,
        reference_llm=True, log=lambda s: None,
    )  # fmt: skip
    parts = model_dir.read_manifest(str(out))["parts"]
    assert parts["vision"]["stored"] and not parts["llm"]["stored"]
    assert parts["llm"]["source"]["kind"] == "hf_llm"
    _logits_match(str(out), pt_model)

    # Back to LAVIS: exactly the trainable tensors, same names and values.
    back = tmp_path / "back.pth"
    done = run_script("convert/orbax_to_lavis.py", "--src", str(out), "--out", str(back))
    assert done.returncode == 0, done.stderr
    got = torch.load(back, weights_only=True)["model"]
    assert sorted(got) == sorted(trainable)
    for k, v in trainable.items():
        assert torch.equal(got[k], v), k


def test_lavis_export_to_hf_needs_image_token(tmp_path):
    pt_model = F.tiny_blip2("opt", seed=13)
    torch.save({"model": to_lavis(pt_model, "opt_proj")}, tmp_path / "b.pth")
    pt_model.language_model.save_pretrained(tmp_path / "opt")
    pt_model.save_pretrained(tmp_path / "hf")
    ox = str(tmp_path / "ox")
    tools.lavis_to_orbax(
        str(tmp_path / "b.pth"),
        str(tmp_path / "opt"),
        ox,
        vpg_config=str(tmp_path / "hf" / "config.json"),
        log=lambda s: None,
    )
    with pytest.raises(Exception, match="--image-token-index"):
        tools.orbax_to_hf(ox, str(tmp_path / "x"), log=lambda s: None)
    assert not (tmp_path / "x").exists()
    notes = []
    tools.orbax_to_hf(ox, str(tmp_path / "back"), image_token_index=F.IMAGE_TOKEN, log=notes.append)
    assert any("ln_vision eps" in n for n in notes)
    import transformers as T

    reloaded = T.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    pixels, ids, mask = F.inputs()
    np.testing.assert_allclose(  # HF's post_layernorm uses 1e-6: equal up to that eps change
        F.torch_logits(reloaded, pixels, ids, mask)[:, F.NUM_QUERY :],
        np.asarray(vpgtrans_jax.load(ox)(pixels, ids, mask)),
        atol=1e-3,
        rtol=0,
    )
