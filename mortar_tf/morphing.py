"""Mantissa morphing (SPEC 2): the methods' arguments and the numpy reference.

Four methods rewrite float32 weights to values with fewer 1 bits:

* ``paper`` — the paper's Algorithm 1 in our reading: round up at the most
  significant "01" pattern whose result stays in the ball.
* ``fewest_ones`` — the float32 in the ball with the fewest significand ones.
* ``round`` — plain rounding to ``keep_bits`` explicit mantissa bits.
* ``bitx`` — BitX-style pruning of exponent-matched columns per group.

"In the ball" means ``fabs((double)x' - (double)x) < P * fabs((double)x)``
evaluated in IEEE double exactly as written (SPEC 2). Special values (±0,
subnormals, ±inf, NaN with its payload) are returned bit for bit.

The numpy implementation below is the reference; ``mortar_tf.morph_tf`` is
the TensorFlow one (TF ops only, exportable and XLA-compilable) and
mortar_tf/cc the C++ one. `mortar_tf.morph` (mortar_tf.backends) picks
between them by input kind, or by ``backend=``.

Example:
  >>> import numpy as np
  >>> spec = MorphSpec("paper", 0.1)
  >>> morph_numpy(np.float32([1.375, 1.6]), spec)
  array([1.5  , 1.625], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Mapping

import numpy as np

from mortar_tf import bits

METHODS = ("paper", "fewest_ones", "round", "bitx")
DEFAULT_PRECISION = 0.1

_U32 = np.uint32
_I32 = np.int32
_I64 = np.int64


# --------------------------------------------------------------------------
# Arguments


def check_precision(precision) -> float:
  """Validates P (0 < P <= 1) and returns it as a Python float (SPEC 2).

  Guards: bool is an int in Python but never a precision; NaN fails every
  comparison and would pass a naive range check; np.float32(0.1) is converted
  with float(), so it is 0.10000000149..., not 0.1.

  Raises:
    ValueError: naming the rejected value.
  """
  if isinstance(precision, (bool, np.bool_)) or not isinstance(precision, numbers.Real):
    raise ValueError(
        f"precision must be a real number with 0 < P <= 1, got {precision!r} "
        f"({type(precision).__name__})")
  value = float(precision)
  if not (0.0 < value <= 1.0):  # also rejects NaN
    raise ValueError(f"precision must satisfy 0 < P <= 1, got {precision!r}")
  return value


def _check_int(name: str, value, low: int, high: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
  if not low <= value <= high:
    raise ValueError(f"{name} must be in {low}..{high}, got {value!r}")
  return int(value)


_TAKES = {"paper": ("precision",), "fewest_ones": ("precision",), "round": ("keep_bits",),
          "bitx": ("columns", "group_size", "width")}
SETTINGS = ("precision", "keep_bits", "columns", "group_size", "width")


def _validated(method, precision, keep_bits, columns, group_size, width) -> dict:
  """The fields of a MorphSpec: checked, defaults filled in, unused ones None."""
  if not isinstance(method, str) or method not in METHODS:
    raise ValueError(f"unknown morphing method {method!r}; expected one of {', '.join(METHODS)}")
  given = {"precision": precision, "keep_bits": keep_bits, "columns": columns,
           "group_size": group_size, "width": width}
  takes = _TAKES[method]
  extra = [k for k, v in given.items() if v is not None and k not in takes]
  if extra:
    raise ValueError(
        f"method {method!r} takes {', '.join(takes)}; it does not use {', '.join(extra)}")
  fields = dict.fromkeys(given)
  if method in ("paper", "fewest_ones"):
    fields["precision"] = check_precision(DEFAULT_PRECISION if precision is None else precision)
  elif method == "round":
    if keep_bits is None:
      raise ValueError("method 'round' needs keep_bits (explicit mantissa bits kept, 0..23)")
    fields["keep_bits"] = _check_int("keep_bits", keep_bits, 0, 23)
  else:
    group_size, width = bits.check_group_args(
        bits.DEFAULT_GROUP_SIZE if group_size is None else group_size,
        bits.DEFAULT_WIDTH if width is None else width)
    if columns is None:
      raise ValueError(f"method 'bitx' needs columns (aligned columns kept, 1..{width})")
    fields.update(columns=_check_int("columns", columns, 1, width), group_size=group_size,
                  width=width)
  return dict(fields, method=method)


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class MorphSpec:
  """A morphing method and its settings: the one scheme object.

  Every function that takes a method takes a MorphSpec in its place
  (mortar_tf.morph, MorphWrapper, morph_model, MortarCallback, MorphScheme,
  mortar_tf.savedmodel.convert, the estimator), and a precision map's value
  may be one (a per-layer method). The constructor validates: a spec always
  holds a usable method, with the defaults filled in (P = 0.1; bitx's
  group_size and width from mortar_tf.bits) and the settings the method does
  not use None. Specs are immutable and hashable; equal settings make equal
  specs. `MorphSpec.create` is the same constructor.

  Args:
    method: one of METHODS.
    precision: P for "paper" and "fewest_ones" (0 < P <= 1; default 0.1).
      Converted with float(): np.float32(0.1) is not 0.1.
    keep_bits: explicit mantissa bits kept by "round" (0..23; required).
    columns: aligned columns kept by "bitx" (1..width; required).
    group_size: lanes per group (G) for "bitx" (default bits.DEFAULT_GROUP_SIZE).
    width: window width for "bitx" (1..64; default bits.DEFAULT_WIDTH).

  Raises:
    ValueError: unknown method, a bad value, a missing required setting, or
      a setting the method does not use (e.g. precision with "round").

  Example:
    >>> MorphSpec("fewest_ones", 0.05)
    MorphSpec('fewest_ones', precision=0.05)
    >>> MorphSpec.from_config({"method": "round", "keep_bits": 7}).to_config()
    {'method': 'round', 'keep_bits': 7}
  """
  method: str
  precision: float | None
  keep_bits: int | None
  columns: int | None
  group_size: int | None
  width: int | None

  def __init__(self, method: str = "paper", precision=None, *, keep_bits=None, columns=None,
               group_size=None, width=None):
    for name, value in _validated(method, precision, keep_bits, columns, group_size,
                                  width).items():
      object.__setattr__(self, name, value)

  @classmethod
  def create(cls, method: str = "paper", precision=None, *, keep_bits=None, columns=None,
             group_size=None, width=None) -> "MorphSpec":
    """The constructor under its older name (same arguments, same checks)."""
    return cls(method, precision, keep_bits=keep_bits, columns=columns, group_size=group_size,
               width=width)

  def settings(self) -> dict:
    """The method's own settings, e.g. {"precision": 0.1}."""
    return {k: getattr(self, k) for k in SETTINGS if getattr(self, k) is not None}

  def to_config(self) -> dict:
    """A JSON-able dict, {"method": "paper", "precision": 0.1}; from_config takes it back."""
    return {"method": self.method, **self.settings()}

  @classmethod
  def from_config(cls, config) -> "MorphSpec":
    """The spec of a to_config() dict (or a JSON object of that form).

    Raises:
      ValueError: not a mapping, no "method", an unknown key, or bad settings.
    """
    if isinstance(config, MorphSpec):
      return config
    if not isinstance(config, Mapping):
      raise ValueError(f"a MorphSpec config is a mapping {{'method': ..., settings...}}, got "
                       f"{type(config).__name__}")
    if "method" not in config:
      raise ValueError(f"a MorphSpec config needs a 'method' ({', '.join(METHODS)}), got "
                       f"{dict(config)!r}")
    unknown = [k for k in config if k != "method" and k not in SETTINGS]
    if unknown:
      raise ValueError(f"unknown MorphSpec settings {unknown}; a config holds 'method' and "
                       f"{', '.join(SETTINGS)}")
    return cls(**dict(config))

  def label(self) -> str:
    """A short name such as "paper P=0.1", "round keep_bits=7", "bitx columns=8"."""
    if self.precision is not None:
      return f"{self.method} P={self.precision:g}"
    if self.keep_bits is not None:
      return f"{self.method} keep_bits={self.keep_bits}"
    return f"{self.method} columns={self.columns}"

  def __repr__(self) -> str:
    settings = "".join(f", {k}={v!r}" for k, v in self.settings().items())
    return f"MorphSpec({self.method!r}{settings})"

  def __str__(self) -> str:
    return " ".join([self.method] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in self.settings().items()])


