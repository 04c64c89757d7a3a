"""Float32 bit fields, ones per domain, groups and exponent matching (SPEC 1 and 3).

Everything here is numpy on the uint32 view of float32 data; nothing imports
TensorFlow. TensorFlow tensors and variables are accepted wherever an array is
(they are read through ``np.asarray``).

Bit positions in histograms are listed most significant first in every domain,
so index 0 is the sign bit (``word``), the hidden bit (``significand``) or
column 0 of the exponent-matched window (``aligned``).

Example:
  >>> import numpy as np
  >>> count_ones(np.float32([1.5, -0.0]), domain="significand")
  2
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Iterable, Sequence

import numpy as np

SIGN_MASK = 0x80000000
EXPONENT_MASK = 0x7F800000
MANTISSA_MASK = 0x007FFFFF
MAGNITUDE_MASK = 0x7FFFFFFF
HIDDEN_BIT = 0x00800000
MIN_NORMAL_BITS = 0x00800000  # 2^-126
MAX_FINITE_BITS = 0x7F7FFFFF  # 3.4028235e38

DOMAINS = ("significand", "word", "aligned")
DOMAIN_BITS = {"significand": 24, "word": 32}
LAYOUTS = (
    "default",
    "dense",
    "conv",
    "depthwise",
    "conv_transpose",
    "separable_depthwise",
    "separable_pointwise",
    "einsum",
)
# The one default geometry of the aligned domain, everywhere (count_ones,
# bit_histogram, aligned_statistics, bitx, the reports, the estimator's
# engines, the sweep and search, every tool): the Bitlet-PE RTL's 64 lanes and
# 24 columns, so an aligned figure means the same thing wherever it is shown.
# (The TF ops' own attr default, group_size 16 in mortar_ops.cc, is never used:
# the wrappers always pass it.)
DEFAULT_GROUP_SIZE = 64
DEFAULT_WIDTH = 24
MAX_WIDTH = 64

# Elements processed at a time by elementwise passes: small enough that the
# temporaries (float64 ones: 64 KiB) stay in cache and well below glibc's mmap
# threshold (128 KiB, and 120 KiB measured slow already: larger
# ones are fresh pages each call, page faults included), large enough that
# numpy's per-call cost stays small (2^13 measured 2x faster than 2^15 here).
_CHUNK = 1 << 13
# Elements per bincount pass: each call zeroes 65,536 bins, so these are larger.
_BINCOUNT_CHUNK = 1 << 18


def as_float32(w, what: str = "weights") -> np.ndarray:
  """Returns `w` as a float32 numpy array, refusing any other dtype.

  Args:
    w: a numpy array, tf.Tensor, tf.Variable or anything `np.asarray` reads.
    what: how the error message names `w`.

  Raises:
    TypeError: the data is not float32 (nothing is converted silently: a
      float64 array morphed as float32 would change values before morphing).
  """
  arr = np.asarray(w)
  if arr.dtype != np.float32:
    raise TypeError(
        f"{what} must be float32, got {arr.dtype}; only float32 weights have "
        "the bit layout Mortar morphs (convert explicitly, e.g. "
        "np.asarray(w, np.float32), if that is what you mean)")
  return arr


def to_bits(w) -> np.ndarray:
  """The IEEE-754 words of float32 data as uint32 (a view when possible)."""
  return np.ascontiguousarray(as_float32(w)).view(np.uint32)


def fields(w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Splits float32 data into (sign, biased exponent, stored mantissa), uint32.

  Example:
    >>> fields(np.float32([-1.5]))
    (array([1], dtype=uint32), array([127], dtype=uint32), array([4194304], dtype=uint32))
  """
  u = to_bits(w)
  return u >> 31, (u >> 23) & 0xFF, u & MANTISSA_MASK


def is_normal_bits(u: np.ndarray) -> np.ndarray:
  """True where the uint32 word is a normal float32 (biased exponent 1..254)."""
  exponent = (u >> 23) & 0xFF
  return (exponent >= 1) & (exponent <= 254)


