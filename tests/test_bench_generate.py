"""scripts/bench_generate.py runs end to end on a tiny model (OPT and LLaMA), one core, and reports
the decode step (prefill excluded) next to the matmul floor."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vpgtrans_jax.bench import generate as bench

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_generate.py"
TINY = ["--hidden", "64", "--layers", "1", "--vocab", "256", "--batch", "2", "--beams", "2"]


@pytest.mark.parametrize("llm", ["opt", "llama"])
def test_bench_reports_speed_floor_and_identical_ids(llm):
    args = [*TINY, "--llm", llm, "--max_new_tokens", "3", "--reps", "1"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "threads 1" in text and "same token ids: True" in text
    speed = float(re.search(r"speed-up\s*:\s*([\d.]+)x", text).group(1))
    floor = float(re.search(r"matmul floor\s*:\s*([\d.]+) ms/step", text).group(1))
    ceiling = float(re.search(r"ceiling\s*:\s*([\d.]+)x", text).group(1))
    step = re.search(r"decode step\s*:\s*(-?[\d.]+) ms .*decode step / floor: (-?[\d.]+)x", text)
    assert step, text
    assert speed > 0 and floor > 0 and ceiling > 0
    # (3-token call - 1-token call) / 2 is a difference of timings: it must be a finite number.
    assert all(math.isfinite(float(v)) for v in step.groups())


def test_bench_rejects_more_threads_than_cores():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "4096"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "may use only" in out.stderr


def test_decode_step_seconds_needs_two_tokens():
    with pytest.raises(ValueError, match="max_new_tokens >= 2"):
        bench.decode_step_seconds(lambda: None, lambda: None, lambda: None, steps=1, reps=1)


def test_decode_step_seconds_subtracts_the_one_token_call(monkeypatch):
    # A fake clock (no timing): 30 tokens take 50 ms, 1 token 21 ms, 30 floor steps 15 ms.
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))

    def takes(seconds):
        def call():
            clock.now += seconds
            return seconds

        return call

    step, floor, ratio, out = bench.decode_step_seconds(
        takes(0.050), takes(0.021), takes(0.015), steps=30, reps=3
    )
    assert step == pytest.approx(0.001) and floor == pytest.approx(0.0005)
    assert ratio == pytest.approx(2.0) and out == 0.050
