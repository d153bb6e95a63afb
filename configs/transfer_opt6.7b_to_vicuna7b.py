"""VPGTrans BLIP-2 OPT-6.7B → Vicuna-7B (VL-Vicuna), with stage 3 instruction tuning.

    python scripts/transfer.py --config=configs/transfer_opt6.7b_to_vicuna7b.py --workdir=DIR \\
        --config.source.checkpoint=/ckpt/blip2-opt-6.7b --config.target.llm=/ckpt/vicuna-7b \\
        --config.data.cc_sbu_align=/data/cc_sbu_align --config.data.coco_ann=... (all paths)

As OPT-6.7B → LLaMA-7B (shared_tokens converter, stages 1 and 2), then stage 3: MiniGPT-4-style
visual instruction tuning on cc_sbu_align (800 iterations of batch 120, LR 1e-5 → 1e-6).
"""

import ml_collections

from vpgtrans_jax.train.config_base import REQUIRED
from vpgtrans_jax.train.presets import source
from vpgtrans_jax.transfer import transfer_config as tc


def get_config(arg=None):
    c = tc.base_transfer_config()
    c.name = "opt6.7b_to_vicuna7b"
    r = tc.real_data_paths(c)
    r["cc_sbu_align"] = ml_collections.FieldReference(REQUIRED)
    c.data.cc_sbu_align = r["cc_sbu_align"]
    c.converter.text = (r["coco_ann"],)
    c.converter.align = "shared_tokens"
    c.stages.stage1 = tc.stage("configs/warmup_llama.py", data={"sources": tc.warmup_sources(r)})
    c.stages.stage2 = tc.stage(
        "configs/finetune_llama.py", data={"sources": tc.finetune_sources(r)}
    )
    c.stages.stage3 = tc.stage(
        "configs/instruct_vicuna.py",
        data={"sources": {"cc_sbu_align": source("cc_sbu_align", 1.0, root=r["cc_sbu_align"])}},
    )
    tc.real_eval_tasks(c, r)
    return c
