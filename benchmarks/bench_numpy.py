"""Times the numpy reference on 25M float32 against np.copy of the same array.

Prints ratios (time / copy time, median of --repeats runs, copy measured in the
same run). Not asserted anywhere: run it by hand after touching a hot path.

  .venv/bin/python benchmarks/bench_numpy.py [--size=25000000] [--repeats=3]
"""

from absl import app
from absl import flags
import numpy as np

import mortar_tf
import timing

_SIZE = flags.DEFINE_integer("size", 25_000_000, "Number of float32 weights.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per case; the median is reported.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  w = timing.conv_weights(_SIZE.value)
  repeats = _REPEATS.value
  copy = timing.median_seconds(lambda: np.copy(w), repeats)
  print(f"{w.size:,} float32 ({w.nbytes / 2**20:.0f} MiB), shape {w.shape}; "
        f"np.copy {copy * 1e3:.1f} ms (median of {repeats})")
  cases = [
      ("morph paper P=0.1", lambda: mortar_tf.morph(w, "paper", 0.1)),
      ("morph fewest_ones P=0.1", lambda: mortar_tf.morph(w, "fewest_ones", 0.1)),
      ("morph round keep_bits=7", lambda: mortar_tf.morph(w, "round", keep_bits=7)),
      ("morph bitx columns=8 (conv)", lambda: mortar_tf.morph(w, "bitx", columns=8,
                                                              layout="conv")),
  ]
  for domain in ("significand", "word", "aligned"):
    cases.append((f"count_ones {domain}", lambda d=domain: mortar_tf.count_ones(w, d)))
    cases.append((f"bit_histogram {domain}", lambda d=domain: mortar_tf.bit_histogram(w, d)))
  print(f"{'case':34s} {'ms':>9s} {'x copy':>8s}")
  for name, fn in cases:
    seconds = timing.median_seconds(fn, repeats)
    print(f"{name:34s} {seconds * 1e3:9.1f} {seconds / copy:8.1f}")


if __name__ == "__main__":
  app.run(main)
