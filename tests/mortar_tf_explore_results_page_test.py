"""The results page's generated claims about the search flip with the records.

Each record is written by hand with a known outcome (a per-kernel map that
beats the global P, the global P returned, nothing within budget; a drop that
does or does not grow with P), and the sentence must say exactly that.
"""

from mortar_tf.explore import results_page

GRID = [0.01, 0.1, 0.3]


def _point(p, drop, aligned=2.0, speedup=3.0):
  return {"settings": {"precision": p}, "metric": 1.0 - drop, "drop": drop,
          "ratio": {"aligned": aligned}, "speedup": speedup}


def _record(name, outcome, drops=(0.0, 0.0, 0.0), global_p=0.1):
  """outcome: "map" (a per-kernel map, 1.5x the global's ratio), "global"
  or "nothing"; drops: the design-space drop at each P of GRID."""
  best = _point(global_p, 0.0, aligned=2.0, speedup=3.0) if global_p else None
  point = {"map": _point(None, 0.0, aligned=3.0, speedup=4.5),
           "global": best, "nothing": _point(None, 0.0, aligned=1.0, speedup=1.5)}[outcome]
  return {
      "name": name,
      "metric": {"name": "agreement", "budget": 0.01, "higher_is_better": True},
      "settings": {"search_method": "fewest_ones", "search_precisions": GRID},
      "design_space": {"paper": [], "fewest_ones": [_point(p, d) for p, d in zip(GRID, drops)]},
      "search": {"point": point, "best_global": best, "chose_global": outcome == "global",
                 "precisions": {} if outcome == "nothing" else {"fc": 0.3}},
  }


def _per_layer(records):
  (line,) = [l for l in results_page._summary(records, 0.1) if "Per-layer P" in l]
  return line


def test_only_per_kernel_maps_count_as_per_kernel_gains():
  line = _per_layer([_record("a", "map"), _record("b", "global"), _record("c", "nothing")])
  assert "On 1 of 3 models (a) the search found a per-kernel map" in line
  assert "aligned ratio is 1.50x that P's, its estimated speedup 1.50x" in line
  assert "on b none did, and the search returned that P" in line
  assert "on c nothing could be morphed within the budget" in line
  line = _per_layer([_record("b", "global")])
  assert "On none of 1 models did a per-kernel map beat" in line and "1.00x" not in line


def test_the_speedup_within_budget_names_what_each_result_is():
  text = results_page._within_budget_speedups([_record("a", "map"), _record("b", "global")])
  assert "(a per-kernel map on a; one P for the whole model on b)" in text
  assert "3.00x to 4.50x over `stripes`." in text and "ceiling" not in text
  top = _record("a", "map")
  top["search"]["point"]["speedup"] = 24.0
  assert "24.00x is the estimate's ceiling" in results_page._within_budget_speedups([top])


def test_the_global_p_check_flips_when_the_drop_does_not_grow_with_p():
  # Drops grow with P and 0.1 is the last within budget: the bisection's P is the largest.
  grows = _record("a", "global", drops=(0.0, 0.005, 0.05), global_p=0.1)
  assert "agrees on every model" in results_page._global_p_check([grows])
  # 0.3 is within budget although 0.1 was chosen (the drop fell again at 0.3).
  dips = _record("b", "global", drops=(0.0, 0.005, 0.008), global_p=0.1)
  text = results_page._global_p_check([grows, dips])
  assert "shows a larger P within the budget on b (P = 0.3 within the budget, the " \
         "bisection's P = 0.1) (it agrees on a)." in text
  none_chosen = _record("c", "nothing", drops=(0.0, 0.5, 0.5), global_p=None)
  assert "on c (P = 0.01 within the budget, the bisection's none)" in \
      results_page._global_p_check([none_chosen])
