"""The parts of a VL model's parameter tree, named once.

A *part* is a top-level ``VLModel`` child: ``vision`` (frozen ViT), ``ln_vision``,
``query_tokens``, ``qformer``, ``projector`` and ``llm`` (frozen decoder). The four middle ones
form the visual prompt generator's trainable side (``VPG_PARTS``). *Towers* name groups of parts.
Checkpoints store and reference parameters per part; a training stage chooses its trainable
parts from ``PARTS``.
"""

from __future__ import annotations

from collections.abc import Iterable

PARTS = ("vision", "ln_vision", "query_tokens", "qformer", "projector", "llm")
VPG_PARTS = ("ln_vision", "query_tokens", "qformer", "projector")
TOWERS = {"vision": ("vision",), "vpg": VPG_PARTS, "llm": ("llm",)}
# Tower-config fields that change how a tower is computed or laid out, not what it holds.
RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl")


def expand_parts(names: Iterable[str]) -> list[str]:
    """Part and tower names → part names (in ``PARTS`` order). Raises ValueError on others."""
    out: set[str] = set()
    for n in names:
        if n in TOWERS:
            out.update(TOWERS[n])
        elif n in PARTS:
            out.add(n)
        else:
            raise ValueError(
                f"unknown part or tower {n!r}; parts are {list(PARTS)}, towers {list(TOWERS)}"
            )
    return [p for p in PARTS if p in out]


def part_of(path: str) -> str:
    """Our dotted parameter path → its part (first component)."""
    return path.split(".", 1)[0]


__all__ = ["PARTS", "VPG_PARTS", "TOWERS", "RUNTIME_FIELDS", "expand_parts", "part_of"]