def as_spec(method="paper", precision=None, *, keep_bits=None, columns=None, group_size=None,
            width=None) -> MorphSpec:
  """The MorphSpec of a call's morphing arguments: `method` a MorphSpec (then
  no flat setting may be given) or a method name with its flat settings.

  Raises:
    ValueError: a MorphSpec together with flat settings, or bad settings.
  """
  if isinstance(method, MorphSpec):
    given = {k: v for k, v in dict(precision=precision, keep_bits=keep_bits, columns=columns,
                                   group_size=group_size, width=width).items() if v is not None}
    if given:
      raise ValueError(
          f"give the morphing as a MorphSpec or as flat settings, not both: got {method!r} "
          f"and {', '.join(f'{k}={v!r}' for k, v in given.items())} (put them in the spec)")
    return method
  return MorphSpec(method, precision, keep_bits=keep_bits, columns=columns,
                   group_size=group_size, width=width)


# --------------------------------------------------------------------------
# numpy reference


def _power_of_highest_bit24(v: np.ndarray) -> np.ndarray:
  """2^floor(log2(v)) for int32 0 <= v < 2^24, and 0 for 0 (clears the float32 mantissa)."""
  return (v.astype(np.float32).view(np.int32) & np.int32(-(1 << 23))).view(np.float32).astype(
      np.int32)


