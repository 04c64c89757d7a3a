"""Mantissa morphing made only of TensorFlow ops (SPEC 2).

The same arithmetic as the numpy reference in `mortar_tf.morphing`, written with
TF ops so that it exports in a SavedModel, compiles with `jit_compile=True`
and runs inside a Keras `call` (no numpy_function, no custom op). Bit work is
done on int64 copies of the magnitude word, so no op needs unsigned support;
the sign is carried in int32 and OR-ed back.

The two implementations are kept different where they can be, so that their
bit-for-bit agreement (tested) means something: here `fewest_ones` always finds
the ball's ends by guessing and proving them with SPEC's double predicate,
while the numpy reference uses exact integer ends for P <= 0.5.

Example:
  >>> import tensorflow as tf
  >>> from mortar_tf.morphing import MorphSpec
  >>> morph_tensor(tf.constant([1.375]), MorphSpec.create("paper", 0.1)).numpy()
  array([1.5], dtype=float32)
"""

from __future__ import annotations

import math

import tensorflow as tf

from mortar_tf import bits
from mortar_tf.morphing import MorphSpec

_I64 = tf.int64


def _c(value) -> tf.Tensor:
  return tf.constant(value, _I64)


def _shl(x, n):
  return tf.bitwise.left_shift(x, n)


def _shr(x, n):
  return tf.bitwise.right_shift(x, n)


def _and(x, y):
  return tf.bitwise.bitwise_and(x, y)


def _or(x, y):
  return tf.bitwise.bitwise_or(x, y)


def highest_bit(v: tf.Tensor) -> tf.Tensor:
  """floor(log2(v)) for int64 0 <= v < 2^53; -1 for 0 (exact via the float64 exponent)."""
  exponent = _shr(tf.bitcast(tf.cast(v, tf.float64), _I64), _c(52)) - 1023
  return tf.where(v == 0, _c(-1), exponent)


def _split(x: tf.Tensor):
  """int32 sign word, int64 magnitude word, normal mask."""
  word = tf.bitcast(x, tf.int32)
  sign = tf.bitwise.bitwise_and(word, tf.constant(-(1 << 31), tf.int32))
  mag = tf.cast(tf.bitwise.bitwise_and(word, tf.constant(bits.MAGNITUDE_MASK, tf.int32)), _I64)
  normal = (mag >= bits.MIN_NORMAL_BITS) & (mag <= bits.MAX_FINITE_BITS)
  return sign, mag, normal


def _join(x, sign, mag, changed):
  """Sign | magnitude where `changed`, else x bit for bit (NaN payloads kept)."""
  word = tf.bitwise.bitwise_or(tf.cast(mag, tf.int32), sign)
  return tf.where(changed, tf.bitcast(word, tf.float32), x)


def _as_float(mag: tf.Tensor) -> tf.Tensor:
  """A non-negative magnitude word (int64) as float64."""
  return tf.cast(tf.bitcast(tf.cast(mag, tf.int32), tf.float32), tf.float64)


def _paper(x, precision):
  """Algorithm 1 in O(1) per weight; see morphing._paper_bits for the proof."""
  sign, mag, normal = _split(x)
  m = _or(_and(mag, _c(bits.MANTISSA_MASK)), _c(bits.HIDDEN_BIT))
  t = precision * tf.cast(m, tf.float64)
  d_max = tf.maximum(tf.cast(tf.math.ceil(t), _I64) - 1, 0)
  reach = highest_bit(tf.bitwise.bitwise_xor(m, m + d_max))
  patterns = _and(m, tf.bitwise.invert(_shr(m, _c(1))))
  below = tf.where(reach > 0, _shl(_c(1), tf.maximum(reach, 0)) - 1, _c(0))
  patterns = _and(patterns, below)
  patterns = tf.where(_shr(mag, _c(23)) == 254,
                      _and(patterns, _c(~bits.HIDDEN_BIT)), patterns)
  b = highest_bit(patterns)
  found = normal & (b >= 0)
  shift = tf.clip_by_value(b + 1, 0, 23)
  new_mag = _shl(_shr(mag, shift) + 1, shift)
  return _join(x, sign, new_mag, found)


