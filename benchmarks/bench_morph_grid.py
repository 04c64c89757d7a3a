"""Every morphing method over its whole settings grid, on both shapes, as ratios
to np.copy of the same array (issue 25's grid; nothing asserted).

Cases: paper and fewest_ones at every P of --precisions, round at every
keep_bits of --keep_bits, bitx at every column count of --columns (G = 64 on
the conv shape's reduction axes; the 1-D array is one group row), each on a
1-D array and on a conv kernel [3, 3, 512, 5400] (both about 25M float32,
N(0, 0.05)), through two entry points: mortar_tf.morph on numpy (numpy in, a
fresh numpy array out; measured first, before TensorFlow is imported) and
the TensorFlow op on a ready tensor (mortar_tf.ops.morph_spec). np.copy of the
same array and the case alternate round by round; each cell is the median of
the per-round ratios. The whole grid is printed, then the worst cell per
entry point.

  .venv/bin/python benchmarks/bench_morph_grid.py [--size=25000000] [--repeats=5] [--noop]
"""

import statistics

from absl import app
from absl import flags
import numpy as np

import mortar_tf
from mortar_tf import native
from mortar_tf.morphing import MorphSpec
import timing

_SIZE = flags.DEFINE_integer("size", 25_000_000, "Weights per array (the conv shape keeps "
                             "3x3x512 and scales its output channels).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Rounds per cell (median).")
_PRECISIONS = flags.DEFINE_list("precisions", ["1e-4", "1e-3", "0.01", "0.1", "0.3", "0.5"],
                                "P for paper and fewest_ones.")
_KEEP_BITS = flags.DEFINE_list("keep_bits", ["1", "3", "7", "11", "15"], "keep_bits for round.")
_COLUMNS = flags.DEFINE_list("columns", ["4", "8", "12"], "columns for bitx (G = 64).")
_OP = flags.DEFINE_bool("op", True, "Also time the TensorFlow op on a ready tensor.")


def _specs():
  out = []
  for method in ("paper", "fewest_ones"):
    out += [MorphSpec.create(method, float(p)) for p in _PRECISIONS.value]
  out += [MorphSpec.create("round", keep_bits=int(k)) for k in _KEEP_BITS.value]
  out += [MorphSpec.create("bitx", columns=int(c), group_size=64) for c in _COLUMNS.value]
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  rng = np.random.default_rng(0)
  cout = max(1, _SIZE.value // (9 * 512))
  shapes = {"1-D": (_SIZE.value,), f"conv [3,3,512,{cout}]": (3, 3, 512, cout)}
  arrays = {name: (rng.standard_normal(shape) * 0.05).astype(np.float32)
            for name, shape in shapes.items()}
  kernels = native.isa() if native.is_built() else f"numpy ({native.why_not_built()})"
  specs = _specs()
  ratios = {}  # (entry, spec index, shape name): median ratio
  # The numpy cells first, before TensorFlow is imported, as a numpy user runs
  # them: for a few seconds after TensorFlow's import (and its tensors' 200
  # MB), this machine's kernel compacts memory for transparent huge pages, and
  # two threads faulting fresh huge pages stall on it (a 25M paper morph took
  # 200 ms on two threads, 37 ms on one, 33 ms with THP off; np.copy 24 ms).
  # bitx's reduction axes: the conv kernel's, and the 1-D array's one row
  axes_of = {name: (0, 1, 2) if w.ndim == 4 else (0,) for name, w in arrays.items()}
  for i, spec in enumerate(specs):
    for name, w in arrays.items():
      grouping = {"reduction_axes": axes_of[name]} if spec.method == "bitx" else {}
      fn = lambda w=w, grouping=grouping: mortar_tf.morph(w, spec, **grouping)  # pylint: disable=cell-var-from-loop
      ratios[("numpy", i, name)] = statistics.median(timing.copy_ratios(fn, w, _REPEATS.value))
  entries = ["numpy"]
  if _OP.value:
    from mortar_tf import ops  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    if ops.is_built():
      entries.append("TF op")
      tensors = {name: tf.constant(w) for name, w in arrays.items()}
      for i, spec in enumerate(specs):
        for name, w in arrays.items():
          fn = lambda t=tensors[name], axes=axes_of[name]: ops.morph_spec(t, spec, axes)  # pylint: disable=cell-var-from-loop
          ratios[("TF op", i, name)] = statistics.median(
              timing.copy_ratios(fn, w, _REPEATS.value))
  print(f"kernels: {kernels}, {native.threads()} threads; ratio to np.copy of the same array, "
        f"median of {_REPEATS.value} alternating rounds (the numpy cells measured before "
        "TensorFlow was imported)")
  columns = [f"{entry}, {shape}" for entry in entries for shape in shapes]
  print("| case | " + " | ".join(columns) + " |")
  print("|---|" + "---|" * len(columns))
  worst = {}
  for i, spec in enumerate(specs):
    cells = []
    for entry in entries:
      for name in shapes:
        ratio = ratios[(entry, i, name)]
        cells.append(f"{ratio:.2f}")
        key = (entry, spec.method)
        if ratio > worst.get(key, (-1.0, ""))[0]:
          worst[key] = (ratio, f"{spec}, {name}")
    print(f"| {spec} | " + " | ".join(cells) + " |")
  for (entry, method), (ratio, where) in sorted(worst.items()):
    print(f"worst {entry} {method}: {ratio:.2f}x ({where})")

if __name__ == "__main__":
  app.run(main)
