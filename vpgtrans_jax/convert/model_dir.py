"""This project's model checkpoint directory: a JSON manifest plus Orbax parameter groups per part.

Layout (docs/checkpoints.md has the full description)::

    DIR/vpgtrans_model.json            format, version, kind, config, per-part entries
    DIR/params/<part>/<NNN>/           Orbax checkpoints (stored parts only)

A part is either *stored* (its groups are in ``params/<part>``) or *referenced* (``source`` names
another model directory, a HF BLIP-2 directory or a HF LLM directory that holds it). Training
writes only the trainable parts and references the frozen towers.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from vpgtrans_jax import sharding, weights
from vpgtrans_jax.checkpoint_io import CheckpointError, read_json
from vpgtrans_jax.convert import layout, store
from vpgtrans_jax.convert.sources import MappingSource, RenamedSource, TensorSource, open_hf_weights
from vpgtrans_jax.convert.stream import export_tensors, import_tensors
from vpgtrans_jax.models.llama import LlamaConfig
from vpgtrans_jax.models.opt import OPTConfig
from vpgtrans_jax.models.vl_model import LLMConfig, VLConfig, VLModel, llm_type_of

MANIFEST = "vpgtrans_model.json"
FORMAT = "vpgtrans-jax-model"
VERSION = 1
SOURCE_KINDS = ("vpgtrans", "hf_blip2", "hf_llm")
HF_LLM_TYPES = {"opt": "opt", "llama": "llama", "mistral": "llama", "qwen2": "llama"}


# ---- what a directory holds ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A whole VL model (``kind="vl"``, ``vl`` set) or an LLM alone (``kind="llm"``)."""

    kind: str
    llm: LLMConfig
    vl: VLConfig | None = None

    @classmethod
    def of(cls, cfg: VLConfig) -> ModelSpec:
        return cls("vl", cfg.llm, cfg)

    @classmethod
    def llm_only(cls, llm: LLMConfig) -> ModelSpec:
        return cls("llm", llm)

    @property
    def llm_type(self) -> str:
        return llm_type_of(self.llm)

    @property
    def parts(self) -> tuple[str, ...]:
        return layout.PARTS if self.kind == "vl" else ("llm",)

    def tower(self, part: str):
        if self.kind == "llm":
            return self.llm if part == "llm" else None
        return layout.tower_config(self.vl, part)

    def config_dict(self) -> dict[str, Any]:
        if self.vl is not None:
            return self.vl.to_dict()
        return {"llm_type": self.llm_type, "llm": dataclasses.asdict(self.llm)}

    def replace_towers(self, **overrides: Any) -> ModelSpec:
        """Applies run-knob overrides (e.g. ``scan_layers=True``) to the tower configs.

        Plain keywords apply to every tower; ``vision=``, ``qformer=``, ``llm=`` dicts apply to
        one tower and win over the plain ones.
        """
        per = {
            t: dict(overrides.pop(t) or {}) for t in ("vision", "qformer", "llm") if t in overrides
        }
        if not overrides and not per:
            return self

        def rep(c, tower: str):
            kw = {**overrides, **per.get(tower, {})}
            names = {f.name for f in dataclasses.fields(c)}
            bad = sorted(set(kw) - names)
            if bad:
                raise ValueError(f"unknown {type(c).__name__} override(s) {bad}")
            return dataclasses.replace(c, **kw)

        if self.vl is None:
            return ModelSpec.llm_only(rep(self.llm, "llm"))
        vl = self.vl.replace(vision=rep(self.vl.vision, "vision"),
                             qformer=rep(self.vl.qformer, "qformer"),
                             llm=rep(self.vl.llm, "llm"))  # fmt: skip
        return ModelSpec.of(vl)

    def hf_rules(self, parts: Iterable[str]) -> list[weights.WeightRule]:
        """Rules ours ← this kind's HF names (BLIP-2 for "vl", the bare LLM for "llm")."""
        if self.vl is not None:
            return layout.hf_blip2_part_rules(self.vl, parts)
        return llm_rules(self.llm) if "llm" in parts else []

    def expected(self, parts: Iterable[str] | None = None) -> dict[str, tuple[tuple, np.dtype]]:
        """Our path → (shape, dtype) of every parameter of ``parts`` (no allocation)."""
        wanted = set(self.parts if parts is None else parts)
        if self.vl is not None:
            model = weights.abstract(lambda: VLModel(self.vl, rngs=_rngs()))
            prefix = ""
        else:
            model = weights.abstract(lambda: _llm_class(self.llm)(self.llm, rngs=_rngs()))
            prefix = "llm."
        out = {}
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            key = prefix + ".".join(map(str, path))
            if layout.part_of(key) in wanted:
                v = var.get_value()
                out[key] = (tuple(v.shape), np.dtype(v.dtype))
        return out


