"""Stage 1 (projector warm-up), tiny random towers on synthetic data: runs offline in ~1 min."""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    c = config_base.base_config()
    presets.tiny(c, llm_type=arg or "opt")
    presets.warmup_stage(c)
    c.data.sources = presets.tiny_caption_sources()
    c.optim.init_lr = 5e-3
    c.num_epochs = 0.0
    c.num_steps = 60
    return c
