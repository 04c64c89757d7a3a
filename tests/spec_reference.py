"""Independent, deliberately naive implementations of SPEC, for the tests only.

Nothing here imports mortar_tf. Each function follows SPEC's wording as
literally as possible (scalar loops, Python floats for the double predicate,
exact fractions for rounding), so that agreement with the vectorised code is
evidence, not a tautology.
"""

import fractions
import itertools
import math
import struct

import numpy as np


# SPEC 5's worked examples, word for word (x, P, paper, fewest_ones); "1.5+1ulp"
# names the float32 word 0x3FC00001, whose decimal would not say which float.
F32_MAX = float(np.finfo(np.float32).max)
WORKED_EXAMPLES = [
    (1.375, 0.1, 1.5, 1.25),
    (1.0078125, 0.1, 1.015625, 1.0),
    (1.6, 0.1, 1.625, 1.5),
    (1.75, 0.1, 1.75, 1.75),
    (0.7, 0.1, 0.75, 0.75),
    (1.1, 0.1, 1.125, 1.0),
    (0.0999, 0.1, 0.1015625, 0.09375),
    ("1.5+1ulp", 0.1, "1.5+2ulp", 1.5),
    (1.375, 0.3, 1.5, 1.0),
    (1.6, 0.3, 2.0, 2.0),
    (1.75, 0.3, 2.0, 2.0),
    (-0.15625, 0.3, -0.1875, -0.125),
    (0.7, 0.3, 0.75, 0.5),
    (F32_MAX, 0.5, F32_MAX, 2.0**127),
    (1.6, 0.001, 1.6015625, 1.6015625),
    (1.0009765625, 0.001, 1.001953125, 1.0),
    (1.6, 1e-9, 1.6, 1.6),
    (2e-38, 1.0, 2.0**-125, 2.0**-125),
    (1e-38, 1.0, 1e-38, 1e-38),
]
# round: (x, keep_bits, result)
ROUND_EXAMPLES = [(1.25, 1, 1.5), (-1.75, 1, -2.0), (1.5, 0, 2.0), (F32_MAX, 0, 2.0**127),
                  (1.6, 3, 1.625)]
# bitx: one group, G = 4, width 24: columns -> result (+0.0 for the emptied -0.0078125)
BITX_GROUP = [3.0, 1.0, 0.375, -0.0078125]
BITX_EXAMPLES = [(3, [3.0, 1.0, 0.0, 0.0]), (4, [3.0, 1.0, 0.25, 0.0])]
# engines: one group [1.5, 1, 0.75, 0], G = 4, width 4, window 2: aligned windows
# 1100, 1000, 0110, 0000, so columns [2, 2, 1, 0], pragmatic (lane max) 2, bitlet 3.
ENGINE_GROUP = [1.5, 1.0, 0.75, 0.0]
ENGINE_EXAMPLE = dict(group_size=4, width=4, window=2, columns=[2, 2, 1, 0], lane_max=2,
                      bitlet=3)


def example_value(v) -> np.float32:
  """A value of the tables above as float32."""
  names = {"1.5+1ulp": 0x3FC00001, "1.5+2ulp": 0x3FC00002}
  return bits_f32(names[v]) if isinstance(v, str) else np.float32(v)


def f32_bits(x) -> int:
  """The 32 bits of a float32 (exact for NaN payloads: struct's "f" goes
  through a double, which quiets a signaling NaN)."""
  return int(np.array(x, dtype=np.float32).reshape(()).view(np.uint32))


def bits_f32(u: int) -> np.float32:
  return np.frombuffer(struct.pack("<I", u & 0xFFFFFFFF), np.float32)[0]


def is_normal(u: int) -> bool:
  return 1 <= (u >> 23) & 0xFF <= 254


def sig_ones(u: int) -> int:
  """Ones of the 24-bit significand; specials count 0 (SPEC 1)."""
  if not is_normal(u):
    return 0
  return bin((u & 0x7FFFFF) | 0x800000).count("1")


def in_ball(candidate: float, x: float, precision: float) -> bool:
  """SPEC 2, literally: fabs((double)x' - (double)x) < P * fabs((double)x)."""
  return abs(float(candidate) - float(x)) < precision * abs(float(x))