def significand_bits(u: np.ndarray) -> np.ndarray:
  """The 24-bit significand (hidden bit included) of each word; 0 for specials.

  Guards: zeros, subnormals, infinities and NaNs have no hidden bit and count
  no ones in the significand domain (SPEC 1), so they map to 0 here.
  """
  m = (u & MANTISSA_MASK) | HIDDEN_BIT
  return np.where(is_normal_bits(u), m, np.uint32(0)).astype(np.uint32)


# --------------------------------------------------------------------------
# Reduction axes and groups (SPEC 3)


def einsum_reduction_axes(equation: str, operand: int = 1) -> tuple[int, ...]:
  """Axes of one einsum operand that are summed: its labels absent from the output.

  Args:
    equation: e.g. "ab,bc->ac" (EinsumDense puts the kernel second).
    operand: which input operand is the weight.

  Raises:
    ValueError: a malformed equation, no explicit output, or an ellipsis in the
      weight operand (its rank would be unknown).

  Example:
    >>> einsum_reduction_axes("abc,cd->abd")
    (0,)
  """
  if not isinstance(equation, str) or "->" not in equation:
    raise ValueError(
        f"einsum equation must have an explicit output ('...->...'), got {equation!r}")
  lhs, out = equation.replace(" ", "").split("->", 1)
  inputs = lhs.split(",")
  if not 0 <= operand < len(inputs):
    raise ValueError(
        f"einsum equation {equation!r} has {len(inputs)} operands; operand {operand} does not exist")
  labels = inputs[operand]
  if "." in labels:
    raise ValueError(
        f"einsum weight operand {labels!r} of {equation!r} has an ellipsis; "
        "a weight needs explicit labels for every axis")
  if len(set(labels)) != len(labels):
    raise ValueError(f"einsum weight operand {labels!r} repeats a label")
  return tuple(i for i, label in enumerate(labels) if label not in out)


