"""Stage 2, VL-LLaMA-7B: VPG + projector, 50k iterations, warm-up then cosine 1e-4 -> 5e-5,
COCO 0.1 / VG 0.2 / LAION-COCO 0.7. --config.model.vpg_init=<stage-1 workdir>/export."""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    c = config_base.base_config()
    presets.finetune_stage(c)
    c.model.llm_type = "llama"
    c.data.sources = {
        "coco": presets.coco_captions(0.1),
        "vg": presets.vg_captions(0.2),
        "laion_coco": presets.laion_coco(0.7),
    }
    c.batch_size = 1728
    c.num_steps = 50000
    c.checkpoint_every = 2000
    return c
