"""Tiny offline transfer (OPT-style → LLaMA-style, wider): the whole pipeline in ~2 min on CPU.

    python scripts/transfer.py --config=configs/transfer_tiny.py --workdir=/tmp/transfer_tiny

Builds its inputs on first use (under <workdir>/assets, or tiny.assets_dir): two tiny LLMs
pretrained on the synthetic captions (source: OPT, width 64; target: LLaMA, width 96), written as
HF directories, and a source VL model trained by configs/tiny_finetune.py on the source LLM. Then
word converter → merge → stage 1 (projector only, 5x LR) → stage 2 (VPG + projector), with a
captioning evaluation on the synthetic val split after each stage.
`--config=configs/transfer_tiny.py:stage3` adds stage 3 (instruction tuning on the synthetic
cc_sbu_align, configs/tiny_instruct.py).
"""

from vpgtrans_jax.models.llama import LlamaConfig
from vpgtrans_jax.train.config_base import arch_dict
from vpgtrans_jax.transfer.transfer_config import base_transfer_config, stage


def get_config(arg=None):
    c = base_transfer_config()
    c.name = "tiny_opt_to_llama"
    c.source.checkpoint = ""  # built offline (tiny.enabled)
    c.target.llm = ""
    c.tiny.enabled = True
    c.tiny.source_stage = "configs/tiny_finetune.py:opt"
    c.tiny.source_override = {"num_steps": 80, "optim": {"init_lr": 2e-3}}
    c.tiny.target_llm_type = "llama"
    c.tiny.target_llm_arch = arch_dict(
        LlamaConfig,
        vocab_size=512,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=192,
        max_position_embeddings=128,
    )
    c.converter.text = ("{synthetic_dir}/annotations/caption_train.json",)
    c.converter.batch_size = 256  # the tiny vocabulary gives a few thousand token pairs
    c.converter.epochs = 20
    c.converter.lr = 5.0
    # Stage 1 uses 5x stage 2's LR (1e-3 in tiny_finetune.py), as the original recipe.
    c.stages.stage1 = stage("configs/tiny_warmup.py:llama", num_steps=40, optim={"init_lr": 5e-3})
    c.stages.stage2 = stage("configs/tiny_finetune.py:llama", num_steps=40)
    if arg == "stage3":
        c.stages.stage3 = stage("configs/tiny_instruct.py:llama", num_steps=20)
    elif arg:
        raise ValueError(f"configs/transfer_tiny.py: unknown argument {arg!r} (expected 'stage3')")
    c.eval.run = "coco_caption"
    c.eval.points = "stage1,stage2,stage3"  # add "init": the merged, untrained model
    c.eval.tasks.coco_caption = stage(
        "configs/eval_coco_caption.py",
        limit=16,
        batch_size=16,
        num_workers=2,
        data={
            "annotations": "{synthetic_dir}/annotations/caption_val.json",
            "gt": "{synthetic_dir}/annotations/caption_val_gt.json",
            "image_root": "{synthetic_dir}/images",
        },
        generation={"num_beams": 2, "max_new_tokens": 16, "min_new_tokens": 2},
    )
    return c