def _llm_class(llm: LLMConfig):
    from vpgtrans_jax.models.llama import LlamaForCausalLM
    from vpgtrans_jax.models.opt import OPTForCausalLM

    return OPTForCausalLM if isinstance(llm, OPTConfig) else LlamaForCausalLM


def _rngs() -> nnx.Rngs:
    return nnx.Rngs(params=jax.random.key(0))


def llm_rules(llm: LLMConfig) -> list[weights.WeightRule]:
    """``llm.*`` ← a bare ``OPTForCausalLM`` / ``LlamaForCausalLM`` state dict."""
    mod = layout.llm_module(llm_type_of(llm))
    return [r.with_prefix("llm.", "") for r in mod.hf_weight_map(llm)]


def llm_config_from_hf(hf: Mapping[str, Any], where: str, **overrides: Any) -> LLMConfig:
    """A HF LLM ``config.json`` dict → our OPT / LLaMA config, with a clear error otherwise."""
    model_type = hf.get("model_type")
    if model_type not in HF_LLM_TYPES:
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not a supported LLM; expected one of "
            f"{sorted(HF_LLM_TYPES)} (OPTForCausalLM, LlamaForCausalLM incl. Vicuna)"
        )
    try:
        if HF_LLM_TYPES[model_type] == "opt":
            return OPTConfig.from_hf(hf, **overrides)
        return LlamaConfig.from_hf(hf, **overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from e


def open_hf_llm(directory: str) -> TensorSource:
    """A HF LLM directory's weights; base-model keys (``decoder.*``, ``layers.*``) get ``model.``"""
    src = open_hf_weights(directory)
    keys = src.keys()
    if keys and not any(k.startswith("model.") for k in keys):
        return RenamedSource(src, lambda k: k if k == "lm_head.weight" else "model." + k)
    return src


# ---- manifest -----------------------------------------------------------------------------------


def is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of a model directory, validated (format, version, kind, parts)."""
    m = read_json(os.path.join(path, MANIFEST))
    where = os.path.join(path, MANIFEST)
    if m.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format {m.get('format')!r} is not {FORMAT!r}")
    if m.get("version") != VERSION:
        raise CheckpointError(
            f"{where}: version {m.get('version')!r} is not supported (this code reads {VERSION})"
        )
    if m.get("kind") not in ("vl", "llm") or not isinstance(m.get("parts"), dict):
        raise CheckpointError(f"{where}: needs kind 'vl' or 'llm' and a 'parts' object")
    return m


def spec_from_manifest(m: Mapping[str, Any], where: str = MANIFEST) -> ModelSpec:
    cfg = m.get("config") or {}
    try:
        if m["kind"] == "vl":
            return ModelSpec.of(VLConfig.from_dict(cfg))
        vl = VLConfig.from_dict(
            {"llm_type": cfg.get("llm_type"), "llm": cfg.get("llm") or {}, "vision": {},
             "qformer": {"encoder_hidden_size": 1408}}
        )  # fmt: skip
        return ModelSpec.llm_only(vl.llm)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: bad config ({e})") from e


def read_spec(path: str, **overrides: Any) -> ModelSpec:
    """The ``ModelSpec`` of a model directory with tower ``overrides`` applied."""
    return spec_from_manifest(read_manifest(path), path).replace_towers(**overrides)


def read_config(path: str, **overrides: Any) -> VLConfig:
    """The ``VLConfig`` of a VL model directory with tower ``overrides`` applied."""
    spec = read_spec(path, **overrides)
    if spec.vl is None:
        raise CheckpointError(f"{path}: holds only an LLM, not a VL model")
    return spec.vl


def describe_source(src: str | Mapping[str, Any]) -> dict[str, str]:
    """A source reference ``{"kind", "path"}`` from a dict or a path (the kind is detected)."""
    if isinstance(src, Mapping):
        kind, path = src.get("kind"), src.get("path")
        if kind not in SOURCE_KINDS or not isinstance(path, str):
            raise ValueError(f"source {dict(src)!r}: need kind in {SOURCE_KINDS} and a path")
        return {"kind": kind, "path": path}
    path = os.path.abspath(src)
    if is_model_dir(path):
        return {"kind": "vpgtrans", "path": path}
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(
            f"{path}: not a model directory ({MANIFEST}) nor a HF directory (config.json)"
        )
    model_type = read_json(cfg_path).get("model_type")
    if model_type in ("blip-2", "blip_2"):
        return {"kind": "hf_blip2", "path": path}
    if model_type in HF_LLM_TYPES:
        return {"kind": "hf_llm", "path": path}
    raise CheckpointError(f"{cfg_path}: model_type {model_type!r} is neither BLIP-2 nor an LLM")


# ---- reading parts ------------------------------------------------------------------------------


def _check_arch(part: str, have, want, where: str) -> None:
    if have is None or want is None:
        return
    a, b = layout.architecture(have), layout.architecture(want)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff or type(have) is not type(want):
        detail = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"{where}: part {part!r} has a different architecture than expected "
            f"({type(have).__name__} vs {type(want).__name__}; {detail})"
        )


def part_tensors(path: str, part: str, target: ModelSpec) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``{our path: array}`` chunks holding all of ``part`` in ``target``'s layout.

    Stored dtypes are kept; references are followed; a stored layer layout that differs from the
    target's (``scan_layers``) is converted.
    """
    m = read_manifest(path)
    stored_spec = spec_from_manifest(m, path)
    entry = m["parts"].get(part)
    if entry is None:
        raise CheckpointError(f"{path}: has no part {part!r} (it holds {sorted(m['parts'])})")
    _check_arch(part, stored_spec.tower(part), target.tower(part), path)
    if not entry.get("stored"):
        yield from source_part_tensors(entry.get("source") or {}, part, target, base=path)
        return
    groups = [os.path.join(path, "params", part, g) for g in entry.get("groups") or []]
    if not groups:
        raise CheckpointError(f"{path}: part {part!r} is marked stored but lists no groups")
    have, want = stored_spec.tower(part), target.tower(part)
    read = store.assemble_pieces((store.restore_group(g) for g in groups), f"{path}:{part}")
    if have is None or want is None or have.scan_layers == want.scan_layers:
        yield from read
        return
    flat: dict[str, np.ndarray] = {}
    for chunk in read:
        flat.update(chunk)
    yield relayout(flat, part, stored_spec, target)


def relayout(
    flat: Mapping[str, np.ndarray], part: str, have: ModelSpec, want: ModelSpec
) -> dict[str, np.ndarray]:
    """One part's arrays from ``have``'s layer layout to ``want``'s (through torch names)."""
    rules = lambda s: llm_rules(s.llm) if part == "llm" else s.hf_rules([part])  # same names
    hf = dict(export_tensors(flat.items(), rules(have)))
    out: dict[str, np.ndarray] = {}
    stored_dtype = next(iter(flat.values())).dtype  # a part's tensors share one dtype
    expected = {k: (s, stored_dtype) for k, (s, _) in want.expected([part]).items()}
    import_tensors(MappingSource(hf, f"{part} (relayout)"), rules(want), expected, out.__setitem__)
    return _joined(out, f"{part} (relayout)")


def _joined(flat: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """``flat`` with stacked parameters' row pieces (as ``import_tensors`` emits them) re-joined."""
    out: dict[str, np.ndarray] = {}
    for chunk in store.assemble_pieces(iter([flat]), where):
        out.update(chunk)
    return out


def source_part_tensors(
    src: Mapping[str, Any], part: str, target: ModelSpec, *, base: str = "."
) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``part`` read from a referenced source (see ``describe_source``)."""
    src = describe_source(src)
    path = src["path"] if os.path.isabs(src["path"]) else os.path.join(base, src["path"])
    if src["kind"] == "vpgtrans":
        yield from part_tensors(path, part, target)
        return
    hf = read_json(os.path.join(path, "config.json"))
    if src["kind"] == "hf_blip2":
        if target.vl is None:
            raise CheckpointError(f"{path}: a BLIP-2 source can only feed a VL model's parts")
        try:
            src_spec = ModelSpec.of(VLConfig.from_hf(hf))
        except ValueError as e:
            raise CheckpointError(f"{path}/config.json: {e}") from e
        source: TensorSource = open_hf_weights(path)
        rules = target.hf_rules([part])
    else:
        if part != "llm":
            raise CheckpointError(f"{path}: a HF LLM source can only provide the 'llm' part")
        src_spec = ModelSpec.llm_only(llm_config_from_hf(hf, path))
        source, rules = open_hf_llm(path), llm_rules(target.llm)
    _check_arch(part, src_spec.tower(part), target.tower(part), path)
    out: dict[str, np.ndarray] = {}
    import_tensors(source, rules, target.expected([part]), out.__setitem__,
                   optional=lambda k: True, what=f"part {part!r}")  # fmt: skip
    yield _joined(out, f"{path}: part {part!r}")


# ---- writing ------------------------------------------------------------------------------------


class PartWriter(store.GroupWriter):
    """A ``GroupWriter`` that also remembers which paths it wrote (to check completeness)."""

    def __init__(self, root: str, budget: int):
        super().__init__(root, budget)
        self.paths: set[str] = set()
        self.dtypes: dict[str, str] = {}

    def emit(self, path: str, value: np.ndarray) -> None:
        part = layout.part_of(path)
        self.paths.add(path.split(store.CHUNK_MARK)[0])  # a row piece counts for its tensor
        self.dtypes.setdefault(part, str(value.dtype))
        self.add(part, path, value)


def write_model_dir(
    out: str,
    spec: ModelSpec,
    write: Callable[[PartWriter], None],
    *,
    sources: Mapping[str, Any] | None = None,
    origins: Mapping[str, Any] | None = None,
    hf: Mapping[str, Any] | None = None,
    created_by: str = "vpgtrans_jax",
    overwrite: bool = False,
    group_bytes: int = store.DEFAULT_GROUP_BYTES,
) -> dict[str, Any]:
    """Writes a model directory atomically; ``write(writer)`` emits the stored parts' arrays.

    Args:
      sources: part or tower name → source (path or ``{"kind", "path"}``) for parts not written.
      origins: part or tower name → free-form description of where a stored part came from.
      hf: extra Hugging Face facts to keep (e.g. ``{"image_token_index": 32000}``).

    Returns:
      the manifest. Raises before anything appears at ``out`` when a stored part is incomplete
      or a part is neither written nor referenced.
    """
    refs = _by_part(sources or {}, spec)
    why = _by_part(origins or {}, spec)
    with store.atomic_output(out, overwrite=overwrite) as tmp:
        writer = PartWriter(tmp, group_bytes)
        write(writer)
        groups = writer.close()
        parts: dict[str, Any] = {}
        for part in spec.parts:
            want = set(spec.expected([part]))
            if part in groups:
                missing = sorted(want - writer.paths)
                if missing:
                    raise CheckpointError(f"part {part!r} is incomplete; missing {missing[:20]}")
                parts[part] = {"stored": True, "groups": groups[part],
                               "dtype": writer.dtypes[part]}  # fmt: skip
                if part in why:
                    parts[part]["origin"] = why[part]
            elif part in refs:
                parts[part] = {"stored": False, "source": describe_source(refs[part])}
            else:
                raise CheckpointError(
                    f"part {part!r} is neither given nor referenced; pass it in the parameters "
                    "or name its source (sources={'" + part + "': path})"
                )
        extra = sorted(writer.paths - set(spec.expected()))
        if extra:
            raise CheckpointError(f"parameters not in the model: {extra[:20]}")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "kind": spec.kind,
            "config": spec.config_dict(),
            "parts": parts,
            "hf": dict(hf or {}),
            "created_by": created_by,
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
    return manifest


def _by_part(d: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in d.items():
        for p in layout.expand_parts([name]):
            if p not in spec.parts:
                raise ValueError(f"part {p!r} does not exist in a {spec.kind!r} model")
            out[p] = value
    return out


def flat_params(params: Any) -> dict[str, np.ndarray]:
    """A ``VLModel``, an ``nnx.State`` rooted at the model, or a nested dict → ``{path: array}``."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        return {
            ".".join(map(str, p)): np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
            for p, v in nnx.to_flat_state(params)
        }
    if isinstance(params, Mapping):
        out: dict[str, np.ndarray] = {}
        for k, v in params.items():
            if isinstance(v, (Mapping, nnx.State)):
                out.update({f"{k}.{p}": a for p, a in flat_params(v).items()})
            else:
                out[str(k)] = np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v)
        return out
    raise TypeError(f"expected a VLModel, nnx.State or nested dict, got {type(params).__name__}")


