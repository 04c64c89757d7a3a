"""The per-kernel search: keys, budgets, objectives and the knapsack.

Every returned map is re-applied here the way a user applies it
(morph_model, or the numpy morph per kernel by hand) and re-evaluated; the
knapsack is checked against brute force over every combination.
"""

import fractions
import importlib
import itertools
import math
import warnings

import keras
import numpy as np
import pytest

import mortar_tf
from mortar_tf import explore
from mortar_tf.explore import estimates
from mortar_tf.explore import in_place
from mortar_tf.explore import knapsack
from mortar_tf.explore import search
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing

rng = np.random.default_rng(5)


def _randomise(model, scale=1.0):
  model.set_weights([(rng.standard_normal(w.shape) * scale).astype(np.float32)
                     for w in model.weights])
  return model


def _mse(model, x):
  reference = model.predict(x, verbose=0)
  return explore.Metric("mse", lambda m: float(np.mean((m.predict(x, verbose=0) - reference)
                                                       ** 2)),
                        higher_is_better=False, inputs=x)


def _separable():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.SeparableConv2D(4, 3, name="sep")(inputs)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(3, name="head")(x)
  return _randomise(keras.Model(inputs, outputs))


def test_a_separable_convs_two_kernels_get_their_own_keys_and_the_map_keeps_its_promise():
  model = _separable()
  x = rng.standard_normal((64, 8, 8, 3)).astype(np.float32)
  metric = _mse(model, x)
  kernels = explore.models.model_kernels(model)
  one = {i: mortar_tf.morph(k.original, "paper", 0.1) for i, k in enumerate(kernels)
         if k.name == "head/kernel"}
  with in_place.Applied(kernels, one):
    budget = 2 * metric(model)  # room for more than the head alone at P = 0.1
  found = explore.search_precisions(model, metric, budget, method="paper",
                                    precisions=[0.01, 0.1, 0.5], estimate_speedup=False)
  every = ["sep/depthwise_kernel", "sep/pointwise_kernel", "head"]  # the model's kernels
  assert set(found.sensitivity) == set(every)
  assert found.precisions and not found.chose_global
  # The summary names each chosen kernel with its P, and the others (if any)
  # as left unmorphed; with every kernel morphed it must say nothing is left.
  summary = found.summary()
  assert ("Per kernel: " + ", ".join(f"{k}: P={p:g}" for k, p in found.precisions.items())
          in summary.splitlines())
  left = [k for k in every if k not in found.precisions]
  if left:
    assert "Left unmorphed: " + ", ".join(left) in summary.splitlines()
  else:
    assert "Left unmorphed" not in summary
  assert set(found.precisions) | set(left) == set(every)
  # Applied as the README says: morph_model with the map, evaluated here.
  wrapped = morph_model(model, "paper", precision=dict(found.precisions))
  reference = model.predict(x, verbose=0)
  drop = float(np.mean((wrapped.predict(x, verbose=0) - reference) ** 2))
  assert drop <= budget
  assert found.point.drop == pytest.approx(drop, rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("budget_scale", [0.0, 0.3, 1.0, 3.0])
def test_every_returned_map_meets_the_budget_when_re_evaluated(budget_scale):
  model = _separable()
  x = rng.standard_normal((64, 8, 8, 3)).astype(np.float32)
  metric = _mse(model, x)
  # Budgets relative to one global P's drop, measured here.
  kernels = explore.models.model_kernels(model)
  values = {i: mortar_tf.morph(k.original, "fewest_ones", 0.1) for i, k in enumerate(kernels)}
  with in_place.Applied(kernels, values):
    reference_drop = metric(model)
  budget = budget_scale * reference_drop
  found = explore.search_precisions(model, metric, budget, precisions=[0.01, 0.05, 0.1, 0.3],
                                    estimate_speedup=False)
  applied = search.resolve_map(found.precisions, kernels, "fewest_ones") if found.precisions \
      else {}
  morphed = {i: mortar_tf.morph(kernels[i].original, "fewest_ones", p, backend="numpy")
             for i, p in applied.items()}
  with in_place.Applied(kernels, morphed):
    drop = metric(model)
  assert drop <= budget + 1e-12
  assert found.evaluations <= 30


def _sequential():
  return _randomise(keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, name="a"),
                                      keras.layers.Dense(4, name="b")]))


