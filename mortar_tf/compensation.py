"""Error-compensated morphing and bias correction (SPEC 6): the numpy core.

Plain morphing treats every weight alone. Here a layer's morph errors are
compensated on calibration inputs, as post-training quantization does for
rounding (a morph, like a rounding, picks one of a few nearby values):

* **Error compensation** (OBQ/GPTQ-style). A layer computes y = Wᵀp for each
  input row p (a Dense input, or an im2col patch of a convolution: the kernel
  reshaped to [reduction rows, outputs]). With H = E[p pᵀ] over calibration
  inputs (dampened), the rows of W are morphed in order; each row's error
  (updated value minus its morph) is spread over the rows not yet morphed
  through the upper Cholesky factor of H⁻¹, so that the output on the
  calibration inputs moves as little as the rows left can make it. Each final
  value is exactly what the section-2 method returns for its *updated*
  (pre-morph) value, which is no longer within P of the original weight: the
  result says how many are farther and how far. `projected=True` keeps the
  original's ball: where the morph of the updated value falls outside it, the
  weight takes the morph of its original value instead (and that error is
  spread on), so no final value is farther than P.
* **Bias correction** (as in data-free quantization). The mean output change
  over the calibration inputs, E[p]ᵀ(Q - W), is subtracted from the layer's
  bias (or added to the moving mean of the BatchNormalization that follows).

Only the per-weight methods compensate (paper, fewest_ones, round; round's
ball is its own bound 2^-(keep_bits+1)); bitx decides per group and is refused.
Depthwise convolutions compensate per channel (one H per channel), as a batch
of independent problems. Nothing here imports TensorFlow: the callers collect
the statistics (mortar_tf.keras.calibration for Keras models) and write the
values back.

Example:
  stats = Statistics(rows=64)
  stats.add(inputs)                      # [n, 64] float rows, any number of calls
  result = compensate(kernel, stats, MorphSpec("fewest_ones", 0.01))
  result.morphed, result.bias_shift      # new kernel; subtract from the bias
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mortar_tf import backends
from mortar_tf import morphing

METHODS = ("paper", "fewest_ones", "round")
DEFAULT_DAMPING = 0.01
DEFAULT_BLOCK = 128
_MAX_DAMPING_TRIES = 6
_CHUNK = 1 << 22  # values per product in Statistics.add


def check_spec(spec: morphing.MorphSpec) -> morphing.MorphSpec:
  """`spec` when its method morphs per weight (compensation works row by row).

  Raises:
    ValueError: bitx (it decides per group of weights along the rows).
  """
  if spec.method not in METHODS:
    raise ValueError(f"compensation works per weight ({', '.join(METHODS)}); {spec.method!r} "
                     "decides per group along the reduction rows, so it cannot be compensated "
                     "row by row")
  return spec


def ball_bound(spec: morphing.MorphSpec) -> float:
  """The relative bound a plain morph keeps: P, or 2^-(keep_bits+1) for round."""
  if spec.method == "round":
    return 2.0 ** -(spec.keep_bits + 1)
  return spec.precision


def outside_ball(values: np.ndarray, original: np.ndarray, bound: float) -> np.ndarray:
  """Where |value - original| >= bound*|original| (SPEC 2's predicate, in double).

  A changed zero or special value is outside any ball; an unchanged one is in it.
  """
  v = values.astype(np.float64)
  o = original.astype(np.float64)
  with np.errstate(invalid="ignore"):
    inside = np.abs(v - o) < bound * np.abs(o)
  same = values.view(np.uint32) == original.view(np.uint32)
  return ~(inside | same)


class Statistics:
  """Accumulates H = Σ p pᵀ and Σ p over input rows, in float64.

  Args:
    rows: the length of one input row (the kernel's reduction rows).
    groups: independent problems (a depthwise conv's channels): add() then
      takes [n, groups, rows] arrays and H is [groups, rows, rows].

  The factor of H⁻¹ that compensate() needs depends on H and the damping
  only, not on the method or P: inverse_factor() keeps it (one more
  [groups, rows, rows] float64 array per damping) until rows are added, so a
  search that compensates a kernel at many P factors it once.
  """

  def __init__(self, rows: int, groups: int | None = None):
    self.rows, self.groups = int(rows), groups
    g = 1 if groups is None else int(groups)
    self.gram = np.zeros((g, self.rows, self.rows))
    self.total = np.zeros((g, self.rows))
    self.count = 0
    self._factors: dict = {}

  def inverse_factor(self, damping: float):
    """(U, damping used) of _upper_inverse_factor(H, damping), computed once
    per damping while no rows are added."""
    if damping not in self._factors:
      self._factors[damping] = _upper_inverse_factor(self.hessian(), damping)
    return self._factors[damping]

  def add(self, inputs) -> None:
    """Adds input rows: [n, rows] (or [n, groups, rows] for groups).

    Products are taken in float32 over chunks of about 4M values (a BLAS
    product each; a chunk's rounding is ~1e-6 relative) and summed in float64,
    so memory stays at one chunk beside the input however large it is.
    """
    self._factors.clear()
    x = np.asarray(inputs)
    if not np.issubdtype(x.dtype, np.floating):
      x = x.astype(np.float32)
    if self.groups is None:
      if x.shape[-1] != self.rows:
        raise ValueError(f"expected rows of length {self.rows}, got {x.shape}")
      x = x.reshape(-1, self.rows)
    elif x.ndim != 3 or x.shape[1:] != (self.groups, self.rows):
      raise ValueError(f"expected [n, {self.groups}, {self.rows}] rows, got {x.shape}")
    if not np.all(np.isfinite(x)):
      raise ValueError("calibration activations hold NaN or inf: the layer's inputs on the "
                       "calibration data are not finite")
    if self.groups is None:  # [n, rows]: BLAS reads the transpose in place
      step = max(1, _CHUNK // self.rows)
      for start in range(0, x.shape[0], step):
        chunk = x[start:start + step]
        self.gram[0] += chunk.T @ chunk
        self.total[0] += chunk.sum(axis=0, dtype=np.float64)
      self.count += x.shape[0]
      return
    step = max(1, _CHUNK // (x.shape[1] * x.shape[2]))
    for start in range(0, x.shape[0], step):
      chunk = np.ascontiguousarray(x[start:start + step].transpose(1, 2, 0))  # [g, rows, n]
      self.gram += chunk @ chunk.transpose(0, 2, 1)
      self.total += chunk.sum(axis=2, dtype=np.float64)
    self.count += x.shape[0]

  def mean(self) -> np.ndarray:
    """E[p]: [groups, rows] (groups is 1 without groups)."""
    return self.total / max(self.count, 1)

  def hessian(self) -> np.ndarray:
    """E[p pᵀ]: [groups, rows, rows]."""
    return self.gram / max(self.count, 1)


@dataclasses.dataclass
class Result:
  """What compensate() made of one kernel.

  Attributes:
    morphed: the final kernel (float32, the kernel's shape): each value is
      the method's morph of the same position in `premorph`.
    premorph: the values that were morphed (the updated weights; the
      original where projection fell back, or everywhere without error
      compensation).
    bias_shift: E[p]ᵀ(morphed - original) per output channel (float64): the
      mean output change the bias correction removes (subtract it from a bias,
      add it to a following BatchNormalization's moving mean); None without
      bias correction.
    max_rel, mean_rel: relative distance of the final values from the
      original weights (over nonzero originals).
    outside: how many final values lie outside the original's ball
      (farther than P; round: its own bound).
    fallbacks: weights projection sent back to the morph of their original.
    damping: the damping used (raised when H was not positive definite).
    samples: calibration rows behind H.
  """
  morphed: np.ndarray
  premorph: np.ndarray
  bias_shift: np.ndarray | None
  max_rel: float
  mean_rel: float
  outside: int
  fallbacks: int
  damping: float
  samples: int

  def __repr__(self) -> str:
    return (f"Result(shape={tuple(self.morphed.shape)}, max_rel={self.max_rel:.3g}, "
            f"mean_rel={self.mean_rel:.3g}, outside={self.outside}, fallbacks={self.fallbacks}, "
            f"samples={self.samples})")

  def to_dict(self) -> dict:
    return {"max_rel": self.max_rel, "mean_rel": self.mean_rel, "outside": self.outside,
            "fallbacks": self.fallbacks, "damping": self.damping, "samples": self.samples,
            "weights": int(self.morphed.size)}


def _upper_inverse_factor(hessian: np.ndarray, damping: float):
  """(U, damping used): upper U with UᵀU = (H + λI)⁻¹ per group, λ = damping·mean(diag H).

  Rows no calibration input reaches (H[i,i] = 0) get H[i,i] = 1 first, so H is
  invertible and their errors, uncorrelated with the rest, stay where they are.
  Where Cholesky fails (H not positive definite after rounding) the damping is
  raised tenfold, up to a limit.
  """
  h = hessian.copy()
  g, d, _ = h.shape
  diag = np.einsum("gii->gi", h)
  dead = diag <= 0
  diag[dead] = 1.0
  np.einsum("gii->gi", h)[...] = diag
  scale = diag.mean(axis=1)
  for attempt in range(_MAX_DAMPING_TRIES):
    lam = damping * 10.0 ** attempt
    try:
      upper = np.empty_like(h)
      for i in range(g):
        damped = h[i].copy()
        np.einsum("ii->i", damped)[...] += lam * scale[i]
        # The upper factor U of H⁻¹ = UᵀU without forming H⁻¹: with J the
        # reversal, chol(JHJ) = L gives H = RRᵀ, R = JLJ upper; then U = R⁻¹.
        lower = np.linalg.cholesky(damped[::-1, ::-1])
        upper[i] = np.linalg.inv(lower[::-1, ::-1])
      return upper, lam
    except np.linalg.LinAlgError:
      continue
  raise ValueError("the calibration statistics are not positive definite even with damping "
                   f"{damping * 10.0 ** (_MAX_DAMPING_TRIES - 1):g}: are the calibration inputs "
                   "constant?")


def _morph_rows(values: np.ndarray, spec: morphing.MorphSpec) -> np.ndarray:
  return backends.morph(values, spec)


def compensate(kernel, statistics: Statistics, spec: morphing.MorphSpec, *,
               error: bool = True, bias: bool = True, projected: bool = False,
               damping: float = DEFAULT_DAMPING, block: int = DEFAULT_BLOCK,
               depthwise: bool = False) -> Result:
  """Morphs one kernel with its morph errors compensated (module docstring).

  Args:
    kernel: float32 array [..., outputs]: its rows (all axes but the last,
      flattened in C order) are the statistics' rows, as a Dense kernel or a
      conv kernel [kh, kw, cin, cout] against im2col patches in (kh, kw, cin)
      order. Depthwise: [kh, kw, channels, multiplier] against per-channel
      statistics (groups = channels, rows = kh*kw).
    statistics: the layer's input Statistics.
    spec: the per-weight method (check_spec).
    error: spread morph errors over later rows (else every weight is morphed
      alone, bit-identical to plain morphing).
    bias: compute the bias shift.
    projected: keep every final value within the original's ball.
    damping: λ relative to the mean diagonal of H (GPTQ's "percdamp").
    block: rows updated together before the rest get the block's update.

  Raises:
    ValueError: bitx, non-finite weights, statistics of the wrong size,
      damping outside (0, 1].
  """
  check_spec(spec)
  w = np.asarray(kernel)
  if w.dtype != np.float32:
    raise TypeError(f"kernels must be float32, got {w.dtype}")
  if not np.all(np.isfinite(w)):
    raise ValueError("compensation needs finite weights: the kernel holds NaN or inf")
  if not 0 < damping <= 1:
    raise ValueError(f"damping must be in (0, 1], got {damping!r}")
  if depthwise:
    if w.ndim < 2:
      raise ValueError(f"a depthwise kernel is [..., channels, multiplier], got {w.shape}")
    channels, mult = w.shape[-2], w.shape[-1]
    rows = int(np.prod(w.shape[:-2]))
    grouped = np.moveaxis(w.reshape(rows, channels, mult), 1, 0)  # [C, rows, mult]
    expected = (channels, rows)
  else:
    rows = int(np.prod(w.shape[:-1]))
    grouped = w.reshape(1, rows, w.shape[-1])
    expected = (None, rows)
  if (statistics.groups, statistics.rows) != expected:
    raise ValueError(f"statistics for groups={statistics.groups}, rows={statistics.rows} do not "
                     f"fit a kernel of shape {w.shape} (expected groups={expected[0]}, "
                     f"rows={expected[1]})")
  bound = ball_bound(spec)
  used = 0.0
  if error and statistics.count:
    upper, used = statistics.inverse_factor(damping)
    q, pre, fallbacks = _compensated(grouped, upper, spec, bound, projected, block)
  else:
    pre = grouped.copy()
    q = _morph_rows(pre, spec)
    fallbacks = 0

  def ungroup(a):
    if depthwise:
      return np.moveaxis(a, 0, 1).reshape(w.shape)
    return a.reshape(w.shape)

  morphed, premorph = ungroup(q), ungroup(pre)
  shift = None
  if bias:
    delta = q.astype(np.float64) - grouped.astype(np.float64)  # [g, rows, out]
    shift = np.einsum("gr,gro->go", statistics.mean(), delta).reshape(-1)
  orig = w.astype(np.float64)
  nonzero = orig != 0
  rel = np.abs(morphed.astype(np.float64) - orig)[nonzero] / np.abs(orig[nonzero])
  return Result(morphed=morphed, premorph=premorph, bias_shift=shift,
                max_rel=float(rel.max()) if rel.size else 0.0,
                mean_rel=float(rel.mean()) if rel.size else 0.0,
                outside=int(outside_ball(morphed, w, bound).sum()), fallbacks=int(fallbacks),
                damping=used, samples=int(statistics.count))


def _compensated(w, upper, spec, bound, projected, block):
  """The row loop: (final [g, d, n] float32, pre-morph float32, fallbacks).

  w: [g, d, n] float32 originals; upper: [g, d, d] with UᵀU = H⁻¹. Row i's error
  e = (u_i - q_i) / U[i, i] moves each later row j by -U[i, j]·e (GPTQ's
  update, equal to OBQ's u_F -= e_i · H_F⁻¹[:, i] / H_F⁻¹[i, i] over the rows F
  left). Rows within a block are updated at once; the rows after it get the
  block's errors in one product (the same sums, reordered).
  """
  g, d, n = w.shape
  work = w.astype(np.float64)
  final = np.empty_like(w)
  pre = np.empty_like(w)
  fallbacks = 0
  for start in range(0, d, block):
    stop = min(start + block, d)
    errors = np.empty((g, stop - start, n))
    for i in range(start, stop):
      u = work[:, i, :].astype(np.float32)
      q = _morph_rows(u, spec)
      if projected:
        away = outside_ball(q, w[:, i, :], bound)
        if away.any():
          fallbacks += int(away.sum())
          u = np.where(away, w[:, i, :], u)
          q = np.where(away, _morph_rows(w[:, i, :], spec), q)
      pre[:, i, :], final[:, i, :] = u, q
      err = (work[:, i, :] - q) / upper[:, i, i][:, None]
      errors[:, i - start, :] = err
      if i + 1 < stop:
        work[:, i + 1:stop, :] -= upper[:, i, i + 1:stop][:, :, None] * err[:, None, :]
    if stop < d:
      work[:, stop:, :] -= np.swapaxes(upper[:, start:stop, stop:], 1, 2) @ errors
  return final, pre, fallbacks


def output_error(kernel, morphed, inputs) -> float:
  """Mean squared output change ||p(Q - W)||² / n over input rows [n, rows] (float64)."""
  delta = np.asarray(morphed, np.float64) - np.asarray(kernel, np.float64)
  delta = delta.reshape(-1, delta.shape[-1])
  x = np.asarray(inputs, np.float64).reshape(-1, delta.shape[0])
  return float(np.mean(np.sum((x @ delta) ** 2, axis=1)))


def summarize(results) -> dict:
  """Totals over Results: weights, outside, fallbacks, max_rel, mean_rel (weighted)."""
  results = list(results)
  weights = sum(r.morphed.size for r in results)
  return {"kernels": len(results), "weights": int(weights),
          "outside": int(sum(r.outside for r in results)),
          "fallbacks": int(sum(r.fallbacks for r in results)),
          "max_rel": max((r.max_rel for r in results), default=0.0),
          "mean_rel": (sum(r.mean_rel * r.morphed.size for r in results) / weights
                       if weights else 0.0)}

