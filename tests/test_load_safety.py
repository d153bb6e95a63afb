"""Weights: what loading and conversion refuse, with one line, and what they accept (issue 18).

Each test starts from a tiny BLIP-2 saved by transformers and breaks or disguises it the way a
user or a tampered file would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Blip2ForConditionalGeneration

import vpgtrans_jax
from tests import torch_reference as F
from tests.scripts_util import run_script
from vpgtrans_jax.checkpoint import convert, fill, hub, load, model_dir, store
from vpgtrans_jax.checkpoint.fill import abstract, flat_params
from vpgtrans_jax.checkpoint.hf import blip2
from vpgtrans_jax.checkpoint.safetensors import SafetensorsFile, write_safetensors
from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.models.vl_model import VLModel


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny OPT BLIP-2 as a HF directory and as a model directory."""
    root = tmp_path_factory.mktemp("load_safety")
    model = F.tiny_blip2("opt", seed=31)
    model.save_pretrained(root / "hf")
    convert.hf_to_orbax(str(root / "hf"), str(root / "orbax"), log=quiet)
    return root


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    data = edit(data) or data
    path.write_text(json.dumps(data))


def _no_output(out) -> None:
    assert not os.path.exists(out)
    parent, base = os.path.split(str(out))
    assert not [f for f in os.listdir(parent) if f.startswith(f".{base}.")]


# ---- item 9: non-float weights and tampered manifests ------------------------------------------


def test_int32_weight_is_refused_naming_the_tensor(world, tmp_path):
    # A model directory whose projector group was rewritten with int32 arrays.
    bad = _copy(world / "orbax", tmp_path / "int_dir")
    group = bad / "params" / "projector" / "000"
    arrays = store.restore_group(str(group))
    shutil.rmtree(group)
    store.save_group(str(group), {k: v.astype(np.int32) for k, v in arrays.items()})
    with pytest.raises(CheckpointError, match=r"tensor 'projector\.\w+' has dtype int32, expected"):
        vpgtrans_jax.load(str(bad))
    # The same in a HF directory's safetensors.
    hf = _copy(world / "hf", tmp_path / "int_hf")
    st = SafetensorsFile(str(hf / "model.safetensors"))
    tensors = {k: st.read(k) for k in st}
    tensors["query_tokens"] = tensors["query_tokens"].astype(np.int32)
    write_safetensors(str(hf / "model.safetensors"), tensors)
    with pytest.raises(CheckpointError, match="'query_tokens' has dtype int32, expected a float"):
        vpgtrans_jax.load(str(hf))
    # And nothing writes such a directory in the first place.
    model = vpgtrans_jax.load(str(world / "hf"))
    params = {k: v.astype(np.int32) if k.startswith("projector.") else v
              for k, v in flat_params(model).items()}  # fmt: skip
    with pytest.raises(ValueError, match="must be floating point: projector"):
        model_dir.save_model_dir(fill.nested(params), str(tmp_path / "w"), model.config)
    _no_output(tmp_path / "w")


@pytest.mark.parametrize(
    "name, edit, message",
    [
        ("deeper", lambda m: m["config"]["llm"].update(num_layers=3),
         r"part 'llm' lacks 16 parameter\(s\) of the manifest's config, first 'llm\.layers\.2\."),
        ("shallower", lambda m: m["config"]["llm"].update(num_layers=1),
         r"part 'llm' stores 'llm\.layers\.1\..*which the manifest's config does not have"),
        ("wider", lambda m: m["config"]["llm"].update(ffn_dim=48),
         r"'llm\.layers\.0\.fc1\.bias' has shape \(64,\), the manifest's config needs \(48,\)"),
        ("image_token", lambda m: m["hf"].update(image_token_index=[3]),
         r"image_token_index must be an integer token id, got \[3\]"),
        ("image_token_range", lambda m: m["hf"].update(image_token_index=96),
         r"image_token_index 96 is outside the LLM's vocabulary \[0, 96\)"),
    ],
)  # fmt: skip
def test_orbax_to_hf_refuses_a_tampered_manifest_and_writes_nothing(
    world, tmp_path, name, edit, message
):
    src = _copy(world / "orbax", tmp_path / name)
    _edit_json(src / model_dir.MANIFEST, edit)
    with pytest.raises(CheckpointError, match=message):
        convert.orbax_to_hf(str(src), str(tmp_path / "hf_out"), log=quiet)
    _no_output(tmp_path / "hf_out")


# ---- item 10: a config claiming more than the checkpoint holds --------------------------------


def test_claimed_depth_is_refused_from_the_index_before_any_model_is_built(
    world, tmp_path, monkeypatch
):
    hf = _copy(world / "hf", tmp_path / "deep")
    _edit_json(hf / "config.json", lambda c: c["text_config"].update(num_hidden_layers=2000))

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the tensor index was checked")

    monkeypatch.setattr(load, "abstract", no_model)
    monkeypatch.setattr(model_dir.ModelSpec, "expected", no_model)
    first = r"missing 31968: language_model\.model\.decoder\.layers\.2\.self_attn\.q_proj\.weight"
    with pytest.raises(CheckpointError, match=first):
        vpgtrans_jax.load(str(hf))
    with pytest.raises(CheckpointError, match=first):
        convert.hf_to_orbax(str(hf), str(tmp_path / "out"), log=quiet)
    _no_output(tmp_path / "out")


