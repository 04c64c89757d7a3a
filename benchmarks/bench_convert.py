"""Time and peak memory of the SavedModel converter on a synthetic model.

Builds a SavedModel of `--total_mb` of float32 variables in tensors of
`--largest_mb` (a Dense chain, so every variable is a kernel), then converts
it in a fresh process and prints:
  - time as a ratio to copying the SavedModel directory (same run, same disk);
  - throughput in MiB of variables per second of conversion (goal >= 500 MB/s);
  - peak RSS above the process's RSS once TensorFlow and mortar_tf are
    imported, as a multiple of the largest tensor (goal: <= 2x);
for each checkpoint route (`--checkpoint`: the default patch route, and
TensorFlow's restore/save route as the baseline), in the same run.

  python benchmarks/bench_convert.py                 # ~1 GB
  python benchmarks/bench_convert.py --total_mb=8192 --keep=/big/disk  # 8 GB
  python benchmarks/bench_convert.py --total_mb=8 --largest_mb=2
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

from absl import app
from absl import flags

_TOTAL_MB = flags.DEFINE_float("total_mb", 1024, "Megabytes of float32 variables.")
_LARGEST_MB = flags.DEFINE_float("largest_mb", 128, "Megabytes per variable.")
_METHOD = flags.DEFINE_enum("method", "paper", ["paper", "fewest_ones", "round", "bitx"],
                            "Morphing method (round keeps 7 bits, bitx 8 columns).")
_PRECISION = flags.DEFINE_float("precision", 0.1, "P (not for round and bitx).")
_KEEP = flags.DEFINE_string("keep", None, "Keep the models in this directory.")
_ROUTES = flags.DEFINE_list("checkpoint", ["patch", "tensorflow"],
                            "Checkpoint routes of convert() to time, in this order.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Conversions per route, the routes alternating (the page cache's state "
    "after one run favours the next: the median of each route is printed).")

BUILD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    out, count, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    class Chain(tf.Module):
      def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernels = []
        for i in range(count):  # one numpy temporary at a time
          value = rng.standard_normal((side, side), dtype=np.float32)
          value *= 0.05
          self.kernels.append(tf.Variable(value, name=f"k{i}"))
          del value

      @tf.function(input_signature=[tf.TensorSpec([None, side], tf.float32)])
      def __call__(self, x):
        for k in self.kernels:
          x = tf.matmul(x, k)
        return x

    module = Chain()
    tf.saved_model.save(module, out, signatures=module.__call__)
""")

CONVERT = textwrap.dedent("""
    import json, resource, sys, time
    import tensorflow as tf
    from mortar_tf import savedmodel
    def rss_peak():
      return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = rss_peak()
    start = time.perf_counter()
    settings = {"paper": {"precision": float(sys.argv[4])},
                "fewest_ones": {"precision": float(sys.argv[4])},
                "round": {"keep_bits": 7}, "bitx": {"columns": 8}}[sys.argv[3]]
    report = savedmodel.convert(sys.argv[1], sys.argv[2], sys.argv[3], checkpoint=sys.argv[5],
                                **settings)
    print(json.dumps({"seconds": time.perf_counter() - start, "base": base,
                      "peak": rss_peak(), "route": report.checkpoint}))
""")


def _run(code, *args):
  result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, check=False, cwd=tempfile.gettempdir(),
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  if result.returncode != 0:
    raise RuntimeError(result.stderr[-3000:])
  return result.stdout


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  side = max(8, int((_LARGEST_MB.value * 2**20 / 4) ** 0.5))
  largest = side * side * 4
  count = max(1, round(_TOTAL_MB.value * 2**20 / largest))
  root = _KEEP.value or tempfile.mkdtemp(prefix="bench_convert_")
  os.makedirs(root, exist_ok=True)
  src, copy, dst = (os.path.join(root, n) for n in ("src", "copy", "dst"))
  for path in (src, copy, dst):
    shutil.rmtree(path, ignore_errors=True)
  results = []
  try:
    _run(BUILD, src, count, side)
    start = time.perf_counter()
    shutil.copytree(src, copy)
    copy_seconds = time.perf_counter() - start
    shutil.rmtree(copy)
    runs = {route: [] for route in _ROUTES.value}
    for _ in range(_REPEATS.value):
      for route in _ROUTES.value:
        os.sync()  # what was just written is on disk: no writeback runs during the conversion
        runs[route].append(json.loads(_run(CONVERT, src, dst, _METHOD.value, _PRECISION.value,
                                           route).strip().splitlines()[-1]))
        shutil.rmtree(dst)
    for route, stats in runs.items():
      stats.sort(key=lambda s: s["seconds"])
      median = dict(stats[len(stats) // 2])
      median["all"] = [s["seconds"] for s in stats]
      median["peak"] = max(s["peak"] for s in stats)
      results.append((route, median))
  finally:
    if not _KEEP.value:
      shutil.rmtree(root, ignore_errors=True)
  total = count * largest
  print(f"SavedModel: {count} kernels of {side}x{side} float32 = {total / 2**20:.0f} MiB "
        f"(largest tensor {largest / 2**20:.1f} MiB), method {_METHOD.value}"
        + (f" P={_PRECISION.value}" if _METHOD.value in ("paper", "fewest_ones") else "")
        + f"; copytree {copy_seconds:.2f} s ({total / 2**20 / copy_seconds:.0f} MiB/s)")
  for route, stats in results:
    above = stats["peak"] - stats["base"]
    print(f"checkpoint={route} ({stats['route']}): convert {stats['seconds']:.2f} s (median of "
          f"{', '.join(f'{t:.2f}' for t in stats['all'])}) = "
          f"{stats['seconds'] / copy_seconds:.1f}x copy ratio, "
          f"{total / 2**20 / stats['seconds']:.0f} MiB/s (goal >= 477 MiB/s = 500 MB/s); "
          f"peak RSS {stats['peak'] / 2**20:.0f} MiB, after imports "
          f"{stats['base'] / 2**20:.0f} MiB: +{above / 2**20:.0f} MiB = "
          f"{above / largest:.2f}x the largest tensor ratio (goal <= 2x; the model is "
          f"{total / largest:.0f}x)")


if __name__ == "__main__":
  app.run(main)
