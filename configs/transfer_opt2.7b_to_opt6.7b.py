"""VPGTrans BLIP-2 OPT-2.7B → OPT-6.7B (the paper's headline transfer).

    python scripts/transfer.py --config=configs/transfer_opt2.7b_to_opt6.7b.py --workdir=DIR \\
        --config.source.checkpoint=/ckpt/blip2-opt-2.7b --config.target.llm=/ckpt/opt-6.7b \\
        --config.data.coco_ann=coco_karpathy_train.json --config.data.coco_images=/data/coco \\
        --config.data.sbu_shards=/data/sbu/{00000..00999}.tar ... (every config.data.* path)

Word converter on COCO captions (same tokenizer: same_length alignment uses every caption) →
merge → stage 1 (projector only, constant 5e-4 = 5x, 1 epoch of COCO + SBU) → stage 2 (VPG +
projector, COCO 0.1 / VG 0.2 / LAION-COCO 0.7) with the paper's zero-shot evaluations after each
stage. Drop benchmarks with --config.eval.run=coco_caption,vqav2.
"""

from vpgtrans_jax.transfer import transfer_config as tc


def get_config(arg=None):
    c = tc.base_transfer_config()
    c.name = "opt2.7b_to_opt6.7b"
    r = tc.real_data_paths(c)
    c.converter.text = (r["coco_ann"],)
    c.converter.align = "same_length"
    c.stages.stage1 = tc.stage("configs/warmup_opt.py", data={"sources": tc.warmup_sources(r)})
    c.stages.stage2 = tc.stage("configs/finetune_opt.py", data={"sources": tc.finetune_sources(r)})
    tc.real_eval_tasks(c, r)
    return c