def _nested():
  inner = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, name="a")], name="inner")
  inputs = keras.Input((12,))
  outputs = keras.layers.Dense(4, name="b")(inner(inputs))
  return _randomise(keras.Model(inputs, outputs))


@pytest.mark.parametrize("make", [_sequential, _nested], ids=["sequential", "nested"])
def test_objective_speedup_finds_cycles_on_sequential_and_nested_models(make):
  model = make()
  x = rng.standard_normal((32, 12)).astype(np.float32)
  found = explore.search_precisions(model, _mse(model, x), budget=math.inf,
                                    objective="speedup", precisions=[0.1, 0.5])
  # Anything fits, so every kernel takes the largest P (as a global map).
  assert found.precisions == {"*": 0.5}
  assert found.point.speedup_unmorphed > 1.0
  # The gains it maximised are real cycles, computed per kernel.
  kernels = explore.models.model_kernels(model)
  estimator = estimates.ModelEstimator(model, (1, 12))
  try:
    gains = estimates.mortar_cycle_gains(kernels, [0.5], "fewest_ones", estimator)
    names = estimator.weight_names(kernels)
  finally:
    estimator.close()
  assert len(names) == len(kernels) == 2
  assert all(gains[(i, 0.5)] > 0 for i in range(len(kernels)))


def _brute_force(options, budget):
  best = 0.0
  for combo in itertools.product(*[[(0.0, 0.0)] + [(d, g) for d, g, _ in layer]
                                   for layer in options]):
    if sum(d for d, _ in combo) <= budget:
      best = max(best, sum(g for _, g in combo))
  return best


def _exact_sum(drops):
  """The exact sum of float drops (each float is a rational number)."""
  return sum((fractions.Fraction(d) for d in drops), fractions.Fraction(0))


def _brute_force_exact(options, budget):
  """The largest total gain whose drops' exact sum is within `budget`."""
  best = 0.0
  for combo in itertools.product(*[[(0.0, 0.0)] + [(d, g) for d, g, _ in layer]
                                   for layer in options]):
    if _exact_sum(d for d, _ in combo) <= fractions.Fraction(budget):
      best = max(best, sum(g for _, g in combo))
  return best


def _picked(options, picks):
  return [next(o for o in options[layer] if o[2] == pick) for layer, pick in enumerate(picks)
          if pick is not None]


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_equals_brute_force(seed):
  r = np.random.default_rng(seed)
  layers, per_layer = int(r.integers(2, 6)), int(r.integers(1, 4))
  budget = float(r.uniform(0.2, 2.0))
  # One option per layer sits a hair (1e-13 relative) above its share of the
  # budget, the shares adding up to 2000/2000: together they exceed the
  # budget, which a cost rounded down (or a float product nudged below its
  # integer) would let through, and their gains make them the best pick.
  shares = np.diff(np.concatenate([[0], np.sort(r.choice(np.arange(1, 2000), layers - 1,
                                                         replace=False)), [2000]]))
  options = [[(budget * int(shares[layer]) / 2000 * (1 + 1e-13), 20.0 + float(r.uniform(0, 1)),
               (layer, 0))] +
             [(float(r.uniform(0, 1)), float(r.uniform(0, 10)), (layer, k))
              for k in range(1, per_layer)]
             for layer in range(layers)]
  chosen = _picked(options, knapsack.solve(options, budget))
  # Never above the budget, exactly (no float tolerance).
  assert _exact_sum(d for d, _, _ in chosen) <= fractions.Fraction(budget)
  # Drops are rounded up to whole 1/2000ths of the budget, each by less than
  # one: the answer is at least the best combination within the budget less
  # one unit per layer, and at most the best within the budget.
  gain = sum(g for _, g, _ in chosen)
  assert gain >= _brute_force_exact(options, budget * (1 - layers / 2000)) - 1e-9
  assert gain <= _brute_force_exact(options, budget) + 1e-9