def paper(x: np.float32, precision: float) -> np.float32:
  """Algorithm 1 as SPEC 2.1 words it: scan b = 23..0 for '01', first in the ball wins."""
  u = f32_bits(x)
  if not is_normal(u):
    return x
  sign = -1.0 if u >> 31 else 1.0
  e = (u >> 23) & 0xFF
  m = (u & 0x7FFFFF) | 0x800000  # bit 24 (the guard) is 0
  for b in range(23, -1, -1):
    if (m >> b) & 1 == 1 and (m >> (b + 1)) & 1 == 0:
      new_m = (m // 2 ** (b + 1) + 1) * 2 ** (b + 1)
      if new_m == 2 ** 24 and e + 1 == 255:
        continue
      value = sign * math.ldexp(new_m, e - 150)  # exact: new_m <= 2^24
      if in_ball(value, x, precision):
        return np.float32(value)
  return x


def fewest_ones_brute(x: np.float32, precision: float) -> np.float32:
  """Enumerates every float32 of x's sign in the ball (SPEC 2.2), small P only.

  The enumeration window is checked to reach past both ends of the ball, so a
  too-large P fails loudly instead of silently missing candidates.
  """
  u = f32_bits(x)
  if not is_normal(u):
    return x
  mag = u & 0x7FFFFFFF
  sign = u & 0x80000000
  reach = int(4 * precision * 2 ** 24) + 8
  lo, hi = max(mag - reach, 0x00800000), min(mag + reach, 0x7F7FFFFF)
  cands = np.arange(lo, hi + 1, dtype=np.int64)
  values = (cands.astype(np.uint32) | np.uint32(sign)).view(np.float32).astype(np.float64)
  xd = float(x)
  inside = np.abs(values - xd) < precision * abs(xd)
  if inside[0] and lo != 0x00800000 or inside[-1] and hi != 0x7F7FFFFF:
    raise AssertionError("brute-force window does not cover the ball; use a smaller P")
  cands, values = cands[inside], values[inside]
  ones = np.bitwise_count((cands & 0x7FFFFF) | 0x800000)
  dist = np.abs(values - xd)
  # fewest ones, then nearest, then smaller magnitude
  best = np.lexsort((np.abs(values), dist, ones))[0]
  return bits_f32(int(cands[best]) | sign)


def round_keep_bits(x: np.float32, keep_bits: int) -> np.float32:
  """SPEC 2.3 by exact rational arithmetic: nearest multiple of the kept ulp, ties away."""
  u = f32_bits(x)
  if not is_normal(u):
    return x
  e = (u >> 23) & 0xFF
  magnitude = fractions.Fraction(abs(float(x)))
  quantum = fractions.Fraction(2) ** (e - 127 - keep_bits)
  steps = magnitude / quantum
  rounded = math.floor(steps + fractions.Fraction(1, 2)) * quantum
  if rounded >= fractions.Fraction(2) ** 128:  # would be exponent 255: truncate
    rounded = math.floor(steps) * quantum
  value = float(rounded)
  return np.float32(-value if u >> 31 else value)


def output_and_reduction_index_lists(shape, reduction_axes):
  """For each output element (row-major over the other axes), the full indices of its
  reduction elements in row-major order over the reduction axes (SPEC 3)."""
  red = sorted(a % len(shape) for a in reduction_axes)
  out_axes = [a for a in range(len(shape)) if a not in red]
  result = []
  for out_index in itertools.product(*[range(shape[a]) for a in out_axes]):
    vector = []
    for red_index in itertools.product(*[range(shape[a]) for a in red]):
      full = [0] * len(shape)
      for a, i in zip(out_axes, out_index):
        full[a] = i
      for a, i in zip(red, red_index):
        full[a] = i
      vector.append(tuple(full))
    result.append(vector)
  return result


def groups_of(w: np.ndarray, reduction_axes, group_size):
  """List of groups; each a list of (full index or None for padding, value)."""
  groups = []
  for vector in output_and_reduction_index_lists(w.shape, reduction_axes):
    for start in range(0, len(vector), group_size):
      chunk = [(i, w[i]) for i in vector[start:start + group_size]]
      chunk += [(None, np.float32(0.0))] * (group_size - len(chunk))
      groups.append(chunk)
  return groups


def aligned_column_ones(w: np.ndarray, reduction_axes, group_size, width):
  """Per-column ones of the exponent-matched windows, by a plain loop over bits."""
  columns = [0] * width
  for group in groups_of(w, reduction_axes, group_size):
    exps = [(f32_bits(v) >> 23) & 0xFF for _, v in group if is_normal(f32_bits(v))]
    emax = max(exps, default=0)
    for _, v in group:
      u = f32_bits(v)
      if not is_normal(u):
        continue
      e = (u >> 23) & 0xFF
      m = (u & 0x7FFFFF) | 0x800000
      for j in range(24):
        if (m >> j) & 1:
          c = (23 - j) + (emax - e)
          if c < width:
            columns[c] += 1
  return columns


def bitx(w: np.ndarray, reduction_axes, group_size, columns) -> np.ndarray:
  """SPEC 2.4 by a loop: keep bits landing in columns < `columns`, rebuild exactly."""
  out = w.copy()
  for group in groups_of(w, reduction_axes, group_size):
    exps = [(f32_bits(v) >> 23) & 0xFF for _, v in group if is_normal(f32_bits(v))]
    emax = max(exps, default=0)
    for index, v in group:
      u = f32_bits(v)
      if index is None or not is_normal(u):
        continue
      e = (u >> 23) & 0xFF
      m = (u & 0x7FFFFF) | 0x800000
      kept = sum(1 << j for j in range(24) if (m >> j) & 1 and (23 - j) + (emax - e) < columns)
      if kept == 0:
        out[index] = np.float32(0.0)
      else:
        value = math.ldexp(kept, e - 150)
        out[index] = np.float32(-value if u >> 31 else value)
  return out


def engine_group_figures(w: np.ndarray, reduction_axes, group_size, width, window):
  """Per group (lane_max, bitlet) of SPEC 4 by plain loops over lanes and columns."""
  out = []
  for group in groups_of(w, reduction_axes, group_size):
    exps = [(f32_bits(v) >> 23) & 0xFF for _, v in group if is_normal(f32_bits(v))]
    emax = max(exps, default=0)
    lanes = []  # per lane, the set of columns holding a 1
    for _, v in group:
      u = f32_bits(v)
      columns = set()
      if is_normal(u):
        e = (u >> 23) & 0xFF
        m = (u & 0x7FFFFF) | 0x800000
        for j in range(24):
          c = (23 - j) + (emax - e)
          if (m >> j) & 1 and c < width:
            columns.add(c)
      lanes.append(columns)
    lane_max = max(len(c) for c in lanes)
    bitlet = 1
    for c in range(width):
      ones = sum(1 for lane in lanes if c in lane)
      zero_windows = 0
      for start in range(0, group_size, window):
        if not any(c in lane for lane in lanes[start:min(start + window, group_size)]):
          zero_windows += 1
      bitlet = max(bitlet, ones + zero_windows)
    out.append((lane_max, bitlet))
  return out
