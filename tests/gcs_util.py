"""A GCS JSON-API server on 127.0.0.1 for the ``gs://`` tests (``tests/gcs_emulator.py``).

``gcs_server()`` starts it on a free port with an in-memory bucket and points the real client
stack at it through the documented environment variables, for this process and the children
the tests start (``os.environ`` is inherited): gcsfs / ``etils.epath`` read
``STORAGE_EMULATOR_HOST``, Orbax's tensorstore ``TENSORSTORE_GCS_HTTP_URL``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "vpgtrans-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        # Recent gcsfs probes the bucket type over gRPC first (60 s timeouts on an emulator).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "EPATH_USE_TF": "false",  # etils.epath through gcsfs, never TensorFlow's GFile
    }


@contextlib.contextmanager
def gcs_server() -> Iterator[str]:
    """Yields ``gs://<bucket>`` served on 127.0.0.1 until the context exits."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "gcs_emulator.py"), f"--port={port}",
         f"--default-bucket={BUCKET}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = emulator_env(port)
    saved = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/{BUCKET}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.2)
        os.environ.update(env)
        yield f"gs://{BUCKET}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)
