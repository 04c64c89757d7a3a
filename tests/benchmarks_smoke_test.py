"""The benchmarks still run (on a tiny size; their numbers are never asserted)."""

import pathlib

import pytest

import installed_tool

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script,args,expected", [
    ("bench_numpy.py", ["--size=20000", "--repeats=1"], "x copy"),
    ("bench_ops.py", ["--size=20000", "--repeats=1"], "x copy"),
    ("bench_callback.py", ["--epochs=1", "--samples=128", "--model=MobileNetV2",
                           "--input_size=32", "--repeats=1"], "ratio clone / in place"),
    ("bench_convert.py", ["--total_mb=2", "--largest_mb=0.5", "--repeats=1"], "ratio"),
    ("bench_compensate.py", ["--samples=2"], "compensating every kernel"),
    ("bench_compression.py", ["--precisions=0.1"], "ratio threads / one thread"),
    ("bench_keras_paths.py", ["--model=MobileNetV2", "--input_size=32", "--repeats=1",
                              "--steps=1", "--batch=4", "--methods=fewest_ones"],
     "worst cells: strip ratio"),
    ("bench_morph_grid.py", ["--size=100000", "--repeats=1", "--precisions=0.1",
                             "--keep_bits=7", "--columns=8"], "worst numpy fewest_ones"),
    ("bench_estimate.py", ["--models=mobilenet_v2", "--input_size=32", "--alpha=0.35"],
     "ratio"),
])
def test_benchmark_runs_and_prints_ratios(script, args, expected):
  result = installed_tool.python(str(BENCHMARKS / script), *args, cwd=BENCHMARKS.parent)
  assert result.returncode == 0, result.stderr
  assert expected in result.stdout