def test_claimed_width_is_refused_from_the_index_before_any_tensor_is_read(
    world, tmp_path, monkeypatch
):
    hf = _copy(world / "hf", tmp_path / "wide")
    _edit_json(hf / "config.json", lambda c: c["text_config"].update(ffn_dim=80))

    def no_read(self, key):
        raise AssertionError(f"{key} was read before the shapes in the index were checked")

    monkeypatch.setattr(SafetensorsFile, "read", no_read)
    with pytest.raises(
        CheckpointError,
        match=r"'language_model\.model\.decoder\.layers\.0\.fc1\.weight' has shape \(64, 32\), "
        r"a BLIP-2 model with this config\.json needs \(80, 32\) \(and 5 more\)",
    ):
        vpgtrans_jax.load(str(hf))


@pytest.mark.parametrize("text, scan", [("opt", False), ("opt", True), ("llama", True)])
def test_abstract_models_are_built_without_tracing_and_equal_eval_shape(monkeypatch, text, scan):
    """Tracing made building an abstract model quadratic in its depth (a 200-layer config took
    minutes): ``abstract`` builds shapes directly, and gives what ``nnx.eval_shape`` gives."""
    cfg = blip2.config_from_hf(F.tiny_blip2(text).config.to_dict(), scan_layers=scan)

    def build():
        return VLModel(cfg, rngs=nnx.Rngs(params=jax.random.key(0)))

    def summary(model):
        graphdef, state = nnx.split(model)
        return graphdef, {
            p: (v.get_value().shape, v.get_value().dtype, v.get_metadata().get("axes"), type(v))
            for p, v in nnx.to_flat_state(state)
        }

    want = summary(nnx.eval_shape(build))

    def no_trace(*args, **kwargs):
        raise AssertionError("abstract() traced the model")

    monkeypatch.setattr(nnx, "eval_shape", no_trace)
    monkeypatch.setattr(jax, "eval_shape", no_trace)
    assert summary(abstract(build)) == want


# ---- item 11: one line for files that are not what they claim to be ---------------------------


def test_not_checkpoints_are_one_line_errors(world, tmp_path):
    text = "just some notes\nnot a checkpoint\n"
    (tmp_path / "notes.pth").write_text(text)
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a torch checkpoint .*b'just some"):
        convert.lavis_to_orbax(str(tmp_path / "notes.pth"), str(world / "hf"),
                               str(tmp_path / "o"), log=quiet)  # fmt: skip
    hf_bin = tmp_path / "bin"
    hf_bin.mkdir()
    shutil.copy(world / "hf" / "config.json", hf_bin)
    (hf_bin / "pytorch_model.bin").write_text(text)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: not a torch checkpoint"):
        vpgtrans_jax.load(str(hf_bin))

    deep = _copy(world / "hf", tmp_path / "deep_header")
    header = b"[" * 100_000 + b"]" * 100_000
    (deep / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match="header JSON is nested too deeply"):
        vpgtrans_jax.load(str(deep))

    real = json.loads((world / "hf" / "config.json").read_text())
    cases = {
        "a list": ([1, 2], "config.json: model_type None (is not a loadable|cannot be conv)"),
        "nested": ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        "text list": ({**real, "text_config": [1]}, "text_config must be a JSON object, got list"),
        "qformer text": ({**real, "qformer_config": "x"},
                         "qformer_config must be a JSON object, got str"),
    }  # fmt: skip
    for name, (config, message) in cases.items():
        d = _copy(world / "hf", tmp_path / name.replace(" ", "_"))
        raw = config if isinstance(config, str) else json.dumps(config)
        (d / "config.json").write_text(raw)
        with pytest.raises(CheckpointError, match=message):
            vpgtrans_jax.load(str(d))
        with pytest.raises(CheckpointError, match=message):
            convert.hf_to_orbax(str(d), str(tmp_path / "o"), log=quiet)


def test_reference_cycles_in_manifests_are_one_line_errors(world, tmp_path):
    a = _copy(world / "orbax", tmp_path / "a")
    b = _copy(world / "orbax", tmp_path / "b")

    def refer(to):
        source = {"kind": "vpgtrans", "path": to}
        return lambda m: m["parts"].update(llm={"stored": False, "source": source})

    _edit_json(a / model_dir.MANIFEST, refer("."))
    with pytest.raises(
        CheckpointError, match=r"part 'llm' is referenced in a cycle \(.*/a -> .*/a\)"
    ):
        vpgtrans_jax.load(str(a))
    _edit_json(a / model_dir.MANIFEST, refer(str(b)))
    _edit_json(b / model_dir.MANIFEST, refer(str(a)))
    with pytest.raises(CheckpointError, match=r"in a cycle \(.*/a -> .*/b -> .*/a\)"):
        convert.orbax_to_hf(str(a), str(tmp_path / "o"), log=quiet)
    _no_output(tmp_path / "o")
    _edit_json(b / model_dir.MANIFEST, lambda m: m["parts"]["llm"].update(groups="000"))
    _edit_json(b / model_dir.MANIFEST, lambda m: m["parts"]["llm"].update(stored=True))
    with pytest.raises(CheckpointError, match="part 'llm' needs 'groups', a list of directory"):
        vpgtrans_jax.load(str(b))


