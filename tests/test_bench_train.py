"""scripts/bench_train.py, plan_memory.py and device_check.sh run end to end at tiny scale: the
matmul floor, the PyTorch comparison on identical weights (equal first losses), a memory plan."""

from __future__ import annotations

import os
import re
import subprocess

from tests.scripts_util import REPO, run_script


def test_bench_train_tiny_with_torch_and_floor():
    args = ["--scale", "tiny", "--stages", "2", "--compare_torch", "--matmul_floor", "--reps", "1"]
    out = run_script("scripts/bench_train.py", *args, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert text.count("ours (jax)") == 1 and text.count("pytorch (HF)") == 1
    for ours, hf in re.findall(r"first loss\s*: ours ([\d.]+), HF ([\d.]+)", text):
        assert abs(float(ours) - float(hf)) < 2e-3, (ours, hf)  # same weights, same loss
    assert all(float(x) > 0 for x in re.findall(r"speed-up\s*:\s*([\d.]+)x", text))
    assert all(float(x) > 0 for x in re.findall(r"MFU ([\d.]+)%", text))
    assert len(re.findall(r"matmul floor : [\d.]+ s \(\d+ matmuls", text)) == 1


def test_bench_train_rejects_torch_for_stage_3():
    out = run_script(
        "scripts/bench_train.py", "--scale", "tiny", "--stages", "3", "--compare_torch"
    )
    assert out.returncode == 2 and "error:" in out.stderr and "stage-3" in out.stderr


def test_device_check_runs_at_tiny_scale_and_appends_a_row(tmp_path):
    """scripts/device_check.sh end to end on CPU: both stages, decode rates, one table row."""
    out_md = tmp_path / "performance.md"
    out_md.write_text("# Performance\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [os.path.join(REPO, "scripts", "device_check.sh"), "--scale", "tiny", "--out",
         str(out_md), "--batches", "8", "--new_tokens", "8"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decode: batch 32:" in done.stdout
    text = out_md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 20")]
    assert text.startswith("# Performance") and len(rows) == 1 and "| tiny |" in rows[0]
    assert "no batch fits" not in rows[0]


def test_plan_memory_tiny_compiles_on_two_host_devices():
    out = run_script("scripts/plan_memory.py", "--devices", "2", "--scale", "tiny", "--layouts",
                     "fsdp", "--remat", "none", "--layers", "real", timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    row = [line for line in out.stdout.splitlines() if line.startswith("| none |")]
    assert len(row) == 1 and "(1, 2, 1)" in row[0] and "compiled" in row[0]
    cells = row[0].split("|")
    assert 0 < float(cells[5]) < 1 and "v5e" in cells[6]  # GiB: a tiny model fits anywhere
