"""The conversions behind ``convert/*.py``: HF/LAVIS → model directory → HF/LAVIS, and our LLM
as a Hugging Face causal-LM directory."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from vpgtrans_jax import paths
from vpgtrans_jax.checkpoint import hub, lavis, model_dir, store
from vpgtrans_jax.checkpoint.engine import check_keys, export_tensors, import_tensors
from vpgtrans_jax.checkpoint.hf import blip2, llms, qformer, vit
from vpgtrans_jax.checkpoint.model_dir import ModelSpec
from vpgtrans_jax.checkpoint.safetensors import ShardedSafetensorsWriter, write_safetensors
from vpgtrans_jax.checkpoint.sources import (
    ChainSource,
    MappingSource,
    RenamedSource,
    load_torch_pickle,
    open_hf_weights,
    read_json,
)
from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.models.parts import VPG_PARTS
from vpgtrans_jax.models.qformer import QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig
from vpgtrans_jax.models.vl_model import VLConfig
from vpgtrans_jax.outputs import check_separate

Log = Callable[[str], None]
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _dtype(name: str | None):
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    return np.dtype(DTYPES[name])


def _log_origins(log: Log, origins: Mapping[str, str], refs: Mapping[str, str] = {}) -> None:
    for part, where in origins.items():
        log(f"  {part:<13} ← {where}")
    for part, where in refs.items():
        log(f"  {part:<13} → referenced, not copied: {where}")


def model_inputs(label: str, path: str) -> dict[str, str]:
    """``{label: path}`` plus, for a model directory, the sources its parts reference (reading it
    reads them): what an output must keep clear of (``outputs.check_separate``)."""
    found = {label: path}
    try:
        parts = model_dir.read_manifest(path)["parts"] if model_dir.is_model_dir(path) else {}
    except CheckpointError:
        return found
    for part, entry in parts.items():
        src = entry.get("source") if isinstance(entry, dict) else None
        if isinstance(src, dict) and isinstance(src.get("path"), str):
            found[f"{label}'s {part} source"] = src["path"]
    return found


# ---- Hugging Face → model directory -------------------------------------------------------------


def hf_to_orbax(
    src: str,
    out: str,
    *,
    dtype: str = "float32",
    scan_layers: bool = False,
    overwrite: bool = False,
    group_bytes: int = store.DEFAULT_GROUP_BYTES,
    log: Log = print,
) -> dict[str, Any]:
    """A HF BLIP-2 directory (whole VL model) or HF LLM directory (LLM only) → model directory.

    ``src`` may be a Hugging Face hub id (``checkpoint.hub.resolve``)."""
    _dtype(dtype)
    src = hub.resolve(src)
    check_separate(out, {"--src": src})
    cfg_path = paths.join(src, "config.json")
    if not paths.isdir(src):
        raise CheckpointError(f"{src}: not a directory")
    hf = read_json(cfg_path)
    model_type = hf.get("model_type") if isinstance(hf, dict) else None
    over = dict(param_dtype=dtype, scan_layers=scan_layers)
    if blip2.is_blip2(hf):
        try:
            cfg = blip2.config_from_hf(hf, **over)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{cfg_path}: {e}") from e
        spec = ModelSpec.of(cfg)
        source = open_hf_weights(src)
        rules = blip2.weight_rules(cfg)
        optional = lambda k: blip2.is_unused_key(k, cfg)  # noqa: E731
        kind, extra = "hf_blip2", {"image_token_index": hf.get("image_token_index")}
    elif llms.family_of_model_type(model_type) is not None:
        spec = ModelSpec.llm_only(llms.config_from_hf(hf, cfg_path, **over))
        source = model_dir.open_hf_llm(src)
        rules = llms.weight_rules(spec.llm, "llm.")
        optional = lambda k: llms.is_unused_key(spec.llm, k)  # noqa: E731
        kind, extra = "hf_llm", {}
    else:
        raise CheckpointError(
            f"{cfg_path}: model_type {model_type!r} cannot be converted; expected a BLIP-2 "
            f"directory ('blip-2') or an LLM ({sorted(llms.MODEL_TYPE_FAMILY)})"
        )
    what = f"a {model_type} model with this config.json"
    check_keys(source, rules, optional=optional, what=what)  # before building anything
    expected = spec.expected()

    def write(w: model_dir.PartWriter) -> None:
        import_tensors(source, rules, expected, w.emit, optional=optional, what=what)

    origin = {"kind": kind, "path": paths.abspath(src)}
    manifest = model_dir.write_model_dir(
        out, spec, write, origins={p: origin for p in spec.parts}, hf=extra,
        created_by="convert/hf_to_orbax.py", overwrite=overwrite, group_bytes=group_bytes,
    )  # fmt: skip
    log(f"wrote {out} ({spec.kind} model, {dtype}, scan_layers={scan_layers}):")
    _log_origins(log, {p: source.name for p in spec.parts})
    return manifest


# ---- LAVIS / VPGTrans → model directory ---------------------------------------------------------


def _unwrap(sd: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    if "model" in sd and isinstance(sd["model"], Mapping):
        sd = sd["model"]
    bad = [k for k, v in sd.items() if not hasattr(v, "shape")]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:10]}")
    return sd


def vpg_configs(path: str | None, **over: Any) -> tuple[VisionConfig, QFormerConfig]:
    """ViT and Q-Former configs: BLIP-2's (EVA ViT-g/14, BERT-base) unless ``path`` says otherwise.

    ``path`` is a JSON file: a HF BLIP-2 ``config.json``, a model directory manifest, or
    ``{"vision": {...}, "qformer": {...}}`` with our config field names.
    """
    if path is None:
        return VisionConfig.eva_vit_g(**over), QFormerConfig(**over)
    d = read_json(path)
    try:
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        if blip2.is_blip2(d):
            return vit.config_from_hf(d, **over), qformer.config_from_hf(d, **over)
        d = d.get("config", d)
        if not isinstance(d.get("vision"), dict) or not isinstance(d.get("qformer"), dict):
            raise ValueError("needs 'vision' and 'qformer' objects")
        return (
            VisionConfig(**{**d["vision"], **over}),
            QFormerConfig(**{**d["qformer"], **over}),
        )
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a usable ViT/Q-Former config ({e})") from e


def lavis_to_orbax(
    src: str,
    llm: str,
    out: str,
    *,
    vit: str | None = None,
    vpg_config: str | None = None,
    dtype: str = "float32",
    scan_layers: bool = False,
    ln_vision_eps: float = 1e-5,
    reference_llm: bool = False,
    allow_unexpected: Sequence[str] = (),
    overwrite: bool = False,
    group_bytes: int = store.DEFAULT_GROUP_BYTES,
    log: Log = print,
) -> dict[str, Any]:
    """A LAVIS BLIP-2 or VPGTrans ``.pth`` + HF LLM (+ EVA ViT ``.pth``) → model directory.

    Args:
      allow_unexpected: regular expressions of further tensor names to skip (known-optional ones
        such as the Q-Former's text path are always skipped and reported).
    """
    _dtype(dtype)
    inputs = {"--src": src, **model_inputs("--llm", llm), "--vit": vit, "--vpg-config": vpg_config}
    check_separate(out, inputs)
    over = dict(param_dtype=dtype, scan_layers=scan_layers)
    sd = _unwrap(load_torch_pickle(src), src)
    projs = [n for n in ("opt_proj", "llama_proj", "t5_proj") if f"{n}.weight" in sd]
    if "t5_proj" in projs:
        raise CheckpointError(f"{src}: t5_proj found: FlanT5 (encoder-decoder) is not supported")
    if len(projs) != 1:
        raise CheckpointError(
            f"{src}: expected exactly one projector (opt_proj.weight or llama_proj.weight), "
            f"found {projs or 'none'}"
        )
    proj = projs[0]
    if "query_tokens" not in sd or len(sd["query_tokens"].shape) != 3:
        raise CheckpointError(f"{src}: missing query_tokens [1, num_query, width]")

    llm = hub.resolve(llm)
    llm_src = model_dir.describe_source(llm)
    if llm_src["kind"] == "hf_blip2":
        raise CheckpointError(f"{llm}: --llm must be an LLM directory, got a BLIP-2 directory")
    if llm_src["kind"] == "hf_llm":
        llm_cfg = llms.config_from_hf(read_json(paths.join(llm, "config.json")), llm, **over)
    else:
        llm_cfg = dataclasses.replace(model_dir.read_spec(llm).llm, **over)
    vision, qformer = vpg_configs(vpg_config, **over)
    cfg = VLConfig(
        vision=vision,
        qformer=qformer,
        llm=llm_cfg,
        num_query_tokens=int(sd["query_tokens"].shape[1]),
        ln_vision_eps=ln_vision_eps,
    )

    out_dim, in_dim = (int(s) for s in sd[f"{proj}.weight"].shape)
    if out_dim != llm_cfg.input_embed_dim:
        raise CheckpointError(
            f"the LLM in {llm} has hidden size {llm_cfg.input_embed_dim} but {src}'s "
            f"{proj}.weight projects to {out_dim}: this VPG was trained for another LLM"
        )
    if in_dim != qformer.hidden_size:
        raise CheckpointError(
            f"{src}: {proj}.weight takes width {in_dim}, the Q-Former config has "
            f"{qformer.hidden_size} (pass --vpg-config)"
        )

    main = MappingSource(sd, src)
    if any(k.startswith("visual_encoder.") for k in sd):
        source, vit_from = main, src
        if vit is not None:
            log(
                f"note: {src} holds visual_encoder.*; it is used and --vit is ignored (as in LAVIS)"
            )
    elif vit is not None:
        vit_sd = _unwrap(load_torch_pickle(vit), vit)
        vit_source = RenamedSource(MappingSource(vit_sd, vit), lambda k: "visual_encoder." + k)
        source, vit_from = ChainSource([main, vit_source]), vit
    else:
        raise CheckpointError(
            f"{src} has no visual_encoder.* tensors (VPGTrans and some LAVIS checkpoints omit the "
            "frozen ViT): pass --vit eva_vit_g.pth"
        )
    spec = ModelSpec.of(cfg)
    rules = lavis.lavis_rules(cfg, ["vision", *VPG_PARTS], proj)
    patterns = [re.compile(p) for p in allow_unexpected]
    optional = lambda k: (
        lavis.is_optional_lavis_key(k, cfg) or any(p.fullmatch(k) for p in patterns)
    )
    expected = spec.expected()
    skipped: list[str] = []

    def write(w: model_dir.PartWriter) -> None:
        rep = import_tensors(source, rules, expected, w.emit, optional=optional,
                             what="a LAVIS/VPGTrans BLIP-2 with this config")  # fmt: skip
        skipped.extend(rep.skipped)
        if reference_llm:
            return
        for chunk in model_dir.source_part_tensors(llm_src, "llm", spec):
            for k, v in chunk.items():
                w.emit(k, v.astype(expected[k][1], copy=False))

    origins = {"vision": vit_from, **{p: src for p in VPG_PARTS}}
    refs = {"llm": llm_src["path"]} if reference_llm else {}
    if not reference_llm:
        origins["llm"] = llm_src["path"]
    manifest = model_dir.write_model_dir(
        out, spec, write, sources=refs, origins={p: {"path": paths.abspath(v)}
                                                 for p, v in origins.items()},
        hf={"lavis_projector": proj}, created_by="convert/lavis_to_orbax.py",
        overwrite=overwrite, group_bytes=group_bytes,
    )  # fmt: skip
    log(f"wrote {out} ({dtype}, scan_layers={scan_layers}):")
    _log_origins(log, origins, refs)
    if skipped:
        log(f"  skipped {len(skipped)} known-optional tensors: {', '.join(skipped[:8])}"
            + (" …" if len(skipped) > 8 else ""))  # fmt: skip
    return manifest


# ---- model directory → Hugging Face / LAVIS ----------------------------------------------------


def _stored_tensors(src: str, spec: ModelSpec, parts: Sequence[str]):
    """(HF BLIP-2 name, array) for ``parts`` of a model directory, one group at a time."""
    for part in parts:
        rules = spec.hf_rules([part])
        for chunk in model_dir.part_tensors(src, part, spec):
            yield from export_tensors(chunk.items(), rules)


def orbax_to_hf(
    src: str,
    out: str,
    *,
    dtype: str | None = None,
    image_token_index: int | None = None,
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
    log: Log = print,
) -> list[str]:
    """A VL model directory → HF ``Blip2ForConditionalGeneration`` directory. Returns the shards."""
    cast = _dtype(dtype)
    check_separate(out, model_inputs("--src", src))
    m = model_dir.read_manifest(src)
    spec = model_dir.spec_from_manifest(m, src)
    if spec.vl is None:
        raise CheckpointError(f"{src}: holds only an LLM; orbax_to_hf writes BLIP-2 models")
    cfg = spec.vl
    if image_token_index is None:
        image_token_index = (m.get("hf") or {}).get("image_token_index")
    if image_token_index is None:
        raise CheckpointError(
            f"{src} records no image_token_index (it did not come from a HF BLIP-2): pass "
            "--image-token-index ID, the id of the image placeholder token of your tokenizer"
        )
    vocab = cfg.llm.vocab_size
    if isinstance(image_token_index, bool) or not isinstance(image_token_index, int):
        raise CheckpointError(
            f"{src}: image_token_index must be an integer token id, got {image_token_index!r}"
        )
    if not 0 <= image_token_index < vocab:
        raise CheckpointError(
            f"{src}: image_token_index {image_token_index} is outside the LLM's vocabulary "
            f"[0, {vocab})"
        )
    try:
        config = blip2.config_to_hf(cfg, image_token_index)
    except ValueError as e:
        raise CheckpointError(f"{src}: {e}") from e
    if cfg.ln_vision_eps != cfg.vision.layer_norm_eps:
        log(f"note: ln_vision eps {cfg.ln_vision_eps} is written as {cfg.vision.layer_norm_eps}: "
            "HF's post_layernorm shares the ViT's layer_norm_eps")  # fmt: skip
    with store.atomic_output(out, overwrite=overwrite, kind="HF BLIP-2 directory",
                             created_by="convert/orbax_to_hf.py") as tmp:  # fmt: skip
        writer = ShardedSafetensorsWriter(tmp, max_shard_bytes)
        for key, a in _stored_tensors(src, spec, spec.parts):
            writer.add(key, a if cast is None else a.astype(cast))
        shards = writer.close()
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    log(f"wrote {out}: {len(shards)} safetensors shard(s)")
    return shards


def orbax_to_lavis(
    src: str,
    out: str,
    *,
    proj_name: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """The trainable parts of a VL model directory → a LAVIS/VPGTrans ``{"model": state_dict}``."""
    import torch  # lazy: torch is optional; only the LAVIS formats (pickles) need it

    cast = _dtype(dtype)
    check_separate(out, model_inputs("--src", src))
    spec = model_dir.read_spec(src)
    if spec.vl is None:
        raise CheckpointError(f"{src}: holds only an LLM; there is no VPG to export")
    m = model_dir.read_manifest(src)
    proj = proj_name or (m.get("hf") or {}).get("lavis_projector")
    proj = proj or lavis.projector_name(spec.vl)
    if proj not in lavis.PROJ_NAMES:
        raise ValueError(f"projector name {proj!r} is not one of {lavis.PROJ_NAMES}")
    sd: dict[str, Any] = {}
    for key, a in _stored_tensors(src, spec, VPG_PARTS):
        a = a if cast is None else a.astype(cast)
        if a.dtype == np.dtype(ml_dtypes.bfloat16):
            t = torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.ascontiguousarray(a))
        sd[lavis.hf_to_lavis_key(key, proj)] = t
    with store.atomic_output(out, overwrite=overwrite, is_dir=False) as tmp:
        torch.save({"model": sd}, tmp)
    log(f"wrote {out}: {len(sd)} tensors ({', '.join(VPG_PARTS)}; projector {proj})")
    return sd


# ---- our LLM → Hugging Face causal-LM directory --------------------------------------------------


def llm_to_hf(
    src: str, out: str, *, tokenizer_dir: str | None = None, overwrite: bool = False
) -> str:
    """The LLM of a model directory (or of any checkpoint holding one) → a HF causal-LM directory
    (``config.json`` + ``model.safetensors`` + the tokenizer files of ``tokenizer_dir``) that
    ``AutoModelForCausalLM.from_pretrained`` opens."""
    check_separate(out, {**model_inputs("src", src), "tokenizer_dir": tokenizer_dir})
    spec, flat = model_dir.read_parts(src, ["llm"])
    tensors = dict(export_tensors(flat.items(), llms.weight_rules(spec.llm, "llm.")))
    hf_config = {**llms.config_to_hf(spec.llm), "torch_dtype": "float32"}
    made_by = "vpgtrans_jax.checkpoint.convert.llm_to_hf"
    with store.atomic_output(out, overwrite=overwrite, kind="HF LLM directory",
                             created_by=made_by) as tmp:  # fmt: skip
        write_safetensors(os.path.join(tmp, "model.safetensors"), tensors)
        tokenizer_dir = paths.local_copy(tokenizer_dir) if tokenizer_dir else None
        for name in os.listdir(tokenizer_dir) if tokenizer_dir else []:
            if os.path.isfile(os.path.join(tokenizer_dir, name)):
                shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
    return out


__all__ = [
    "hf_to_orbax",
    "lavis_to_orbax",
    "orbax_to_hf",
    "orbax_to_lavis",
    "vpg_configs",
    "llm_to_hf",
    "model_inputs",
]
