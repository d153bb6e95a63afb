"""Config plumbing of the transfer pipeline: config files, nested overrides, placeholders."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from flax import traverse_util

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_repo_path(path: str) -> str:
    """``path`` if it exists (absolute or relative to the cwd), else under the repo root."""
    path = os.path.expanduser(path)
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else os.path.abspath(path)


def load_config_file(spec: str, *, what: str) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file; ``spec`` is ``path.py`` or ``path.py:arg``."""
    path, _, arg = spec.partition(":")
    full = resolve_repo_path(path)
    if not os.path.isfile(full):
        raise ValueError(f"{what}: config file {path!r} not found (looked at {full})")
    name = "_transfer_cfg_" + os.path.basename(full).replace(".", "_")
    module_spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{what}: {full} defines no get_config()")
    return module.get_config(arg or None)


def to_plain(value: Any) -> Any:
    """ConfigDicts / FieldReferences → plain dicts and values (tuples become lists)."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, ml_collections.FieldReference):
        return to_plain(value.get())
    return value


def apply_overrides(
    cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any], *, what: str
) -> ml_collections.ConfigDict:
    """Sets every leaf of the nested ``overrides`` in ``cfg``; unknown keys are errors.

    New entries are allowed only inside ``data.sources`` (a free-form name → source map).
    """
    # Dict values are nested fields (an empty one sets nothing); lists stay values.
    for key, value in traverse_util.flatten_dict(to_plain(overrides), sep=".").items():
        node = cfg
        *parents, last = key.split(".")
        for i, p in enumerate(parents):
            if p not in node:
                if ".".join(parents[: i + 1]).startswith("data.sources."):
                    node[p] = ml_collections.ConfigDict(type_safe=False)
                else:
                    raise ValueError(f"{what}: override {key!r}: no field {p!r} in the config")
            node = node[p]
        in_sources = key.startswith("data.sources.")
        if last not in node and not in_sources:
            raise ValueError(f"{what}: override {key!r}: no field {last!r} in the config")
        if isinstance(value, list):
            value = tuple(value)
        try:
            node[last] = value
        except TypeError as e:  # ConfigDict refuses a value of another type
            raise ValueError(f"{what}: override {key!r}={value!r}: {e}") from None
    return cfg


def substitute(value: Any, mapping: Mapping[str, str]) -> Any:
    """Replaces ``{name}`` placeholders of ``mapping`` in every string of a nested value."""
    if isinstance(value, str):
        for name, repl in mapping.items():
            value = value.replace("{" + name + "}", repl)
        return value
    if isinstance(value, Mapping):
        return {k: substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(substitute(v, mapping) for v in value)
    return value


def find_required(tree: Any, marker: str, prefix: str = "") -> list[str]:
    """Dotted keys of ``tree`` (plain nested dicts/lists) whose value is ``marker``."""
    if isinstance(tree, Mapping):
        return [k for key, v in tree.items() for k in find_required(v, marker, f"{prefix}{key}.")]
    if isinstance(tree, list | tuple):
        return [k for i, v in enumerate(tree) for k in find_required(v, marker, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if tree == marker else []
