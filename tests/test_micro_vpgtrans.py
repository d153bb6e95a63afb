"""configs/micro_vpgtrans.py end to end on a very small world: assets, VPGTrans and both
baselines with per-epoch evaluations, a stop and a resume, the report's fields and figures.
(The outcome — the speed-up itself — is measured by the full run, never asserted here.)"""

from __future__ import annotations

import json
import os

import ml_collections
import pytest

from vpgtrans_jax.train.loop import epoch_end_steps
from vpgtrans_jax.transfer import experiment, pipeline
from vpgtrans_jax.transfer.config_io import load_config_file


def _config(seeds=(0,)):
    """The quick variant, smaller still: the test only checks the machinery."""
    c = load_config_file("configs/micro_vpgtrans.py", what="test")
    c.quick = True
    q = c.quick_override
    q["seeds"] = seeds
    micro = q["tiny"]["micro"]
    micro["world"].update(num_images=100, val_fraction=0.2, test_fraction=0.05)
    micro["vision"].update(steps=8, pool_images=64, probe_images=64, probe_steps=5)
    micro["src_llm"]["steps"] = 8
    micro["tgt_llm"]["steps"] = 8
    warmup = {"warmup_steps": 2}  # the runs have a few steps an epoch
    q["tiny"]["source_override"] = {"num_epochs": 1.0, "batch_size": 16, "optim": warmup}
    q["stages"] = {
        "stage1": {"override": {"batch_size": 16}},
        "stage2": {"override": {"num_epochs": 2.0, "batch_size": 16, "optim": warmup}},
    }
    q["converter"] = {"epochs": 2}
    for task in ("coco_caption", "vqav2"):
        q["eval"]["tasks"][task]["override"].update(batch_size=8, limit=8)
    q["eval"]["points"] = "source,init,stage1,stage2"
    return c


def test_epoch_end_steps():
    c = ml_collections.ConfigDict({"export_every_epochs": 1, "batch_size": 16})
    assert epoch_end_steps(c, 100, 21) == {7: 1, 13: 2, 19: 3}  # ceil(k * 100 / 16)
    c.export_every_epochs = 2
    assert epoch_end_steps(c, 100, 21) == {13: 2}
    c.export_every_epochs = 0
    assert epoch_end_steps(c, 100, 21) == {}


def test_quick_override_and_seed_configs(tmp_path):
    c = experiment.resolve(_config(seeds=(3, 4)))
    assert tuple(c.seeds) == (3, 4)
    assert c.stages.stage2.override.num_epochs == 2.0
    assert c.stages.stage2.override.optim.warmup_steps == 2
    assert c.tiny.micro.world.num_images == 100
    s = experiment.seed_config(c, 4, str(tmp_path / "assets"), first=False)
    assert s.stages.stage1.override.seed == 4 and s.baseline.override.seed == 4
    assert s.converter.seed == 4 and s.tiny.assets_dir == str(tmp_path / "assets")
    assert "source" not in s.eval.points.split(",")  # the shared source model: evaluated once
    bad = _config()
    bad.quick_override["tiny"]["micro"]["world"]["no_such_field"] = 1
    with pytest.raises(ValueError, match="no_such_field"):
        experiment.resolve(bad)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The experiment stopped after the TFS baseline's training (an interrupted run)."""
    workdir = str(tmp_path_factory.mktemp("micro"))
    report = experiment.run_experiment(_config(), workdir, stop_after="tfs", progress=False)
    return workdir, report


