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
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from vpgtrans_jax import paths, sharding
from vpgtrans_jax.checkpoint import engine, hub, store
from vpgtrans_jax.checkpoint.fill import abstract, expected_params, fill_abstract, flat_params
from vpgtrans_jax.checkpoint.hf import blip2, llms
from vpgtrans_jax.checkpoint.rules import WeightRule
from vpgtrans_jax.checkpoint.sources import RenamedSource, TensorSource, open_hf_weights, read_json
from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.configs import from_json_fields
from vpgtrans_jax.models.parts import PARTS, RUNTIME_FIELDS, expand_parts, part_of
from vpgtrans_jax.models.registry import LLMConfig
from vpgtrans_jax.models.vl_model import VLConfig, VLModel

MANIFEST = "vpgtrans_model.json"
FORMAT = "vpgtrans-jax-model"
VERSION = 1
SOURCE_KINDS = ("vpgtrans", "hf_blip2", "hf_llm")


# ---- what a directory holds ---------------------------------------------------------------------


def architecture(tower_cfg: Any) -> dict:
    """A tower config's fields minus the runtime ones (what must agree between two checkpoints)."""
    d = dataclasses.asdict(tower_cfg)
    for k in RUNTIME_FIELDS:
        d.pop(k, None)
    return d


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
        return registry.family_of(self.llm).name

    @property
    def parts(self) -> tuple[str, ...]:
        return PARTS if self.kind == "vl" else ("llm",)

    def tower(self, part: str) -> Any:
        """The tower config that decides a part's layout (None for parts without layers)."""
        if self.vl is None:
            return self.llm if part == "llm" else None
        return {"vision": self.vl.vision, "qformer": self.vl.qformer, "llm": self.vl.llm}.get(part)

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

    def hf_rules(self, parts: Iterable[str]) -> list[WeightRule]:
        """Rules ours ← this kind's HF names (BLIP-2 for "vl", the bare causal LM for "llm")."""
        wanted = set(parts)
        if self.vl is not None:
            return [r for r in blip2.weight_rules(self.vl) if part_of(r.ours) in wanted]
        return llms.weight_rules(self.llm, "llm.") if "llm" in wanted else []

    def expected(self, parts: Iterable[str] | None = None) -> dict[str, tuple[tuple, np.dtype]]:
        """Our path → (shape, dtype) of every parameter of ``parts`` (no allocation)."""
        wanted = set(self.parts if parts is None else parts)
        return {k: v for k, v in _all_expected(self).items() if part_of(k) in wanted}


@functools.lru_cache(maxsize=8)
def _all_expected(spec: ModelSpec) -> dict[str, tuple[tuple, np.dtype]]:
    """Every parameter's (shape, dtype); cached, as one conversion asks once per part."""
    rngs = lambda: nnx.Rngs(params=jax.random.key(0))  # noqa: E731
    if spec.vl is not None:
        return expected_params(abstract(lambda: VLModel(spec.vl, rngs=rngs())))
    llm_cls = registry.family_of(spec.llm).model_cls
    found = expected_params(abstract(lambda: llm_cls(spec.llm, rngs=rngs())))
    return {f"llm.{k}": v for k, v in found.items()}


def open_hf_llm(directory: str) -> TensorSource:
    """A HF LLM directory's weights; base-model keys (``decoder.*``, ``layers.*``) get ``model.``"""
    src = open_hf_weights(directory)
    keys = src.keys()
    if keys and not any(k.startswith("model.") for k in keys):
        return RenamedSource(src, lambda k: k if k == "lm_head.weight" else "model." + k)
    return src


# ---- manifest -----------------------------------------------------------------------------------


