"""Hugging Face hub ids (``owner/name``) wherever a checkpoint directory is accepted.

A string is a hub id only when no such local path exists and it has the ``owner/name`` form, so
a local directory always wins. The id resolves to its snapshot in the local Hugging Face cache
(``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), laid out as
``huggingface_hub`` lays it: ``models--owner--name/snapshots/<revision>/``, with
``refs/main`` naming the revision. With ``HF_HUB_OFFLINE=1`` only the cache is used; otherwise a
missing snapshot is downloaded (config, safetensors and tokenizer files; ``.bin`` weights only
when the repository has no safetensors).
"""

from __future__ import annotations

import logging
import os
import re

from vpgtrans_jax.errors import CheckpointError

log = logging.getLogger(__name__)

# owner/name: letters, digits, '-', '_', '.'; no leading '-'/'.'; at most 96 characters each.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]
_TRUE = ("1", "ON", "YES", "TRUE")


def is_hub_id(path: str) -> bool:
    """Whether ``path`` is read as a hub id: no such local path, and ``owner/name`` shaped."""
    return (
        isinstance(path, str)
        and not os.path.exists(path)
        and HUB_ID.fullmatch(path) is not None
        and ".." not in path
        and "--" not in path
    )


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, but at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def cache_dir() -> str:
    """The hub cache in use now (the environment is read at call time, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def resolve(path: str) -> str:
    """``path`` unchanged, or for a hub id (``is_hub_id``) the local directory of its snapshot.

    Raises CheckpointError naming the id when it cannot be had: not cached while offline (or
    the network is unreachable), no such repository, or access refused.
    """
    if not is_hub_id(path):
        return path
    from huggingface_hub import errors, snapshot_download  # lazy: only hub ids need it

    cache, local_only = cache_dir(), offline()
    try:
        snap = snapshot_download(
            path, cache_dir=cache, local_files_only=local_only, allow_patterns=_FILES
        )
        if not local_only and not _has_safetensors(snap):  # older repositories: .bin weights
            snap = snapshot_download(path, cache_dir=cache, allow_patterns=[*_FILES, "*.bin"])
    except errors.LocalEntryNotFoundError as e:
        why = (
            "and HF_HUB_OFFLINE=1 forbids downloading it"
            if local_only
            else "and downloading it failed (is the network reachable?)"
        )
        raise CheckpointError(
            f"{path}: no such local directory, and the Hugging Face hub id {path!r} is not in "
            f"the cache {cache}, {why}. Download it where there is a network with "
            f"`hf download {path}` (same HF_HUB_CACHE), or pass a local directory"
        ) from e
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:
        raise CheckpointError(
            f"{path}: no such local directory, and the Hugging Face hub refuses {path!r} (no such "
            f"repository, or it needs a token: {type(e).__name__})"
        ) from e
    except (errors.HfHubHTTPError, errors.HFValidationError, OSError) as e:
        raise CheckpointError(
            f"{path}: no such local directory, and fetching the Hugging Face hub id {path!r} "
            f"failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from e
    log.info("%s: the Hugging Face snapshot in %s", path, snap)
    return snap


def _has_safetensors(directory: str) -> bool:
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names)


__all__ = ["HUB_ID", "is_hub_id", "offline", "cache_dir", "resolve"]
