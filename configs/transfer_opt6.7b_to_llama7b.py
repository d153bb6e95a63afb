"""VPGTrans BLIP-2 OPT-6.7B → LLaMA-7B (VL-LLaMA).

    python scripts/transfer.py --config=configs/transfer_opt6.7b_to_llama7b.py --workdir=DIR \\
        --config.source.checkpoint=/ckpt/blip2-opt-6.7b --config.target.llm=/ckpt/llama-7b \\
        --config.data.coco_ann=... (every config.data.* path)

The tokenizers differ, so the word converter aligns the overlapping tokens (shared_tokens) →
merge → stage 1 (projector only, constant 5e-4, 1 epoch of COCO + SBU) → stage 2 (VPG +
projector, 50k iterations, COCO 0.1 / VG 0.2 / LAION-COCO 0.7), evaluated after each stage.
"""

from vpgtrans_jax.transfer import transfer_config as tc


def get_config(arg=None):
    c = tc.base_transfer_config()
    c.name = "opt6.7b_to_llama7b"
    r = tc.real_data_paths(c)
    c.converter.text = (r["coco_ann"],)
    c.converter.align = "shared_tokens"
    c.stages.stage1 = tc.stage("configs/warmup_llama.py", data={"sources": tc.warmup_sources(r)})
    c.stages.stage2 = tc.stage(
        "configs/finetune_llama.py", data={"sources": tc.finetune_sources(r)}
    )
    tc.real_eval_tasks(c, r)
    return c