def _round(x, keep_bits: int):
  """Round-half-away to keep_bits mantissa bits; see morphing._round_bits."""
  if keep_bits == 23:
    return tf.identity(x)
  sign, mag, normal = _split(x)
  drop = 23 - keep_bits
  keep_mask = _c(~((1 << drop) - 1))
  rounded = _and(mag + (1 << (drop - 1)), keep_mask)
  rounded = tf.where(rounded >= bits.EXPONENT_MASK, _and(mag, keep_mask), rounded)
  return _join(x, sign, rounded, normal)


def _in_ball(y_mag, x_abs, threshold):
  """SPEC's predicate: fabs((double)y - (double)x) < P*fabs((double)x)."""
  return tf.abs(_as_float(y_mag) - x_abs) < threshold


def _bisect(mag, x_abs, threshold):
  """Both ball ends by bisection over bit patterns (32 rounds each).

  Each bisection is a tf.while_loop, not 32 unrolled rounds: a graph (an
  export, an XLA step, a Keras call traced for a SavedModel) then holds one
  round's ops instead of 64 rounds', and traces ~3x faster."""
  rounds = tf.constant(32)

  def lower(i, lo, hi):
    mid = _shr(lo + hi, _c(1))
    inside = _in_ball(mid, x_abs, threshold)
    return i + 1, tf.where(inside, lo, mid + 1), tf.where(inside, mid, hi)

  def upper(i, lo, hi):
    mid = _shr(lo + hi + 1, _c(1))
    inside = _in_ball(mid, x_abs, threshold)
    return i + 1, tf.where(inside, mid, lo), tf.where(inside, hi, mid - 1)

  def more(i, lo, hi):  # pylint: disable=unused-argument
    return i < rounds

  start = tf.constant(0)
  _, a, _ = tf.while_loop(more, lower,
                          (start, tf.fill(tf.shape(mag), _c(bits.MIN_NORMAL_BITS)), mag))
  _, b, _ = tf.while_loop(more, upper,
                          (start, mag, tf.fill(tf.shape(mag), _c(bits.MAX_FINITE_BITS))))
  return a, b


def _ball_ends(mag, x_abs, threshold):
  """Guess, prove, and bisect where the proof fails; see morphing._ball_ends."""
  low = tf.maximum(x_abs - threshold, 0.0)
  a = tf.cast(tf.bitcast(tf.cast(low, tf.float32), tf.int32), _I64)
  a = tf.where(_as_float(a) < low, a + 1, a)
  a = tf.maximum(a, bits.MIN_NORMAL_BITS)
  high = tf.minimum(x_abs + threshold, 3.4028234663852886e38)
  b = tf.cast(tf.bitcast(tf.cast(high, tf.float32), tf.int32), _I64)
  b = tf.where(_as_float(b) > high, b - 1, b)
  b = tf.minimum(b, bits.MAX_FINITE_BITS)
  a_ok = _in_ball(a, x_abs, threshold) & (
      (a == bits.MIN_NORMAL_BITS) | ~_in_ball(tf.maximum(a - 1, 0), x_abs, threshold))
  b_ok = _in_ball(b, x_abs, threshold) & (
      (b == bits.MAX_FINITE_BITS) | ~_in_ball(b + 1, x_abs, threshold))
  proven = a_ok & b_ok

  def settle():
    a2, b2 = _bisect(mag, x_abs, threshold)
    return tf.where(proven, a, a2), tf.where(proven, b, b2)

  return tf.cond(tf.reduce_all(proven), lambda: (a, b), settle)