def test_knapsack_never_lets_rounding_add_up_past_the_budget():
  # Each drop is a hair above half the budget (1000.0001 units): two of them
  # exceed it, so only one may be taken, whatever the gains.
  budget = 1.0
  for excess in (2e-7, 1e-13):
    half = 0.5 * (1 + excess)
    options = [[(half, 5.0, "a")], [(half, 4.0, "b")], [(0.0, 1.0, "c")]]
    picks = knapsack.solve(options, budget)
    assert picks == ["a", None, "c"], excess
  # An option exactly at the budget fits.
  assert knapsack.solve([[(0.3, 1.0, "x")]], 0.3) == ["x"]
  # Three drops of exactly a third of a budget of 0.3 (0.1 each in float:
  # 0.1 + 0.1 + 0.1 > 0.3 in exact arithmetic): at most two fit.
  options = [[(0.1, 1.0, i)] for i in range(3)]
  chosen = _picked(options, knapsack.solve(options, 0.3))
  assert _exact_sum(d for d, _, _ in chosen) <= fractions.Fraction(0.3)
  assert len(chosen) == 2


def test_knapsack_respects_its_capacity_and_a_zero_budget():
  options = [[(0.6, 5.0, "a")], [(0.6, 4.0, "b")], [(0.0, 1.0, "c")]]
  assert knapsack.solve(options, 1.0) == ["a", None, "c"]
  assert knapsack.solve(options, 0.0) == [None, None, "c"]


def test_the_proxy_budget_is_stepped_back_when_the_metric_says_no():
  # Top-1 agreement on a classifier: the proxy (output change) happily takes
  # the largest P everywhere at a generous proxy budget, the metric refuses,
  # and the bisection must step back to a map that meets the budget.
  inputs = keras.Input((16,))
  outputs = keras.layers.Dense(10, name="logits")(keras.layers.Dense(32, name="hidden")(inputs))
  model = _randomise(keras.Model(inputs, outputs))
  x = rng.standard_normal((400, 16)).astype(np.float32)
  metric = explore.builtin_metric("agreement", model, {"x": x})
  found = explore.search_precisions(model, metric, 0.02, precisions=[0.01, 0.1, 0.5, 1.0],
                                    estimate_speedup=False)
  kernels = explore.models.model_kernels(model)
  everything = {i: mortar_tf.morph(k.original, "fewest_ones", 1.0) for i, k in enumerate(kernels)}
  with in_place.Applied(kernels, everything):
    assert metric.drop(1.0, metric(model)) > 0.02  # the largest map breaks the budget
  assert found.point.drop <= 0.02 + 1e-12
  assert found.evaluations > 3  # it took more than one try


def test_sweep_takes_a_list_grid_and_names_what_it_expects():
  model = _sequential()
  x = rng.standard_normal((16, 12)).astype(np.float32)
  metric = _mse(model, x)
  as_dict = explore.sweep(model, metric, {"paper": [0.1], "round": [4]}, estimate_speedup=False)
  as_list = explore.sweep(model, metric, [("paper", 0.1), mortar_tf.MorphSpec.create("round",
                                                                                     keep_bits=4)],
                          estimate_speedup=False)
  assert [p.label() for p in as_list.points] == [p.label() for p in as_dict.points]
  assert [p.metric for p in as_list.points] == [p.metric for p in as_dict.points]
  with pytest.raises(ValueError, match=r"a grid is \{method: \[settings\]\}"):
    explore.sweep(model, metric, [0.1, 0.2], estimate_speedup=False)
  with pytest.raises(ValueError, match="must not be a float"):
    explore.sweep(model, metric, 0.1, estimate_speedup=False)


# ---------------------------------------------------------------------------
# Without calibration inputs every measurement is a full evaluation: the cap
# holds on every path, counted by the metric itself.


