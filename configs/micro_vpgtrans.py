"""Micro-VPGTrans: the paper's experiment at micro scale, offline, from one command.

    python scripts/transfer.py --config=configs/micro_vpgtrans.py --workdir=/tmp/micro
    python scripts/transfer.py --config=configs/micro_vpgtrans.py --workdir=/tmp/micro_quick \\
        --config.quick=True                       # 1 seed, a small world, 2 epochs: ~3 min

Builds (once, under <workdir>/assets; vpgtrans_jax/tiny/micro_assets.py):
- a synthetic world where answering needs the image (shapes with colour, size, position and
  count on a background; 5 captions and 3 VQA questions per image; 520 held-out eval images);
- a small ViT pretrained on the scene attributes, then frozen (its linear-probe accuracy on the
  held-out images is in the report);
- two LLMs of different size and tokenizer, each pretrained on packed text: the source OPT-style
  (width 64, 2 layers, byte-level BPE) and the target LLaMA-style (width 96, 3 layers,
  SentencePiece-style BPE);
- the source VL model (VPG + projector on the source LLM), trained to a plateau.

Then, for each of config.seeds: VPGTrans on the target (word converter → merged projector →
stage 1, projector only at 5x LR, 1 epoch → stage 2, 8 epochs) and the two baselines with stage
2's recipe: TFS (the VPG from scratch) and VPG-inherit (source VPG, fresh projector). Every
epoch of every arm is evaluated (CIDEr on the held-out captions, VQA accuracy on 500 held-out
questions), and the report gives the paper's speed-up per seed, its median and spread, and the
figures. Everything runs through the code of a real transfer (train loop, evaluator, converter,
merge).
"""

from vpgtrans_jax.transfer.transfer_config import base_transfer_config, stage

_DATA = {
    "synthetic_dir": "",
    "sources": {
        "micro_captions": {
            "kind": "lavis_caption",
            "weight": 1.0,
            "args": {
                "ann_paths": "{synthetic_dir}/annotations/caption_train_micro.json",
                "image_root": "{synthetic_dir}/images",
            },
        }
    },
}


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/micro_vpgtrans.py takes no argument (got {arg!r})")
    c = base_transfer_config()
    c.name = "micro_vpgtrans"
    c.source.checkpoint = ""  # built offline (tiny.micro)
    c.target.llm = ""
    c.tiny.enabled = True
    c.tiny.micro.enabled = True
    c.tiny.source_stage = "configs/micro_stage.py:source"
    c.tiny.target_llm_type = c.tiny.micro.tgt_llm.type
    c.seeds = (0, 1, 2)

    # Different tokenizers: pair the tokens both vocabularies share (the paper's recipe).
    c.converter.text = ("{synthetic_dir}/annotations/caption_train.json",)
    c.converter.align = "shared_tokens"
    c.converter.batch_size = 256
    c.converter.epochs = 8  # the original's; ~120k token pairs an epoch here

    c.stages.stage1 = stage("configs/micro_stage.py:warmup", data=_DATA)
    c.stages.stage2 = stage("configs/micro_stage.py:finetune", data=_DATA)
    c.baselines = "tfs,inherit"  # with stage 2's config: same data, schedule and evaluations

    c.eval.run = "coco_caption,vqav2"
    # inherit_init (source VPG, random projector) is the no-converter control of init (merged).
    c.eval.points = "source,init,stage1,stage2,inherit_init"
    c.eval.every_epoch = True
    common = {"num_workers": 2, "max_prompt_len": 24}
    c.eval.tasks.coco_caption = stage(
        "configs/eval_coco_caption.py",
        batch_size=260,
        data={
            "annotations": "{synthetic_dir}/annotations/caption_val.json",
            "gt": "{synthetic_dir}/annotations/caption_val_gt.json",
            "image_root": "{synthetic_dir}/images",
        },
        # Greedy and CIDEr + BLEU-4 only: ~100 evaluations per run (beam 5 / METEOR cost more).
        generation={"num_beams": 1, "max_new_tokens": 24, "min_new_tokens": 2},
        scoring={"metrics": "Bleu_4,CIDEr"},
        **common,
    )
    c.eval.tasks.vqav2 = stage(
        "configs/eval_vqav2.py",
        batch_size=250,
        limit=500,
        data={
            "annotations": "{synthetic_dir}/annotations/vqa_val_questions.json",
            "answers": "{synthetic_dir}/annotations/vqa_val_annotations.json",
            "image_root": "{synthetic_dir}/images",
            "image_pattern": "val/{image_id:06d}.jpg",
        },
        generation={"num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 1},
        **common,
    )

    # --config.quick=True: one seed of a small world, two epochs per arm (the tests' run); the
    # LR warm-up shrinks with the runs (a few steps an epoch).
    c.quick_override = {
        "seeds": (0,),
        "tiny": {
            "source_override": {"num_epochs": 3.0, "optim": {"warmup_steps": 4}},
            "micro": {
                "world": {"num_images": 300, "val_fraction": 0.2, "test_fraction": 0.02},
                "vision": {
                    "steps": 40,
                    "pool_images": 256,
                    "probe_images": 128,
                    "probe_steps": 30,
                },  # fmt: skip
                "src_llm": {"steps": 40},
                "tgt_llm": {"steps": 40},
            },
        },
        "stages": {"stage2": {"override": {"num_epochs": 2.0, "optim": {"warmup_steps": 4}}}},
        "eval": {
            "tasks": {
                "coco_caption": {"override": {"batch_size": 30, "limit": 30}},
                "vqav2": {"override": {"batch_size": 30, "limit": 30}},
            }
        },
    }
    return c