def save_model_dir(
    params: Any,
    out: str,
    config: VLConfig,
    sources: Mapping[str, Any] | None = None,
    *,
    origins: Mapping[str, Any] | None = None,
    hf: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    created_by: str = "save_model_dir",
) -> dict[str, Any]:
    """Saves a VL model, or some of its parts, as a model directory.

    Args:
      params: a ``VLModel``, an ``nnx.State`` rooted at it (e.g. the trainable state of
        ``train.optim.split_trainable``) or a nested ``{part: {...}}`` dict of arrays. Every part
        it touches must be complete, in ``config``'s layer layout.
      out: the directory to create (written to a temporary sibling, renamed at the end).
      config: the model's config (``scan_layers`` decides the stored layout).
      sources: part or tower name (``"vision"``, ``"vpg"``, ``"llm"``, ``"qformer"``, …) → where
        a part not in ``params`` comes from: a model directory, a HF BLIP-2 or HF LLM directory.

    Returns:
      the manifest written.
    """
    spec = ModelSpec.of(config)
    flat = flat_params(params)
    expected = spec.expected()
    bad = [
        f"{k}: expected {expected[k][0]}, got {tuple(v.shape)}"
        for k, v in flat.items()
        if k in expected and tuple(v.shape) != expected[k][0]
    ]
    if bad:
        raise ValueError("shape mismatch: " + "; ".join(bad[:20]))

    def write(w: PartWriter) -> None:
        for k, v in flat.items():
            w.emit(k, v)

    return write_model_dir(out, spec, write, sources=sources, origins=origins, hf=hf,
                           created_by=created_by, overwrite=overwrite)  # fmt: skip


