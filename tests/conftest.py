"""Test set-up: 8 virtual CPU devices (for sharding tests) and quiet, deterministic torch."""

import importlib.util
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


# The size of the tiny stages that the end-to-end tests run (data + pretrained tiny LLM).
TINY_IMAGES = 64
TINY_LLM_STEPS = 60


@pytest.fixture(scope="session")
def tiny_synthetic_dir(tmp_path_factory) -> str:
    """The synthetic dataset and the pretrained tiny LLM of configs/tiny_*.py, made once per
    session (per xdist worker) and shared by the tests that run tiny stages in child processes
    or in buckets (they find both cached: ``tiny.prepare`` only checks they exist)."""
    spec = importlib.util.spec_from_file_location(
        "tiny_warmup_config",
        os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_warmup.py"),
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.synthetic_dir = str(tmp_path_factory.mktemp("tiny") / "data")
    c.data.synthetic_images = TINY_IMAGES
    c.model.tiny_llm_steps = TINY_LLM_STEPS
    return tiny.prepare(c).data.synthetic_dir
