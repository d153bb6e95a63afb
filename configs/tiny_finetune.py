"""Stage 2 (VPG + projector fine-tuning), tiny random towers on synthetic data.

Pass the stage-1 export to start from it:
  --config=configs/tiny_finetune.py --config.model.vpg_init=/tmp/tiny_warmup/export
"""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    c = config_base.base_config()
    presets.tiny(c, llm_type=arg or "opt")
    presets.finetune_stage(c)
    c.data.sources = presets.tiny_caption_sources()
    c.optim.init_lr = 1e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_lr = 1e-5
    c.optim.warmup_steps = 10
    c.num_epochs = 0.0
    c.num_steps = 60
    return c
