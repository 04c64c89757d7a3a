"""How much morphing each kernel costs: the search's sensitivity measurements.

With calibration inputs, a kernel's cost at a P is a continuous proxy, the
change of the model's outputs on a small calibration subset; without them,
each cost is a full evaluation of the metric, so the measurements go coarse
to fine over the P grid and stop where the evaluation cap says. Either way
the measured costs are made monotone in P before the knapsack sees them.

Example:
  >>> coarse_to_fine(8)
  [7, 3, 1, 5, 0, 2, 4, 6]
  >>> calibration_size(1000)
  125
"""

from __future__ import annotations

import numpy as np


def calibration_size(n: int) -> int:
  """Samples in the calibration subset: enough for a stable proxy, small
  next to the full set (1/8 of it, 16..256)."""
  return max(1, min(n, max(16, min(256, n // 8))))


def predict(model, x, batch_size=256):
  """The model's (first) output on `x`, as float64."""
  out = model.predict(x, batch_size=batch_size, verbose=0)
  return np.asarray(out[0] if isinstance(out, (list, tuple)) else out, np.float64)


def output_change(reference: np.ndarray, outputs: np.ndarray) -> float:
  """Mean squared change of the outputs over their mean square (>= 0, 0 only
  for identical outputs): continuous where a top-1 metric moves in steps."""
  scale = float(np.mean(reference * reference)) or 1.0
  return float(np.mean((outputs - reference) ** 2)) / scale


def coarse_to_fine(n: int) -> list[int]:
  """Indices 0..n-1, the last first, then the midpoints of what is left,
  level by level (n = 8: 7, 3, 1, 5, 0, 2, 4, 6): a prefix of any length
  spreads over the grid and always holds the largest P."""
  order, intervals = [n - 1], [(0, n - 2)]
  while intervals:
    following = []
    for lo, hi in intervals:
      if lo > hi:
        continue
      mid = (lo + hi) // 2
      order.append(mid)
      following += [(lo, mid - 1), (mid + 1, hi)]
    intervals = following
  return order


def monotone_costs(kernels, grid, raw):
  """({kernel key: {P: cost}}, {kernel key: [P bounded, not measured]}).

  A larger P never costs less (noise is not a discount): each measured cost
  is raised to the largest measured at a smaller P. An unmeasured P costs
  what the next larger measured P costs (an upper bound when drops grow with
  P); a P with no larger measurement has no cost and cannot be chosen.
  """
  sensitivity, bounded = {}, {}
  for i, k in enumerate(kernels):
    costs, running = {}, 0.0
    for p in grid:
      if p in raw[i]:
        running = max(running, raw[i][p])
        costs[p] = running
    bound = None
    for p in reversed(grid):
      if p in costs:
        bound = costs[p]
      elif bound is not None:
        costs[p] = bound
        bounded.setdefault(k.key, []).insert(0, p)
    sensitivity[k.key] = {p: costs[p] for p in grid if p in costs}
  return sensitivity, bounded