_NORMAL_SPAN = _U32(bits.MAX_FINITE_BITS - bits.MIN_NORMAL_BITS)


def _is_normal_mag(mag: np.ndarray) -> np.ndarray:
  """Normal magnitude words, in one unsigned compare (below 2^-126 wraps to huge)."""
  return (mag.view(_U32) - _U32(bits.MIN_NORMAL_BITS)) <= _NORMAL_SPAN


_TWO52 = np.float64(2.0**52)


def _ceil_to_int32(values: np.ndarray) -> np.ndarray:
  """ceil of non-negative doubles below 2^31, as int32.

  The ceiling is an integer below 2^52, so adding 2^52 makes it the low mantissa
  bits of a double: reading them is a mask, not a slow float-to-int conversion.
  """
  return ((np.ceil(values) + _TWO52).view(np.int64) & ((1 << 52) - 1)).astype(_I32)


def _m_plus_d(m: np.ndarray, precision: float) -> np.ndarray:
  """m + D with D = ceil(fl(P*m)) - 1: the farthest unit count above m in the ball."""
  return m + _ceil_to_int32(precision * m.astype(np.float64)) - 1


def _paper_bits(u: np.ndarray, precision: float) -> np.ndarray:
  """Algorithm 1 (SPEC 2.1) in O(1) per weight.

  With m the significand and u = 2^(e-150) its unit, the candidate at b moves
  x up by an integer number of units d; |x'-x| is exact in double, and
  P*|x| = fl(P*m)*u whenever that product is a normal double (when it is not,
  it is below 2^-873 units and no d >= 1 qualifies either way). So "in the
  ball" is d < t with t = fl(P*m), i.e. d <= D = ceil(t) - 1 (t > 0, so D >= 0).
  The candidate at b is the first multiple of 2^(b+1) above m, so it is in the
  ball iff (m, m+D] holds such a multiple, iff m and m+D differ at a bit
  >= b+1. Scanning b from the top, the answer is the highest "01" pattern
  below the highest bit where m and m+D differ.
  The candidate at b is m with bits b..0 set, plus one; on the magnitude word
  the b = 23 candidate (m' = 2^24) is the mantissa all set plus one, which
  carries into the exponent: the next power of two. When that would be
  exponent 255 the candidate is dropped (b = 23 is the only position whose
  candidate can carry, because bit b+1 is 0 below it).
  """
  mag = (u & _U32(bits.MAGNITUDE_MASK)).view(_I32)
  m = (mag & bits.MANTISSA_MASK) | bits.HIDDEN_BIT
  m_plus_d = _m_plus_d(m, precision)
  # 2^(highest bit where m and m + D differ), via a float32 of half of it (exact
  # below 2^24; the xor itself can be 2^25 - 1, which float32 would round up).
  reach = _power_of_highest_bit24((m ^ m_plus_d) >> 1) << 1
  patterns = m & ~(m >> 1) & (np.maximum(reach, 1) - 1)  # bit b: m_b = 1, m_(b+1) = 0
  top = mag >= (254 << 23)
  if top.any():  # exponent 254: the carry at b = 23 would be inf
    patterns[top] &= ~bits.HIDDEN_BIT
  step = _power_of_highest_bit24(patterns)  # 2^b, 0 where no candidate
  low = ((step << 1) - 1) & bits.MANTISSA_MASK
  new = ((mag | low) + 1).view(_U32) | (u & _U32(bits.SIGN_MASK))
  return np.where((step != 0) & _is_normal_mag(mag), new, u)


