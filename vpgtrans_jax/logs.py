"""Console logging for the command-line tools."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """Our INFO messages on stderr; library chatter (orbax, grain, absl) only from WARNING up."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    ours = logging.getLogger("vpgtrans_jax")
    ours.setLevel(logging.INFO)
    if not ours.handlers:  # idempotent: tools may call it more than once in one process
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
    ours.propagate = False
