"""Stage 2, VL-LLaMA-7B: VPG + projector, 50k iterations, warm-up then cosine 1e-4 -> 5e-5,
COCO 0.1 / VG 0.2 / LAION-COCO 0.7. --config.model.vpg_init=<stage-1 workdir>/export."""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    return presets.real_finetune(config_base.base_config(), "llama")
