"""Running the command-line tools the way a user does: a child Python process from the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(
    script: str,
    *args: str,
    timeout: float = 600,
    preexec_fn: Callable[[], None] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess:
    """``python <repo>/<script> <args>``; stdout and stderr captured as text.

    ``preexec_fn`` runs in the child before the script (e.g. to set a resource limit);
    ``stdin`` is typed into it (default: no input).
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=preexec_fn,
        **({"input": stdin} if stdin is not None else {}),
    )
