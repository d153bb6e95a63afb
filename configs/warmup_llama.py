"""Stage 1, BLIP-2 OPT-6.7B -> LLaMA-7B (VL-LLaMA): projector warm-up (projector only, constant
5e-4, 1 epoch of COCO + SBU). Required: --config.model.path (BLIP-2 VPG with the LLaMA-7B LLM,
e.g. from convert/lavis_to_orbax.py --llm LLAMA_DIR), --config.model.vpg_init
(scripts/merge_projector.py output), --config.data.tokenizer=LLAMA_DIR, dataset paths."""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    c = config_base.base_config()
    presets.warmup_stage(c)
    c.model.llm_type = "llama"
    c.data.sources = {"coco": presets.coco_captions(1.0), "sbu": presets.sbu_captions(1.0)}
    c.batch_size = 1728
    c.checkpoint_every = 1000
    return c
