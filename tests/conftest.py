"""Test set-up: 8 virtual CPU devices (for sharding tests) and quiet, deterministic torch."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Third-party "hypothesis" entry points (trio's, pulled in by selenium) are not needed, and trio's
# fails to load when hypothesis is first imported at the end of an xdist session.
os.environ.setdefault("HYPOTHESIS_NO_PLUGINS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="session")
def _torch_setup():
    try:
        import torch
    except ImportError:  # torch is only needed by the parity tests
        yield
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