def _four_dense():
  return _randomise(keras.Sequential(
      [keras.Input((16,))] + [keras.layers.Dense(16, name=f"d{i}") for i in range(4)]))


class _CountingScore:
  """A plain callable metric (no inputs for calibration) that counts its calls:
  the negated mean squared change of the outputs, so the original scores 0."""

  def __init__(self, model, x):
    self.x = x
    self.reference = model.predict(x, verbose=0)
    self.calls = 0
    self.__name__ = "score"

  def value(self, model):
    return -float(np.mean((model.predict(self.x, verbose=0) - self.reference) ** 2))

  def __call__(self, model):
    self.calls += 1
    return self.value(model)


def _applied_drop(model, score, method, precision_map):
  """The drop of the map applied as the README says (morph_model), scored
  without counting."""
  if not precision_map:
    return 0.0
  return -score.value(morph_model(model, method, precision=dict(precision_map)))


def _global_drop(model, score, p):
  kernels = explore.models.model_kernels(model)
  values = {i: mortar_tf.morph(k.original, "fewest_ones", p, backend="numpy")
            for i, k in enumerate(kernels)}
  with in_place.Applied(kernels, values):
    return -score.value(model)


@pytest.mark.parametrize("cap", [4, 9, 30])
@pytest.mark.parametrize("budget_kind", ["zero", "tight", "huge"])
def test_the_evaluation_cap_holds_on_every_path_without_calibration_inputs(cap, budget_kind):
  model = _four_dense()
  x = rng.standard_normal((32, 16)).astype(np.float32)
  score = _CountingScore(model, x)
  budget = {"zero": 0.0, "tight": _global_drop(model, score, 0.05), "huge": 1e9}[budget_kind]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    found = explore.search_precisions(model, score, budget, max_evaluations=cap,
                                      estimate_speedup=False)
  assert score.calls <= cap
  assert found.evaluations == score.calls  # the search's own count is honest
  assert found.max_evaluations == cap
  # The returned map, applied by the user, meets the budget; its point is that map's score.
  drop = _applied_drop(model, score, "fewest_ones", found.precisions)
  assert drop <= budget + 1e-9
  assert found.point.drop == pytest.approx(drop, rel=1e-4, abs=1e-12)
  # Whatever the cap stopped is said, in the summary and as a warning.
  summary = found.summary()
  cap_warnings = [w for w in caught if "cut the search short" in str(w.message)]
  assert bool(found.cut_short) == bool(cap_warnings)
  for text in found.cut_short:
    assert f"Cut short by the cap of {cap} full evaluations: {text}." in summary
  # A claim that nothing can be morphed is never made from a search the cap stopped.
  assert "none can be morphed" not in summary
  if not found.precisions:
    assert ("maps tried meets the budget" in summary or
            f"the cap of {cap} full evaluations was reached before any per-kernel map" in summary)


@pytest.mark.parametrize("cap", [5, 9, 30, 60])
def test_a_huge_budget_morphs_every_kernel_at_the_largest_p(cap):
  # The default grid (8 P values: a bisection needs 4 evaluations, the
  # sensitivity of 4 kernels x 8 P would need 32 without calibration inputs).
  model = _four_dense()
  x = rng.standard_normal((32, 16)).astype(np.float32)
  score = _CountingScore(model, x)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the cap cuts the sensitivity short: tested above
    found = explore.search_precisions(model, score, 1e9, max_evaluations=cap,
                                      estimate_speedup=False)
  largest = max(search.DEFAULT_SEARCH_PRECISIONS)
  assert largest == 0.5
  assert score.calls <= cap
  # Every kernel at P = 0.5, whichever way the map says it: applied and
  # stripped as the README says, each kernel is the numpy morph at 0.5.
  stripped = strip_morphing(morph_model(model, "fewest_ones", precision=dict(found.precisions)))
  assert len(stripped.layers) == 4
  for layer, original in zip(stripped.layers, model.layers):
    expected = mortar_tf.morph(original.kernel.numpy(), "fewest_ones", 0.5, backend="numpy")
    np.testing.assert_array_equal(layer.kernel.numpy().view(np.uint32), expected.view(np.uint32))
  assert found.best_global is not None and found.best_global.settings["precision"] == 0.5
  assert found.global_complete
  summary = found.summary()
  assert "No global P" not in summary and "nothing morphed" not in summary


