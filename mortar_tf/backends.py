"""The public entry points, and the one place that chooses who computes.

`morph`, `count_ones`, `bit_histogram` and `aligned_statistics` run on one of:

* ``"native"`` — the C++ kernels on the numpy buffer (mortar_tf/native.py,
  no TensorFlow, no copies): the default for numpy input when built;
* ``"op"`` — the same C++ kernels as TensorFlow ops (mortar_tf.ops);
* ``"tf"`` — TensorFlow ops only (morph only; exportable, XLA-compilable):
  the default for morphing a tf.Tensor or tf.Variable, so graphs never need a
  library of ours;
* ``"numpy"`` — the reference (mortar_tf.bits, mortar_tf.morphing), which
  every other backend is tested against bit for bit.

With ``backend=None`` numpy input goes to "native", or to "numpy" with one
RuntimeWarning when the library is missing. TensorFlow is imported only by
the "op" and "tf" paths, and only when used: ``import mortar_tf`` and every
numpy-only path leave it unloaded.

This module sits above bits and morphing (the references) and native/ops (the
kernels); none of them imports it.

Example:
  >>> import numpy as np
  >>> morph(np.float32([1.375, 1.6]), "paper", precision=0.1)
  array([1.5  , 1.625], dtype=float32)
  >>> count_ones(np.float32([1.5, -0.0]), domain="significand")
  2
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np

from mortar_tf import bits
from mortar_tf import morphing
from mortar_tf import native

BACKENDS = ("numpy", "native", "op", "tf")
COUNT_BACKENDS = ("numpy", "native", "op")
# The C++ kernels' largest group: backend=None runs a larger one in numpy (same
# bits); backend="native" or "op" asked for by name refuses it.
MAX_KERNEL_GROUP_SIZE = native.MAX_GROUP_SIZE
# Non-adjacent reduction axes are transposed this many elements at a time.
_SLICE_ELEMENTS = 1 << 20

_warned = False


def _tf():
  """TensorFlow if the caller has imported it (a TF tensor can exist only then)."""
  return sys.modules.get("tensorflow")


def _is_tf(w) -> bool:
  tf = _tf()
  return tf is not None and (tf.is_tensor(w) or isinstance(w, tf.Variable))


def _warn_fallback(what: str) -> None:
  global _warned
  if not _warned:
    _warned = True
    warnings.warn(f"mortar_tf native kernels are not available ({native.why_not_built()}); "
                  f"{what} uses the numpy implementation, which is slower but gives the same "
                  "bits", RuntimeWarning, stacklevel=4)


def _check_kernel_group(backend, group_size) -> None:
  """A kernel backend asked for by name refuses a group past its counters
  (backend=None runs such a group in numpy instead, with the same bits)."""
  if backend in ("native", "op") and group_size is not None and \
      group_size > MAX_KERNEL_GROUP_SIZE:
    raise ValueError(f"backend={backend!r} takes group_size up to {MAX_KERNEL_GROUP_SIZE}, "
                     f"got {group_size} (the default or 'numpy' backend runs any size)")


def _ops(group_size=None):
  _check_kernel_group("op", group_size)
  from mortar_tf import ops  # pylint: disable=import-outside-toplevel
  if not ops.is_built():
    raise RuntimeError(f"backend='op' but the op library is not available: "
                       f"{ops.why_not_built()}")
  return ops


def op_morphs(spec: morphing.MorphSpec) -> bool:
  """True when the TF op can morph with `spec`: its library loaded and, for
  bitx, groups its counters hold (larger ones run in numpy or TF ops, with the
  same bits). Loads the op library (and TensorFlow) on first use."""
  if spec.method == "bitx" and spec.group_size > MAX_KERNEL_GROUP_SIZE:
    return False
  from mortar_tf import ops  # pylint: disable=import-outside-toplevel
  return ops.is_built()


def native_isa() -> str:
  """The instruction set the native kernels run on ("avx512", "avx2",
  "baseline", "portable"), or "numpy" where they are not built."""
  return native.isa() if native.is_built() else "numpy"


def resolve(backend: str | None, what: str, allowed=COUNT_BACKENDS) -> str:
  """The backend that runs `what` on numpy data: `backend`, or the default.

  Raises:
    ValueError: an unknown backend, or one that does not run `what`.
    RuntimeError: "native" or "op" asked for but not built.
  """
  if backend is None:
    if native.is_built():
      return "native"
    _warn_fallback(what)
    return "numpy"
  if backend not in allowed:
    raise ValueError(f"unknown backend {backend!r} for {what}; expected one of "
                     f"{', '.join(allowed)}")
  if backend == "native" and not native.is_built():
    raise RuntimeError(f"backend='native' but the native kernels are not available: "
                       f"{native.why_not_built()}")
  return backend


# --------------------------------------------------------------------------
# Reduction axes that are not adjacent (no grouped view): sliced


def _slices(w: np.ndarray, axes):
  """For reduction axes that are not adjacent: (index range, [n_out, R] matrix) per
  slice of the first output axis (about _SLICE_ELEMENTS each), so only one slice
  is transposed at a time. Output elements run row-major over the output axes,
  so a slice's rows follow the previous slice's."""
  out_axes = [a for a in range(w.ndim) if a not in axes]
  first = out_axes[0]
  size = w.shape[first]
  step = max(1, size * _SLICE_ELEMENTS // max(1, w.size))
  perm = out_axes + list(axes)
  r = math.prod(w.shape[a] for a in axes)
  for start in range(0, size, step):
    index = [slice(None)] * w.ndim
    index[first] = slice(start, min(start + step, size))
    part = w[tuple(index)]
    yield index, np.ascontiguousarray(np.transpose(part, perm)).reshape(-1, r)


# --------------------------------------------------------------------------
# Counting


def _values(w, what: str) -> np.ndarray:
  """The float32 values of an array or an eager tensor (a symbolic one has none)."""
  if _is_tf(w) and not _tf().executing_eagerly():
    raise ValueError(f"{what} reads the weights' values: call it eagerly, not inside "
                     "tf.function (mortar_tf.morph(..., backend='tf') runs in graphs)")
  return bits.as_float32(w)


def _check_count_args(w, domain, layout, reduction_axes, equation, group_size, width):
  if domain not in bits.DOMAINS:
    raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(bits.DOMAINS)}")
  w = _values(w, "counting")
  axes = None
  if domain == "aligned":
    group_size, width = bits.check_group_args(group_size, width)
    axes = bits.resolve_reduction_axes(w.shape, reduction_axes, layout, equation)
  return w, axes, group_size, width


def _count(what, w, domain, layout, reduction_axes, equation, group_size, width, backend):
  """count_ones (`what` = "count_ones") or bit_histogram on the chosen backend."""
  w, axes, group_size, width = _check_count_args(w, domain, layout, reduction_axes, equation,
                                                 group_size, width)
  if domain == "aligned":
    _check_kernel_group(backend, group_size)
  backend = resolve(backend, what)
  if backend == "numpy":
    reference = bits.count_ones if what == "count_ones" else bits.bit_histogram
    return reference(w, domain, reduction_axes=axes, group_size=group_size, width=width)
  histogram, total = _counts(w, domain, axes, group_size, width, backend)
  return total if what == "count_ones" else histogram


def _counts(w, domain, axes, group_size, width, backend):
  """(histogram most significant first, total) on a native or op backend."""
  if domain == "aligned":
    columns, _, _ = _aligned(w, axes, group_size, width, 8, False, backend)
    return columns, int(columns.sum())
  if backend == "op":
    histogram, total = _ops().bit_count(w, domain)
    return np.asarray(histogram.numpy(), np.int64), int(total.numpy())
  counts = native.count_bits(w, significand=domain == "significand")
  histogram = counts[:bits.DOMAIN_BITS[domain]][::-1].copy()
  return histogram, int(histogram.sum())


def count_ones(w, domain: str = "significand", *, layout: str | None = None,
               reduction_axes=None, equation: str | None = None,
               group_size: int = bits.DEFAULT_GROUP_SIZE, width: int = bits.DEFAULT_WIDTH,
               backend: str | None = None) -> int:
  """Number of 1 bits of float32 weights in one domain (SPEC 1).

  Args:
    w: float32 weights (numpy, tf.Tensor or tf.Variable).
    domain: "significand" (24 bits with the hidden one; specials count 0),
      "word" (all 32 bits) or "aligned" (bits inside the exponent-matched
      window of each group, SPEC 3).
    layout, reduction_axes, equation, group_size, width: the grouping of the
      "aligned" domain; ignored by the others (reduction axes default to all
      but the last, which is right for dense and conv kernels).
    backend: "native", "op", "numpy", or None (native when built).

  Returns:
    A Python int.

  Raises:
    TypeError: not float32.
    ValueError: unknown domain, backend or bad grouping arguments.
    RuntimeError: a backend asked for that is not built.

  Example (one group: 0.375 sits 3 binades below 3.0, past a 3-column window):
    >>> count_ones(np.float32([[3.0], [0.375]]), "aligned", group_size=2, width=3)
    2
  """
  return _count("count_ones", w, domain, layout, reduction_axes, equation, group_size, width,
                backend)


def ones_by_domain(w, *, backend: str | None = None, **grouping) -> dict[str, int]:
  """count_ones in every domain: {"significand": .., "word": .., "aligned": ..}."""
  return {domain: count_ones(w, domain, backend=backend, **grouping) for domain in bits.DOMAINS}


def bit_histogram(w, domain: str = "significand", *, layout: str | None = None,
                  reduction_axes=None, equation: str | None = None,
                  group_size: int = bits.DEFAULT_GROUP_SIZE, width: int = bits.DEFAULT_WIDTH,
                  backend: str | None = None) -> np.ndarray:
  """Ones per bit position, most significant first (SPEC 1 and 3).

  Returns an int64 array of 32 counts (`word`: sign, 8 exponent bits, 23
  mantissa bits), 24 (`significand`: hidden bit first) or `width` (`aligned`:
  column 0 first, the "arched" profile of the paper's figure).

  Args and Raises: as count_ones.

  Example:
    >>> bit_histogram(np.float32([1.5]), "significand")[:3]
    array([1, 1, 0])
  """
  return _count("bit_histogram", w, domain, layout, reduction_axes, equation, group_size, width,
                backend)


def aligned_statistics(w, *, layout: str | None = None, reduction_axes=None,
                       equation: str | None = None, group_size: int = bits.DEFAULT_GROUP_SIZE,
                       width: int = bits.DEFAULT_WIDTH, window: int = 8,
                       backend: str | None = None):
  """Aligned columns and per-group cycle figures of one weight (SPEC 3 and 4).

  Returns:
    (columns, lane_max, bitlet): ones per column (int64 [width], column 0
    first); per output element and group (int32 [n_out, groups]) the most
    ones in one lane (Pragmatic's and Mortar's cycles, >= 0) and Bitlet's
    cycles (max over columns of ones + all-zero windows of `window` lanes, at
    least 1). Output elements run in the row-major order of the output axes.

  Raises:
    TypeError, ValueError, RuntimeError: as count_ones, and a bad window.
  """
  w = _values(w, "aligned_statistics")
  group_size, width = bits.check_group_args(group_size, width)
  if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
    raise ValueError(f"window must be an integer >= 1, got {window!r}")
  axes = bits.resolve_reduction_axes(w.shape, reduction_axes, layout, equation)
  _check_kernel_group(backend, group_size)
  # a window of G lanes or more is one window over the group: the same figures
  return _aligned(w, axes, group_size, width, int(min(window, group_size)), True,
                  resolve(backend, "aligned_statistics"))


def _aligned(w, axes, group_size, width, window, figures, backend):
  if backend == "numpy" or (backend == "native" and group_size > MAX_KERNEL_GROUP_SIZE):
    columns = bits.bit_histogram(w, "aligned", reduction_axes=axes, group_size=group_size,
                                 width=width)
    if not figures:
      return columns, None, None
    lane_max, bitlet = bits.group_cycle_figures(w, reduction_axes=axes, group_size=group_size,
                                                width=width, window=window)
    return columns, lane_max, bitlet
  if backend == "op":
    columns, _, lane_max, bitlet = _ops(group_size).aligned_count(
        w, reduction_axes=axes, group_size=group_size, width=width, window=window)
    return np.asarray(columns.numpy(), np.int64), lane_max.numpy(), bitlet.numpy()
  view = bits.grouped_view(w.shape, axes)
  if view is not None:
    return native.aligned(w, view, group_size, width, window, figures)
  columns = np.zeros(width, np.int64)
  lane_max, bitlet = [], []
  for _, matrix in _slices(w, axes):
    part = native.aligned(matrix, (matrix.shape[0], matrix.shape[1], 1), group_size, width,
                          window, figures)
    columns += part[0]
    lane_max.append(part[1])
    bitlet.append(part[2])
  if not figures:
    return columns, None, None
  groups = -(-math.prod(w.shape[a] for a in axes) // group_size)
  empty = np.zeros((0, groups), np.int32)
  return (columns, np.concatenate(lane_max) if lane_max else empty,
          np.concatenate(bitlet) if bitlet else empty)


# --------------------------------------------------------------------------
# Morphing


def _bitx_native(w: np.ndarray, spec, axes) -> np.ndarray:
  if spec.group_size > MAX_KERNEL_GROUP_SIZE:
    return morphing.morph_numpy(w, spec, axes)
  view = bits.grouped_view(w.shape, axes)
  if view is not None:
    return native.bitx(w, view, spec.group_size, spec.columns)
  out = np.empty(w.shape, np.float32)
  out_axes = [a for a in range(w.ndim) if a not in axes]
  perm = out_axes + list(axes)
  for index, matrix in _slices(w, axes):
    pruned = native.bitx(matrix, (matrix.shape[0], matrix.shape[1], 1), spec.group_size,
                         spec.columns)
    target = out[tuple(index)]
    target[...] = np.transpose(pruned.reshape([target.shape[a] for a in perm]),
                               np.argsort(perm))
  return out


def _morph_native(w: np.ndarray, spec, axes) -> np.ndarray:
  if spec.method == "bitx":
    return _bitx_native(w, spec, axes)
  return native.morph(w, spec.method, spec.precision or 1.0, spec.keep_bits or 0)


def morph(w, method="paper", precision=None, *, keep_bits=None, columns=None,
          group_size=None, width=None, layout=None, reduction_axes=None, equation=None,
          backend: str | None = None):
  """Morphs float32 weights to nearby values with fewer 1 bits (SPEC 2).

  Args:
    w: float32 numpy array, tf.Tensor or tf.Variable (read, never assigned).
    method: "paper", "fewest_ones", "round" or "bitx", or a MorphSpec (then
      none of the settings below may be given: they are the spec's).
    precision: P, 0 < P <= 1 (paper, fewest_ones; default 0.1). Converted with
      float(): np.float32(0.1) is not 0.1.
    keep_bits: explicit mantissa bits kept, 0..23 (round).
    columns: aligned columns kept, 1..width (bitx).
    group_size, width: the grouping of bitx (default bits.DEFAULT_GROUP_SIZE
      and bits.DEFAULT_WIDTH, 64 and 24: the engines' geometry).
    layout, reduction_axes, equation: which axes bitx groups along (SPEC 3);
      default: all axes but the last.
    backend: "native", "op", "tf" or "numpy" (see the module docstring).
      Default: for numpy input "native" when built (else numpy, with one
      warning), for TF input "tf" (so graphs never need a library of ours).
      Each backend runs on any input kind; the result has the input's kind.

  Returns:
    A new array (numpy input) or tf.Tensor (TF input) of the same shape.

  Raises:
    TypeError: the weights are not float32.
    ValueError: a bad method, argument or backend; a MorphSpec together with
      flat settings.
    RuntimeError: backend="native" or "op" without its library.

  Example:
    >>> morph(np.float32([1.375]), "fewest_ones", precision=0.1)
    array([1.25], dtype=float32)
    >>> morph(np.float32([1.375]), morphing.MorphSpec("fewest_ones", 0.1))
    array([1.25], dtype=float32)
  """
  spec = morphing.as_spec(method, precision, keep_bits=keep_bits, columns=columns,
                          group_size=group_size, width=width)
  if spec.method != "bitx" and (layout, reduction_axes, equation) != (None, None, None):
    raise ValueError(f"method {spec.method!r} works per weight; layout/reduction_axes/equation "
                     "only apply to 'bitx'")
  if backend is not None and backend not in BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
  if spec.method == "bitx":
    _check_kernel_group(backend, spec.group_size)
  tf_input = _is_tf(w)
  if tf_input:
    dtype = w.dtype.base_dtype if hasattr(w.dtype, "base_dtype") else w.dtype
    if dtype.name != "float32":
      raise TypeError(f"weights must be float32, got {dtype.name}")
    shape = tuple(w.shape)
  else:
    w = bits.as_float32(w)
    shape = w.shape
  axes = ()
  if spec.method == "bitx":
    if None in shape:
      raise ValueError(f"bitx needs a fully known weight shape, got {shape}")
    axes = bits.resolve_reduction_axes(shape, reduction_axes, layout, equation)

  if backend is None:
    backend = "tf" if tf_input else resolve(None, "morph")
  if backend == "op":
    result = _ops(spec.group_size).morph_spec(w, spec, axes)
    return result if tf_input else np.asarray(result.numpy())
  if backend in ("numpy", "native"):
    resolve(backend, "morph", BACKENDS)
    run = morphing.morph_numpy if backend == "numpy" else _morph_native
    if tf_input:
      tf = _tf()
      if not tf.executing_eagerly():
        raise ValueError(f"backend={backend!r} needs eager tensors; inside tf.function use "
                         "backend='tf'")
      return tf.constant(run(np.asarray(w), spec, axes))
    return run(w, spec, axes)
  from mortar_tf import morph_tf  # pylint: disable=import-outside-toplevel
  result = morph_tf.morph_tensor(w, spec, axes)
  return result if tf_input else np.asarray(result.numpy())


def max_relative_error(original, morphed) -> float:
  """max |x' - x| / |x| over the nonzero finite elements of x (0.0 if none; NaN
  when such an x' is NaN).

  Works in float64 (exact for float32 inputs): float32 arrays of one shape in
  the C++ kernel when it is built (one pass, threads), else numpy on chunks of
  2^16 elements, so the temporaries stay small however large the arrays are.
  Both give the same bits (tested).
  """
  x_all = np.asarray(original)
  y_all = np.asarray(morphed)
  if (native.is_built() and x_all.dtype == np.float32 and y_all.dtype == np.float32
      and x_all.shape == y_all.shape):
    return native.max_rel_error(x_all, y_all)
  return _max_relative_error_numpy(x_all, y_all)


def _max_relative_error_numpy(x_all: np.ndarray, y_all: np.ndarray) -> float:
  x_all = x_all.reshape(-1)
  y_all = y_all.reshape(-1)
  worst = 0.0
  chunk = 1 << 16
  for start in range(0, x_all.size, chunk):
    x = x_all[start:start + chunk].astype(np.float64)
    y = y_all[start:start + chunk].astype(np.float64)
    keep = np.isfinite(x) & (x != 0)
    if keep.any():
      worst = max(worst, float(np.max(np.abs(y[keep] - x[keep]) / np.abs(x[keep]))))
  return worst


# --------------------------------------------------------------------------
# Raw passes for streaming writers (the SavedModel converter's patch route):
# native only, no argument checks beyond the kernels' own.


def native_built() -> bool:
  """True when the native kernels load in this process."""
  return native.is_built()


def crc32c(data, crc: int = 0) -> int:
  """CRC-32C of a bytes-like object or an array's bytes (read in place),
  continuing from `crc` (the CRC-32C of the bytes before).

  Raises:
    RuntimeError: the native kernels are not built.
  """
  if not native.is_built():
    raise RuntimeError(f"CRC-32C needs the native kernels: {native.why_not_built()}")
  return native.crc32c(data, crc)


def morph_words_into(x: np.ndarray, out: np.ndarray, spec: morphing.MorphSpec) -> np.ndarray:
  """paper, fewest_ones or round of float32 `x` into `out` (native; the same
  bits as morph)."""
  return native.morph(x, spec.method, spec.precision or 1.0, spec.keep_bits or 0, out=out)


def pair_statistics_many(pairs, group_size: int, width: int) -> list[tuple[dict, dict, float]]:
  """pair_statistics of each (x, y, view): one native call for all of them
  where the library is built and takes the group size, else composed of
  ones_by_domain and max_relative_error (the same numbers: tested)."""
  pairs = [(np.ascontiguousarray(x), np.ascontiguousarray(y), tuple(view))
           for x, y, view in pairs]
  if (native.is_built() and group_size <= native.MAX_GROUP_SIZE
      and all(x.dtype == np.float32 and y.dtype == np.float32 and x.shape == y.shape
              for x, y, _ in pairs)):
    return [({"significand": counts[1], "word": counts[0], "aligned": counts[2]},
             {"significand": counts[4], "word": counts[3], "aligned": counts[5]}, error)
            for counts, error in native.pair_records(pairs, group_size, width)]
  grouping = {"reduction_axes": (1,), "group_size": group_size, "width": width}
  return [(ones_by_domain(x.reshape(view), **grouping),
           ones_by_domain(y.reshape(view), **grouping), max_relative_error(x, y))
          for x, y, view in pairs]


def pair_statistics(x: np.ndarray, y: np.ndarray, view: tuple[int, int, int],
                    group_size: int, width: int) -> tuple[dict, dict, float]:
  """(ones_by_domain of x, of y, max_relative_error(x, y)) with both read as
  the grouped [a, r, b] `view`: what a morph's record needs of one chunk,
  read while it is in cache (pair_statistics_many of the one pair)."""
  return pair_statistics_many([(x, y, view)], group_size, width)[0]
