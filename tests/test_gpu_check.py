"""The GPU check (``make gpu-check``, benchmarks/gpu_check.sh) where no GPU is found: it says so,
runs its short CPU version (here at its smallest, GPU_CHECK_TINY=1, which leaves the XLA runs
out) and prints the table of images/s and AP50 for each run (mixed precision on and off)."""

import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_falls_back_to_a_short_cpu_run(tmp_path):
    env = dict(os.environ, PY=sys.executable, GPU_CHECK_DIR=str(tmp_path), GPU_CHECK_TINY="1",
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = done.stdout
    assert "no GPU found" in out and "CPU (" in out
    row = r"^\| (no|yes \(mixed_\w+\)) \| (no|yes) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$"
    rows = re.findall(row, out, re.MULTILINE)
    # at its smallest the CPU version leaves the XLA runs out (minutes of compiling on a CPU)
    assert {(mixed.split()[0], xla) for mixed, xla, *_ in rows} == {("no", "no"), ("yes", "no")}, out
    for mixed, xla, speed, ap50, seconds in rows:
        speed, ap50, seconds = float(speed), float(ap50), float(seconds)
        assert math.isfinite(speed) and speed > 0, (mixed, xla, speed)
        assert 0.0 <= ap50 <= 1.0, (mixed, xla, ap50)
        assert seconds > 0
    assert "| mixed precision | XLA | images/s | AP50 | train s |" in (
        tmp_path / "table.md").read_text()
