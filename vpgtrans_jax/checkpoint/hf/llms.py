"""The Hugging Face face of each LLM family: family name / HF ``model_type`` → interop module.

Each module in ``HF_LLMS`` exposes ``MODEL_TYPES``, ``LAVIS_PROJECTOR``, ``config_from_hf``,
``config_to_hf``, ``weight_rules`` and ``is_unused_key``; this table is the only place that lists
them (its keys are ``models.registry`` family names).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from vpgtrans_jax.checkpoint.hf import llama, opt
from vpgtrans_jax.checkpoint.rules import WeightRule
from vpgtrans_jax.errors import CheckpointError
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.registry import LLMConfig

HF_LLMS: dict[str, ModuleType] = {"opt": opt, "llama": llama}

# HF model_type → family name.
MODEL_TYPE_FAMILY: dict[str, str] = {t: name for name, m in HF_LLMS.items() for t in m.MODEL_TYPES}


def interop(cfg: LLMConfig) -> ModuleType:
    """The interop module of an LLM config's family."""
    return HF_LLMS[registry.family_of(cfg).name]


def family_of_model_type(model_type: Any) -> str | None:
    """The family name of a HF ``model_type`` (None when no family reads it)."""
    return MODEL_TYPE_FAMILY.get(model_type) if isinstance(model_type, str) else None


def config_from_hf(hf: Mapping[str, Any], where: str, **overrides: Any) -> LLMConfig:
    """A HF LLM ``config.json`` dict → our config of its family; one clear error otherwise."""
    if not isinstance(hf, Mapping):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    name = family_of_model_type(model_type)
    if name is None:
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not supported as an LLM; expected one of "
            f"{sorted(MODEL_TYPE_FAMILY)}"
        )
    try:
        return HF_LLMS[name].config_from_hf(hf, **overrides)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{where}: {e}") from e


def config_to_hf(cfg: LLMConfig) -> dict[str, Any]:
    """The ``config.json`` of the HF causal LM equal to ``cfg``."""
    try:
        return interop(cfg).config_to_hf(cfg)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def weight_rules(cfg: LLMConfig, ours_prefix: str = "", hf_prefix: str = "") -> list[WeightRule]:
    """Our LLM parameters (under ``ours_prefix``) ← HF causal-LM keys (under ``hf_prefix``)."""
    return [r.with_prefix(ours_prefix, hf_prefix) for r in interop(cfg).weight_rules(cfg)]


def is_unused_key(cfg: LLMConfig, key: str) -> bool:
    """HF causal-LM keys (no prefix) that no parameter legitimately reads."""
    return interop(cfg).is_unused_key(key)


__all__ = [
    "HF_LLMS",
    "MODEL_TYPE_FAMILY",
    "interop",
    "family_of_model_type",
    "config_from_hf",
    "config_to_hf",
    "weight_rules",
    "is_unused_key",
]
