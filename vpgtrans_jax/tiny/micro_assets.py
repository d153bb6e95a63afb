"""The micro-VPGTrans experiment's inputs, built offline: the stand-ins of a real transfer's.

A real transfer starts from a trained source VL-LLM (BLIP-2 OPT-2.7B: a frozen EVA ViT, a trained
VPG, a frozen OPT) and the target LLM's Hugging Face directory. ``ensure_micro_assets`` builds
the same things for the micro world, each once and atomically (a rerun continues)::

    world/           the synthetic world (``world.py``): images, captions, VQA, two tokenizers
    vision/          the ViT pretrained on the scene attributes (``vision.py``) and its
                     linear-probe accuracy on the held-out evaluation images
    src_llm/         the smaller OPT-style source LLM, pretrained on packed text (HF directory)
    tgt_llm/         the larger LLaMA-style target LLM, other tokenizer (HF directory)
    source_init/     the source VL model before training: pretrained ViT + random VPG + source LLM
    source_vl/       its training to a plateau (``train()``, the given stage config);
                     ``source_vl/export`` is the transfer's source checkpoint
    micro_assets.json  what each piece measured and cost (written last: the marker)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.checkpoint.fill import flat_params
from vpgtrans_jax.models import registry
from vpgtrans_jax.models.qformer import QFormerConfig
from vpgtrans_jax.models.vit import VisionConfig, VisionTransformer
from vpgtrans_jax.models.vl_model import VLConfig
from vpgtrans_jax.tiny import packed_lm, vision, world
from vpgtrans_jax.train.builder import random_vpg
from vpgtrans_jax.train.config_base import arch_dict
from vpgtrans_jax.train.loop import train
from vpgtrans_jax.train.presets import source as data_source

MARKER = "micro_assets.json"


def micro_config() -> ml_collections.ConfigDict:
    """``config.tiny.micro``: every setting of the micro assets (``enabled`` turns them on)."""
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "world": world.world_config(),
            "vision": vision.vision_config(),
            "src_llm": packed_lm.llm_config("src"),
            "tgt_llm": packed_lm.llm_config("tgt"),
            "vpg": {
                "qformer": arch_dict(
                    QFormerConfig,
                    hidden_size=64,
                    num_layers=2,
                    num_heads=4,
                    intermediate_size=128,
                    encoder_hidden_size=64,
                    cross_attention_frequency=1,
                ),
                "num_query_tokens": 8,
                "seed": 0,
            },
        }
    )


def asset_paths(out_dir: str) -> dict[str, str]:
    """Where ``ensure_micro_assets`` puts each piece (known before anything is built)."""
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    return {
        "synthetic_dir": os.path.join(out_dir, "world"),
        "vision": os.path.join(out_dir, "vision"),
        "source_llm": os.path.join(out_dir, "src_llm"),
        "target_llm": os.path.join(out_dir, "tgt_llm"),
        "source_init": os.path.join(out_dir, "source_init"),
        "source_checkpoint": os.path.join(out_dir, "source_vl", "export"),
        "marker": os.path.join(out_dir, MARKER),
    }


def caption_source(synthetic_dir: str) -> ml_collections.ConfigDict:
    """The VL training data of the micro world (``data.sources`` entry)."""
    return data_source(
        "lavis_caption",
        1.0,
        ann_paths=os.path.join(synthetic_dir, "annotations", "caption_train_micro.json"),
        image_root=os.path.join(synthetic_dir, "images"),
    )


def _plain(value: Any) -> Any:
    """JSON round trip (tuples → lists), so settings compare equal to what was stored."""
    return json.loads(json.dumps(value, default=str))


def check_settings(stored: Mapping[str, Any], want: Any, where: str) -> None:
    """Refuses to reuse an asset built with other settings (one clear line naming them)."""
    have, want = stored.get("settings"), _plain(want)
    if have == want:
        return
    keys = sorted(k for k in set(have or {}) | set(want or {})
                  if (have or {}).get(k) != (want or {}).get(k))  # fmt: skip
    raise ValueError(
        f"{where} was built with other settings (differing: {keys or 'all'}); delete it, or "
        "use another workdir / config.tiny.assets_dir, to build it with these"
    )


class _Phases:
    """Wall and CPU time per build phase (CPU: this process, all threads, plus children)."""

    def __init__(self):
        self.times: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0, c0 = time.time(), _cpu()
        result = fn()
        self.times[name] = {"wall_time_s": time.time() - t0, "cpu_time_s": _cpu() - c0}
        return result


def _cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _ensure_vision(out: str, mc: ml_collections.ConfigDict, synthetic: str) -> dict[str, Any]:
    facts_path = os.path.join(out, "vision.json")
    settings = {"vision": mc.vision.to_dict(), "world": mc.world.to_dict()}
    if os.path.isfile(facts_path):
        with open(facts_path) as f:
            facts = json.load(f)
        check_settings(facts, settings, out)
        return facts
    vit, facts = vision.pretrain_vit(mc.vision, mc.world.max_objects)
    facts["settings"] = _plain(settings)
    images = world.split_image_ids(synthetic, "val")
    wseed, max_obj = mc.world.seed, mc.world.max_objects
    heldout = vision.load_split(
        images, lambda i: world.scene_of(wseed, i, max_obj), vit.config.image_size, max_obj
    )
    facts["probe"] = vision.linear_probe(vit, mc.vision, max_obj, heldout)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.savez(os.path.join(tmp, "params.npz"), **flat_params(vit))
    with open(os.path.join(tmp, "vision.json"), "w") as f:
        json.dump(facts, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return facts


def _source_init(paths: dict[str, str], mc: ml_collections.ConfigDict) -> None:
    """The source VL model before training: stores the pretrained ViT and a random VPG,
    references the source LLM."""
    if model_dir.is_model_dir(paths["source_init"]):
        return
    llm_family = registry.family(mc.src_llm.type)
    cfg = VLConfig(
        vision=VisionConfig(**mc.vision.arch.to_dict()),
        qformer=QFormerConfig(**mc.vpg.qformer.to_dict()),
        llm=llm_family.config_cls(**mc.src_llm.arch.to_dict()),
        num_query_tokens=mc.vpg.num_query_tokens,
    )
    params = random_vpg(cfg, mc.vpg.seed)
    with np.load(os.path.join(paths["vision"], "params.npz")) as vit:
        params.update({f"vision.{k}": vit[k] for k in vit.files})
    _check_vit(cfg.vision, params)
    model_dir.save_model_dir(
        params, paths["source_init"], cfg, sources={"llm": paths["source_llm"]},
        origins={"vision": "vpgtrans_jax.tiny.vision (attribute pretraining)",
                 "vpg": f"random (seed {mc.vpg.seed})"},
        info={"stage": "micro source init"}, overwrite=True,
        created_by="vpgtrans_jax.tiny.micro_assets",
    )  # fmt: skip


def _check_vit(cfg: VisionConfig, params: dict[str, np.ndarray]) -> None:
    want = flat_params(nnx.eval_shape(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0))))
    have = {k[len("vision.") :] for k in params if k.startswith("vision.")}
    if have != set(want):
        raise ValueError(
            f"the pretrained ViT in vision/ does not match config.tiny.micro.vision.arch "
            f"(missing {sorted(set(want) - have)[:5]}); delete the assets' vision/ to rebuild"
        )


def source_stage_config(
    stage: ml_collections.ConfigDict, paths: dict[str, str]
) -> ml_collections.ConfigDict:
    """The source VL training config: ``stage`` with the micro model, tokenizer and data."""
    sc = ml_collections.ConfigDict(stage.to_dict())
    sc.model.init = "pretrained"
    sc.model.path = paths["source_init"]
    sc.model.vpg_init = ""
    sc.data.tokenizer = paths["source_llm"]
    sc.data.synthetic_dir = ""
    sc.data.sources = {"micro_captions": caption_source(paths["synthetic_dir"])}
    return sc


def _settings(mc: ml_collections.ConfigDict, source_stage: ml_collections.ConfigDict) -> dict:
    return {"micro": {k: v for k, v in mc.to_dict().items() if k != "enabled"},
            "source_stage": source_stage.to_dict()}  # fmt: skip


def verify_assets(
    out_dir: str, mc: ml_collections.ConfigDict, source_stage: ml_collections.ConfigDict
) -> None:
    """Raises ValueError when ``out_dir`` holds finished assets built with other settings."""
    marker = asset_paths(out_dir)["marker"]
    if os.path.isfile(marker):
        with open(marker) as f:
            check_settings(json.load(f), _settings(mc, source_stage), out_dir)


def ensure_micro_assets(
    out_dir: str,
    mc: ml_collections.ConfigDict,
    source_stage: ml_collections.ConfigDict,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Builds (or finds) every micro asset under ``out_dir``; returns ``micro_assets.json``."""
    paths = asset_paths(out_dir)
    settings = _settings(mc, source_stage)
    if os.path.isfile(paths["marker"]):
        with open(paths["marker"]) as f:
            facts = json.load(f)
        check_settings(facts, settings, out_dir)
        return facts
    phases = _Phases()
    log("micro assets: the world")
    world_facts = phases.run("world", lambda: world.ensure_world(paths["synthetic_dir"], mc.world))
    check_settings(world_facts, mc.world.to_dict(), paths["synthetic_dir"])
    log("micro assets: pretraining the vision encoder and probing it")
    vision_facts = phases.run(
        "vision", lambda: _ensure_vision(paths["vision"], mc, paths["synthetic_dir"])
    )
    with open(os.path.join(paths["synthetic_dir"], "lm_corpus.json")) as f:
        corpus = json.load(f)
    llm_facts = {}
    for side, key in (("src", "source_llm"), ("tgt", "target_llm")):
        log(f"micro assets: pretraining the {key.replace('_', ' ')} on packed text")
        tok = os.path.join(paths["synthetic_dir"], "tokenizers", side)
        lc = mc[f"{side}_llm"]
        llm_facts[side] = phases.run(
            f"{side}_llm", lambda p=paths[key], lc=lc, t=tok: packed_lm.ensure_llm(p, lc, t, corpus)
        )
        check_settings(llm_facts[side], lc.to_dict(), paths[key])
    phases.run("source_init", lambda: _source_init(paths, mc))
    sc = source_stage_config(source_stage, paths)
    summary: dict[str, Any] = {}
    if not model_dir.is_model_dir(paths["source_checkpoint"]):
        log("micro assets: training the source VL model")
        summary = phases.run(
            "source_vl",
            lambda: train(sc, os.path.dirname(paths["source_checkpoint"]), progress=progress),
        )
        if summary.get("export") is None:
            raise RuntimeError(
                f"the source VL training stopped early ({summary.get('stopped_by')}); "
                "rerun to resume it"
            )
    facts = {
        "settings": _plain(settings),
        "paths": {k: v for k, v in paths.items() if k != "marker"},
        "world": world_facts,
        "vision": vision_facts,
        "llms": llm_facts,
        "source_training": {
            k: summary.get(k)
            for k in ("steps", "samples", "final_loss", "wall_time_s", "dataset_size")
        }
        | {"epochs": sc.num_epochs, "lr": sc.optim.init_lr, "loss_by_epoch": _loss_by_epoch(
            os.path.dirname(paths["source_checkpoint"]), summary.get("dataset_size"),
            sc.batch_size)},
        "phases": phases.times,
        "jax_devices": [str(d) for d in jax.devices()][:1],
    }  # fmt: skip
    with open(paths["marker"] + ".tmp", "w") as f:
        json.dump(facts, f, indent=1, default=str)
    os.replace(paths["marker"] + ".tmp", paths["marker"])
    return facts


def _loss_by_epoch(workdir: str, dataset_size: int | None, batch: int) -> list[list[float]]:
    """``[[epoch, mean training loss over the logged steps of that epoch], ...]`` from the
    stage's ``metrics.jsonl``: the plateau shows as a flat tail."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not dataset_size or not os.path.isfile(path):
        return []
    per: dict[int, list[float]] = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row and "step" in row:
                epoch = (row["step"] - 1) * batch // dataset_size + 1
                per.setdefault(epoch, []).append(float(row["loss"]))
    return [[e, float(np.mean(v))] for e, v in sorted(per.items())]