def _round_bits(u: np.ndarray, keep_bits: int) -> np.ndarray:
  """Round-half-away on the magnitude word (SPEC 2.3); a carry may bump the exponent.

  Guard: a carry into exponent 255 (only from the largest binade) would make
  inf, so those elements are truncated instead.
  """
  if keep_bits == 23:
    return u.copy()
  mag = (u & _U32(bits.MAGNITUDE_MASK)).view(_I32)
  drop = 23 - keep_bits
  keep_mask = _I32(~((1 << drop) - 1))
  rounded = (mag + _I32(1 << (drop - 1))) & keep_mask
  rounded = np.where(rounded >= bits.EXPONENT_MASK, mag & keep_mask, rounded)
  new = rounded.view(_U32) | (u & _U32(bits.SIGN_MASK))
  return np.where(_is_normal_mag(mag), new, u)


def _in_ball(y_mag: np.ndarray, x_abs: np.ndarray, threshold: np.ndarray) -> np.ndarray:
  """SPEC's predicate, literally: fabs((double)y - (double)x) < P*fabs((double)x)."""
  y = y_mag.astype(_U32).view(np.float32).astype(np.float64)
  return np.abs(y - x_abs) < threshold


def _ball_ends(mag, x_abs, threshold):
  """The smallest normal and largest finite float32 magnitudes in the ball, any P.

  Each end is first guessed from fl(|x| -+ P|x|) rounded inward to float32 and
  then proven with SPEC's predicate at the guess and its outer neighbour (the
  predicate is monotone on each side of x). Guesses that fail the proof (only
  when fl(|x| - y) itself rounds, i.e. P within ~2^-29 of 1) are settled by
  bisection over the bit patterns with the same predicate.
  Guards: L and H are clamped to the normal, finite range before conversion,
  so the float32 cast can neither overflow to inf nor land on a subnormal.
  """
  low = np.clip(x_abs - threshold, 0.0, None)
  a = low.astype(np.float32).view(_U32).astype(_I64)
  a = np.where(a.astype(_U32).view(np.float32).astype(np.float64) < low, a + 1, a)
  a = np.maximum(a, bits.MIN_NORMAL_BITS)
  high = np.minimum(x_abs + threshold, float(np.float32(3.4028235e38)))
  b = high.astype(np.float32).view(_U32).astype(_I64)
  b = np.where(b.astype(_U32).view(np.float32).astype(np.float64) > high, b - 1, b)
  b = np.minimum(b, bits.MAX_FINITE_BITS)

  a_ok = _in_ball(a, x_abs, threshold) & (
      (a == bits.MIN_NORMAL_BITS) | ~_in_ball(a - 1, x_abs, threshold))
  b_ok = _in_ball(b, x_abs, threshold) & (
      (b == bits.MAX_FINITE_BITS) | ~_in_ball(b + 1, x_abs, threshold))
  redo = np.flatnonzero(~(a_ok & b_ok))
  if redo.size:
    xs, ts, ms = x_abs[redo], threshold[redo], mag[redo]
    lo, hi = np.full_like(ms, bits.MIN_NORMAL_BITS), ms.copy()
    while np.any(lo < hi):  # smallest pattern in the ball, at most 31 rounds
      mid = (lo + hi) >> 1
      inside = _in_ball(mid, xs, ts)
      hi, lo = np.where(inside, mid, hi), np.where(inside, lo, mid + 1)
    a[redo] = lo
    lo, hi = ms.copy(), np.full_like(ms, bits.MAX_FINITE_BITS)
    while np.any(lo < hi):  # largest pattern in the ball
      mid = (lo + hi + 1) >> 1
      inside = _in_ball(mid, xs, ts)
      lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid - 1)
    b[redo] = lo
  return a, b


