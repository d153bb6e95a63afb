"""The one conversion engine between torch-named tensors and our parameter paths.

``import_tensors`` reads a ``TensorSource`` shard by shard and emits our arrays one at a time
(stacking per-layer tensors for scanned towers); ``export_tensors`` turns our arrays back into
torch-named tensors (unstacking, transposing and re-fusing chunked tensors such as the ViT's qkv
bias). Both are driven by ``WeightRule`` tables (``checkpoint.rules``). Everything that reads
weights goes through here: ``vpgtrans_jax.load``, the model directory, the converters and
``load_state_dict`` (an in-memory state dict into a model). ``relayout`` — scanned ↔ per-layer —
is an export followed by an import with the other layout's rules.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np
from flax import nnx

from vpgtrans_jax.checkpoint.fill import expected_params, fill_abstract
from vpgtrans_jax.checkpoint.rules import (
    WeightRule,
    expand,
    from_ours,
    stacked_path,
    to_ours,
    torch_shape,
)
from vpgtrans_jax.checkpoint.sources import MappingSource, TensorSource
from vpgtrans_jax.checkpoint.store import CHUNK_MARK, assemble_pieces
from vpgtrans_jax.errors import CheckpointError

log = logging.getLogger(__name__)

Emit = Callable[[str, np.ndarray], None]
Expected = Mapping[str, tuple[tuple[int, ...], np.dtype]]


def is_float(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind == "f" or np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16)


@dataclasses.dataclass
class ImportReport:
    """What an import read: the torch keys used, the known-optional ones it skipped, and the
    fused tensors whose non-zero k-bias piece it dropped."""

    used: set[str] = dataclasses.field(default_factory=set)
    skipped: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)  # non-zero ViT k biases


def _short(keys: list[str], n: int = 25) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def check_keys(
    source: TensorSource,
    rules: Iterable[WeightRule],
    *,
    optional: Callable[[str], bool] = lambda k: False,
    what: str = "",
) -> tuple[list[str], list[str]]:
    """Raises CheckpointError listing missing and unexpected tensors; returns (needed, skipped)."""
    needed = list(dict.fromkeys(hf for r in rules for _, hf, _ in expand(r)))
    have = source.keys()
    have_set = set(have)
    missing = [k for k in needed if k not in have_set]
    need_set = set(needed)
    extra = [k for k in have if k not in need_set]
    unexpected = [k for k in extra if not optional(k)]
    if missing or unexpected:
        msg = [f"{source.name}: tensors do not match {what or 'the model'}"]
        if missing:
            msg.append(f"missing {len(missing)}: {_short(missing)}")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)}: {_short(unexpected)}")
        raise CheckpointError("; ".join(msg))
    return needed, [k for k in extra if optional(k)]


def check_shapes(
    source: TensorSource, rules: Iterable[WeightRule], expected: Expected, *, what: str = ""
) -> None:
    """Compares the shapes the source's index declares (without reading a tensor) with those
    ``rules`` and ``expected`` need; raises CheckpointError naming the first that differs."""
    bad: list[str] = []
    for r in rules:
        path = stacked_path(r) if r.stacked else None
        for ours, hf, _ in expand(r):
            have = source.shape(hf)
            want = expected.get(path or ours)
            if have is None or want is None:
                continue  # unknown without reading; checked when the tensor is converted
            need = torch_shape(r, tuple(want[0][1:]) if r.stacked else tuple(want[0]))
            if tuple(have) != need:
                bad.append(
                    f"tensor {hf!r} has shape {tuple(have)}, {what or 'the model'} needs {need}"
                )
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{source.name}: {bad[0]}{more}; does the config describe this checkpoint?"
        )


def import_tensors(
    source: TensorSource,
    rules: list[WeightRule],
    expected: Expected,
    emit: Emit,
    *,
    optional: Callable[[str], bool] = lambda k: False,
    what: str = "",
) -> ImportReport:
    """Reads every tensor ``rules`` need from ``source`` and emits our arrays.

    Args:
      expected: our path → (shape, dtype) for every parameter the rules fill; arrays are checked
        against the shape and cast to the dtype (per-layer tensors of stacked rules are emitted
        one layer at a time as row pieces ``<path>@<layer>of<L>`` of the ``[L, ...]`` stack;
        ``store.assemble_pieces`` re-joins them).
      emit: called once per parameter with (our path, array); the array is not referenced after.
      optional: keys the source may hold that no rule reads (skipped, reported); any other
        unread key, and any missing key, is an error listing them.
    """
    needed, skipped = check_keys(source, rules, optional=optional, what=what)
    check_shapes(source, rules, expected, what=what)
    uses: dict[str, list[tuple[WeightRule, str, int | None]]] = {}
    covered: dict[str, set[int]] = {}
    for r in rules:
        for ours, hf, layer in expand(r):
            uses.setdefault(hf, []).append((r, ours, layer))
            if r.kind == "chunk":
                covered.setdefault(hf, set()).add(r.chunk)
    stacks: dict[str, set[int]] = {}  # stacked parameter -> layers emitted so far
    report = ImportReport(used=set(needed), skipped=skipped)
    dropped: dict[str, None] = {}  # fused tensors with a non-zero piece no parameter holds

    def convert(key: str, targets: list[tuple[WeightRule, str, int | None]]) -> None:
        t = source.read(key)
        if not is_float(t.dtype):
            raise CheckpointError(
                f"{source.name}: tensor {key!r} has dtype {t.dtype}, expected a floating "
                "point tensor"
            )
        if key in covered and _has_nonzero_uncovered_chunk(t, uses[key][0][0], covered[key]):
            dropped[key] = None
        for rule, ours, layer in targets:
            _convert_one(source.name, key, t, rule, ours, layer, expected, stacks, emit)

    stacked = [r for r in rules if r.stacked]
    if stacked and source.random_access:
        # Fill one stacked parameter at a time (its layers span all shards), so only one
        # [L, ...] buffer is ever held; per-layer reads are cheap on a random-access source.
        for r in stacked:
            for ours, hf, layer in expand(r):
                convert(hf, [(r, ours, layer)])
        uses = {k: [u for u in us if not u[0].stacked] for k, us in uses.items()}
    for shard, keys in source.shards():
        for key in keys:
            if uses.get(key):
                convert(key, uses[key])
        source.release(shard)
    if stacks:
        raise CheckpointError(f"{source.name}: incomplete layer stacks for {sorted(stacks)[:5]}")
    if dropped:
        log.info(
            "%s: dropped the non-zero k bias of %d ViT attention layer(s) (e.g. %s): a k bias adds "
            "the same constant to every attention score of a query, which softmax cancels, so "
            "the outputs are unchanged",
            source.name, len(dropped), next(iter(dropped)),
        )  # fmt: skip
    report.dropped = list(dropped)
    return report


def _convert_one(name, key, t, rule, ours, layer, expected, stacks, emit) -> None:
    try:
        arr = to_ours(rule.kind, t, rule)
    except ValueError as e:
        raise CheckpointError(f"{name}: tensor {key!r}: {e}") from e
    path = stacked_path(rule) if rule.stacked else ours
    if path not in expected:
        raise CheckpointError(f"{name}: tensor {key!r} maps to {path!r}, which the model lacks")
    shape, dtype = expected[path]
    want = tuple(shape[1:]) if rule.stacked else tuple(shape)
    if tuple(arr.shape) != want:
        raise CheckpointError(
            f"{name}: tensor {key!r} has shape {tuple(t.shape)}; parameter {path!r} needs "
            f"{want} in our layout (does the config describe this checkpoint?)"
        )
    if not rule.stacked:
        emit(path, np.ascontiguousarray(arr, dtype=dtype))
        return
    # A stacked parameter is emitted layer by layer as row pieces of its [L, ...] array (readers
    # re-join them), so no whole layer stack is ever held: a scanned 7B tower converts in the
    # memory of one layer.
    seen = stacks.setdefault(path, set())
    if layer in seen:
        raise CheckpointError(f"{name}: tensor {key!r} fills layer {layer} of {path!r} twice")
    seen.add(layer)
    emit(f"{path}{CHUNK_MARK}{layer}of{shape[0]}", np.ascontiguousarray(arr[None], dtype=dtype))
    if len(seen) == shape[0]:
        stacks.pop(path)


def _has_nonzero_uncovered_chunk(t: np.ndarray, rule: WeightRule, covered: set[int]) -> bool:
    """Whether a fused tensor has a non-zero piece that no parameter holds.

    The only such piece is the k part of the ViT's fused ``qkv.bias`` (EVA has none; HF
    transformers 5 trains it as part of one parameter). It is dropped, which is exact: for a
    query q, ``q·(k_j + b) = q·k_j + q·b`` shifts all of q's scores by the same constant.
    """
    n = t.shape[0] // rule.num_chunks if t.ndim and t.shape[0] % rule.num_chunks == 0 else None
    if n is None:
        return False  # to_ours reports the bad shape
    return any(
        c not in covered and np.any(np.asarray(t[c * n : (c + 1) * n], np.float32) != 0)
        for c in range(rule.num_chunks)
    )


def export_tensors(
    arrays: Iterable[tuple[str, np.ndarray]], rules: Iterable[WeightRule]
) -> Iterator[tuple[str, np.ndarray]]:
    """Our (path, array) pairs → (torch key, torch-layout array), one tensor at a time.

    Stacked parameters are split per layer; chunk rules are re-fused once every defined chunk of
    a key has arrived (undefined chunks, such as the ViT's k bias, are zeros).
    """
    by_path: dict[str, tuple[WeightRule, int | None]] = {}
    chunks_of: dict[str, set[int]] = {}
    for r in rules:
        if r.stacked:
            by_path[stacked_path(r)] = (r, None)
        else:
            for ours, _, layer in expand(r):
                by_path[ours] = (r, layer)
        if r.kind == "chunk":
            for _, hf, _ in expand(r):
                chunks_of.setdefault(hf, set()).add(r.chunk)
    pieces: dict[str, dict[int, np.ndarray]] = {}

    def one(rule: WeightRule, layer: int | None, a: np.ndarray):
        hf = rule.hf if layer is None else rule.hf.format(i=layer)
        if rule.kind != "chunk":
            return hf, np.ascontiguousarray(from_ours(rule.kind, a))
        got = pieces.setdefault(hf, {})
        got[rule.chunk] = a
        if set(got) != chunks_of[hf]:
            return None
        del pieces[hf]
        ref = next(iter(got.values()))
        parts = [got.get(c, np.zeros_like(ref)) for c in range(rule.num_chunks)]
        return hf, np.concatenate(parts, axis=0)

    for path, arr in arrays:
        if path not in by_path:
            raise CheckpointError(f"parameter {path!r} has no torch counterpart")
        rule, layer = by_path[path]
        if rule.stacked:
            outs = [one(rule, i, arr[i]) for i in range(arr.shape[0])]
        else:
            outs = [one(rule, layer, arr)]
        for o in outs:
            if o is not None:
                yield o
    if pieces:
        raise CheckpointError(f"incomplete fused tensors {sorted(pieces)[:5]}")


def join_pieces(flat: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """``flat`` with stacked parameters' row pieces (as ``import_tensors`` emits them) re-joined."""
    out: dict[str, np.ndarray] = {}
    for chunk in assemble_pieces(iter([flat]), where):
        out.update(chunk)
    return out


def import_all(
    source: TensorSource,
    rules: list[WeightRule],
    expected: Expected,
    *,
    optional: Callable[[str], bool] = lambda k: False,
    what: str = "",
) -> dict[str, np.ndarray]:
    """``import_tensors`` collected into one ``{our path: array}`` dict (whole tensors)."""
    out: dict[str, np.ndarray] = {}
    import_tensors(source, rules, expected, out.__setitem__, optional=optional, what=what)
    return join_pieces(out, source.name)


def relayout(
    flat: Mapping[str, np.ndarray],
    have: list[WeightRule],
    want: list[WeightRule],
    expected: Expected,
    where: str,
) -> dict[str, np.ndarray]:
    """Arrays laid out by the rules ``have`` → the layout of ``want`` (same tensor names; e.g.
    per-layer ↔ scanned), through the torch names both share. Dtypes are kept."""
    torch_named = dict(export_tensors(flat.items(), have))
    return import_all(MappingSource(torch_named, where), want, expected, what=where)


def load_state_dict(
    abstract_model: nnx.Module,
    rules: list[WeightRule],
    state_dict: Mapping[str, object],
    *,
    optional: Callable[[str], bool] = lambda k: False,
    source: str = "state dict",
    shardings: nnx.State | None = None,
) -> nnx.Module:
    """Fills ``abstract_model`` from a torch-style ``{key: tensor}`` mapping (torch or numpy).

    Keys no rule reads are an error unless ``optional(key)``; missing keys are an error.
    """
    expected = expected_params(abstract_model)
    flat = import_all(MappingSource(state_dict, source), rules, expected, optional=optional)
    return fill_abstract(abstract_model, flat, source=source, shardings=shardings)


__all__ = [
    "import_tensors",
    "import_all",
    "export_tensors",
    "check_keys",
    "check_shapes",
    "ImportReport",
    "is_float",
    "join_pieces",
    "relayout",
    "load_state_dict",
]
