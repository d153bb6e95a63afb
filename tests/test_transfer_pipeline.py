"""The one-command transfer: tiny config end to end offline, resume after a stop, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from vpgtrans_jax.train import loop
from vpgtrans_jax.transfer import pipeline
from vpgtrans_jax.transfer.config_io import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
    """configs/transfer_tiny.py, shortened so the test stays within a couple of minutes."""
    c = load_config_file("configs/transfer_tiny.py", what="test")
    c.tiny.source_override.num_steps = 30
    c.stages.stage1.override.num_steps = 16
    c.stages.stage2.override.num_steps = 16
    c.eval.tasks.coco_caption.override.limit = 8
    c.eval.tasks.coco_caption.override.batch_size = 8
    return c


def _mtimes(workdir: str) -> dict[str, float]:
    paths = [
        "converter/converter.json",
        "init/vpgtrans_model.json",
        "stage1/export/vpgtrans_model.json",
        "records/eval_stage1_coco_caption.json",
    ]
    return {p: os.path.getmtime(os.path.join(workdir, p)) for p in paths}


@pytest.fixture(scope="module")
def first_half(tmp_path_factory):
    """The tiny transfer stopped after stage 1's evaluation (as an interrupted run would be)."""
    workdir = str(tmp_path_factory.mktemp("transfer"))
    report = pipeline.run_transfer(
        _tiny_config(), workdir, stop_after="eval_stage1_coco_caption", progress=False
    )
    return workdir, report


def test_partial_report_after_stop(first_half):
    workdir, report = first_half
    assert not report["complete"]
    state = {s["name"]: s["state"] for s in report["steps"]}
    assert state == {
        "assets": "done",
        "converter": "done",
        "merge": "done",
        "stage1": "done",
        "eval_stage1_coco_caption": "done",
        "stage2": "pending",
        "eval_stage2_coco_caption": "pending",
    }
    assert all(s["this_run"] == "ran" for s in report["steps"] if s["state"] == "done")
    on_disk = json.load(open(os.path.join(workdir, "report.json")))
    assert on_disk["steps"] == report["steps"]
    # The stage-1 model references the source ViT and the target LLM, stores the merged VPG.
    manifest = json.load(open(os.path.join(workdir, "init", "vpgtrans_model.json")))
    parts = manifest["parts"]
    assert parts["vision"]["source"]["path"] == report["source"]["checkpoint"]
    assert parts["llm"]["source"] == {"kind": "hf_llm", "path": report["target"]["llm"]}
    assert all(parts[p]["stored"] for p in ("ln_vision", "query_tokens", "qformer", "projector"))
    assert manifest["config"]["llm_type"] == "llama"


def test_resume_after_stopped_stage_then_complete(first_half, monkeypatch):
    workdir, _ = first_half
    before = _mtimes(workdir)
    real_train = pipeline.train

    def preempted(c, wd, progress=True):
        """Stage 2 gets SIGTERM after 5 of its steps (train saves a checkpoint and returns)."""
        real_jit = loop.jit_train_step

        def jit_then_sigterm(*args, **kwargs):
            fn, calls = real_jit(*args, **kwargs), []

            def step(*a):
                out = fn(*a)
                calls.append(1)
                if len(calls) == 5:
                    os.kill(os.getpid(), signal.SIGTERM)
                return out

            step.lower = fn.lower
            return step

        monkeypatch.setattr(loop, "jit_train_step", jit_then_sigterm)
        try:
            return real_train(c, wd, progress=progress)
        finally:
            monkeypatch.setattr(loop, "jit_train_step", real_jit)

    monkeypatch.setattr(pipeline, "train", preempted)
    stopped = pipeline.run_transfer(_tiny_config(), workdir, progress=False)
    assert not stopped["complete"] and "stage2 stopped at step 5/16" in stopped["stopped"]
    this_run = {s["name"]: s["this_run"] for s in stopped["steps"]}
    assert this_run["stage2"] == "stopped" and this_run["converter"] == "skipped"

    monkeypatch.setattr(pipeline, "train", real_train)
    report = pipeline.run_transfer(_tiny_config(), workdir, progress=False)
    assert report["complete"] and report["stopped"] is None
    this_run = {s["name"]: s["this_run"] for s in report["steps"]}
    assert this_run == {
        "assets": "skipped",
        "converter": "skipped",
        "merge": "skipped",
        "stage1": "skipped",
        "eval_stage1_coco_caption": "skipped",
        "stage2": "ran",
        "eval_stage2_coco_caption": "ran",
    }
    assert _mtimes(workdir) == before  # earlier outputs untouched

    # Stage 2 resumed from its step-5 checkpoint: two attempts, the steps of both counted once.
    attempts = json.load(open(os.path.join(workdir, "records", "stage2.attempts.json")))
    assert [a["steps"] for a in attempts] == [5, 16]
    stages = {s["name"]: s for s in report["stages"]}
    assert set(stages) == {"init", "stage1", "stage2"}
    for name in ("stage1", "stage2"):
        t = stages[name]["training"]
        assert t["steps"] == 16 and t["samples"] == 16 * 16
        assert t["flops"] == pytest.approx(16 * t["flops_per_step"])
        # The analytic count agrees with XLA's cost analysis of the compiled step (to ~10%).
        assert t["flops_per_step_xla"] == pytest.approx(t["flops_per_step"], rel=0.15)
        ev = stages[name]["eval"]["coco_caption"]
        assert ev["num_samples"] == 8 and ev["headline"][0] == "CIDEr"
        assert np.isfinite(ev["headline"][1]) and ev["headline"][1] >= 0
    assert stages["stage1"]["training"]["trainable"] == ["projector"]
    assert stages["stage2"]["training"]["attempts"] == 2
    assert stages["stage2"]["training"]["wall_time_s"] == pytest.approx(
        sum(a["wall_time_s"] for a in attempts)
    )
    assert stages["stage1"]["training"]["lr"] == pytest.approx(
        5 * load_config_file("configs/tiny_finetune.py", what="t").optim.init_lr
    )
    tot = report["totals"]
    assert tot["train_steps"] == 32
    assert tot["train_flops"] == pytest.approx(
        sum(stages[s]["training"]["flops"] for s in ("stage1", "stage2"))
    )
    assert 0.0 <= report["converter"]["heldout_cosine"] <= 1.0
    md = open(os.path.join(workdir, "report.md")).read()
    assert "status: complete" in md
    for row in ("| stage1 | 16 | 256 |", "| stage2 | 16 | 256 |", "| stage2 | CIDEr "):
        assert row in md

    # A third run finds everything done and changes nothing but the report.
    again = pipeline.run_transfer(_tiny_config(), workdir, progress=False)
    assert again["complete"] and {s["this_run"] for s in again["steps"]} == {"skipped"}
    assert again["stages"] == report["stages"]


