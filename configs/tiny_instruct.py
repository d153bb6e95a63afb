"""Stage 3 (instruction tuning), tiny random LLaMA-style towers on the synthetic cc_sbu_align."""

from vpgtrans_jax.train import config_base, presets
from vpgtrans_jax.train.config_base import SYNTHETIC_PLACEHOLDER


def get_config(arg=None):
    c = config_base.base_config()
    presets.tiny(c, llm_type=arg or "llama")
    presets.instruct_stage(c)
    c.data.sources = {
        "cc_sbu_align": presets.source(
            "cc_sbu_align", 1.0, root=f"{SYNTHETIC_PLACEHOLDER}/cc_sbu_align"
        )
    }
    c.data.max_len = 96
    c.batch_size = 8
    c.optim.init_lr = 1e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_steps = 5
    c.num_steps = 40
    return c
