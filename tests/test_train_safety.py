"""Training never loses or silently restarts a run: the workdir's config and lock, checksummed
checkpoints with a quiet fallback, validated numbers, failed runs that say so, metric windows
that join across a resume, and one `error:` line for every user mistake on the command line."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.scripts_util import REPO, run_script
from tests.test_train import _tiny, _train_until
from tests.tiny_run import TINY_RUN, load_config, with_overrides
from vpgtrans_jax.errors import CheckpointError, ConfigError, TrainingError
from vpgtrans_jax.train import checkpointing, config_base, loop
from vpgtrans_jax.train.metrics_writer import read_scalars


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("synthetic") / "data")
    _tiny("tiny_warmup", d)  # generates the data and pretrains the tiny LLM once
    return d


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _cli_args(synthetic_dir: str, workdir, **over) -> list[str]:
    """scripts/train.py flags giving the same config as ``_tiny("tiny_warmup", ...)``."""
    flags = {
        "data.synthetic_dir": synthetic_dir,
        **TINY_RUN,
        "checkpoint_every": 3,
        **over,
    }
    return [
        f"--config={REPO}/configs/tiny_warmup.py",
        f"--workdir={workdir}",
        "--noprogress",
        *(f"--config.{k}={v}" for k, v in flags.items()),
    ]


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and out.stderr.strip().splitlines()[-1] == errors[0], out.stderr
    return errors[0]


# ---- item 2: the workdir remembers the config that made it ------------------------------------


def test_rerun_with_another_config_is_refused_and_nothing_is_lost(tmp_path, synthetic_dir):
    w = str(tmp_path / "run")
    loop.train(
        _tiny("tiny_warmup", synthetic_dir, num_steps=2, checkpoint_every=2), w, progress=False
    )
    recorded = json.load(open(os.path.join(w, "config.json")))
    assert recorded["trainable"] == ["projector"] and recorded["num_steps"] == 2

    # Another trainable part (the original failure: a silent restart that deleted the run).
    other = _tiny(
        "tiny_warmup", synthetic_dir, num_steps=2, checkpoint_every=2, trainable=("qformer",)
    )
    with pytest.raises(ConfigError, match=r'trainable \["projector"\] -> \["qformer"\]'):
        loop.train(other, w, progress=False)
    assert checkpointing.steps_on_disk(w) == [2]
    # A workdir from before config.json: the config saved with the checkpoints is compared.
    os.remove(os.path.join(w, "config.json"))
    with pytest.raises(ConfigError, match=r'trainable \["projector"\] -> \["qformer"\]'):
        loop.train(other, w, progress=False)

    # Harmless differences resume the run (nothing left to train) and are recorded.
    harmless = dict(num_steps=2, checkpoint_every=5, log_every=4, keep_checkpoints=1)
    summary = loop.train(_tiny("tiny_warmup", synthetic_dir, **harmless), w, progress=False)
    assert summary["steps"] == 2 and len(_rows(w)) == 2
    assert json.load(open(os.path.join(w, "config.json")))["log_every"] == 4

    # force_new_run: the earlier run is moved aside whole, the new one starts at step 0.
    forced = _tiny("tiny_warmup", synthetic_dir, num_steps=3, force_new_run=True)
    summary = loop.train(forced, w, progress=False)
    earlier = os.path.join(w, "earlier_runs", "run-1")
    assert checkpointing.steps_on_disk(earlier) == [2] and len(_rows(earlier)) == 2
    assert json.load(open(os.path.join(earlier, "config.json")))["num_steps"] == 2
    assert summary["steps"] == 3 and [r["step"] for r in _rows(w)] == [1, 2, 3]
    # The same forced command again (a restarted job) resumes instead of starting over.
    loop.train(
        _tiny("tiny_warmup", synthetic_dir, num_steps=3, force_new_run=True), w, progress=False
    )
    assert os.listdir(os.path.join(w, "earlier_runs")) == ["run-1"]


def test_checkpoints_that_cannot_be_restored_stop_the_run(tmp_path, synthetic_dir):
    w = str(tmp_path / "run")
    c = _tiny("tiny_warmup", synthetic_dir, num_steps=2, checkpoint_every=1)
    loop.train(c, w, progress=False)
    for step in checkpointing.steps_on_disk(w):
        os.remove(os.path.join(w, "checkpoints", str(step), checkpointing.CHECKSUMS))
        with open(os.path.join(w, "checkpoints", str(step), "state", "_METADATA"), "w") as f:
            f.write("garbage")
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoint\(s\) .* can be restored"):
        loop.train(c, w, progress=False)
    assert checkpointing.steps_on_disk(w) == [1, 2]  # still there, not replaced by a new run


# ---- item 5: one train.py per workdir ----------------------------------------------------------


def test_second_run_on_a_workdir_is_refused_and_kill9_frees_it(tmp_path, synthetic_dir):
    w = str(tmp_path / "run")
    os.makedirs(w)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from vpgtrans_jax.train import workdir
            workdir.lock({w!r}, 0)
            print("locked", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        c = _tiny("tiny_warmup", synthetic_dir, num_steps=1)
        busy = rf"in use by another training run \(pid {holder.pid}"
        with pytest.raises(TrainingError, match=busy):
            loop.train(c, w, progress=False)
        line = _one_error_line(run_script("scripts/train.py", *_cli_args(synthetic_dir, w)))
        assert f"--workdir {w} is in use by another training run (pid {holder.pid}" in line
        assert not os.path.exists(os.path.join(w, "checkpoints"))
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: the kernel drops the lock
        holder.wait()
    assert loop.train(c, w, progress=False)["steps"] == 1


# ---- item 7: validated numbers, failed runs fail ----------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim.init_lr", math.nan, "config.optim.init_lr: must be finite and > 0, got nan"),
        ("optim.init_lr", -1e-4, "config.optim.init_lr"),
        ("optim.init_lr", 0.0, "config.optim.init_lr"),
        ("optim.min_lr", math.inf, "config.optim.min_lr"),
        ("batch_size", -8, "config.batch_size: must be >= 1, got -8"),
        ("batch_size", 0, "config.batch_size"),
        ("accum_steps", 0, "config.accum_steps"),
        ("num_steps", -1, "config.num_steps"),
        ("num_epochs", math.nan, "config.num_epochs"),
        ("optim.warmup_steps", 61, "config.optim.warmup_steps: 61 is more than the run's 60"),
        ("log_every", 0, "config.log_every"),
        ("keep_checkpoints", 0, "config.keep_checkpoints"),
        ("optim.b2", 1.0, "config.optim.b2"),
        ("data.flip_prob", 1.5, "config.data.flip_prob"),
        ("data.min_scale", 0.0, "config.data.min_scale"),
        ("data.max_bad_fraction", 1.0, "config.data.max_bad_fraction"),
        ("data.max_image_pixels", 0, "config.data.max_image_pixels"),
        ("mesh_shape", (2, -1, -1), "config.mesh_shape"),
        ("data.instructions", ("Describe it.", " "), "config.data.instructions"),
    ],
)
def test_numeric_fields_are_validated(key, value, message):
    c = with_overrides(load_config("tiny_warmup"), {key: value})
    with pytest.raises(ConfigError) as e:
        config_base.validate(c, prepared=False)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_multipliers_and_source_weights_are_validated():
    c = load_config("tiny_warmup")
    c.optim.lr_multipliers = {"projector": math.nan}
    with pytest.raises(ConfigError, match=r"config\.optim\.lr_multipliers\.projector"):
        config_base.validate(c, prepared=False)
    c = load_config("tiny_warmup")
    c.data.sources.synthetic_captions.weight = 0.0
    with pytest.raises(ConfigError, match=r"config\.data\.sources\.synthetic_captions\.weight"):
        config_base.validate(c, prepared=False)


def test_a_run_whose_steps_were_all_skipped_fails(tmp_path, synthetic_dir, monkeypatch):
    from vpgtrans_jax.train import data_setup

    original = data_setup.build_train_iterator

    class Poisoned:
        def __init__(self, it):
            self.it = it

        def __next__(self):
            b = next(self.it)
            return {**b, "pixel_values": np.full_like(b["pixel_values"], np.nan)}

        def __getattr__(self, name):
            return getattr(self.it, name)

    monkeypatch.setattr(loop, "build_train_iterator", lambda *a, **k: Poisoned(original(*a, **k)))
    c = _tiny("tiny_warmup", synthetic_dir, num_steps=3, max_bad_steps=50)
    with pytest.raises(TrainingError, match="all 3 steps were skipped"):
        loop.train(c, str(tmp_path), progress=False)
    assert not os.path.exists(tmp_path / "export")


# ---- item 8: checksums, quiet fallback ----------------------------------------------------------


def _flip_a_byte_of_array_data(step_dir: str) -> str:
    """Flips one byte in the middle of the largest file of the step's train state."""
    files = [
        os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
    ]
    path = max(files, key=os.path.getsize)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