def test_tiny_llm_directories_load_in_transformers(first_half):
    import transformers

    _, report = first_half
    src = transformers.AutoModelForCausalLM.from_pretrained(report["source"]["llm"])
    tgt = transformers.AutoModelForCausalLM.from_pretrained(report["target"]["llm"])
    assert type(src).__name__ == "OPTForCausalLM" and src.config.hidden_size == 64
    assert type(tgt).__name__ == "LlamaForCausalLM" and tgt.config.hidden_size == 96


def test_real_config_errors_name_the_missing_field(tmp_path):
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    src.mkdir()
    tgt.mkdir()
    c = load_config_file("configs/transfer_opt2.7b_to_opt6.7b.py", what="test")
    with pytest.raises(ValueError, match=r"config.source.checkpoint, config.target.llm: required"):
        pipeline.TransferPipeline(c, str(tmp_path / "w"))
    c.source.checkpoint, c.target.llm = str(src), str(tgt)
    with pytest.raises(ValueError, match=r"config.converter.text: caption files are required"):
        pipeline.TransferPipeline(c, str(tmp_path / "w"))
    c.data.coco_ann = "/data/coco_train.json"  # a FieldReference: reaches converter and stages
    with pytest.raises(ValueError, match=r"stages.stage1 .*data.sources.coco.args.image_root"):
        pipeline.TransferPipeline(c, str(tmp_path / "w"))
    c.eval.run = "nope"
    for key in ("coco_images", "sbu_shards", "vg_ann", "vg_images", "laion_coco_shards"):
        c.data[key] = "/data/x"
    with pytest.raises(ValueError, match=r"config.eval.run: task 'nope'"):
        pipeline.TransferPipeline(c, str(tmp_path / "w"))
    c.eval.run = "vqav2"
    with pytest.raises(ValueError, match=r"eval.tasks.vqav2.*\['data.annotations'"):
        pipeline.TransferPipeline(c, str(tmp_path / "w"))
    c.eval.run = ""
    pipe = pipeline.TransferPipeline(c, str(tmp_path / "w"))
    assert [s.name for s in pipe.steps] == ["converter", "merge", "stage1", "stage2"]
    s2 = pipe.stage_configs["stage2"]
    assert s2.model.path == pipe.dirs["init"]
    assert s2.model.vpg_init == os.path.join(pipe.dirs["stage1"], "export")
    assert s2.data.tokenizer == str(tgt) and s2.data.sources.vg.args.ann_paths == "/data/x"


def test_cli_reports_bad_config(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(REPO, "scripts", "transfer.py"),
        "--config=" + os.path.join(REPO, "configs", "transfer_opt6.7b_to_vicuna7b.py"),
        f"--workdir={tmp_path}",
        f"--config.source.checkpoint={tmp_path}",
        f"--config.target.llm={tmp_path}",
        "--config.data.coco_ann=/x.json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "config.data.sources.coco.args.image_root: is required" in done.stderr


def test_vicuna_config_chains_three_stages(tmp_path):
    c = load_config_file("configs/transfer_opt6.7b_to_vicuna7b.py", what="test")
    c.source.checkpoint = c.target.llm = str(tmp_path)
    for key in c.data:
        c.data[key] = "/data/x"
    c.eval.run = "coco_caption,gqa"
    c.eval.points = "source,stage3"
    pipe = pipeline.TransferPipeline(c, str(tmp_path / "w"))
    assert [s.name for s in pipe.steps] == [
        "converter", "merge", "eval_source_coco_caption", "eval_source_gqa",
        "stage1", "stage2", "stage3", "eval_stage3_coco_caption", "eval_stage3_gqa",
    ]  # fmt: skip
    s3 = pipe.stage_configs["stage3"]
    assert s3.stage == "instruct" and s3.data.sources.cc_sbu_align.args.root == "/data/x"
    assert s3.model.vpg_init == os.path.join(pipe.dirs["stage2"], "export")
    ev = pipe.eval_configs[("stage3", "gqa")]
    assert ev["checkpoint"] == os.path.join(pipe.dirs["stage3"], "export")
    assert ev["tokenizer"] == str(tmp_path) and ev["data"]["annotations"] == "/data/x"
    assert pipe.cfg.converter.align == "shared_tokens"