def test_stop_then_resume_to_a_complete_report(stopped):
    workdir, first = stopped
    assert not first["complete"]
    seed = os.path.join(workdir, "seed_0")
    done = json.load(open(os.path.join(seed, "report.json")))
    state = {s["name"]: s["state"] for s in done["steps"]}
    assert state["tfs"] == "done" and state["eval_tfs_coco_caption"] == "pending"
    assert state["inherit"] == "pending"
    kept = {
        p: os.path.getmtime(os.path.join(seed, p))
        for p in ("init/vpgtrans_model.json", "stage2/export/vpgtrans_model.json",
                  "records/eval_stage2_epoch1_coco_caption.json")
    }  # fmt: skip

    report = experiment.run_experiment(_config(), workdir, progress=False)
    assert report["complete"] and report["stopped"] is None
    seed_report = json.load(open(os.path.join(seed, "report.json")))
    this_run = {s["name"]: s["this_run"] for s in seed_report["steps"]}
    assert this_run["stage2"] == "skipped" and this_run["eval_tfs_coco_caption"] == "ran"
    assert this_run["inherit"] == "ran"
    assert kept == {p: os.path.getmtime(os.path.join(seed, p)) for p in kept}

    # Every arm trained two epochs and was evaluated after each; stage 1 counts as spent.
    curves = seed_report["curves"]
    assert set(curves) == {"vpgtrans", "tfs", "inherit"}
    assert [q["point"] for q in curves["vpgtrans"]] == [
        "init", "stage1", "stage2_epoch1", "stage2"]  # fmt: skip
    assert [q["epoch"] for q in curves["vpgtrans"]] == [0.0, 1.0, 2.0, 3.0]
    assert [q["epoch"] for q in curves["tfs"]] == [1.0, 2.0]
    assert [q["point"] for q in curves["inherit"]] == ["inherit_epoch1", "inherit"]
    for arm in curves.values():
        for q in arm:
            assert set(q["scores"]) == {"coco_caption", "vqav2"}
            assert all(v is not None and v >= 0 for v in q["scores"].values())
    for unit in ("stage2", "tfs", "inherit"):
        assert os.path.isfile(os.path.join(seed, unit, "exports", "epoch_1", "vpgtrans_model.json"))
        rec = json.load(open(os.path.join(seed, "records", f"{unit}.json")))
        assert set(rec["epoch_exports"]) == {"1", "2"} and rec["dataset_size"] > 0

    # The baselines' starting points: TFS all random, inherit keeps the source VPG.
    origins = {
        arm: json.load(open(os.path.join(seed, "records", f"{arm}_init.json")))["origins"]
        for arm in ("tfs", "inherit")
    }
    assert all(v.startswith("random") for v in origins["tfs"].values())
    assert origins["inherit"]["qformer"].endswith(os.path.join("source_vl", "export"))
    assert origins["inherit"]["projector"].startswith("random")

    # The speed-up per metric and per baseline, in epochs and FLOPs, with an outcome.
    comp = seed_report["comparison"]
    for arm in ("tfs", "inherit"):
        for task in ("coco_caption", "vqav2"):
            res = comp["speedup"][arm][task]
            assert res["status"] in ("ok", "not_reached", "reached_untrained",
                                     "baseline_untrained")  # fmt: skip
    assert os.path.isfile(os.path.join(seed, "figures", "coco_caption.png"))
    assert "## Does the transfer pay off?" in open(os.path.join(seed, "report.md")).read()

    # The experiment's report: over seeds, with the assets' facts and the time spent.
    on_disk = json.load(open(os.path.join(workdir, "report.json")))
    assert on_disk["seeds"] == [0] and on_disk["caption_task"] == "coco_caption"
    assert set(on_disk["comparison"]["speedup"]) == {"tfs", "inherit"}
    stats = on_disk["comparison"]["speedup"]["tfs"]["coco_caption"]
    assert set(stats["epochs"]) == {"median", "mean", "min", "max", "n"}
    assert set(on_disk["comparison"]["final"]) == {"vpgtrans", "tfs", "inherit"}
    probe = on_disk["assets"]["linear_probe"]
    assert set(probe) == {"count", "background", "occupied", "shape", "color", "size"}
    assert all(0.0 <= v <= 1.0 for v in probe.values())
    assert on_disk["source_eval"]["coco_caption"][0] == "CIDEr"
    assert set(on_disk["targets"]) == {"median_caption_speedup", "vpgtrans_final_ge_tfs_best",
                                       "wall_time"}  # fmt: skip
    phases = on_disk["timing"]["recorded"]["phases"]
    assert {"eval", "train vpgtrans", "train baselines", "assets: vision"} <= set(phases)
    assert all(p["cpu_time_s"] >= 0 for p in phases.values())
    for task in ("coco_caption", "vqav2"):
        png = on_disk["figures"][task]
        assert os.path.getsize(png) > 10_000 and open(png, "rb").read(4) == b"\x89PNG"
    md = open(os.path.join(workdir, "report.md")).read()
    for section in ("## Does the transfer pay off?", "## Targets", "## Time", "linear probe"):
        assert section in md


def test_assets_refuse_other_settings(stopped):
    """A config whose world differs from the built assets fails with one clear error."""
    workdir, _ = stopped
    c = _config()
    c.quick_override["tiny"]["micro"]["world"]["num_images"] = 101
    with pytest.raises(ValueError, match="other settings"):
        experiment.run_experiment(c, workdir, progress=False)


def test_real_config_plans_baselines_and_epoch_evaluations(tmp_path):
    """A user with data: the real configs take the baselines and per-epoch evaluations too."""
    c = load_config_file("configs/transfer_opt2.7b_to_opt6.7b.py", what="test")
    c.source.checkpoint = c.target.llm = str(tmp_path)
    for key in c.data:
        c.data[key] = "/data/x"
    c.eval.run = "coco_caption"
    c.eval.points = "init,stage2"
    c.baselines = "tfs"
    c.eval.every_epoch = True
    with pytest.raises(ValueError, match="every_epoch needs a schedule in epochs"):
        pipeline.TransferPipeline(c, str(tmp_path / "w"))
    c.stages.stage2.override.num_steps = 0
    c.stages.stage2.override.num_epochs = 3.0
    pipe = pipeline.TransferPipeline(c, str(tmp_path / "w"))
    assert [s.name for s in pipe.steps] == [
        "converter", "merge", "eval_init_coco_caption", "stage1", "stage2",
        "eval_stage2_epoch1_coco_caption", "eval_stage2_epoch2_coco_caption",
        "eval_stage2_coco_caption", "tfs_init", "tfs", "eval_tfs_epoch1_coco_caption",
        "eval_tfs_epoch2_coco_caption", "eval_tfs_coco_caption",
    ]  # fmt: skip
    tfs, s2 = pipe.stage_configs["tfs"], pipe.stage_configs["stage2"]
    assert tfs.model.path == pipe.dirs["tfs_init"] and tfs.model.vpg_init == ""
    assert (tfs.num_epochs, tfs.optim.init_lr, tfs.trainable) == (
        s2.num_epochs, s2.optim.init_lr, s2.trainable)  # fmt: skip
    assert tfs.data.sources.to_dict() == s2.data.sources.to_dict()
    assert tfs.export_every_epochs == 1 and s2.export_every_epochs == 1
    ev = pipe.eval_configs[("tfs_epoch1", "coco_caption")]
    assert ev["checkpoint"] == os.path.join(pipe.dirs["tfs"], "exports", "epoch_1")
    arms = {p["arm"] for p in pipe.curve_plan()}
    assert arms == {"vpgtrans", "tfs"}
    c.baselines = "tfs,nope"
    with pytest.raises(ValueError, match="config.baselines"):
        pipeline.TransferPipeline(c, str(tmp_path / "w"))