def test_flipped_byte_falls_back_to_the_previous_checkpoint(tmp_path, synthetic_dir):
    full = str(tmp_path / "full")
    loop.train(
        _tiny("tiny_warmup", synthetic_dir, num_steps=6, checkpoint_every=3), full, progress=False
    )
    w = str(tmp_path / "run")
    _train_until(_tiny("tiny_warmup", synthetic_dir, num_steps=6, checkpoint_every=3), w, 5)
    assert checkpointing.steps_on_disk(w) == [3, 5]
    _flip_a_byte_of_array_data(os.path.join(w, "checkpoints", "5"))

    out = run_script("scripts/train.py", *_cli_args(synthetic_dir, w))
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if "checkpoint at step 5" in line]
    assert len(warnings) == 1 and "is corrupt" in warnings[0] and "changed since" in warnings[0]
    for noise in ("Traceback", "Event loop is closed", "Exception ignored"):
        assert noise not in out.stderr, out.stderr[-3000:]
    assert "resumed from step 3" in out.stderr
    # Identical to resuming from step 3: steps 4-6 as in the uninterrupted run.
    want = {r["step"]: r["loss"] for r in _rows(full)}
    got = {r["step"]: r["loss"] for r in _rows(w)}  # later rows (the resumed ones) win
    assert [got[s] for s in (4, 5, 6)] == [want[s] for s in (4, 5, 6)]
    # The corrupt step is kept aside, and the run saved step 6 in its place.
    kept = os.listdir(os.path.join(w, checkpointing.CORRUPT_DIR))
    assert len(kept) == 1 and kept[0].startswith("5-")
    assert checkpointing.steps_on_disk(w)[-1] == 6


