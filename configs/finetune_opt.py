"""Stage 2, OPT-6.7B target: VPG (Q-Former, query tokens, ln_vision) + projector, LLM and ViT
frozen; warm-up then cosine 1e-4 -> 5e-5; COCO 0.1 / VG 0.2 / LAION-COCO 0.7. Start from stage 1
with --config.model.vpg_init=<stage-1 workdir>/export."""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    return presets.real_finetune(config_base.base_config(), "opt")
