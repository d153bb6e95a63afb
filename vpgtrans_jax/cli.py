"""What every command-line tool shares: absl flags, console logging, one-line errors.

Every script under ``scripts/`` and ``convert/`` defines its flags with absl (``config_flags`` for
the config-driven ones) and ends with ``cli.run(main)``. A user's mistake — any
``vpgtrans_jax.errors.VPGTransError``, a ``ValueError`` from validation, a missing or unwritable
file — prints ``error: <what> (<file/field>)`` on stderr and exits with status 2, and so does a
bad flag; ``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

from vpgtrans_jax import sharding
from vpgtrans_jax.errors import VPGTransError

_DEBUG = flags.DEFINE_boolean("debug", False, "Show the full traceback of an error.")

# Exceptions that mean "bad input", not "bug".
USER_ERRORS: tuple[type[BaseException], ...] = (
    VPGTransError,
    ValueError,
    OSError,
    FloatingPointError,
)
EXIT_USER_ERROR = 2


def setup_logging() -> None:
    """Our INFO messages on stderr; library chatter (orbax, grain, absl) only from WARNING up."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    ours = logging.getLogger("vpgtrans_jax")
    ours.setLevel(logging.INFO)
    if not ours.handlers:  # idempotent: tools may call it more than once in one process
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
    ours.propagate = False


def parse_size(text: str) -> int:
    """'5GB', '500MB', '40KB' or a byte count → bytes (a ValueError names the bad text)."""
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
    t = text.strip().upper()
    for unit, mult in units.items():
        number = t[: -len(unit)].strip()
        if t.endswith(unit) and number.replace(".", "", 1).isdigit():
            return int(float(number) * mult)
    if t.isdigit():
        return int(t)
    raise ValueError(f"not a size: {text!r} (use e.g. 5GB, 500MB, 40KB)")


def _parse_flags(argv: list[str]) -> list[str]:
    if any(a in ("--help", "-h", "--helpshort") for a in argv[1:]):
        app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl's own exits with 1
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e} (see --help)", file=sys.stderr)
    except (AttributeError, KeyError) as e:
        # config_flags resolves ``--config.a.b=v`` against the locked config outside absl's own
        # error handling, so an unknown field arrives here as a bare KeyError/AttributeError.
        print(unknown_field_line(argv, e), file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def unknown_field_line(argv: list[str], e: BaseException) -> str:
    """The one line for an override of a config field that does not exist.

    ml_collections raises ``KeyError("'name'\\nDid you mean ...")``, sometimes wrapped in an
    AttributeError; the override that names the field is found in ``argv``.
    """
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    lines = (str(e.args[0]) if e.args else str(e)).splitlines() or [""]
    field = lines[0].strip("'\"")
    close = re.search(r'Did you mean "([^"]+)"', "\n".join(lines[1:]))
    hint = f" (did you mean {close.group(1)!r}?)" if close else ""
    for arg in argv[1:]:
        name = arg.lstrip("-").split("=", 1)[0]
        prefix, _, path = name.partition(".")
        if path and prefix in flags.FLAGS and field in path.split("."):
            return f"error: --{name}: no such config field {field!r}{hint} (see --help)"
    return f"error: no such config field {field!r}{hint} (see --help)"


class _DropOrbaxErrors(logging.Filter):
    """Orbax logs a failed background write (e.g. a full disk) with its traceback, then raises
    the same error in the caller, where the tool prints it as one line; the log is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        in_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
        return not (in_orbax and record.levelno >= logging.ERROR)


_ORBAX_FILTER = _DropOrbaxErrors()


def error_line(e: BaseException) -> str:
    """The one line a user sees for ``e``."""
    text = " ".join(str(e).split()) or type(e).__name__
    return f"error: {text}"


def run(main: Callable[[list[str]], Any], *, distributed: bool = False) -> None:
    """``absl.app.run(main)`` with the shared logging and error handling (module docstring).

    ``main`` gets the positional arguments left after the flags (``argv[0]`` is the program);
    its return value is the exit status (None = 0). ``distributed``: a tool that runs on every
    process of a multi-process launch (training, evaluation) connects them first
    (``sharding.maybe_initialize_distributed``), before anything (a tiny config's preparation)
    starts JAX.
    """

    def wrapped(argv: list[str]) -> Any:
        if len(argv) > 1:
            print(f"error: unexpected arguments {argv[1:]} (see --help)", file=sys.stderr)
            return EXIT_USER_ERROR
        setup_logging()
        if not _DEBUG.value:
            logging.getLogger("absl").addFilter(_ORBAX_FILTER)  # a set: adding twice is a no-op
        try:
            if distributed:
                sharding.maybe_initialize_distributed()
            return main(argv)
        except USER_ERRORS as e:
            if _DEBUG.value:
                raise
            print(error_line(e), file=sys.stderr)
            return EXIT_USER_ERROR

    app.run(wrapped, flags_parser=_parse_flags)


__all__ = ["run", "setup_logging", "error_line", "parse_size", "USER_ERRORS", "EXIT_USER_ERROR"]