def reduction_axes_for(layout: str, ndim: int, equation: str | None = None) -> tuple[int, ...]:
  """The reduction axes of a weight of rank `ndim` stored in `layout` (SPEC 3).

  Args:
    layout: one of LAYOUTS. "default" reduces all axes but the last (the same
      as SPEC's "[-1, last] with axis 0 reduced", and the same as dense/conv).
    ndim: the weight's rank.
    equation: the einsum equation, for layout "einsum" only.

  Raises:
    ValueError: unknown layout, or a rank the layout cannot have.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
  if layout == "einsum":
    if equation is None:
      raise ValueError("layout 'einsum' needs the einsum equation (equation='ab,bc->ac')")
    axes = einsum_reduction_axes(equation)
    n_labels = len(equation.replace(" ", "").split("->")[0].split(",")[1])
    if n_labels != ndim:
      raise ValueError(
          f"einsum equation {equation!r} gives the weight {n_labels} axes but it has {ndim}")
    return axes
  if equation is not None:
    raise ValueError(f"equation is only used with layout='einsum' (got layout={layout!r})")
  if layout == "dense" and ndim != 2:
    raise ValueError(f"a dense kernel is [in, out] (rank 2), got rank {ndim}")
  if layout in ("conv", "separable_pointwise", "depthwise", "separable_depthwise",
                "conv_transpose") and ndim < 3:
    raise ValueError(f"a {layout} kernel is [k..., cin, cout] (rank >= 3), got rank {ndim}")
  if layout in ("default", "dense", "conv", "separable_pointwise"):
    return tuple(range(ndim - 1))
  if layout in ("depthwise", "separable_depthwise"):
    return tuple(range(ndim - 2))
  return (ndim - 1,)  # conv_transpose [k..., out, in]: reduce `in` only


def resolve_reduction_axes(shape: Sequence[int], reduction_axes=None, layout=None,
                           equation=None) -> tuple[int, ...]:
  """Normalises the user's `reduction_axes` or `layout` to sorted, non-negative axes.

  With neither given, the "default" layout applies.

  Raises:
    ValueError: both given, axes that are not integers, an axis out of range
      or repeated.
  """
  ndim = len(shape)
  if reduction_axes is not None and (layout is not None or equation is not None):
    raise ValueError("give either reduction_axes or layout (with equation), not both")
  if reduction_axes is None:
    return reduction_axes_for("default" if layout is None else layout, ndim, equation)
  if isinstance(reduction_axes, numbers.Integral):
    reduction_axes = (reduction_axes,)
  if isinstance(reduction_axes, (str, bytes)) or not hasattr(reduction_axes, "__iter__"):
    hint = " (a method: call it)" if callable(reduction_axes) else ""
    raise ValueError(f"reduction_axes must be an integer or a sequence of integers, got "
                     f"{reduction_axes!r}{hint}")
  axes = []
  for a in reduction_axes:
    if isinstance(a, bool) or not isinstance(a, numbers.Integral):
      raise ValueError(f"reduction axis {a!r} is not an integer")
    if not -ndim <= a < ndim:
      raise ValueError(f"reduction axis {a} is out of range for a rank-{ndim} weight")
    axes.append(int(a) % ndim)
  if len(set(axes)) != len(axes):
    raise ValueError(f"reduction axes {tuple(reduction_axes)} repeat an axis")
  return tuple(sorted(axes))


def grouped_view(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, int, int] | None:
  """(a, r, b) when the reduction axes are adjacent in the row-major layout, else None.

  The weight is then [a, r, b] with output elements (a, b) and reductions
  along r, read in place (a conv kernel [kh, kw, cin, cout] is [1, kh*kw*cin,
  cout]).
  """
  axes = tuple(axes)
  if not axes:  # nothing reduced: every element is its own output, one per group
    return math.prod(shape), 1, 1
  if axes != tuple(range(axes[0], axes[-1] + 1)):
    return None
  a = math.prod(shape[:axes[0]])
  r = math.prod(shape[axes[0]:axes[-1] + 1])
  b = math.prod(shape[axes[-1] + 1:])
  return a, r, b


def geometry_text(group_size: int, width: int) -> str:
  """How every report names the aligned domain's geometry: "G=64, width 24".

  >>> geometry_text(DEFAULT_GROUP_SIZE, DEFAULT_WIDTH)
  'G=64, width 24'
  """
  return f"G={group_size}, width {width}"


def check_group_args(group_size, width) -> tuple[int, int]:
  """Validates `group_size` (>= 1) and `width` (1..64); returns them as ints."""
  if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 1:
    raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
  if (isinstance(width, bool) or not isinstance(width, numbers.Integral)
      or not 1 <= width <= MAX_WIDTH):
    raise ValueError(f"width must be an integer in 1..{MAX_WIDTH}, got {width!r}")
  return int(group_size), int(width)


def reduction_matrix(w, reduction_axes: Sequence[int]) -> np.ndarray:
  """The weight as [output elements, R]: each row one reduction vector in row-major order."""
  w = as_float32(w)
  red = list(reduction_axes)
  out_axes = [a for a in range(w.ndim) if a not in red]
  n_out = math.prod(w.shape[a] for a in out_axes)
  r = math.prod(w.shape[a] for a in red)
  return np.transpose(w, out_axes + red).reshape(n_out, r)


def to_groups(w, reduction_axes: Sequence[int], group_size: int) -> np.ndarray:
  """Cuts each output element's reduction vector into groups (SPEC 3).

  Args:
    w: float32 weights.
    reduction_axes: sorted, non-negative axes (see resolve_reduction_axes).
    group_size: G.

  Returns:
    float32 array [n_out, n_groups, G]; a short last group is padded with +0.0.
  """
  flat = reduction_matrix(w, reduction_axes)
  n_out, r = flat.shape
  n_groups = -(-r // group_size)
  pad = n_groups * group_size - r
  if pad:
    flat = np.concatenate([flat, np.zeros((n_out, pad), np.float32)], axis=1)
  return flat.reshape(n_out, n_groups, group_size)


def from_groups(groups: np.ndarray, shape: Sequence[int],
                reduction_axes: Sequence[int]) -> np.ndarray:
  """Inverse of to_groups: drops the padding and restores the stored layout."""
  red = list(reduction_axes)
  out_axes = [a for a in range(len(shape)) if a not in red]
  n_out = math.prod(shape[a] for a in out_axes)
  r = math.prod(shape[a] for a in red)
  flat = groups.reshape(n_out, groups.shape[-2] * groups.shape[-1])[:, :r]
  permuted = flat.reshape([shape[a] for a in out_axes + red])
  return np.transpose(permuted, np.argsort(out_axes + red))


def group_max(values: np.ndarray, reduction_axes: Sequence[int], group_size: int) -> np.ndarray:
  """The maximum of each group (SPEC 3), broadcast back to every element of it.

  Padding counts as 0, so `values` must be >= 0 (biased exponents are).
  When the reduction axes lead or trail the stored layout, groups are strided
  views of a reshape and nothing is transposed.

  Args:
    values: array of the weight's shape, >= 0.
    reduction_axes: sorted, non-negative axes.
    group_size: G.

  Returns:
    An array of values' shape and dtype.
  """
  red = list(reduction_axes)
  ndim = values.ndim
  out_axes = [a for a in range(ndim) if a not in red]
  n_out = math.prod(values.shape[a] for a in out_axes)
  r = math.prod(values.shape[a] for a in red)
  n_groups = -(-r // group_size)
  pad = n_groups * group_size - r
  if red == list(range(len(red))):  # [R, n_out]: groups run down the rows
    rows = values.reshape(r, n_out)
    if pad:
      rows = np.concatenate([rows, np.zeros((pad, n_out), values.dtype)])
    tops = rows.reshape(n_groups, group_size, n_out).max(axis=1, initial=0)
    return np.repeat(tops, group_size, axis=0)[:r].reshape(values.shape)
  if red == list(range(ndim - len(red), ndim)):  # [n_out, R]: groups along the rows
    cols = values.reshape(n_out, r)
    if pad:
      cols = np.concatenate([cols, np.zeros((n_out, pad), values.dtype)], axis=1)
    tops = cols.reshape(n_out, n_groups, group_size).max(axis=2, initial=0)
    return np.repeat(tops, group_size, axis=1)[:, :r].reshape(values.shape)
  grouped = to_groups(values.astype(np.float32), red, group_size)  # exact for values < 2^24
  tops = grouped.max(axis=-1, keepdims=True, initial=0)
  return from_groups(np.broadcast_to(tops, grouped.shape), values.shape, red).astype(values.dtype)


def significand_and_offset(w, reduction_axes: Sequence[int], group_size: int):
  """Each element's significand and its distance below its group's top binade.

  Returns:
    (m, d): int32 arrays of w's shape. m is the 24-bit significand (0 for
    special values, which contribute nothing); d = emax - e >= 0, so bit j of
    m lands in column 23 - j + d of the group's window (SPEC 3).
  """
  u = to_bits(w)
  normal = is_normal_bits(u)
  e = np.where(normal, (u >> 23) & 0xFF, 0).astype(np.uint8)
  m = np.where(normal, (u & MANTISSA_MASK) | HIDDEN_BIT, 0).view(np.int32)
  d = group_max(e, reduction_axes, group_size).astype(np.int32) - e
  return m, d


def aligned_words(groups: np.ndarray, width: int) -> np.ndarray:
  """Each element's significand placed in its group's exponent-matched window.

  Bit `k` of the returned uint64 holds column `width - 1 - k`, so column 0 (the
  group's most significant) is the word's top bit. Bit `j` of an element with
  exponent `e` lands in column `(23 - j) + (emax - e)` and survives only when
  that is below `width` (SPEC 3).

  Guards: special values contribute nothing; a shift of 64 or more (a tiny
  element in a group with a huge one) is clamped, never left to wrap.

  Args:
    groups: float32 [..., G] from to_groups.
    width: window width, 1..64.

  Returns:
    uint64 array of the groups' shape.
  """
  m, d = significand_and_offset(groups, (groups.ndim - 1,), groups.shape[-1])
  shift = (width - 24) - d  # >= 0: shift left; < 0: shift right
  m = m.astype(np.uint64)
  left = np.clip(shift, 0, 40).astype(np.uint64)
  right = np.clip(-shift, 0, 63).astype(np.uint64)
  return np.where(shift >= 0, m << left, m >> right)


# --------------------------------------------------------------------------
# Ones and histograms


def _bit_table(nbits: int) -> np.ndarray:
  values = np.arange(1 << nbits, dtype=np.uint32)
  return ((values[:, None] >> np.arange(nbits, dtype=np.uint32)) & 1).astype(np.int64)


@functools.cache
def _table16() -> np.ndarray:
  return _bit_table(16)


class _BitCounter:
  """Ones per bit position of unsigned words, LSB first.

  Each 16-bit quarter of the words is bincounted (65,536 bins), the bins are
  summed over every chunk, and only `result()` turns bins into bit counts, so
  the cost per word is a few bincount steps whatever the chunking.
  """

  def __init__(self, quarters: int, first: int = 0):
    self._quarters = range(first, first + quarters)
    self._bins = {q: np.zeros(1 << 16, np.int64) for q in self._quarters}

  def add(self, words: np.ndarray) -> None:
    halves = np.ascontiguousarray(words).reshape(-1).view(np.uint16)
    halves = halves.reshape(-1, words.dtype.itemsize // 2)  # little-endian quarters
    for q in self._quarters:
      self._bins[q] += np.bincount(halves[:, q], minlength=1 << 16)

  def result(self) -> np.ndarray:
    counts = np.zeros(16 * (self._quarters.stop), np.int64)
    for q in self._quarters:
      counts[16 * q:16 * (q + 1)] = self._bins[q] @ _table16()
    return counts


def _flat_chunks(u: np.ndarray, size: int = _CHUNK) -> Iterable[np.ndarray]:
  flat = u.reshape(-1)
  for start in range(0, flat.size, size):
    yield flat[start:start + size]


def _check_domain(domain: str) -> None:
  if domain not in DOMAINS:
    raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")


def _aligned_offsets(w, layout, reduction_axes, equation, group_size, width):
  w = as_float32(w)
  group_size, width = check_group_args(group_size, width)
  axes = resolve_reduction_axes(w.shape, reduction_axes, layout, equation)
  m, d = significand_and_offset(w, axes, group_size)
  return m.reshape(-1), d.reshape(-1), width


def _aligned_ones(m, d, width) -> int:
  """Ones inside the window: bit j survives iff j >= 24 + d - width."""
  total = 0
  for start in range(0, m.size, _CHUNK):
    cut = np.clip(24 - width + d[start:start + _CHUNK], 0, 24)
    total += int(np.bitwise_count(m[start:start + _CHUNK] >> cut).sum(dtype=np.int64))
  return total


def _aligned_columns(m, d, width) -> np.ndarray:
  """Ones per column 0..width-1: column c is bit 63 - c of (m << 40) >> d."""
  quarters = -(-width // 16)  # only the top 16-bit quarters hold kept columns
  counter = _BitCounter(quarters, first=4 - quarters)
  for start in range(0, m.size, _BINCOUNT_CHUNK):
    dd = d[start:start + _BINCOUNT_CHUNK]
    words = (m[start:start + _BINCOUNT_CHUNK].astype(np.uint64) << np.uint64(40)) >> np.minimum(
        dd, 63).astype(np.uint64)
    words[dd >= 64] = 0
    counter.add(words)
  return counter.result()[::-1][:width].copy()


def count_ones(w, domain: str = "significand", *, layout: str | None = None,
               reduction_axes=None, equation: str | None = None,
               group_size: int = DEFAULT_GROUP_SIZE, width: int = DEFAULT_WIDTH) -> int:
  """Number of 1 bits of float32 weights in one domain (SPEC 1): the numpy reference
  of mortar_tf.count_ones, which documents the arguments (all but `backend`) and
  runs the C++ kernels when they are built.

  Example (one group: 0.375 sits 3 binades below 3.0, past a 3-column window):
    >>> count_ones(np.float32([[3.0], [0.375]]), "aligned", group_size=2, width=3)
    2
  """
  _check_domain(domain)
  w = as_float32(w)
  if domain == "aligned":
    return _aligned_ones(*_aligned_offsets(w, layout, reduction_axes, equation, group_size, width))
  u = to_bits(w)
  total = 0
  for chunk in _flat_chunks(u):
    if domain == "significand":
      chunk = significand_bits(chunk)
    total += int(np.bitwise_count(chunk).sum(dtype=np.int64))
  return total


def bit_histogram(w, domain: str = "significand", *, layout: str | None = None,
                  reduction_axes=None, equation: str | None = None,
                  group_size: int = DEFAULT_GROUP_SIZE, width: int = DEFAULT_WIDTH) -> np.ndarray:
  """Ones per bit position, most significant first: the numpy reference of
  mortar_tf.bit_histogram (which documents the result), with count_ones' arguments.

  Example:
    >>> bit_histogram(np.float32([1.5]), "significand")[:3]
    array([1, 1, 0])
  """
  _check_domain(domain)
  w = as_float32(w)
  if domain == "aligned":
    return _aligned_columns(*_aligned_offsets(w, layout, reduction_axes, equation, group_size,
                                              width))
  counter = _BitCounter(2)
  for chunk in _flat_chunks(to_bits(w), _BINCOUNT_CHUNK):
    counter.add(significand_bits(chunk) if domain == "significand" else chunk)
  return counter.result()[:DOMAIN_BITS[domain]][::-1].copy()


def group_cycle_figures(w, *, layout: str | None = None, reduction_axes=None,
                        equation: str | None = None, group_size: int = DEFAULT_GROUP_SIZE,
                        width: int = DEFAULT_WIDTH, window: int = 8):
  """Per group: the most ones in one lane, and Bitlet's column cost (SPEC 4), in numpy.

  The reference for mortar_tf.backends.aligned_statistics: for each group the
  largest number of aligned ones in one lane (Pragmatic's cycles), and the
  maximum over columns of (ones in the column + windows of `window` lanes
  with no one in that column), at least 1 (Bitlet's cycles).

  Returns:
    (lane_max, bitlet): int32 arrays [output elements, groups].
  """
  w = as_float32(w)
  group_size, width = check_group_args(group_size, width)
  if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
    raise ValueError(f"window must be an integer >= 1, got {window!r}")
  axes = resolve_reduction_axes(w.shape, reduction_axes, layout, equation)
  words = aligned_words(to_groups(w, axes, group_size), width)  # bit k = column width-1-k
  lane_max = np.bitwise_count(words).max(axis=-1, initial=0).astype(np.int32)
  window = min(int(window), group_size)  # a wider window is one window over the group
  n_windows = -(-group_size // window)
  padded = np.zeros(words.shape[:-1] + (n_windows * window,), np.uint64)
  padded[..., :group_size] = words  # padding lanes are zero: they change no window's status
  windows = padded.reshape(words.shape[:-1] + (n_windows, window))
  bitlet = np.ones(words.shape[:-1], np.int32)
  for k in range(width):
    column = ((windows >> np.uint64(k)) & np.uint64(1)).astype(np.int32)
    ones = column.sum(axis=(-1, -2))
    zero_windows = (column.sum(axis=-1) == 0).sum(axis=-1)
    bitlet = np.maximum(bitlet, ones + zero_windows)
  return lane_max, bitlet.astype(np.int32)


def sparsity_ratio(ones_before: int, ones_after: int) -> float:
  """ones(original) / ones(morphed), with 0/0 = 1.0 and n/0 = inf (SPEC 1)."""
  if ones_after == 0:
    return 1.0 if ones_before == 0 else math.inf
  return ones_before / ones_after