def test_a_cap_that_stops_the_global_bisection_says_so():
  model = _four_dense()
  x = rng.standard_normal((32, 16)).astype(np.float32)
  score = _CountingScore(model, x)
  with pytest.warns(RuntimeWarning, match="the global bisection stopped"):
    found = explore.search_precisions(model, score, 1e9, max_evaluations=4,
                                      estimate_speedup=False)
  assert score.calls == 4  # the original and three steps of the bisection
  # Bisection over 8 P values at an infinite budget: indices 3, 5, 6 fit.
  assert found.best_global.settings["precision"] == sorted(search.DEFAULT_SEARCH_PRECISIONS)[6]
  assert not found.global_complete
  summary = found.summary()
  assert "the bisection was stopped by the cap of 4 full evaluations: a larger P may fit" in summary
  assert "no per-kernel map was verified within the cap of 4 full evaluations" in summary
  assert found.maps_tried == 0


def test_a_search_that_tried_maps_says_how_many_failed():
  model = _four_dense()
  x = rng.standard_normal((32, 16)).astype(np.float32)
  score = _CountingScore(model, x)
  found = explore.search_precisions(model, score, 0.0, precisions=[0.01, 0.1],
                                    max_evaluations=30, estimate_speedup=False)
  # 4 kernels x 2 P fit in the cap: every pair measured, nothing cut short.
  assert not found.cut_short and not found.bounded and found.global_complete
  assert found.precisions == {} and found.best_global is None
  assert score.calls <= 30
  # Each kernel alone at P = 0.01 changes the outputs: measured here.
  kernels = explore.models.model_kernels(model)
  for i, k in enumerate(kernels):
    one = {i: mortar_tf.morph(k.original, "fewest_ones", 0.01, backend="numpy")}
    with in_place.Applied(kernels, one):
      assert -score.value(model) > 0
  summary = found.summary()
  assert "No global P of the grid meets the budget." in summary
  assert (f"Per kernel: nothing morphed: none of the {found.maps_tried} maps tried meets the "
          "budget" in summary)
  assert found.maps_tried >= 1


