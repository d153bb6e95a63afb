"""Tower configs from plain fields, with one clear error for a field that does not exist."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def make_config(cls: type[C], fields: Mapping[str, Any], where: str | None = None) -> C:
    """``cls(**fields)``; an unknown field is a ValueError listing the valid ones."""
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}{cls.__name__}: unknown fields {unknown}; valid fields are {sorted(valid)}"
        )
    return cls(**fields)


def from_json_fields(cls: type[C], d: Mapping[str, Any], where: str) -> C:
    """A config from its ``dataclasses.asdict`` JSON form (JSON lists back to tuples)."""

    def untuple(v: Any) -> Any:
        if isinstance(v, list):
            return tuple(untuple(x) for x in v)
        return v

    return make_config(cls, {k: untuple(v) for k, v in d.items()}, where)
