"""``gs://`` everywhere, against a GCS JSON-API server on 127.0.0.1 (``tests/gcs_util.py``):
the object-store primitives, a stage-1 run in a bucket (SIGTERM, CLI rerun resumes bit-exactly,
its export loads from the bucket), a conversion into a bucket, data read from a bucket, and the
one-command transfer with its workdir, inputs and report in a bucket."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import pytest

import vpgtrans_jax
from tests import torch_reference as F
from tests.gcs_util import gcs_server
from tests.scripts_util import run_script
from tests.tiny_run import REPO, TINY_RUN, load_config, train_until, with_overrides
from vpgtrans_jax import outputs, paths, tiny
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.data.arrayrecord import convert_source
from vpgtrans_jax.data.processors import load_image
from vpgtrans_jax.data.registry import make_source
from vpgtrans_jax.errors import TrainingError
from vpgtrans_jax.train import checkpointing, loop
from vpgtrans_jax.train import workdir as workdir_lib
from vpgtrans_jax.train.metrics_writer import read_scalars
from vpgtrans_jax.transfer import figures, pipeline

# The tiny stage-1 run of these tests, as config overrides (the CLI rerun passes the same).
OVERRIDES = {**TINY_RUN, "checkpoint_every": 3}


@pytest.fixture(scope="module")
def bucket():
    with gcs_server() as url:
        yield url


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic") / "data")


def _config(synthetic_dir: str):
    c = load_config("tiny_warmup")
    c.data.synthetic_dir = synthetic_dir
    return tiny.prepare(with_overrides(c, OVERRIDES))


def _upload(local: str, url: str) -> None:
    for dirpath, _, files in os.walk(local):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), local)
            paths.copy_file(os.path.join(dirpath, name), paths.join(url, rel))


def _losses(workdir: str) -> dict[int, float]:
    rows = [
        json.loads(line)
        for line in paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines()
    ]
    return {r["step"]: r["loss"] for r in rows}


def _params(workdir: str):
    ckpt = checkpointing.Checkpointer(workdir, every_steps=1)
    state, _, _, step = ckpt.restore(None, with_data=False)
    ckpt.close()
    return step, jax.tree.map(np.asarray, state["params"])


def test_object_store_primitives(bucket):
    lock = f"{bucket}/prim/lock"
    assert paths.create_exclusive(lock, b"a") and not paths.create_exclusive(lock, b"b")
    gen = paths.generation(lock)
    paths.write_text(lock, "rewritten")  # a heartbeat: the generation changes
    assert not paths.delete_if_unchanged(lock, gen)
    assert paths.delete_if_unchanged(lock, paths.generation(lock)) and not paths.exists(lock)

    out = f"{bucket}/prim/out"
    with paths.staged_output(out) as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        open(os.path.join(tmp, "sub", "x.json"), "w").write("{}")
        assert not paths.exists(out)  # nothing is uploaded before the output is complete
    assert paths.walk_files(out) == ["sub/x.json"] and paths.listdir(out) == ["sub"]
    paths.check_complete(out)
    with pytest.raises(FileExistsError):
        with paths.staged_output(out):
            pass
    paths.write_text(paths.join(out, paths.IN_PROGRESS), "")  # as a writer that died leaves it
    with pytest.raises(OSError, match="incomplete"):
        paths.check_complete(out)
    with pytest.raises(ValueError, match="cannot append"):
        paths.open_file(f"{bucket}/prim/log", "a")
    log = paths.AppendFile(f"{bucket}/prim/log")
    log.write("one\n")
    log.flush()
    log.close()
    log = paths.AppendFile(f"{bucket}/prim/log")  # a resumed writer keeps what was there
    log.write("two\n")
    log.close()
    assert paths.read_text(f"{bucket}/prim/log") == "one\ntwo\n"
    assert paths.glob(f"{bucket}/prim/*/sub/*.json") == [f"{bucket}/prim/out/sub/x.json"]

    # Local copies follow the bucket: a same-size rewrite is fetched again, a deleted file goes.
    paths.write_text(f"{bucket}/prim/tok/a.json", "[1]")
    paths.write_text(f"{bucket}/prim/tok/b.json", "[2]")
    local = paths.local_copy(f"{bucket}/prim/tok")
    assert sorted(os.listdir(local)) == ["a.json", "b.json"]
    paths.write_text(f"{bucket}/prim/tok/a.json", "[3]")
    paths.remove(f"{bucket}/prim/tok/b.json")
    assert paths.local_copy(f"{bucket}/prim/tok") == local and os.listdir(local) == ["a.json"]
    assert open(os.path.join(local, "a.json")).read() == "[3]"
    one = paths.local_copy(f"{bucket}/prim/tok/a.json")
    assert open(one).read() == "[3]"
    with pytest.raises(FileNotFoundError, match="no such file"):
        paths.local_copy(f"{bucket}/prim/nothing")
    # Links between files of one output (the reports' figure and seed links).
    assert paths.relpath(f"{bucket}/w/figures/a.png", f"{bucket}/w/") == "figures/a.png"
    assert (
        paths.relpath(f"{bucket}/w/seed_1/report.md", f"{bucket}/w/seed_2") == "../seed_1/report.md"
    )
    assert paths.relpath("gs://elsewhere/a.png", f"{bucket}/w") == "gs://elsewhere/a.png"


def test_outputs_in_a_bucket_follow_the_local_replace_rules(bucket):
    ours, theirs = f"{bucket}/outs/ours", f"{bucket}/outs/theirs"
    with outputs.atomic_output(ours, kind="test output") as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("a")
    assert outputs.read_marker(ours)["entries"] == sorted([outputs.MARKER, "a.txt"])
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        with outputs.atomic_output(ours):
            pass
    with pytest.raises(RuntimeError):  # a failed writer uploads nothing
        with outputs.atomic_output(ours, overwrite=True) as tmp:
            open(os.path.join(tmp, "b.txt"), "w").write("b")
            raise RuntimeError("writer failed")
    assert paths.read_text(f"{ours}/a.txt") == "a"
    with outputs.atomic_output(ours, overwrite=True, kind="test output") as tmp:
        open(os.path.join(tmp, "b.txt"), "w").write("b")
    assert paths.listdir(ours) == sorted([outputs.MARKER, "b.txt"])
    paths.write_text(f"{theirs}/notes.txt", "mine")
    with pytest.raises(FileExistsError, match="not an output of this project's tools"):
        with outputs.atomic_output(theirs, overwrite=True):
            pass
    assert paths.listdir(theirs) == ["notes.txt"]


def test_workdir_lock_in_a_bucket(bucket, caplog):
    run = f"{bucket}/locked"
    held = workdir_lib.lock(run, 0)
    with pytest.raises(TrainingError, match="in use by another training run"):
        workdir_lib.lock(run, 0)
    workdir_lib.lock(run, 1).release()  # another process of the same job
    held.release()
    assert not paths.exists(held.path)
    workdir_lib.lock(run, 0).release()
    # A run whose VM was killed never deletes its lock: a stale heartbeat is taken over.
    stale = {"owner": "pid 7 on a-preempted-vm", "heartbeat": time.time() - 2 * workdir_lib.STALE_S}
    paths.write_text(held.path, json.dumps(stale))
    with workdir_lib.lock(run, 0):
        assert "a-preempted-vm" not in paths.read_text(held.path)
    assert "took over the lock" in caplog.text


def test_stage1_in_a_bucket_resumes_bit_exactly(bucket, synthetic_dir, tmp_path):
    full = str(tmp_path / "full")
    loop.train(_config(synthetic_dir), full, progress=False)  # uninterrupted, on local disk

    run = f"{bucket}/stage1"
    summary = train_until(_config(synthetic_dir), run, stop_at=3)
    assert summary["stopped_by"] == "SIGTERM" and summary["steps"] == 3
    assert checkpointing.steps_on_disk(run) == [3]
    assert not paths.exists(f"{run}/export")  # a stopped run exports nothing
    assert paths.exists(f"{run}/config.json") and not paths.exists(f"{run}/.train.lock.0")

    # The same command again, as a pod worker runs it after a preemption: resumes at step 3.
    done = run_script(
        "scripts/train.py",
        f"--config={os.path.join(REPO, 'configs', 'tiny_warmup.py')}",
        f"--workdir={run}",
        "--noprogress",
        f"--config.data.synthetic_dir={synthetic_dir}",
        *[f"--config.{k}={v}" for k, v in OVERRIDES.items()],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: step 6/6" in done.stdout

    a, b = _losses(full), _losses(run)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]  # bitwise on CPU
    step_a, params_a = _params(full)
    step_b, params_b = _params(run)
    assert step_a == step_b == 6
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    events = paths.listdir(f"{run}/tensorboard")
    assert sum(len(read_scalars(f"{run}/tensorboard/{e}")) for e in events) == 6

    # The export loads straight from the bucket and holds the trained projector.
    paths.check_complete(f"{run}/export")
    from_bucket = vpgtrans_jax.load(f"{run}/export")
    local = vpgtrans_jax.load(os.path.join(full, "export"))
    np.testing.assert_array_equal(
        np.asarray(from_bucket.projector.kernel[...]), np.asarray(local.projector.kernel[...])
    )


def test_conversion_from_and_into_a_bucket(bucket, tmp_path):
    hf = str(tmp_path / "hf")
    F.tiny_blip2("opt").save_pretrained(hf)
    _upload(hf, f"{bucket}/hf/blip2")
    out = f"{bucket}/converted/blip2"
    done = run_script("convert/hf_to_orbax.py", "--src", f"{bucket}/hf/blip2", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    paths.check_complete(out)
    manifest = model_dir.read_manifest(out)
    assert manifest["parts"]["llm"]["origin"]["path"] == f"{bucket}/hf/blip2"
    a, b = vpgtrans_jax.load(out), vpgtrans_jax.load(hf)
    for name in ("projector", "query_tokens"):
        x, y = (jax.tree.leaves(getattr(m, name)) for m in (a, b))
        jax.tree.map(np.testing.assert_array_equal, x, y)
    again = run_script("convert/hf_to_orbax.py", "--src", hf, "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_data_sources_read_from_a_bucket(bucket, synthetic_dir, tmp_path):
    _config(synthetic_dir)  # writes the synthetic dataset
    _upload(os.path.join(synthetic_dir, "webdataset"), f"{bucket}/data/wds")
    _upload(os.path.join(synthetic_dir, "annotations"), f"{bucket}/data/annotations")
    _upload(os.path.join(synthetic_dir, "images", "train"), f"{bucket}/data/images/train")

    local = make_source("webdataset", shards=os.path.join(synthetic_dir, "webdataset", "*.tar"))
    remote = make_source("webdataset", shards=f"{bucket}/data/wds/*.tar")
    assert len(remote) == len(local) > 0
    assert [remote[i] for i in range(len(remote))] == [local[i] for i in range(len(local))]

    caption = {"ann_paths": "annotations/caption_train.json", "image_root": "images"}
    local = make_source(
        "lavis_caption", **{k: os.path.join(synthetic_dir, v) for k, v in caption.items()}
    )
    remote = make_source("lavis_caption", **{k: f"{bucket}/data/{v}" for k, v in caption.items()})
    assert len(remote) == len(local) and remote[3]["text"] == local[3]["text"]
    assert remote[3]["image_path"].startswith("gs://")
    assert np.array_equal(load_image(remote[3]["image_path"]), load_image(local[3]["image_path"]))

    shards = convert_source(local, f"{bucket}/data/ar/caption", records_per_shard=100)
    assert len(shards) == 3 and all(s.startswith(f"{bucket}/data/ar/caption-") for s in shards)
    arrays = make_source("arrayrecord", paths=f"{bucket}/data/ar/caption-*.array_record")
    assert len(arrays) == len(local) and arrays[7]["text"] == local[7]["text"]


# The tiny transfer, as short as its configs allow (source VL model 10 steps, stage 1 4 steps,
# 4 evaluated images; stage 2 is planned, not run), as command-line overrides.
TRANSFER_OVERRIDES = {
    "tiny.source_override.num_steps": 10,
    "stages.stage1.override.num_steps": 4,
    "stages.stage2.override.num_steps": 10,
    "converter.epochs": 4,
    "eval.tasks.coco_caption.override.limit": 4,
    "eval.tasks.coco_caption.override.batch_size": 4,
}


def _transfer_config():
    return with_overrides(load_config("transfer_tiny"), TRANSFER_OVERRIDES)


def test_transfer_in_a_bucket_resumes(bucket):
    """``scripts/transfer.py --workdir=gs://...``: the assets (the inputs: source model, both
    LLM directories), every step's output, the records and the report land in the bucket; the
    stage export loads from it; a rerun skips what finished and redoes an unfinished upload."""
    run = f"{bucket}/transfer"
    done = run_script(
        "scripts/transfer.py",
        f"--config={os.path.join(REPO, 'configs', 'transfer_tiny.py')}",
        f"--workdir={run}/",
        "--stop_after=eval_stage1_coco_caption",
        "--noprogress",
        *[f"--config.{k}={v}" for k, v in TRANSFER_OVERRIDES.items()],
    )
    assert done.returncode == 3, done.stderr[-3000:]  # stopped before the end, as asked
    assert f"report: {run}/report.md" in done.stdout

    report = json.loads(paths.read_text(f"{run}/report.json"))
    assert report["workdir"] == run and not report["complete"]
    assert report["source"] == {
        "checkpoint": f"{run}/assets/source_vl/export",
        "llm": f"{run}/assets/src_llm",
    }
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
    records = paths.listdir(f"{run}/records")
    for name in ("assets", "converter", "merge", "stage1", "eval_stage1_coco_caption"):
        assert f"{name}.json" in records
        assert json.loads(paths.read_text(f"{run}/records/{name}.json"))["name"] == name
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["stage1"]["training"]["steps"] == 4
    ev = stages["stage1"]["eval"]["coco_caption"]
    assert ev["num_samples"] == 4 and ev["headline"][0] == "CIDEr"
    assert paths.exists(f"{run}/eval/stage1/coco_caption/predictions_coco_caption.json")
    md = paths.read_text(f"{run}/report.md")
    assert f"- workdir: `{run}`" in md and "| stage1 | 4 | 64 |" in md
    # The merged model references its inputs in the bucket; the export loads from there.
    manifest = model_dir.read_manifest(f"{run}/init")
    assert manifest["parts"]["llm"]["source"]["path"] == f"{run}/assets/tgt_llm"
    assert model_dir.read_manifest(f"{run}/stage1/export")["config"]["llm_type"] == "llama"
    kernel = np.asarray(vpgtrans_jax.load(f"{run}/stage1/export").projector.kernel[...])
    assert kernel.shape[-1] == 96 and np.all(np.isfinite(kernel))  # the target LLM's width

    # A merge whose upload was cut short (its in-progress marker left behind) is redone; the
    # finished steps are skipped, the rest stays where the first run stopped.
    paths.write_text(f"{run}/init/{paths.IN_PROGRESS}", "being written\n")
    stage1_record = paths.read_text(f"{run}/records/stage1.json")
    again = pipeline.run_transfer(
        _transfer_config(), run, stop_after="eval_stage1_coco_caption", progress=False
    )
    this_run = {s["name"]: s["this_run"] for s in again["steps"]}
    assert this_run == {
        "assets": "skipped",
        "converter": "skipped",
        "merge": "ran",
        "stage1": "skipped",
        "eval_stage1_coco_caption": "skipped",
        "stage2": "not reached",
        "eval_stage2_coco_caption": "not reached",
    }
    assert not paths.exists(f"{run}/init/{paths.IN_PROGRESS}")
    assert paths.read_text(f"{run}/records/stage1.json") == stage1_record
    assert json.loads(paths.read_text(f"{run}/report.json"))["stages"] == report["stages"]


def test_report_figure_into_a_bucket(bucket):
    data = {"vpgtrans": {"epoch": [0, 1], "flops": [0.0, 1e9], "mean": [1.0, 2.0],
                         "min": [1.0, 2.0], "max": [1.0, 2.0], "n": [1, 1]}}  # fmt: skip
    out = figures.plot_task(data, f"{bucket}/figs/coco.png", title="t", metric="CIDEr")
    assert out == f"{bucket}/figs/coco.png"
    assert paths.read_bytes(out)[:8] == b"\x89PNG\r\n\x1a\n"