def test_sensitivity_is_made_monotone_in_p():
  # A metric with a known answer: each kernel's drop is looked up from a table
  # by the P its values were morphed with, and drops add up. d0..d2's table is
  # not monotone in P (0.1 costs less than 0.01): the search must count every
  # P at least as much as any smaller one, i.e. the running maximum. d3 is free.
  model = _four_dense()
  kernels = explore.models.model_kernels(model)
  assert [k.key for k in kernels] == ["d0", "d1", "d2", "d3"]
  grid = [0.01, 0.1, 0.5]
  noisy = {0.0: 0.0, 0.01: 0.3, 0.1: 0.1, 0.5: 0.2}
  tables = [noisy, noisy, noisy, {0.0: 0.0, 0.01: 0.0, 0.1: 0.0, 0.5: 0.0}]
  morphed = {(i, p): mortar_tf.morph(k.original, "fewest_ones", p, backend="numpy")
             for i, k in enumerate(kernels) for p in grid}
  for i, k in enumerate(kernels):  # the P of a kernel can be read back from its values
    values = [k.original] + [morphed[(i, p)] for p in grid]
    assert len({v.tobytes() for v in values}) == len(values)

  def score(m):
    del m
    total = 0.0
    for i, k in enumerate(kernels):
      now = np.asarray(k.variable.numpy())
      p = next((p for p in grid if np.array_equal(now.view(np.uint32),
                                                  morphed[(i, p)].view(np.uint32))), 0.0)
      assert p or np.array_equal(now.view(np.uint32), k.original.view(np.uint32))
      total += tables[i][p]
    return -total

  found = explore.search_precisions(model, score, 0.25, precisions=grid, max_evaluations=60,
                                    estimate_speedup=False)
  assert not found.bounded and not found.cut_short  # every pair was measured
  running = {0.01: 0.3, 0.1: 0.3, 0.5: 0.3}  # by hand: max(0.3), max(0.3, 0.1), max(.., 0.2)
  for key in ("d0", "d1", "d2"):
    assert found.sensitivity[key] == pytest.approx(running)
  assert found.sensitivity["d3"] == {0.01: 0.0, 0.1: 0.0, 0.5: 0.0}
  # By hand: every global P costs 3 x 0.2 or more (> 0.25), so there is no
  # global floor. d3 is free. The knapsack sees 0.3 for any P of d0..d2, so
  # one of them fits a proxy budget of 0.3 and that one takes 0.5 (its
  # largest gain); the metric, checking that map, finds 0.2 <= 0.25 and keeps
  # it, and refuses two (0.4). Which one: the largest gain at 0.5, counted
  # here with the numpy reference (aligned ones, G = 64, width 24).
  gains = {k.key: mortar_tf.count_ones(k.original, "aligned", group_size=64, width=24,
                                       backend="numpy") -
           mortar_tf.count_ones(morphed[(i, 0.5)], "aligned", group_size=64, width=24,
                                backend="numpy")
           for i, k in enumerate(kernels)}
  best = max(("d0", "d1", "d2"), key=gains.get)
  assert sorted(gains[k] for k in ("d0", "d1", "d2")).count(gains[best]) == 1
  assert found.best_global is None
  assert dict(found.precisions) == {best: 0.5, "d3": 0.5}
  lines = found.summary().splitlines()
  assert f"Per kernel: {', '.join(f'{k}: P=0.5' for k in sorted([best, 'd3']))}" in lines
  assert "Left unmorphed: " + ", ".join(k for k in ("d0", "d1", "d2") if k != best) in lines
  assert found.point.drop == pytest.approx(0.2)


# Every name search.py held before it was split by concern, with its new home:
# user code, docs and tools reach them as search.X, so each stays there.
_FORMER_NAMES = {
    "DEFAULT_GRID": ("sweeps", "DEFAULT_GRID"), "sweep": ("sweeps", "sweep"),
    "_specs": ("sweeps", "_specs"), "_progress": ("sweeps", "report_progress"),
    "_SETTING": ("sweeps", "_SETTING"), "_GRID_HELP": ("sweeps", "_GRID_HELP"),
    "SweepPoint": ("results", "SweepPoint"), "SweepResult": ("results", "SweepResult"),
    "SearchResult": ("results", "SearchResult"), "_speedups_text": ("results", "_speedups_text"),
    "ModelEstimator": ("estimates", "ModelEstimator"),
    "model_input_shape": ("estimates", "model_input_shape"),
    "estimator_map": ("estimates", "estimator_map"), "_speedups": ("estimates", "speedups"),
    "_unmorphed_speedup": ("estimates", "unmorphed_speedup"),
    "_mortar_cycle_gains": ("estimates", "mortar_cycle_gains"),
    "_match_layer": ("estimates", "match_layer"),
    "_morph": ("in_place", "morph"), "_Applied": ("in_place", "Applied"),
    "_ratios": ("in_place", "ratios"), "_knapsack": ("knapsack", "solve"),
    "_calibration_size": ("sensitivity", "calibration_size"),
    "_proxy": ("sensitivity", "output_change"), "_predict": ("sensitivity", "predict"),
    "_coarse_to_fine": ("sensitivity", "coarse_to_fine"),
    "_monotone_costs": ("sensitivity", "monotone_costs"),
    "Metric": ("metrics", "Metric"), "_as_metric": ("metrics", "as_metric"),
}


@pytest.mark.parametrize("name", sorted(_FORMER_NAMES))
def test_every_name_search_held_is_still_there_and_is_its_new_homes(name):
  module, new_name = _FORMER_NAMES[name]
  home = importlib.import_module(f"mortar_tf.explore.{module}")
  assert getattr(search, name) is getattr(home, new_name)


