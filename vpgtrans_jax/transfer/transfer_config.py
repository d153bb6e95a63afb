"""The schema of ``configs/transfer_*.py`` (``scripts/transfer.py --config=...``).

Fields::

    name                     a label for the report
    source.checkpoint        the trained source VL model (HF BLIP-2 or vpgtrans-jax model dir)
    source.llm               HF LLM directory of the source LLM ("" = source.checkpoint, which
                             works for HF BLIP-2 directories: their language_model + tokenizer)
    target.llm               HF LLM directory of the target LLM (weights + tokenizer)
    tiny.*                   offline stand-ins for source/target (tiny configs only);
                             tiny.micro.* the micro-VPGTrans world (tiny/micro_assets.py)
    converter.*              word converter data and fit (scripts/word_converter.py flags)
    stages.stage{1,2,3}      {config: stage config file ("" = skip; stage3 only), override: {...}}
    baselines                comma-separated baseline arms trained next to the transfer, with
                             stage 2's config, data and schedule: "tfs" (the VPG from scratch),
                             "inherit" (source VPG, fresh projector, no converter, no stage 1)
    baseline                 {config: "" = stage 2's file and override, override: {...}}
    seeds                    () = one run; (s1, s2, ...) = the whole transfer once per seed in
                             <workdir>/seed_<s> (the stage, baseline and converter seeds set
                             to s; tiny assets shared), with a report over the seeds
    quick, quick_override    quick=True applies quick_override (a smaller run, for tests)
    eval.run                 comma-separated tasks of eval.tasks to run ("" = none)
    eval.points              after which models: source, init (merged, untrained), stage1..3,
                             tfs_init, inherit_init (baselines are always evaluated at the end)
    eval.every_epoch         also evaluate every epoch of stage 1, 2 and the baselines (stage
                             configs in epochs); the report's speed-up curves need it
    eval.tasks.<task>        {config: configs/eval_*.py, override: {...}}
    data.*                   dataset paths, shared by the overrides through FieldReferences

The pipeline fills ``model.init/path/vpg_init`` of every stage and ``checkpoint`` of every eval;
``data.tokenizer`` / eval ``tokenizer`` default to the target LLM directory. In overrides and
converter text, ``{synthetic_dir}``, ``{assets_dir}`` and ``{workdir}`` are substituted.
"""

from __future__ import annotations

import ml_collections

from vpgtrans_jax.tiny.micro_assets import micro_config
from vpgtrans_jax.train.config_base import REQUIRED
from vpgtrans_jax.train.presets import source as data_source


def _free() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(type_safe=False)


def stage(config: str, **override) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"config": config, "override": override}, type_safe=False)


def base_transfer_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "transfer"
    c.source = ml_collections.ConfigDict({"checkpoint": REQUIRED, "llm": ""})
    c.target = ml_collections.ConfigDict({"llm": REQUIRED})
    c.tiny = ml_collections.ConfigDict(
        {
            "enabled": False,
            "assets_dir": "",
            "source_stage": "",
            "source_override": _free(),
            "target_llm_type": "",
            "target_llm_arch": _free(),
            "micro": micro_config(),
        }
    )
    c.converter = ml_collections.ConfigDict(
        {
            "text": (REQUIRED,),
            "align": "same_length",
            "loss": "cosine",
            "lr": 5.0,
            "momentum": 0.0,
            "batch_size": 4096,
            "epochs": 8,
            "heldout_fraction": 0.05,
            "seed": 0,
            "raw_text": False,
        }
    )
    c.stages = ml_collections.ConfigDict(
        {"stage1": stage(""), "stage2": stage(""), "stage3": stage("")}
    )
    c.baselines = ""
    c.baseline = stage("")
    c.seeds = ()
    c.quick = False
    c.quick_override = _free()
    c.eval = ml_collections.ConfigDict(
        {"run": "", "points": "stage1,stage2,stage3", "every_epoch": False, "tasks": _free()}
    )
    c.data = _free()
    return c


def real_data_paths(c: ml_collections.ConfigDict) -> dict[str, ml_collections.FieldReference]:
    """Required dataset paths as FieldReferences under ``c.data`` (one flag sets every use)."""
    names = (
        "coco_ann",
        "coco_images",
        "sbu_shards",
        "vg_ann",
        "vg_images",
        "laion_coco_shards",
        "coco_test_ann",
        "coco_test_gt",
        "nocaps_ann",
        "nocaps_gt",
        "nocaps_images",
        "vqav2_questions",
        "vqav2_answers",
        "vqav2_images",
        "okvqa_questions",
        "okvqa_answers",
        "okvqa_images",
        "gqa_questions",
        "gqa_images",
    )
    refs = {n: ml_collections.FieldReference(REQUIRED) for n in names}
    for n, ref in refs.items():
        c.data[n] = ref
    return refs


def warmup_sources(r: dict) -> dict:
    """Stage 1 data (original): COCO + SBU captions."""
    return {
        "coco": data_source(
            "lavis_caption", 1.0, ann_paths=r["coco_ann"], image_root=r["coco_images"]
        ),
        "sbu": data_source("webdataset", 1.0, shards=r["sbu_shards"], caption_field="caption"),
    }


def finetune_sources(r: dict) -> dict:
    """Stage 2 data (original): COCO 0.1 / VG 0.2 / LAION-COCO 0.7."""
    return {
        "coco": data_source(
            "lavis_caption", 0.1, ann_paths=r["coco_ann"], image_root=r["coco_images"]
        ),
        "vg": data_source("lavis_caption", 0.2, ann_paths=r["vg_ann"], image_root=r["vg_images"]),
        "laion_coco": data_source(
            "webdataset", 0.7, shards=r["laion_coco_shards"], caption_field="caption"
        ),
    }


def real_eval_tasks(c: ml_collections.ConfigDict, r: dict) -> None:
    """The paper's zero-shot benchmarks (COCO Caption, NoCaps, VQAv2, GQA, OK-VQA)."""
    t = c.eval.tasks
    t.coco_caption = stage(
        "configs/eval_coco_caption.py",
        data={
            "annotations": r["coco_test_ann"],
            "gt": r["coco_test_gt"],
            "image_root": r["coco_images"],
        },
    )
    t.nocaps = stage(
        "configs/eval_nocaps.py",
        data={
            "annotations": r["nocaps_ann"],
            "gt": r["nocaps_gt"],
            "image_root": r["nocaps_images"],
        },
    )
    t.vqav2 = stage(
        "configs/eval_vqav2.py",
        data={
            "annotations": r["vqav2_questions"],
            "answers": r["vqav2_answers"],
            "image_root": r["vqav2_images"],
        },
    )
    t.okvqa = stage(
        "configs/eval_okvqa.py",
        data={
            "annotations": r["okvqa_questions"],
            "answers": r["okvqa_answers"],
            "image_root": r["okvqa_images"],
        },
    )
    t.gqa = stage(
        "configs/eval_gqa.py",
        data={"annotations": r["gqa_questions"], "image_root": r["gqa_images"]},
    )
    c.eval.run = "coco_caption,nocaps,vqav2,gqa,okvqa"
