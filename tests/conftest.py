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

from tests.tiny_run import TINY_RUN, load_config, with_overrides  # noqa: E402
from vpgtrans_jax import tiny  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_synthetic_dir(tmp_path_factory) -> str:
    """The synthetic dataset and the pretrained tiny LLM of configs/tiny_*.py at the tests' size
    (``TINY_RUN``), made once per session (per xdist worker) and shared by the tests that run
    tiny stages in child processes (they find both cached: ``tiny.prepare`` only checks they
    exist)."""
    c = load_config("tiny_warmup")
    c.data.synthetic_dir = str(tmp_path_factory.mktemp("tiny") / "data")
    size = {k: TINY_RUN[k] for k in ("data.synthetic_images", "model.tiny_llm_steps")}
    return tiny.prepare(with_overrides(c, size)).data.synthetic_dir