def _ball_ends_exact(mag: np.ndarray, precision: float):
  """Both ball ends in integer arithmetic, for P <= 0.5 (int32 magnitude words).

  In units of x's ulp (u = 2^(e-150)) the predicate is |y - m| < t with
  t = fl(P*m) (see _paper_bits), and y - m is exact for y within a factor of 4.
  Above x: y <= m + D, D = ceil(t) - 1; in the next binade only even unit
  counts exist, so b's significand there is (m + D) >> 1; past the largest
  binade b is the largest finite float.
  Below x: y >= m - D in x's binade. When that reaches the binade start
  (m - D <= 2^23), the binade below counts in half units: 2m - k < 2t gives
  k >= 2m - D1 with D1 = ceil(2t) - 1 (2t is exact), and k = 2^24 means none
  of it is in the ball (2m - D1 can be 2^24 even though m - D = 2^23: the
  half unit below the start is at distance D + 1/2, which may be < t).
  For P <= 0.5, fl(P*m) <= m/2 gives 2m - D1 >= 2^23 + 1, so the binade
  below is never entirely in the ball and a never goes lower; below the
  smallest normal binade a is the smallest normal.
  """
  exp_word = mag & bits.EXPONENT_MASK
  m = (mag & bits.MANTISSA_MASK) | bits.HIDDEN_BIT
  t = precision * m.astype(np.float64)
  d = _ceil_to_int32(t) - 1
  up = m + d
  b = np.where(up < (1 << 24), mag + d, exp_word + (up >> 1))
  b = np.where((up >= (1 << 24)) & (exp_word == (254 << 23)), bits.MAX_FINITE_BITS, b)
  down = m - d
  k = 2 * m - (_ceil_to_int32(2.0 * t) - 1)  # smallest half-unit count in the ball
  # Binade e-1 is reached only if x's binade start is in the ball (down <= 2^23);
  # even then its top may be out (k = 2^24), leaving a at the binade start.
  lower = np.where(k >= (1 << 24), exp_word, exp_word - (2 << 23) + k)
  lower = np.where((k < (1 << 24)) & (exp_word == (1 << 23)), bits.MIN_NORMAL_BITS, lower)
  a = np.where(down > (1 << 23), mag - d, lower)
  return a, b


