"""The multiple-choice knapsack behind the per-kernel search.

One option per layer (or none), maximising the total gain while the total
cost stays within a budget: the search's choice of one P per kernel from
each kernel's measured (cost, gain) pairs. Costs are counted in whole
1/2000ths of the budget with exact rational rounding, so a chosen set never
exceeds the budget by float rounding.

Example:
  >>> solve([[(0.5, 3.0, "a")], [(0.5, 2.0, "b"), (1.0, 4.0, "c")]], 1.0)
  ['a', 'b']
"""

from __future__ import annotations

import fractions
import math


def solve(options: list[list[tuple[float, float, object]]], budget: float):
  """Picks one option per layer maximising total gain with total drop <= budget.

  options[l] = [(drop, gain, choice), ...]; (0, 0, None) is always allowed.
  Drops are rounded up to whole 1/2000ths of the budget in exact rational
  arithmetic, so the chosen drops' exact sum never exceeds the budget (a
  float `drop * 2000 / budget` can round below the integer it should reach
  and let several options through together). Budget 0: only options that
  do not worsen the metric are free; an infinite budget takes any finite
  drop; an infinite drop never fits.
  """
  units = 2000

  def cost(drop):
    if drop <= 0:
      return 0
    if budget <= 0 or not math.isfinite(drop):
      return units + 1
    if math.isinf(budget):
      return 0
    return math.ceil(fractions.Fraction(float(drop)) * units / fractions.Fraction(float(budget)))

  best = {0: (0.0, [])}  # used capacity -> (gain, choices)
  for layer_options in options:
    nxt = {}
    for used, (gain, picks) in best.items():
      for drop, g, choice in [(0.0, 0.0, None)] + layer_options:
        c = used + cost(drop)
        if c > units:
          continue
        if c not in nxt or nxt[c][0] < gain + g:
          nxt[c] = (gain + g, picks + [choice])
    best = nxt
  return max(best.values(), key=lambda v: v[0])[1]