def test_search_still_defines_its_own_names():
  for name in ("search_precisions", "resolve_map", "DEFAULT_SEARCH_PRECISIONS", "_point",
               "_SLACK"):
    assert hasattr(search, name), name
  assert search.search_precisions.__module__ == "mortar_tf.explore.search"


def test_a_compensated_search_returns_what_morph_model_compensate_gives_and_holds_out():
  model = _separable()
  x = rng.standard_normal((160, 8, 8, 3)).astype(np.float32) + 0.3
  x_cal, x_search, x_held = x[:32], x[32:96], x[96:]
  metric, held = _mse(model, x_search), _mse(model, x_held)
  kernels = explore.models.model_kernels(model)
  values = {i: mortar_tf.morph(k.original, "fewest_ones", 0.1) for i, k in enumerate(kernels)}
  with in_place.Applied(kernels, values):
    budget = 0.5 * metric(model)
  found = explore.search_precisions(model, metric, budget, precisions=[0.01, 0.05, 0.1, 0.3],
                                    estimate_speedup=False, compensate=x_cal, held_out=held)
  assert found.compensation["samples"] == 32 and found.held_out["samples"] == 64
  assert found.precisions  # something is morphed at this budget
  # Applied the way a user applies it: morph_model(compensate=) with the same samples.
  stripped = strip_morphing(morph_model(model, "fewest_ones", found.precisions,
                                        compensate=x_cal))
  assert metric(stripped) == pytest.approx(found.point.metric, rel=1e-6, abs=1e-12)
  assert metric(stripped) <= budget + 1e-12
  assert held(stripped) == pytest.approx(found.held_out["value"], rel=1e-6, abs=1e-12)
  assert held(stripped) <= budget + 1e-12
  ones = sum(mortar_tf.count_ones(w.numpy(), "aligned") for w in stripped.weights
             if "kernel" in w.name)
  assert found.point.ratio["aligned"] == pytest.approx(
      sum(k.ones["aligned"] for k in kernels) / ones)
  assert "Held out (64 samples" in found.summary() and "Compensated" in found.summary()


def test_a_compensated_point_is_estimated_on_its_own_values():
  """Bias correction alone leaves the kernels plain: the estimate of the
  compensated values (exported as they are) must equal the estimator's own
  morph of the same global P."""
  from mortar_tf.keras import Calibration  # pylint: disable=import-outside-toplevel
  model = _separable()
  x = rng.standard_normal((96, 8, 8, 3)).astype(np.float32) + 0.3
  metric = _mse(model, x[32:])
  bias_only = Calibration(x[:32], error=False, bias=True)
  found = explore.search_precisions(model, metric, 1e9, precisions=[0.05, 0.3],
                                    compensate=bias_only)
  plain = explore.search_precisions(model, metric, 1e9, precisions=[0.05, 0.3])
  assert found.best_global.settings["compensated"]
  assert found.best_global.speedup == pytest.approx(plain.best_global.speedup, rel=1e-12)
  assert found.best_global.speedup_unmorphed == pytest.approx(
      plain.best_global.speedup_unmorphed, rel=1e-12)


def test_calibration_samples_that_are_scored_too_are_refused():
  model = _separable()
  x = rng.standard_normal((96, 8, 8, 3)).astype(np.float32)
  with pytest.raises(ValueError, match="8 of the metric's 64 samples are calibration samples"):
    explore.search_precisions(model, _mse(model, x[24:88]), 0.1, compensate=x[:32],
                              estimate_speedup=False)
  with pytest.raises(ValueError, match="of held_out's"):
    explore.search_precisions(model, _mse(model, x[32:64]), 0.1, compensate=x[:32],
                              held_out=_mse(model, x[:40]), estimate_speedup=False)
  with pytest.raises(ValueError, match="calibration samples too"):
    explore.sweep(model, _mse(model, x[:64]), {"paper": [0.1]}, compensate=x[:32],
                  estimate_speedup=False)