def is_model_dir(path: str) -> bool:
    return paths.isfile(paths.join(path, MANIFEST))


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of a model directory, validated (format, version, kind, parts)."""
    where = paths.join(path, MANIFEST)
    paths.check_complete(path)  # a gs:// directory still being uploaded
    m = read_json(where)
    if not isinstance(m, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(m).__name__}")
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
        family = registry.family(cfg.get("llm_type"))
        return ModelSpec.llm_only(from_json_fields(family.config_cls, cfg.get("llm") or {}, "llm"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
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
    """A source reference ``{"kind", "path"}`` from a dict or a path (the kind is detected; a
    Hugging Face hub id is resolved to its local snapshot, ``checkpoint.hub``)."""
    if isinstance(src, Mapping):
        kind, path = src.get("kind"), src.get("path")
        if kind not in SOURCE_KINDS or not isinstance(path, str):
            raise ValueError(f"source {dict(src)!r}: need kind in {SOURCE_KINDS} and a path")
        return {"kind": kind, "path": path}
    path = paths.abspath(hub.resolve(src))
    if is_model_dir(path):
        return {"kind": "vpgtrans", "path": path}
    cfg_path = paths.join(path, "config.json")
    if not paths.isfile(cfg_path):
        raise CheckpointError(
            f"{path}: not a model directory ({MANIFEST}) nor a HF directory (config.json)"
        )
    hf = read_json(cfg_path)
    if blip2.is_blip2(hf):
        return {"kind": "hf_blip2", "path": path}
    model_type = hf.get("model_type") if isinstance(hf, dict) else None
    if llms.family_of_model_type(model_type) is not None:
        return {"kind": "hf_llm", "path": path}
    raise CheckpointError(f"{cfg_path}: model_type {model_type!r} is neither BLIP-2 nor an LLM")


# ---- reading parts ------------------------------------------------------------------------------


def _check_arch(part: str, have, want, where: str) -> None:
    if have is None or want is None:
        return
    a, b = architecture(have), architecture(want)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff or type(have) is not type(want):
        detail = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"{where}: part {part!r} has a different architecture than expected "
            f"({type(have).__name__} vs {type(want).__name__}; {detail})"
        )


def part_tensors(
    path: str, part: str, target: ModelSpec, *, chain: tuple[str, ...] = ()
) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``{our path: array}`` chunks holding all of ``part`` in ``target``'s layout.

    Stored dtypes are kept; references are followed; a stored layer layout that differs from the
    target's (``scan_layers``) is converted. ``chain``: the model directories that referred here
    (a reference back to one of them is a cycle, refused).
    """
    here = paths.abspath(path) if paths.is_remote(path) else os.path.realpath(path)
    if here in chain:
        loop = " -> ".join([*chain[chain.index(here) :], here])
        raise CheckpointError(f"{path}: part {part!r} is referenced in a cycle ({loop})")
    chain = (*chain, here)
    m = read_manifest(path)
    stored_spec = spec_from_manifest(m, path)
    entry = m["parts"].get(part)
    if entry is None:
        raise CheckpointError(f"{path}: has no part {part!r} (it holds {sorted(m['parts'])})")
    where = paths.join(path, MANIFEST)
    if not isinstance(entry, Mapping):
        raise CheckpointError(f"{where}: part {part!r} must be a JSON object, got {entry!r}")
    _check_arch(part, stored_spec.tower(part), target.tower(part), path)
    if not entry.get("stored"):
        src = entry.get("source")
        try:
            if not isinstance(src, Mapping):
                raise ValueError(f"source {src!r}: need a {{'kind', 'path'}} object")
            src = describe_source(src)
        except ValueError as e:
            raise CheckpointError(f"{where}: part {part!r} is not stored; {e}") from e
        yield from source_part_tensors(src, part, target, base=path, chain=chain)
        return
    names = entry.get("groups")
    if not isinstance(names, list) or not all(_is_group_name(g) for g in names):
        raise CheckpointError(
            f"{where}: part {part!r} needs 'groups', a list of directory names under "
            f"params/{part}, got {names!r}"
        )
    groups = [paths.join(path, "params", part, g) for g in names]
    if not groups:
        raise CheckpointError(f"{path}: part {part!r} is marked stored but lists no groups")
    have, want = stored_spec.tower(part), target.tower(part)
    read = store.assemble_pieces((store.restore_group(g) for g in groups), f"{path}:{part}")
    read = checked_part(read, part, stored_spec, path)
    if have is None or want is None or have.scan_layers == want.scan_layers:
        yield from read
        return
    flat: dict[str, np.ndarray] = {}
    for chunk in read:
        flat.update(chunk)
    yield relayout(flat, part, stored_spec, target)


