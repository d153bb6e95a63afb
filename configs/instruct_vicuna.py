"""Stage 3, VL-Vicuna-7B: visual instruction tuning on MiniGPT-4's cc_sbu_align (~3.4k images),
template '###Human: <Img><ImageHere></Img> {instruction} ###Assistant: ', end symbol '###', max 160
tokens, LR 1e-5 -> 1e-6, 800 iterations of batch 120. --config.model.vpg_init=<stage-2 export>,
--config.data.sources.cc_sbu_align.args.root=DIR."""

from vpgtrans_jax.train import config_base, presets


def get_config(arg=None):
    c = config_base.base_config()
    presets.instruct_stage(c)
    c.model.llm_type = "llama"
    c.data.sources = {"cc_sbu_align": presets.cc_sbu_align(1.0)}
    c.checkpoint_every = 200
    return c