def test_hf_to_orbax_script_prints_one_error_line(world, tmp_path):
    hf = _copy(world / "hf", tmp_path / "bin_text")
    os.remove(hf / "model.safetensors")
    (hf / "pytorch_model.bin").write_text("<html>not found</html>\n")
    done = run_script("convert/hf_to_orbax.py", "--src", str(hf), "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "not a torch checkpoint" in lines[-1], lines
    assert "Traceback" not in done.stderr
    _no_output(tmp_path / "o")


# ---- item 15: a trained (non-zero) ViT k bias ------------------------------------------------


def test_nonzero_vit_k_bias_is_dropped_and_logits_match_transformers(world, tmp_path, caplog):
    # A random k bias in every ViT layer (the middle third of the fused qkv.bias).
    hf = _copy(world / "hf", tmp_path / "k_bias")
    st = SafetensorsFile(str(hf / "model.safetensors"))
    tensors = {k: st.read(k) for k in st}
    rng = np.random.default_rng(5)
    fused = [k for k in tensors if k.endswith("self_attn.qkv.bias")]
    for key in fused:
        d = tensors[key].shape[0] // 3
        tensors[key][d : 2 * d] = rng.standard_normal(d).astype(np.float32)
    write_safetensors(str(hf / "model.safetensors"), tensors)
    pt = Blip2ForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    k_bias = pt.vision_model.encoder.layers[0].self_attn.qkv.bias.detach()[d : 2 * d]
    assert float(k_bias.abs().min()) > 0  # transformers holds (and uses) the k bias

    with caplog.at_level(logging.INFO, logger="vpgtrans_jax"):
        model = vpgtrans_jax.load(str(hf))
    notes = [r.getMessage() for r in caplog.records if "k bias" in r.getMessage()]
    assert len(notes) == 1, notes
    assert f"dropped the non-zero k bias of {len(fused)} ViT attention layer" in notes[0]
    pixels, ids, mask = F.inputs(vocab=pt.config.text_config.vocab_size, image=28)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(nnx.jit(lambda m, *x: m(*x))(model, pixels, ids, mask))
    theirs = F.torch_logits(pt, pixels, ids, mask)[:, pt.config.num_query_tokens :]
    assert float(np.abs(ours - theirs).max()) <= 1e-4


# ---- item 16: Hugging Face hub ids ------------------------------------------------------------


def _hub_cache(cache, repo_id: str, files_from) -> str:
    """``files_from`` laid out as huggingface_hub caches a download: content-addressed blobs,
    a snapshot of symlinks to them, and ``refs/main`` naming the revision."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    for d in (repo / "blobs", snapshot, repo / "refs"):
        d.mkdir(parents=True)
    for name in os.listdir(files_from):
        data = (files_from / name).read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(os.path.join("..", "..", "blobs", blob))
    (repo / "refs" / "main").write_text(revision)
    return str(snapshot)


def test_hub_ids_resolve_through_the_local_cache(world, tmp_path, monkeypatch):
    snapshot = _hub_cache(tmp_path / "hub", "tiny-org/blip2-tiny", world / "hf")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert hub.resolve("tiny-org/blip2-tiny") == snapshot
    from_hub = flat_params(vpgtrans_jax.load("tiny-org/blip2-tiny"))
    local = flat_params(vpgtrans_jax.load(str(world / "hf")))
    assert from_hub.keys() == local.keys()
    assert all(np.array_equal(from_hub[k], local[k]) for k in local)
    convert.hf_to_orbax("tiny-org/blip2-tiny", str(tmp_path / "converted"), log=quiet)
    assert model_dir.read_manifest(str(tmp_path / "converted"))["kind"] == "vl"

    with pytest.raises(
        CheckpointError,
        match=r"Salesforce/blip2-opt-2\.7b: no such local directory, and the Hugging Face hub id "
        r"'Salesforce/blip2-opt-2\.7b' is not in the cache .*HF_HUB_OFFLINE=1 forbids",
    ):
        vpgtrans_jax.load("Salesforce/blip2-opt-2.7b")
    # A local path always wins over a hub id of the same spelling.
    shutil.copytree(world / "orbax", tmp_path / "tiny-org" / "blip2-tiny")
    assert hub.resolve("tiny-org/blip2-tiny") == "tiny-org/blip2-tiny"
    assert not hub.is_hub_id("./x/y") and not hub.is_hub_id("a/b/c")
