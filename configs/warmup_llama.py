"""Stage 1, BLIP-2 OPT-6.7B -> LLaMA-7B (VL-LLaMA): projector warm-up (projector only, constant
5e-4, 1 epoch of COCO + SBU). Required: --config.model.path (BLIP-2 VPG with the LLaMA-7B LLM,
e.g. from convert/lavis_to_orbax.py --llm LLAMA_DIR), --config.model.vpg_init
(scripts/merge_projector.py output), --config.data.tokenizer=LLAMA_DIR, dataset paths."""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    return presets.real_warmup(config_base.base_config(), "llama")