def load_params(path: str, parts: Iterable[str] | None = None, **overrides: Any) -> dict:
    """Nested ``{part: {...}}`` numpy arrays of ``parts`` (all by default), layer keys as ints.

    Use it to restore some parts into an existing model, e.g. the trainable ones of a stage.
    """
    spec = read_spec(path, **overrides)
    wanted = layout.expand_parts(parts) if parts is not None else list(spec.parts)
    tree: dict = {}
    for part in wanted:
        for chunk in part_tensors(path, part, spec):
            for k, v in chunk.items():
                node = tree
                keys = [int(x) if x.isdigit() else x for x in k.split(".")]
                for key in keys[:-1]:
                    node = node.setdefault(key, {})
                node[keys[-1]] = v
    return tree


def load_model_dir(
    path: str,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    **overrides: Any,
) -> VLModel:
    """Builds a ``VLModel`` from a model directory, following references for unstored parts.

    ``overrides`` apply to every tower (``dtype``, ``param_dtype``, ``scan_layers``,
    ``remat_policy``); with ``mesh`` each parameter is placed on it as it is filled.
    """
    cfg = read_config(path, **overrides)
    spec = ModelSpec.of(cfg)
    abstract_model = weights.abstract(lambda: VLModel(cfg, rngs=_rngs()))
    flat: dict[str, np.ndarray] = {}
    for part in spec.parts:
        for chunk in part_tensors(path, part, spec):
            flat.update(chunk)
    shardings = None
    if mesh is not None:
        shardings = sharding.state_shardings(nnx.state(abstract_model), mesh, rules)
    return weights.fill_abstract(abstract_model, store.nest(flat), source=path,
                                 shardings=shardings)  # fmt: skip


__all__ = [
    "MANIFEST",
    "FORMAT",
    "VERSION",
    "ModelSpec",
    "save_model_dir",
    "load_model_dir",
    "load_params",
    "read_config",
    "read_manifest",
    "describe_source",
    "write_model_dir",
    "part_tensors",
]
