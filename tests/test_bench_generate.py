"""scripts/bench_generate.py runs end to end on a tiny model (OPT and LLaMA), one core."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert speed > 0 and floor > 0 and ceiling > 0


def test_bench_rejects_more_threads_than_cores():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "4096"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "may use only" in out.stderr