def _fewest_ones(x, precision):
  """Fewest significand ones in the ball; see morphing._fewest_ones_bits for the proof."""
  sign, mag, normal = _split(x)
  mag_l = tf.where(normal, mag, _c(0x3F800000))  # specials: 1.0 stands in
  x_l = _as_float(mag_l)
  t_l = precision * x_l
  live = normal & (t_l > 0)
  t_l = tf.where(live, t_l, tf.fill(tf.shape(x_l), tf.constant(0.5, tf.float64)))
  a, b = _ball_ends(mag_l, x_l, t_l)

  p_lo = _shl(_shr(mag_l, _c(23)), _c(23))
  p_hi = p_lo + (1 << 23)
  take_lo = (p_lo >= a) & ((p_hi > b) | (mag_l - p_lo <= p_hi - mag_l))
  power = tf.where(take_lo, p_lo, p_hi)

  p = tf.maximum(highest_bit(tf.bitwise.bitwise_xor(a, b)), 0)
  prefix = _shl(_shr(a, p + 1), p + 1)
  low_a = a - prefix
  q0 = highest_bit(tf.maximum(low_a - 1, 0)) + 1
  r = mag_l - prefix
  q_floor = highest_bit(r)
  one = _c(1)
  up = (r - _shl(one, tf.maximum(q_floor, 0))) > (_shl(one, tf.maximum(q_floor + 1, 0)) - r)
  q = tf.where(q_floor < q0, q0,
               tf.where(q_floor >= p, p, q_floor + tf.cast(up, _I64)))
  one_more = _or(prefix, _shl(one, tf.maximum(q, 0)))
  same = tf.where(low_a == 0, a, one_more)

  result = tf.where(_shr(a, _c(23)) != _shr(b, _c(23)), power, same)
  result = tf.where(a == b, mag_l, result)
  return _join(x, sign, result, live)


def _bitx(x, columns: int, group_size: int, reduction_axes):
  """BitX column pruning per group; see morphing._bitx_array."""
  shape = x.shape.as_list()
  red = list(reduction_axes)
  out_axes = [a for a in range(len(shape)) if a not in red]
  n_out = math.prod(shape[a] for a in out_axes)
  r = math.prod(shape[a] for a in red)
  n_groups = -(-r // group_size)
  flat = tf.reshape(tf.transpose(x, out_axes + red), [n_out, r])
  flat = tf.pad(flat, [[0, 0], [0, n_groups * group_size - r]])
  groups = tf.reshape(flat, [n_out, n_groups, group_size])

  sign, mag, normal = _split(groups)
  e = tf.where(normal, _shr(mag, _c(23)), _c(0))
  emax = tf.reduce_max(tf.concat([e, tf.zeros_like(e[..., :1])], axis=-1), axis=-1, keepdims=True)
  cut = 24 - columns + (emax - e)
  kept = _and(mag, tf.bitwise.invert(_shl(_c(1), tf.clip_by_value(cut, 0, 23)) - 1))
  word = tf.bitwise.bitwise_or(tf.cast(kept, tf.int32), sign)
  morphed = tf.where(cut >= 24, tf.zeros_like(groups), tf.bitcast(word, tf.float32))
  out = tf.where(normal, morphed, groups)

  out = tf.reshape(out, [n_out, n_groups * group_size])[:, :r]
  out = tf.reshape(out, [shape[a] for a in out_axes + red])
  inverse = sorted(range(len(shape)), key=lambda i: (out_axes + red)[i])
  return tf.transpose(out, inverse)


@tf.autograph.experimental.do_not_convert  # no tensor-dependent Python control flow here
def morph_tensor(x, spec: MorphSpec, reduction_axes=()) -> tf.Tensor:
  """Morphs a float32 tensor (or variable's value) with TF ops only.

  Args:
    x: float32 tf.Tensor, tf.Variable or array.
    spec: a validated MorphSpec.
    reduction_axes: sorted axes for bitx (see bits.resolve_reduction_axes).

  Returns:
    A new float32 tensor of x's shape; a variable is read, never assigned.

  Raises:
    TypeError: x is not float32.
  """
  x = tf.convert_to_tensor(x)
  if x.dtype != tf.float32:
    raise TypeError(f"weights must be float32, got {x.dtype.name}")
  if spec.method == "paper":
    return _paper(x, tf.constant(spec.precision, tf.float64))
  if spec.method == "fewest_ones":
    return _fewest_ones(x, tf.constant(spec.precision, tf.float64))
  if spec.method == "round":
    return _round(x, spec.keep_bits)
  return _bitx(x, spec.columns, spec.group_size, reduction_axes)