def checked_part(
    chunks: Iterable[dict[str, np.ndarray]], part: str, spec: ModelSpec, where: str
) -> Iterator[dict[str, np.ndarray]]:
    """``chunks`` of a stored part, each checked against what ``spec`` (the manifest's config)
    says the part holds: the same parameter paths, shapes, and floating-point dtypes.

    A tampered or mismatched manifest thus fails here, naming the first offending tensor, before
    its arrays reach a model or an exported file.
    """
    want = spec.expected([part])
    seen: set[str] = set()
    for chunk in chunks:
        for key, value in chunk.items():
            if key not in want:
                raise CheckpointError(
                    f"{where}: part {part!r} stores {key!r}, which the manifest's config does not "
                    "have (does the config describe these parameters?)"
                )
            if tuple(value.shape) != tuple(want[key][0]):
                raise CheckpointError(
                    f"{where}: {key!r} has shape {tuple(value.shape)}, the manifest's config "
                    f"needs {tuple(want[key][0])}"
                )
            if not engine.is_float(value.dtype):
                raise CheckpointError(
                    f"{where}: tensor {key!r} has dtype {value.dtype}, expected a floating point "
                    "tensor"
                )
            seen.add(key)
        yield chunk
    missing = sorted(set(want) - seen)
    if missing:
        raise CheckpointError(
            f"{where}: part {part!r} lacks {len(missing)} parameter(s) of the manifest's config, "
            f"first {missing[0]!r}"
        )


def relayout(
    flat: Mapping[str, np.ndarray], part: str, have: ModelSpec, want: ModelSpec
) -> dict[str, np.ndarray]:
    """One part's arrays from ``have``'s layer layout to ``want``'s (the stored dtype is kept)."""
    stored_dtype = next(iter(flat.values())).dtype  # a part's tensors share one dtype
    expected = {k: (s, stored_dtype) for k, (s, _) in want.expected([part]).items()}
    # Through the bare causal-LM names for the LLM: ``have`` and ``want`` may be of either kind.
    rules = lambda s: llms.weight_rules(s.llm, "llm.") if part == "llm" else s.hf_rules([part])  # noqa: E731
    return engine.relayout(flat, rules(have), rules(want), expected, f"{part} (relayout)")


def _is_group_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and os.sep not in name


