"""Several JAX processes on one machine, as on a pod: 2 processes x 4 CPU devices joined by
``jax.distributed`` on 127.0.0.1 (gloo collectives), running the real ``scripts/train.py`` and
``scripts/evaluate.py`` on a (data, fsdp, tensor) = (2, 2, 2) mesh, against 1 process x 8."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.tiny_run import REPO, TINY_RUN, load_config, with_overrides
from vpgtrans_jax import tiny
from vpgtrans_jax.data import pipeline, text
from vpgtrans_jax.data.registry import make_source
from vpgtrans_jax.data.sources import ListSource
from vpgtrans_jax.data.transforms import SampleConfig, SampleProcessor
from vpgtrans_jax.train import checkpointing

# Each run starts JAX in 2 processes: ~0.5-1 min on 2 cores.
TIMEOUT_S = 300  # per launch; a hang (a lost peer) fails instead of blocking CI
# Tiny stage 2 (Q-Former + projector trained) on the (2, 2, 2) mesh.
OVERRIDES = {
    **TINY_RUN,
    "checkpoint_every": 1000,
    "optim.warmup_steps": 2,
    "mesh_shape": "(2,2,2)",
}


@pytest.fixture(scope="module")
def synthetic_dir(tiny_synthetic_dir):
    # The session's tiny data; prepared here for this stage, so the processes of a run find
    # everything cached instead of each making it.
    c = load_config("tiny_finetune")
    c.data.synthetic_dir = tiny_synthetic_dir
    size = {k: OVERRIDES[k] for k in ("data.synthetic_images", "model.tiny_llm_steps")}
    return tiny.prepare(with_overrides(c, size)).data.synthetic_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: str, args: list[str], processes: int, devices: int) -> list[subprocess.Popen]:
    """``processes`` copies of ``script``, each with ``devices`` CPU devices, joined together."""
    port = _free_port()
    procs = []
    for pid in range(processes):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        }
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(pid))  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, os.path.join(REPO, script), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its own process group: a timeout kills all it started
            )
        )
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> list[str]:
    """Each process's output once all exit 0; on a timeout or a failure, all are killed and the
    test fails with their output (a process whose peer died can wait on it forever)."""
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
            if p.returncode != 0:
                break
    except subprocess.TimeoutExpired:
        pass
    if len(outs) == len(procs) and all(p.returncode == 0 for p in procs):
        return outs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    outs = [p.communicate()[0] for p in procs]
    report = "\n".join(
        f"--- process {i} (exit {p.returncode}):\n{out[-3000:]}"
        for i, (p, out) in enumerate(zip(procs, outs))
    )
    pytest.fail(f"a launch failed or ran over {timeout:.0f} s:\n{report}")


def _train_args(workdir: str, synthetic_dir: str) -> list[str]:
    return [
        f"--config={os.path.join(REPO, 'configs', 'tiny_finetune.py')}",
        f"--workdir={workdir}",
        "--noprogress",
        f"--config.data.synthetic_dir={synthetic_dir}",
        *[f"--config.{k}={v}" for k, v in OVERRIDES.items()],
    ]


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_host_rows_cover_every_sample_once_and_form_the_one_host_batches(synthetic_dir):
    tok = text.load_tokenizer(os.path.join(synthetic_dir, "tokenizer"))
    captions = make_source(
        "lavis_caption",
        ann_paths=os.path.join(synthetic_dir, "annotations", "caption_train.json"),
        image_root=os.path.join(synthetic_dir, "images"),
    )
    n, per_host = 30, 3
    texts = [f"red shape number {i}" for i in range(n)]
    src = ListSource([{**captions[0], "text": t, "key": t} for t in texts])
    steps = 2 * n // (2 * per_host)  # two epochs of global batches of 6

    def batches(host: int, count: int, rows: int) -> list[list[str]]:
        proc = SampleProcessor(SampleConfig(image_size=16), tok)
        it = pipeline.train_iterator([("c", src, 1.0)], proc, rows, shard_index=host,
                                     shard_count=count, num_threads=1)  # fmt: skip
        out = []
        for _ in range(steps):
            b = next(it)
            out.append([tok.decode(r[m == 1], skip_special_tokens=True).strip()
                        for r, m in zip(b["input_ids"], b["attention_mask"])])  # fmt: skip
        it.close()
        return out

    hosts = [batches(h, 2, per_host) for h in range(2)]
    one = batches(0, 1, 2 * per_host)
    # The hosts' batches, concatenated in process order, are the one-host global batches.
    assert [a + b for a, b in zip(*hosts)] == one
    for epoch in range(2):  # over both hosts, every sample exactly once per epoch
        rows = steps // 2
        seen = [t for h in hosts for b in h[epoch * rows : (epoch + 1) * rows] for t in b]
        assert sorted(seen) == sorted(texts)


@pytest.fixture(scope="module")
def one_process_run(synthetic_dir, tmp_path_factory):
    """The reference: the same stage on 1 process x 8 devices, same (2, 2, 2) mesh."""
    one = str(tmp_path_factory.mktemp("one") / "run")
    _wait(_launch("scripts/train.py", _train_args(one, synthetic_dir), 1, 8))
    return one


def test_two_processes_train_like_one_stop_together_and_resume(
    synthetic_dir, one_process_run, tmp_path
):
    steps = OVERRIDES["num_steps"]
    two = str(tmp_path / "two")
    procs = _launch("scripts/train.py", _train_args(two, synthetic_dir), 2, 4)
    metrics = os.path.join(two, "metrics.jsonl")
    deadline = time.monotonic() + TIMEOUT_S
    # Step 1 logged: both processes are in the step loop, their stop handlers installed.
    while not (os.path.exists(metrics) and open(metrics).read().strip()):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            _wait(procs, timeout=1)  # fails with their output if one failed or hung
            pytest.fail("the run ended before it logged step 1")
        time.sleep(0.01)
    # Process 0 frozen holds process 1 at the next collective, so the signal always lands
    # before the last step (no race with a fast machine); only process 1 is told, as a
    # preempted worker would be.
    os.kill(procs[0].pid, signal.SIGSTOP)
    os.kill(procs[1].pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(procs[0].pid, signal.SIGCONT)
    outs = _wait(procs)
    stopped = checkpointing.steps_on_disk(two)
    assert len(stopped) == 1 and 2 <= stopped[0] < steps, outs[0][-3000:]
    step = stopped[0]
    assert f"stopped by SIGTERM at step {step}/" in outs[0]
    assert f"process 1/2: SIGTERM at step {step}/" in outs[1]

    # The same command again on both processes: they restore that checkpoint and finish.
    outs = _wait(_launch("scripts/train.py", _train_args(two, synthetic_dir), 2, 4))
    assert f"done: step {steps}/{steps}" in outs[0]
    assert f"process 1/2: done at step {steps}/{steps}" in outs[1]
    a, b = _losses(one_process_run), _losses(two)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
    assert checkpointing.steps_on_disk(two)[-1] == steps
    assert os.path.isfile(os.path.join(two, "export", "vpgtrans_model.json"))


def test_evaluation_on_two_processes_merges_to_the_one_process_file(
    synthetic_dir, one_process_run, tmp_path
):
    ann = os.path.join(synthetic_dir, "annotations")
    args = [
        f"--config={os.path.join(REPO, 'configs', 'eval_vqav2.py')}",
        f"--config.checkpoint={one_process_run}/export",
        f"--config.tokenizer={synthetic_dir}/tokenizer",
        f"--config.data.annotations={ann}/vqa_test_questions.json",
        f"--config.data.answers={ann}/vqa_test_annotations.json",
        f"--config.data.image_root={synthetic_dir}/images",
        "--config.data.image_pattern=test/{image_id:06d}.jpg",
        "--config.batch_size=4",
        "--config.limit=10",
        "--config.generation.max_new_tokens=3",
        "--config.generation.num_beams=2",
    ]
    _wait(_launch("scripts/evaluate.py", [*args, f"--workdir={tmp_path / 'e1'}"], 1, 8))
    _wait(_launch("scripts/evaluate.py", [*args, f"--workdir={tmp_path / 'e2'}"], 2, 4))
    one = (tmp_path / "e1" / "predictions_vqav2.json").read_text()
    two = (tmp_path / "e2" / "predictions_vqav2.json").read_text()
    assert one == two and len(json.loads(one)) == 10
    assert not list((tmp_path / "e2").glob("*.part*"))  # the shares were merged and removed
