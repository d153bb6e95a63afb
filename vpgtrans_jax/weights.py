"""Mapping between PyTorch (Hugging Face) tensor names and our parameter tree.

Each tower publishes a list of ``WeightRule`` (``hf_weight_map(cfg)`` in its model file); one rule
says which of our parameters is filled from which torch tensor and how the layout changes.
Per-layer rules use ``{i}`` in both names and are expanded for ``num_layers``. When a tower scans
its layers our parameters have a leading layer axis: ``layers.{i}.x`` becomes ``layers.x`` and the
per-layer tensors are stacked.

The same rules drive import (here) and export (the conversion tools).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

KINDS = ("copy", "linear", "conv", "chunk")


@dataclasses.dataclass(frozen=True)
class WeightRule:
    """One parameter ← one torch tensor.

    Attributes:
      ours: dotted path in our ``nnx.state`` (``{i}`` for the layer index).
      hf: torch state-dict key (``{i}`` for the layer index).
      kind: ``copy`` (same layout), ``linear`` (torch ``[out, in]`` → ``[in, out]``), ``conv``
        (torch OIHW → HWIO), ``chunk`` (piece ``chunk`` of ``num_chunks`` equal pieces along axis 0
        of the torch tensor, e.g. the q or v part of a fused qkv bias).
      num_layers: how many ``{i}`` to expand (None for a non-layer parameter).
      stacked: our tower scans its layers (per-layer tensors are stacked on a new axis 0).
      chunk, num_chunks: for ``kind="chunk"``.
    """

    ours: str
    hf: str
    kind: str = "copy"
    num_layers: int | None = None
    stacked: bool = False
    chunk: int = 0
    num_chunks: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown weight rule kind {self.kind!r}; expected one of {KINDS}")

    def with_prefix(self, ours_prefix: str, hf_prefix: str) -> WeightRule:
        return dataclasses.replace(self, ours=ours_prefix + self.ours, hf=hf_prefix + self.hf)


def layer_rules(
    pairs: Iterable[tuple[str, str, str]], num_layers: int, stacked: bool
) -> list[WeightRule]:
    """Builds per-layer rules from ``(ours, hf, kind)`` triples that contain ``{i}``."""
    return [WeightRule(o, h, k, num_layers=num_layers, stacked=stacked) for o, h, k in pairs]


def to_ours(kind: str, t: np.ndarray, rule: WeightRule | None = None) -> np.ndarray:
    """Torch layout → our layout for one tensor."""
    if kind == "copy":
        return t
    if kind == "linear":
        if t.ndim != 2:
            raise ValueError(f"linear weight must be 2-D, got shape {t.shape}")
        return t.T
    if kind == "conv":
        if t.ndim != 4:
            raise ValueError(f"conv weight must be 4-D (OIHW), got shape {t.shape}")
        return np.transpose(t, (2, 3, 1, 0))
    if kind == "chunk":
        assert rule is not None
        if t.shape[0] % rule.num_chunks:
            raise ValueError(f"cannot split shape {t.shape} into {rule.num_chunks} chunks")
        n = t.shape[0] // rule.num_chunks
        return t[rule.chunk * n : (rule.chunk + 1) * n]
    raise ValueError(kind)


def from_ours(kind: str, a: np.ndarray) -> np.ndarray:
    """Our layout → torch layout (``chunk`` rules are reassembled by the caller)."""
    if kind == "linear":
        return a.T
    if kind == "conv":
        return np.transpose(a, (3, 2, 0, 1))
    return a


def _set(tree: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    node = tree
    for k in keys[:-1]:
        k = int(k) if k.isdigit() else k
        node = node.setdefault(k, {})
    last = keys[-1]
    node[int(last) if last.isdigit() else last] = value


def expand(rule: WeightRule) -> list[tuple[str, str, int | None]]:
    """(our path, hf key, layer index) for every layer of a rule; our path is per-layer."""
    if rule.num_layers is None:
        return [(rule.ours, rule.hf, None)]
    return [(rule.ours.format(i=i), rule.hf.format(i=i), i) for i in range(rule.num_layers)]


def stacked_path(rule: WeightRule) -> str:
    """Our path of a stacked rule: ``a.layers.{i}.b`` → ``a.layers.b``."""
    return rule.ours.replace(".{i}", "")


def hf_to_pure_dict(
    rules: Iterable[WeightRule], get_tensor: Callable[[str], np.ndarray]
) -> tuple[dict, set[str]]:
    """Reads tensors through ``get_tensor(hf_key)`` and builds a nested dict of our arrays.

    Returns:
      (nested dict for ``nnx.replace_by_pure_dict``, the set of torch keys that were read).
    """
    tree: dict = {}
    used: set[str] = set()
    for rule in rules:
        per_layer = []
        for ours, hf, _ in expand(rule):
            t = get_tensor(hf)
            used.add(hf)
            arr = to_ours(rule.kind, np.asarray(t), rule)
            if rule.stacked:
                per_layer.append(arr)
            else:
                _set(tree, ours, arr)
        if rule.stacked:
            _set(tree, stacked_path(rule), np.stack(per_layer))
    return tree, used


def fill_abstract(
    abstract_model: nnx.Module,
    pure: Mapping,
    *,
    source: str = "checkpoint",
    shardings: nnx.State | None = None,
) -> nnx.Module:
    """Returns a concrete model: ``abstract_model``'s structure with ``pure``'s arrays.

    Every parameter must be present with the expected shape; arrays are cast to each parameter's
    declared dtype and, when ``shardings`` (``sharding.state_shardings`` of the abstract state) is
    given, placed straight onto the mesh one tensor at a time. Raises ValueError listing
    missing/unexpected paths or shape mismatches.
    """
    graphdef, state = nnx.split(abstract_model)
    flat_expected = {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}
    flat_given = _flatten(pure)
    missing = sorted(set(flat_expected) - set(flat_given))
    unexpected = sorted(set(flat_given) - set(flat_expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: parameter tree mismatch; missing {missing[:20]}"
            f"{' …' if len(missing) > 20 else ''}, unexpected {unexpected[:20]}"
            f"{' …' if len(unexpected) > 20 else ''}"
        )
    bad = []
    for path, var in flat_expected.items():
        want = var.get_value()
        got = flat_given[path]
        if tuple(np.shape(got)) != tuple(want.shape):
            bad.append(f"{path}: expected {tuple(want.shape)}, got {tuple(np.shape(got))}")
    if bad:
        raise ValueError(f"{source}: shape mismatch: " + "; ".join(bad[:20]))

    flat_shardings = (
        {".".join(map(str, p)): v for p, v in nnx.to_flat_state(shardings)} if shardings else {}
    )

    def fill(path, var):
        key = ".".join(map(str, path))
        want = var.get_value()
        host = np.asarray(flat_given[key]).astype(want.dtype)
        if key in flat_shardings:
            sh = flat_shardings[key]
            sh = sh.get_value() if isinstance(sh, nnx.Variable) else sh
            return var.replace(jax.device_put(host, sh))
        return var.replace(jnp.asarray(host))

    new_state = nnx.from_flat_state(
        [(path, fill(path, var)) for path, var in nnx.to_flat_state(state)]
    )
    return nnx.merge(graphdef, new_state)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_from_torch_state_dict(
    abstract_model: nnx.Module,
    rules: Iterable[WeightRule],
    state_dict: Mapping[str, Any],
    *,
    ignore_unused: Callable[[str], bool] = lambda k: False,
    source: str = "state dict",
    shardings: nnx.State | None = None,
) -> nnx.Module:
    """Fills ``abstract_model`` from a torch-style ``{key: tensor}`` mapping (torch or numpy).

    Torch keys that no rule reads are an error unless ``ignore_unused(key)`` is true.
    """

    def get(key: str) -> np.ndarray:
        if key not in state_dict:
            raise KeyError(f"{source}: missing tensor {key!r}")
        t = state_dict[key]
        if hasattr(t, "detach"):  # torch.Tensor
            t = t.detach().float().cpu().numpy() if t.dtype.is_floating_point else t.cpu().numpy()
        return np.asarray(t)

    rules = list(rules)
    pure, used = hf_to_pure_dict(rules, get)
    unused = sorted(k for k in state_dict if k not in used and not ignore_unused(k))
    if unused:
        raise ValueError(f"{source}: unexpected tensors no parameter uses: {unused[:20]}")
    return fill_abstract(abstract_model, pure, source=source, shardings=shardings)


def abstract(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """Builds a model without allocating its parameters (shapes and dtypes only)."""
    return nnx.eval_shape(factory)


__all__ = [
    "WeightRule",
    "layer_rules",
    "hf_to_pure_dict",
    "fill_abstract",
    "load_from_torch_state_dict",
    "abstract",
    "to_ours",
    "from_ours",
]
