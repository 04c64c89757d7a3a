"""The numpy entry points on 25M float32 conv weights, as ratios to np.copy.

Each case is timed --repeats times and so is np.copy of the same array, in
the same run, interleaved (copy, case, copy, case, ...), so both see the same
machine state; the ratio printed is the median of the per-round ratios, with
their spread (min..max). Also printed per case, as multiples of the array:
the bytes numpy allocated at the peak (tracemalloc) and the peak resident
memory above what was resident before the call (Linux's VmHWM, reset through
/proc/self/clear_refs; the result counts); and whether the result shares
memory with the input; and the import time of mortar_tf (which must not
load TensorFlow) against numpy's. The goals are issue 15's; nothing here is
asserted.

  .venv/bin/python benchmarks/bench_numpy.py [--size=25000000] [--repeats=7]
      [--reference]   # also time the numpy reference (slow: seconds per case)
"""

import re
import statistics
import subprocess
import sys
import tracemalloc

from absl import app
from absl import flags
import numpy as np

import mortar_tf
from mortar_tf import native
import timing

_SIZE = flags.DEFINE_integer("size", 25_000_000, "Number of float32 weights.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Rounds per case; the median ratio is reported.")
_REFERENCE = flags.DEFINE_bool("reference", False, "Also time the numpy reference.")


def _peak_allocated(fn):
  tracemalloc.start()
  try:
    result = fn()
    return tracemalloc.get_traced_memory()[1], result
  finally:
    tracemalloc.stop()


def _status_bytes(key):
  with open("/proc/self/status", encoding="ascii") as f:
    return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _peak_rss(fn):
  """Peak resident memory during fn() above the resident memory before it (bytes),
  or None where Linux's peak cannot be reset (/proc/self/clear_refs)."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")  # resets VmHWM to the current VmRSS
  except OSError:
    return None
  before = _status_bytes("VmRSS")
  result = fn()
  peak = _status_bytes("VmHWM")
  del result
  return peak - before


def _import_seconds(statement, repeats=3):
  times = []
  for _ in range(repeats):
    out = subprocess.run([sys.executable, "-c", f"import time, sys; t = time.perf_counter(); "
                          f"{statement}; print(time.perf_counter() - t, "
                          "'tensorflow' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    seconds, tf_loaded = out.stdout.split()
    times.append(float(seconds))
  return statistics.median(times), tf_loaded == "True"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  w = timing.conv_weights(_SIZE.value)
  repeats = _REPEATS.value
  copy = timing.median_seconds(lambda: np.copy(w), repeats)
  kernels = native.isa() if native.is_built() else f"numpy ({native.why_not_built()})"
  print(f"{w.size:,} float32 ({w.nbytes / 2**20:.0f} MiB), shape {w.shape}; np.copy "
        f"{copy * 1e3:.1f} ms; kernels: {kernels}, {native.threads()} threads; "
        f"ratios: median of {repeats} rounds against np.copy in the same round")
  conv = dict(layout="conv")
  cases = [  # (name, fn, goal)
      ("morph paper P=0.1", lambda: mortar_tf.morph(w, "paper", 0.1), 1.5),
      ("morph fewest_ones P=0.1", lambda: mortar_tf.morph(w, "fewest_ones", 0.1), 1.5),
      ("morph round keep_bits=7", lambda: mortar_tf.morph(w, "round", keep_bits=7), 1.5),
      ("morph bitx columns=8 G=16",
       lambda: mortar_tf.morph(w, "bitx", columns=8, group_size=16, **conv), 3.0),
      ("morph bitx columns=8 G=64",
       lambda: mortar_tf.morph(w, "bitx", columns=8, group_size=64, **conv), 3.0),
      ("count_ones word", lambda: mortar_tf.count_ones(w, "word"), 1.0),
      ("count_ones significand", lambda: mortar_tf.count_ones(w, "significand"), 1.0),
      ("bit_histogram word", lambda: mortar_tf.bit_histogram(w, "word"), 1.5),
      ("bit_histogram significand", lambda: mortar_tf.bit_histogram(w, "significand"), 1.5),
  ]
  for g in (16, 64):
    cases.append((f"aligned columns G={g}",
                  lambda g=g: mortar_tf.bit_histogram(w, "aligned", group_size=g, **conv), 3.0))
    cases.append((f"aligned + cycle figures G={g}",
                  lambda g=g: mortar_tf.aligned_statistics(w, group_size=g, **conv), 3.0))
  header = (f"{'case':32s} {'x copy':>7s} {'spread':>11s} {'goal':>5s}  {'peak alloc':>10s} "
            f"{'peak RSS':>8s} {'shares':>6s}")
  if _REFERENCE.value:
    header += f" {'numpy x copy':>12s}"
  print(header)
  for name, fn, goal in cases:
    ratios = timing.copy_ratios(fn, w, repeats)
    median = statistics.median(ratios)
    peak, result = _peak_allocated(fn)
    shares = "-" if not isinstance(result, np.ndarray) else (
        "yes" if np.shares_memory(result, w) else "no")
    del result
    rss = _peak_rss(fn)
    rss = "n/a" if rss is None else f"{max(0, rss) / w.nbytes:.2f}x"
    line = (f"{name:32s} {median:7.2f} {min(ratios):5.2f}..{max(ratios):<5.2f} {goal:5.1f}"
            f"{' ' if median <= goal else '!'} {peak / w.nbytes:9.2f}x {rss:>8s} {shares:>6s}")
    if _REFERENCE.value:
      reference = timing.copy_ratios(lambda fn=fn, name=name: _reference(name, w), w, 1)
      line += f" {reference[0]:12.1f}"
    print(line)
  numpy_import, _ = _import_seconds("import numpy")
  ours, tf_loaded = _import_seconds("import mortar_tf; mortar_tf.morph(__import__('numpy')"
                                    ".float32([1.5]), 'paper', 0.1)")
  print(f"import mortar_tf and one morph: {ours * 1e3:.0f} ms (import numpy alone "
        f"{numpy_import * 1e3:.0f} ms); TensorFlow loaded: {'yes' if tf_loaded else 'no'}")


def _reference(name, w):
  """The numpy reference of a case, by its name."""
  kwargs = {"backend": "numpy"}
  if name.startswith("morph"):
    method = name.split()[1]
    if method == "bitx":
      g = int(name.rsplit("=", 1)[1])
      return mortar_tf.morph(w, "bitx", columns=8, group_size=g, layout="conv", **kwargs)
    settings = {"paper": {"precision": 0.1}, "fewest_ones": {"precision": 0.1},
                "round": {"keep_bits": 7}}[method]
    return mortar_tf.morph(w, method, **settings, **kwargs)
  if name.startswith(("count_ones", "bit_histogram")):
    fn, domain = name.split()
    return getattr(mortar_tf, fn)(w, domain, **kwargs)
  g = int(name.rsplit("=", 1)[1])
  if "figures" in name:
    return mortar_tf.aligned_statistics(w, group_size=g, layout="conv", **kwargs)
  return mortar_tf.bit_histogram(w, "aligned", group_size=g, layout="conv", **kwargs)


if __name__ == "__main__":
  app.run(main)
