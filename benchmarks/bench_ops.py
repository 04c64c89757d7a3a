"""Times the C++ ops on 25M float32 against np.copy, and against the numpy reference.

Prints, per case, the op's time (median of --repeats) as a ratio to np.copy of
the same array in the same run, and the numpy reference's time over the op's.
The op is fed a tf.Tensor made once, so the ratio is the kernel, not the
numpy-to-tensor copy. Not asserted anywhere: run it after touching a kernel.

  .venv/bin/python benchmarks/bench_ops.py [--size=25000000] [--repeats=5]
"""

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import mortar_tf
from mortar_tf import ops
import timing

_SIZE = flags.DEFINE_integer("size", 25_000_000, "Number of float32 weights.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Runs per case; the median is reported.")
_NUMPY = flags.DEFINE_bool("numpy", True, "Also time the numpy reference (slow).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not ops.is_built():
    raise app.UsageError(f"the op library is not built: {ops.why_not_built()}")
  w = timing.conv_weights(_SIZE.value)
  t = tf.constant(w)
  matrix = tf.constant(np.ascontiguousarray(w.reshape(-1, w.shape[-1]).T))  # [cout, 9*cin]
  repeats = _REPEATS.value
  copy = timing.median_seconds(lambda: np.copy(w), repeats)
  print(f"{w.size:,} float32 ({w.nbytes / 2**20:.0f} MiB); np.copy {copy * 1e3:.1f} ms "
        f"(median of {repeats}); threads: TF's CPU pool")
  lib = ops._LIB  # pylint: disable=protected-access
  p = tf.constant(0.1, tf.float64)
  cases = [
      ("bit_count word", lambda: lib.mortar_bit_count(x=t, domain="word")[1].numpy(),
       lambda: mortar_tf.bit_histogram(w, "word", backend="numpy")),
      ("bit_count significand", lambda: lib.mortar_bit_count(x=t, domain="significand")[1].numpy(),
       lambda: mortar_tf.bit_histogram(w, "significand", backend="numpy")),
      ("mantissa_morph paper P=0.1",
       lambda: lib.mortar_morph(x=t, precision=p, method="paper").shape,
       lambda: mortar_tf.morph(w, "paper", 0.1, backend="numpy")),
      ("mantissa_morph fewest_ones P=0.1",
       lambda: lib.mortar_morph(x=t, precision=p, method="fewest_ones").shape,
       lambda: mortar_tf.morph(w, "fewest_ones", 0.1, backend="numpy")),
      ("mantissa_morph round keep_bits=7",
       lambda: lib.mortar_morph(x=t, precision=p, method="round", keep_bits=7).shape,
       lambda: mortar_tf.morph(w, "round", keep_bits=7, backend="numpy")),
      ("bitx columns=8 G=16 (conv)",
       lambda: mortar_tf.morph(t, "bitx", columns=8, group_size=16, layout="conv",
                               backend="op").shape,
       lambda: mortar_tf.morph(w, "bitx", columns=8, group_size=16, layout="conv",
                               backend="numpy")),
      ("aligned G=16 width=24 (+cycles)",
       lambda: lib.mortar_aligned_count(x=matrix, group_size=16, width=24)[1].numpy(),
       lambda: mortar_tf.bit_histogram(w, "aligned", group_size=16, layout="conv",
                                       backend="numpy")),
  ]
  print(f"{'case':36s} {'op ms':>8s} {'x copy':>7s} {'numpy ms':>9s} {'op speedup':>10s}")
  for name, op_fn, numpy_fn in cases:
    op_seconds = timing.median_seconds(op_fn, repeats, warmup=True)
    line = f"{name:36s} {op_seconds * 1e3:8.1f} {op_seconds / copy:7.2f}"
    if _NUMPY.value:
      numpy_seconds = timing.median_seconds(numpy_fn, max(1, repeats // 2), warmup=True)
      line += f" {numpy_seconds * 1e3:9.1f} {numpy_seconds / op_seconds:9.1f}x"
    print(line)


if __name__ == "__main__":
  app.run(main)