def source_part_tensors(
    src: Mapping[str, Any],
    part: str,
    target: ModelSpec,
    *,
    base: str = ".",
    chain: tuple[str, ...] = (),
) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``part`` read from a referenced source (see ``describe_source``)."""
    src = describe_source(src)
    path = src["path"] if paths.isabs(src["path"]) else paths.join(base, src["path"])
    if src["kind"] == "vpgtrans":
        yield from part_tensors(path, part, target, chain=chain)
        return
    hf = read_json(paths.join(path, "config.json"))
    if src["kind"] == "hf_blip2":
        if target.vl is None:
            raise CheckpointError(f"{path}: a BLIP-2 source can only feed a VL model's parts")
        try:
            src_spec = ModelSpec.of(blip2.config_from_hf(hf))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{path}/config.json: {e}") from e
        source: TensorSource = open_hf_weights(path)
    else:
        if part != "llm":
            raise CheckpointError(f"{path}: a HF LLM source can only provide the 'llm' part")
        src_spec = ModelSpec.llm_only(llms.config_from_hf(hf, path))
        source = open_hf_llm(path)
    _check_arch(part, src_spec.tower(part), target.tower(part), path)
    rules = (
        target.hf_rules([part])
        if src["kind"] == "hf_blip2"
        else llms.weight_rules(target.llm, "llm.")
    )
    yield engine.import_all(source, rules, target.expected([part]), optional=lambda k: True,
                            what=f"part {part!r}")  # fmt: skip


# ---- writing ------------------------------------------------------------------------------------


class PartWriter(store.GroupWriter):
    """A ``GroupWriter`` that also remembers which paths it wrote (to check completeness)."""

    def __init__(self, root: str, budget: int):
        super().__init__(root, budget)
        self.paths: set[str] = set()
        self.dtypes: dict[str, str] = {}

    def emit(self, path: str, value: np.ndarray) -> None:
        part = part_of(path)
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
    info: Mapping[str, Any] | None = None,
    created_by: str = "vpgtrans_jax",
    overwrite: bool = False,
    group_bytes: int = store.DEFAULT_GROUP_BYTES,
) -> dict[str, Any]:
    """Writes a model directory atomically; ``write(writer)`` emits the stored parts' arrays.

    Args:
      sources: part or tower name → source (path or ``{"kind", "path"}``) for parts not written.
      origins: part or tower name → free-form description of where a stored part came from.
      hf: extra Hugging Face facts to keep (e.g. ``{"image_token_index": 32000}``).
      info: free-form JSON facts about how the model was made (a training stage, a merge).

    Returns:
      the manifest. Raises before anything appears at ``out`` when a stored part is incomplete
      or a part is neither written nor referenced.
    """
    refs = _by_part(sources or {}, spec)
    why = _by_part(origins or {}, spec)
    with store.atomic_output(
        out, overwrite=overwrite, kind="model directory", created_by=created_by,
        also_ours=_is_plain_model_dir,
    ) as tmp:  # fmt: skip
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
            "info": dict(info or {}),
            "created_by": created_by,
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
    return manifest


def _is_plain_model_dir(path: str) -> bool:
    """A model directory written before outputs carried a marker: its manifest and params only."""
    entries = set(paths.listdir(path))
    return MANIFEST in entries and entries <= {MANIFEST, "params"}


def _by_part(d: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in d.items():
        for p in expand_parts([name]):
            if p not in spec.parts:
                raise ValueError(f"part {p!r} does not exist in a {spec.kind!r} model")
            out[p] = value
    return out


def save_model_dir(
    params: Any,
    out: str,
    config: VLConfig,
    sources: Mapping[str, Any] | None = None,
    *,
    origins: Mapping[str, Any] | None = None,
    hf: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
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
    ints = [f"{k} ({v.dtype})" for k, v in flat.items() if not engine.is_float(v.dtype)]
    if ints:
        raise ValueError(f"parameters must be floating point: {', '.join(ints[:20])}")

    def write(w: PartWriter) -> None:
        for k, v in flat.items():
            w.emit(k, v)

    return write_model_dir(out, spec, write, sources=sources, origins=origins, hf=hf, info=info,
                           created_by=created_by, overwrite=overwrite)  # fmt: skip


def read_parts(
    path: str, parts: Iterable[str] | None = None, **overrides: Any
) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """``(spec, {our path: array})`` of some parts (all by default) of any checkpoint that holds
    them: a model directory, a HF BLIP-2 directory or a HF LLM directory (its ``llm`` part).

    ``overrides`` are tower run knobs (e.g. ``qformer={"scan_layers": True}``) that choose the
    layout the arrays come back in; stored dtypes are kept.
    """
    src = describe_source(path)
    hf = None if src["kind"] == "vpgtrans" else read_json(paths.join(src["path"], "config.json"))
    try:
        if src["kind"] == "vpgtrans":
            spec = spec_from_manifest(read_manifest(path), path)
        elif src["kind"] == "hf_blip2":
            spec = ModelSpec.of(blip2.config_from_hf(hf))
        else:
            spec = ModelSpec.llm_only(llms.config_from_hf(hf, path))
        spec = spec.replace_towers(**overrides)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: {e}") from e
    wanted = expand_parts(parts) if parts is not None else list(spec.parts)
    missing = [p for p in wanted if p not in spec.parts]
    if missing:
        raise CheckpointError(f"{path}: holds no part {missing} (it holds {list(spec.parts)})")
    flat: dict[str, np.ndarray] = {}
    for part in wanted:
        reader = (
            part_tensors(path, part, spec)
            if src["kind"] == "vpgtrans"
            else source_part_tensors(src, part, spec)
        )
        for chunk in reader:
            flat.update(chunk)
    return spec, flat


def load_params(path: str, parts: Iterable[str] | None = None, **overrides: Any) -> dict:
    """Nested ``{part: {...}}`` numpy arrays of ``parts`` (all by default), layer keys as ints.

    Use it to restore some parts into an existing model, e.g. the trainable ones of a stage.
    """
    _, flat = read_parts(path, parts, **overrides)
    tree: dict = {}
    for k, v in flat.items():
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
    abstract_model = abstract(lambda: VLModel(cfg, rngs=nnx.Rngs(params=jax.random.key(0))))
    _, flat = read_parts(path, **overrides)
    shardings = None
    if mesh is not None:
        shardings = sharding.state_shardings(nnx.state(abstract_model), mesh, rules)
    return fill_abstract(abstract_model, flat, source=path, shardings=shardings)


__all__ = [
    "MANIFEST",
    "FORMAT",
    "VERSION",
    "ModelSpec",
    "architecture",
    "save_model_dir",
    "load_model_dir",
    "load_params",
    "read_parts",
    "read_config",
    "read_manifest",
    "read_spec",
    "describe_source",
    "write_model_dir",
    "part_tensors",
    "checked_part",
    "open_hf_llm",
]
