"""Small helpers every HF interop module shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def as_dict(hf_config: Any) -> dict[str, Any]:
    """A ``transformers`` config object or a ``config.json`` dict, as a plain dict."""
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise ValueError(f"expected a transformers config or a dict, got {type(hf_config).__name__}")