_UNREADABLE = """
import os, jax, jax.numpy as jnp, numpy as np
from vpgtrans_jax.cli import setup_logging
from vpgtrans_jax.train import checkpointing
setup_logging()
d = {workdir!r}
state = {{"w": jnp.arange(1000.0)}}
ckpt = checkpointing.Checkpointer(d, every_steps=1, async_save=False)
for step in (1, 2, 3):
    ckpt.save(step, {{"w": jnp.arange(1000.0) + step}}, {{"pos": step}}, {{"m": step}})
ckpt.wait()
for step in (2, 3):  # no checksums (as a checkpoint from before them), unreadable metadata
    root = os.path.join(d, "checkpoints", str(step))
    os.remove(os.path.join(root, checkpointing.CHECKSUMS))
    path = os.path.join(root, "state", "array_metadatas", "process_0")
    data = bytearray(open(path, "rb").read()); data[50] ^= 0xFF
    open(path, "wb").write(bytes(data))
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
restored, _, _, step = ckpt.restore(abstract)
assert step == 1 and float(np.asarray(restored["w"]).sum()) == 499500.0 + 1000
ckpt.close()
print("restored step", step)
"""


def test_unreadable_checkpoint_fallback_prints_no_tracebacks(tmp_path):
    """Orbax's failed restores leave reads in flight that used to print 'Event loop is closed'
    tracebacks (6-11 per fallback)."""
    out = subprocess.run(
        [sys.executable, "-c", _UNREADABLE.format(workdir=str(tmp_path))],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert out.returncode == 0 and "restored step 1" in out.stdout, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len([line for line in lines if "is unreadable" in line]) == 2
    for noise in ("Traceback", "Event loop is closed", "Exception ignored"):
        assert noise not in out.stderr, out.stderr[-3000:]


# ---- item 18: metric windows join across a resume ----------------------------------------------


def test_metric_windows_record_their_size_and_join_after_a_resume(tmp_path, synthetic_dir):
    kw = dict(num_steps=6, log_every=2, checkpoint_every=100)
    full = str(tmp_path / "full")
    loop.train(_tiny("tiny_warmup", synthetic_dir, **kw), full, progress=False)
    w = str(tmp_path / "run")
    _train_until(_tiny("tiny_warmup", synthetic_dir, **kw), w, stop_at=3)
    loop.train(_tiny("tiny_warmup", synthetic_dir, **kw), w, progress=False)

    windows = [(r["step"], r["window_steps"], r["loss_steps"]) for r in _rows(w)]
    # The stop flushed step 3 alone; the resume's first window holds step 4 alone.
    assert windows == [(2, 2, 2), (3, 1, 1), (4, 1, 1), (6, 2, 2)]
    assert [(r["step"], r["window_steps"]) for r in _rows(full)] == [(2, 2), (4, 2), (6, 2)]
    rows, ref = {r["step"]: r for r in _rows(w)}, {r["step"]: r for r in _rows(full)}
    joined = (rows[3]["loss"] * rows[3]["loss_steps"] + rows[4]["loss"] * rows[4]["loss_steps"]) / (
        rows[3]["loss_steps"] + rows[4]["loss_steps"]
    )
    assert joined == pytest.approx(ref[4]["loss"], rel=1e-12)
    assert rows[6]["loss"] == ref[6]["loss"]
    tb = os.path.join(full, "tensorboard", os.listdir(os.path.join(full, "tensorboard"))[0])
    assert [v["window_steps"] for _, v in read_scalars(tb)] == [2, 2, 2]


# ---- item 17: fine-tuning on one's own JSON (docs/data.md) --------------------------------------


def test_docs_example_own_json_with_per_sample_prompts_trains(tmp_path, synthetic_dir):
    ann = os.path.join(REPO, "docs", "examples", "own_captions.json")
    c = _tiny(
        "tiny_finetune",
        synthetic_dir,
        num_steps=2,
        **{"data.sources.synthetic_captions.args.ann_paths": ann},
    )
    summary = loop.train(c, str(tmp_path), progress=False)
    rows = _rows(tmp_path)
    assert summary["steps"] == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["data/bad"] == 0 and rows[-1]["data/seen"] == 16


# ---- item 11: one `error:` line for each mistake ----------------------------------------------


def _bad_json(tmp_path, text: str) -> str:
    path = tmp_path / "ann.json"
    path.write_text(text)
    return str(path)


CLI_CASES = {
    "unknown field": (["--config.foo=1"], "--config.foo: no such config field 'foo'"),
    "misspelt field": (["--config.optim.init_l=1"], "did you mean 'init_lr'?"),
    "nested unknown": (["--config.foo.bar=1"], "no such config field 'foo'"),
    "negative batch": (["--config.batch_size=-8"], "config.batch_size: must be >= 1, got -8"),
    "batch of 0": (["--config.batch_size=0"], "config.batch_size"),
    "log_every 0": (["--config.log_every=0"], "config.log_every"),
    "NaN LR": (["--config.optim.init_lr=nan"], "config.optim.init_lr"),
    "bad stage": (["--config.stage=bad"], "config.stage: must be one of"),
    "malformed json": (["ann:{oops"], "is not valid JSON"),
    "empty json file": (["ann:"], "is not valid JSON"),
    "empty json list": (["ann:[]"], "config.data.sources.synthetic_captions: the source is empty"),
    "image root missing": (
        ["--config.data.sources.synthetic_captions.args.image_root=/nonexistent/images"],
        "samples were bad (more than max_bad_fraction=0.05)",
    ),
    "workdir is a file": (["workdir:file"], "is a file, not a directory"),
    "read-only workdir": (["workdir:readonly"], "is not writable"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_train_cli_mistakes_are_one_error_line(case, tmp_path, synthetic_dir):
    extra, message = CLI_CASES[case]
    workdir = tmp_path / "w"
    flags = []
    for arg in extra:
        if arg.startswith("ann:"):
            ann = _bad_json(tmp_path, arg[4:])
            flags.append(f"--config.data.sources.synthetic_captions.args.ann_paths={ann}")
        elif arg == "workdir:file":
            workdir.write_text("not a directory")
        elif arg == "workdir:readonly":
            # A directory no process may create files in, root included (chmod binds only
            # non-root users): sysfs.
            workdir = "/sys/kernel"
        else:
            flags.append(arg)
    out = run_script("scripts/train.py", *_cli_args(synthetic_dir, workdir, num_steps=2), *flags)
    assert message in _one_error_line(out)


def test_missing_required_field_is_one_error_line(tmp_path):
    out = run_script("scripts/train.py", f"--config={REPO}/configs/warmup_llama.py", "--workdir=x")
    assert "config.model.path: is required" in _one_error_line(out)


# The child only calls setrlimit between fork and exec, which is safe despite JAX's threads.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_full_disk_while_checkpointing_is_one_error_line(tmp_path, synthetic_dir):
    """The disk fills up during the first checkpoint (a 16 KiB file-size limit makes every larger
    write fail, as a full disk does): one line, no tracebacks from Orbax's writer threads."""

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    w = tmp_path / "w"
    out = run_script(
        "scripts/train.py",
        *_cli_args(synthetic_dir, w, num_steps=4, checkpoint_every=2),
        preexec_fn=small_files,
    )
    line = _one_error_line(out)
    assert f"writing checkpoint step 2 to {w}/checkpoints failed: File too large" in line
    assert checkpointing.steps_on_disk(str(w)) == []


def test_cli_rerun_refusal_is_one_line(tmp_path, synthetic_dir):
    w = tmp_path / "w"
    loop.train(_tiny("tiny_warmup", synthetic_dir, num_steps=1), str(w), progress=False)
    args = _cli_args(synthetic_dir, w, num_steps=1)
    out = run_script("scripts/train.py", *args, "--config.seed=3")
    line = _one_error_line(out)
    assert "holds a run made by another config: " in line and "seed 0 -> 3" in line
    assert "--config.force_new_run=True" in line
