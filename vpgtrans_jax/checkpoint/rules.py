"""Rules between PyTorch-style tensor names (Hugging Face, LAVIS) and our parameter paths.

Each tower's Hugging Face face (``checkpoint.hf.<tower>.weight_rules(cfg)``) is a list of
``WeightRule``; one rule says which of our parameters is filled from which torch tensor and how
the layout changes. Per-layer rules use ``{i}`` in both names and are expanded for
``num_layers``. When a tower scans its layers our parameters have a leading layer axis:
``layers.{i}.x`` becomes ``layers.x`` and the per-layer tensors are stacked.

The same rules drive import and export (``checkpoint.engine``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

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


def torch_shape(rule: WeightRule, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The torch tensor shape that ``to_ours`` turns into one layer's ``ours`` shape."""
    if rule.kind == "linear" and len(ours) == 2:
        return (ours[1], ours[0])
    if rule.kind == "conv" and len(ours) == 4:
        return (ours[3], ours[2], ours[0], ours[1])
    if rule.kind == "chunk" and ours:
        return (ours[0] * rule.num_chunks, *ours[1:])
    return tuple(ours)


def expand(rule: WeightRule) -> list[tuple[str, str, int | None]]:
    """(our path, hf key, layer index) for every layer of a rule; our path is per-layer."""
    if rule.num_layers is None:
        return [(rule.ours, rule.hf, None)]
    return [(rule.ours.format(i=i), rule.hf.format(i=i), i) for i in range(rule.num_layers)]


def stacked_path(rule: WeightRule) -> str:
    """Our path of a stacked rule: ``a.layers.{i}.b`` → ``a.layers.b``."""
    return rule.ours.replace(".{i}", "")


__all__ = [
    "KINDS",
    "WeightRule",
    "layer_rules",
    "to_ours",
    "from_ours",
    "torch_shape",
    "expand",
    "stacked_path",
]
