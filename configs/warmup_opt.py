"""Stage 1, BLIP-2 OPT-2.7B -> OPT-6.7B: projector warm-up (projector only, constant 5x LR, 1 epoch
of COCO + SBU). Required: --config.model.path (a BLIP-2 OPT-6.7B-shaped model directory, e.g.
from convert/lavis_to_orbax.py), --config.model.vpg_init (scripts/merge_projector.py output),
--config.data.tokenizer, and the dataset paths under --config.data.sources.*.args.*."""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    return presets.real_warmup(config_base.base_config(), "opt")
