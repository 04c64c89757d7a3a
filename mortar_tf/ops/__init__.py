"""The C++ kernels as TensorFlow ops: bit statistics and morphing at memory speed.

`is_built()` says whether the op library loaded. mortar_tf.morph,
count_ones and bit_histogram run these ops with ``backend="op"``; on numpy
arrays they default to the same kernels without TensorFlow
(mortar_tf.native). Importing this module imports TensorFlow. MorphWrapper's
forward pass uses them only where its graph stays in this process (eager, and
training steps without XLA; see mortar_tf.keras.wrapper): exported models never
need the .so.

Example:
  >>> import numpy as np
  >>> if is_built():
  ...   histogram, total = bit_count(np.float32([1.5]), "significand")
  ...   print(int(total))
  ... else:
  ...   print(2)
  2
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from mortar_tf import bits
from mortar_tf import morphing
from mortar_tf.ops import _loader

_LIB, _WHY_NOT = _loader.load()

if _LIB is not None:

  @tf.RegisterGradient("MortarMorph")
  def _morph_gradient(op, grad):  # pylint: disable=unused-argument
    """Straight-through: the morphed weight passes the gradient on unchanged."""
    return [grad, None]

  @tf.RegisterGradient("MortarBitx")
  def _bitx_gradient(op, grad):  # pylint: disable=unused-argument
    """Straight-through, as for MortarMorph."""
    return [grad]


def is_built() -> bool:
  """True when the op library loaded in this process."""
  return _LIB is not None


def why_not_built() -> str:
  """Why is_built() is False ("" when it is True)."""
  return _WHY_NOT


def _library():
  if _LIB is None:
    raise RuntimeError(f"mortar_tf ops are not available: {_WHY_NOT}")
  return _LIB


def _float32_tensor(x, what="x"):
  x = tf.convert_to_tensor(x)
  if x.dtype != tf.float32:
    raise TypeError(f"{what} must be float32, got {x.dtype.name}")
  return x


def bit_count(x, domain: str = "word"):
  """Ones per bit position (most significant first) and their total.

  Args:
    x: float32 tensor or array of any shape.
    domain: "word" (32 positions) or "significand" (24).

  Returns:
    (histogram int64 [32 or 24], total int64 scalar) tensors.

  Raises:
    TypeError: x is not float32.
    ValueError: unknown domain.
    RuntimeError: the op library is not built.
  """
  if domain not in ("word", "significand"):
    raise ValueError(f"bit_count counts the 'word' or 'significand' domain, got {domain!r}")
  return _library().mortar_bit_count(x=_float32_tensor(x), domain=domain)


def aligned_count(x, *, layout=None, reduction_axes=None, equation=None,
                  group_size: int = bits.DEFAULT_GROUP_SIZE, width: int = bits.DEFAULT_WIDTH,
                  window: int = 8):
  """Aligned-domain statistics of a weight, grouped along its reduction axes (SPEC 3, 4).

  The weight is transposed to [output elements, R] (numpy when x is an array)
  and handed to the op.

  Returns:
    (columns int64 [width], total int64, lane_max int32 [n_out, n_groups],
    bitlet int32 [n_out, n_groups]) tensors: ones per column (column 0 first),
    ones in the windows, and per group the most ones in one lane (Pragmatic)
    and max over columns of ones + all-zero windows, at least 1 (Bitlet).

  Raises:
    TypeError, ValueError, RuntimeError: as bit_count, and bad grouping arguments.
  """
  group_size, width = bits.check_group_args(group_size, width)
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f"window must be an integer >= 1, got {window!r}")
  lib = _library()
  value = bits.as_float32(x) if not tf.is_tensor(x) else _float32_tensor(x)
  axes = bits.resolve_reduction_axes(tuple(value.shape), reduction_axes, layout, equation)
  if isinstance(value, np.ndarray):
    matrix = bits.reduction_matrix(value, axes)
  else:
    out_axes = [a for a in range(value.shape.rank) if a not in axes]
    n_out = int(np.prod([value.shape[a] for a in out_axes]))
    matrix = tf.reshape(tf.transpose(value, out_axes + list(axes)), [n_out, -1])
  return lib.mortar_aligned_count(x=matrix, group_size=group_size, width=width, window=window)


def mantissa_morph(x, method="paper", precision=None, *, keep_bits: int | None = None):
  """Morphs float32 weights with the C++ kernel (paper, fewest_ones, round).

  Bit for bit the numpy reference; the gradient is straight-through. Prefer
  mortar_tf.morph(..., backend="op"), which validates like every backend
  (and runs bitx on the op too). `method` may be a MorphSpec (then without
  precision or keep_bits).

  Returns:
    A float32 tensor of x's shape.
  """
  spec = morphing.as_spec(method, precision, keep_bits=keep_bits)
  if spec.method == "bitx":
    raise ValueError("mantissa_morph runs the per-weight methods (paper, fewest_ones, round); "
                     "bitx groups along reduction axes: use mortar_tf.morph(x, spec, "
                     "reduction_axes=..., backend='op') or morph_spec")
  return morph_spec(x, spec)


def morph_spec(x, spec, reduction_axes=()):
  """mantissa_morph for a validated MorphSpec; bitx groups along `reduction_axes`."""
  x = _float32_tensor(x)
  if spec.method == "bitx":
    # as mortar_tf.morph takes them: negative axes count from the end; an axis
    # out of range or repeated is a ValueError naming it
    return _bitx(x, spec, bits.resolve_reduction_axes(tuple(x.shape), reduction_axes))
  precision = spec.precision if spec.precision is not None else 1.0
  return _library().mortar_morph(
      x=x, precision=tf.constant(precision, tf.float64), method=spec.method,
      keep_bits=spec.keep_bits or 0)


def _bitx(x, spec, axes):
  """BitX on the op: in place when the reduction axes are adjacent, else transposed."""
  shape = [int(d) for d in x.shape]
  view = bits.grouped_view(shape, axes)
  if view is not None:
    return _library().mortar_bitx(x=x, group_size=spec.group_size, columns=spec.columns,
                                  view=list(view))
  out_axes = [a for a in range(len(shape)) if a not in axes]
  perm = out_axes + list(axes)
  moved = tf.transpose(x, perm)
  rows = math.prod(shape[a] for a in out_axes)
  pruned = _library().mortar_bitx(x=moved, group_size=spec.group_size, columns=spec.columns,
                                  view=[rows, math.prod(shape[a] for a in axes), 1])
  return tf.transpose(pruned, np.argsort(perm))