def _fewest_ones_bits(u: np.ndarray, precision: float) -> np.ndarray:
  """The float32 in the ball with the fewest significand ones (SPEC 2.2), O(1) per weight.

  Proof sketch (the candidates are the normal floats of x's sign in [a, b]):
  * a == b: x is alone in its ball.
  * a and b in different binades: [a, b] holds a power of two (b's binade
    start), which has one 1 bit, the minimum for a normal float; the powers
    of two nearest |x| are the start of x's binade (p_lo <= |x|) and of the
    next (p_hi > |x|), and at least one of them lies in [a, b].
  * same binade: a and b agree above their highest differing bit p (a has 0
    there, b has 1); every value in [a, b] keeps that prefix, so it has at
    least popcount(prefix) ones. The prefix alone is a itself when a has no
    bits below p. Otherwise the prefix alone is below a, and one more bit is
    the minimum: prefix + 2^q lies in [a, b] exactly when 2^q >= (a's bits
    below p) and q <= p (b = prefix + 2^p + rest). The nearest such 2^q to
    r = |x| - prefix is 2^floor(log2 r) or the next one up, clamped to the
    allowed q; ties go to the smaller magnitude.
  All distances are differences of patterns inside one binade, i.e. exact
  integer counts of that binade's unit.
  """
  mag = (u & _U32(bits.MAGNITUDE_MASK)).view(_I32)
  normal = _is_normal_mag(mag)
  # Specials (NaN among them) never reach float arithmetic: 1.0 stands in.
  mag = np.where(normal, mag, _I32(0x3F800000))
  if precision <= 0.5:
    a, b = _ball_ends_exact(mag, precision)
  else:
    x_abs = mag.view(np.float32).astype(np.float64)
    a, b = (e.astype(_I32) for e in _ball_ends(mag.astype(_I64), x_abs, precision * x_abs))

  # Different binades: the nearer of the powers of two around |x|.
  p_lo = mag & bits.EXPONENT_MASK
  p_hi = p_lo + (1 << 23)
  take_lo = (p_lo >= a) & ((p_hi > b) | (mag - p_lo <= p_hi - mag))
  power = np.where(take_lo, p_lo, p_hi)

  # Same binade (so a ^ b < 2^23): prefix + 2^q.
  split = _power_of_highest_bit24((a ^ b) & bits.MANTISSA_MASK)  # 2^p
  prefix = a & ~((split << 1) - 1)
  low_a = a - prefix  # a's bits below p (bit p of a is 0)
  # 2^q0: the smallest power of two >= low_a, i.e. the top power of 2*low_a - 1.
  least = _power_of_highest_bit24(2 * low_a - 1)
  r = mag - prefix
  below = _power_of_highest_bit24(r & ((1 << 24) - 1))
  # r - below > 2*below - r: strictly nearer the next power up (a tie stays below)
  nearest = np.where(2 * r > 3 * below, below << 1, below)
  step = np.minimum(np.maximum(nearest, least), split)
  same = np.where(low_a == 0, a, prefix | step)

  result = np.where((a ^ b) >= (1 << 23), power, same)
  result = np.where(a == b, mag, result)
  new = result.view(_U32) | (u & _U32(bits.SIGN_MASK))
  return np.where(normal, new, u)


def _bitx_array(x: np.ndarray, columns: int, group_size: int, reduction_axes) -> np.ndarray:
  """BitX pruning (SPEC 2.4): keep the first `columns` aligned columns per group.

  Bit j of an element d binades below its group's emax lands in column
  23 - j + d, so it is kept iff j >= 24 - columns + d; the kept bits are the
  top of the significand, so the result is the element with its low mantissa
  bits cleared, or +0.0 when even the hidden bit goes (the cut reaches 24).
  """
  u = np.ascontiguousarray(x).view(_U32)
  m, d = bits.significand_and_offset(x, reduction_axes, group_size)
  cut = 24 - columns + d  # lowest kept bit of the significand
  keep = ~((np.int32(1) << np.clip(cut, 0, 23)) - 1)
  morphed = np.where(cut >= 24, _U32(0), u & keep.view(_U32))
  result = np.where(m != 0, morphed, u).view(np.float32)  # m == 0: a special value, unchanged
  return result.reshape(x.shape)  # np.where made a 0-d input 1-d


def _elementwise(x: np.ndarray, fn, arg) -> np.ndarray:
  """Applies a per-word function in cache-sized chunks; keeps shape."""
  u = np.ascontiguousarray(x).view(_U32).reshape(-1)
  out = np.empty_like(u)
  for start in range(0, u.size, bits._CHUNK):  # pylint: disable=protected-access
    out[start:start + bits._CHUNK] = fn(u[start:start + bits._CHUNK], arg)  # pylint: disable=protected-access
  return out.view(np.float32).reshape(x.shape)


def morph_numpy(x: np.ndarray, spec: MorphSpec, reduction_axes=()) -> np.ndarray:
  """The numpy reference: float32 array in, new float32 array out."""
  x = bits.as_float32(x)
  if spec.method == "paper":
    return _elementwise(x, _paper_bits, spec.precision)
  if spec.method == "fewest_ones":
    return _elementwise(x, _fewest_ones_bits, spec.precision)
  if spec.method == "round":
    return _elementwise(x, _round_bits, spec.keep_bits)
  return _bitx_array(x, spec.columns, spec.group_size, reduction_axes)
