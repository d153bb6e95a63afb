"""The error types a user can cause, one base class for all of them.

Every error raised for bad input — a config field, a checkpoint file, a data file, a request —
derives from ``VPGTransError``, carries one line that names the file/field/value and what was
expected, and is shown by the command-line tools as ``error: <message>`` (``vpgtrans_jax.cli``).
Anything else escaping a tool is a bug and keeps its traceback.
"""

from __future__ import annotations


class VPGTransError(Exception):
    """Base class of user-facing errors (bad input, not a bug)."""


class ConfigError(VPGTransError, ValueError):
    """A config field has a missing, unknown or invalid value."""


class CheckpointError(VPGTransError, ValueError):
    """A checkpoint file or directory is missing, truncated, corrupt or of the wrong kind."""


class DataError(VPGTransError, ValueError):
    """A dataset file, annotation or image cannot be used."""


class BadDataError(DataError, RuntimeError):
    """Too many samples of a data stream are unreadable (each bad one is skipped and counted)."""


class MissingDependencyError(VPGTransError, RuntimeError):
    """An optional tool or package the request needs is not installed (Java, spaCy, ...)."""


class TrainingError(VPGTransError, RuntimeError):
    """Training cannot continue (e.g. too many consecutive non-finite steps)."""


class ChatInputError(VPGTransError, ValueError):
    """A chat request cannot be served (an image too large or unreadable, an empty or too long
    message, a model without a tokenizer); the chat goes on after it."""


__all__ = [
    "VPGTransError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "BadDataError",
    "MissingDependencyError",
    "TrainingError",
    "ChatInputError",
]
