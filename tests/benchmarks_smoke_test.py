"""The benchmarks still run (on a tiny size; their numbers are never asserted)."""

import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_numpy.py", "bench_ops.py"])
def test_benchmark_runs_and_prints_ratios(script):
  result = subprocess.run(
      [sys.executable, str(BENCHMARKS / script), "--size=20000", "--repeats=1"],
      capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr
  assert "x copy" in result.stdout and "np.copy" in result.stdout
