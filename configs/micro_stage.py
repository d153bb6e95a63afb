"""A training stage of the micro-VPGTrans experiment (configs/micro_vpgtrans.py builds the rest).

  source    the source VL model: VPG + projector from random init on the source LLM, to a plateau
  warmup    VPGTrans stage 1: the projector alone, one epoch, 5x the stage-2 LR (constant)
  finetune  VPGTrans stage 2, and the baselines: VPG + projector, warm-up then cosine

The micro transfer config fills model.path, data.tokenizer and data.sources (the micro world);
the stage alone has no data.
"""

from vpgtrans_jax.train import config_base, presets

STAGE2_LR = 1e-3


def get_config(arg=None):
    c = config_base.base_config()
    kind = arg or "finetune"
    if kind == "warmup":
        presets.warmup_stage(c)
        c.optim.init_lr = 5 * STAGE2_LR  # the paper's "projector tolerates a very large LR"
        c.num_epochs = 1.0
    elif kind in ("finetune", "source"):
        presets.finetune_stage(c)
        c.optim.init_lr = STAGE2_LR
        c.optim.min_lr = STAGE2_LR / 10
        c.optim.warmup_lr = STAGE2_LR / 100
        c.optim.warmup_steps = 30
        c.num_epochs = 12.0 if kind == "source" else 8.0
    else:
        raise ValueError(f"configs/micro_stage.py: unknown stage {arg!r} (source|warmup|finetune)")
    c.model.init = "pretrained"
    for tower in ("vision", "qformer", "llm"):
        c.model[tower] = config_base.tower_knobs("float32", "float32")
    c.data.image_size = 48
    c.data.max_len = 24
    c.data.flip_prob = 0.0  # the captions say left / right
    c.data.min_scale = 1.0  # and top / bottom: no crops
    c.data.num_workers = 0
    c.batch_size = 32
    c.num_steps = 0
    c.optim.weight_decay = 0.05
    c.log_every = 16
    c.checkpoint_every = 128
    c.keep_checkpoints = 1
    c.async_checkpoint = False
    return c
