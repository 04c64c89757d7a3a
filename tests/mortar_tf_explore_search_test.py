"""The per-kernel search: keys, budgets, objectives and the knapsack.

Every returned map is re-applied here the way a user applies it
(morph_model, or the numpy morph per kernel by hand) and re-evaluated; the
knapsack is checked against brute force over every combination.
"""

import itertools
import math

import keras
import numpy as np
import pytest

import mortar_tf
from mortar_tf import explore
from mortar_tf.explore import search
from mortar_tf.keras import morph_model

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
  with search._Applied(kernels, one):  # pylint: disable=protected-access
    budget = 2 * metric(model)  # room for more than the head alone at P = 0.1
  found = explore.search_precisions(model, metric, budget, method="paper",
                                    precisions=[0.01, 0.1, 0.5], estimate_speedup=False)
  assert set(found.sensitivity) == {"sep/depthwise_kernel", "sep/pointwise_kernel", "head"}
  assert found.precisions and not found.chose_global
  left = [k for k in found.sensitivity if k not in found.precisions]
  assert ("Left unmorphed: " + ", ".join(left) in found.summary()) if left else True
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
  with search._Applied(kernels, values):  # pylint: disable=protected-access
    reference_drop = metric(model)
  budget = budget_scale * reference_drop
  found = explore.search_precisions(model, metric, budget, precisions=[0.01, 0.05, 0.1, 0.3],
                                    estimate_speedup=False)
  applied = search.resolve_map(found.precisions, kernels, "fewest_ones") if found.precisions \
      else {}
  morphed = {i: mortar_tf.morph(kernels[i].original, "fewest_ones", p, backend="numpy")
             for i, p in applied.items()}
  with search._Applied(kernels, morphed):  # pylint: disable=protected-access
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
  estimator = search.ModelEstimator(model, (1, 12))
  try:
    gains = search._mortar_cycle_gains(kernels, [0.5], "fewest_ones", estimator)  # pylint: disable=protected-access
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


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_equals_brute_force(seed):
  r = np.random.default_rng(seed)
  options = [[(float(r.uniform(0, 1)), float(r.uniform(0, 10)), (layer, k)) for k in range(3)]
             for layer in range(4)]
  budget = float(r.uniform(0.2, 2.0))
  picks = search._knapsack(options, budget)  # pylint: disable=protected-access
  chosen = [next(o for o in options[layer] if o[2] == pick) for layer, pick in enumerate(picks)
            if pick is not None]
  assert sum(d for d, _, _ in chosen) <= budget * (1 + 1 / 2000) + 1e-12
  # Drops are rounded up to 1/2000 of the budget: the answer may leave out a
  # combination within that rounding, never take one above the budget.
  assert sum(g for _, g, _ in chosen) >= _brute_force(options, budget * (1 - 4 / 2000)) - 1e-9
  assert sum(g for _, g, _ in chosen) <= _brute_force(options, budget) + 1e-9


def test_knapsack_respects_its_capacity_and_a_zero_budget():
  options = [[(0.6, 5.0, "a")], [(0.6, 4.0, "b")], [(0.0, 1.0, "c")]]
  assert search._knapsack(options, 1.0) == ["a", None, "c"]  # pylint: disable=protected-access
  assert search._knapsack(options, 0.0) == [None, None, "c"]  # pylint: disable=protected-access


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
  with search._Applied(kernels, everything):  # pylint: disable=protected-access
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
