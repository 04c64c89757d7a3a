"""The per-layer P search (search_precisions), and the names this module used to hold.

`search_precisions` finds a {layer: P} map that removes the most aligned 1
bits (or saves the most estimated cycles, or the most measured compressed
bytes) while the metric stays within
`budget` of the original: it measures each layer's sensitivity at each P,
picks one P per layer by an exact multiple-choice knapsack on those
measurements, calibrates the knapsack's budget against the metric (a
bisection, one full evaluation a step), and never returns less than the
best single global P its bisection over the grid finds within the budget.
Every full evaluation counts against `max_evaluations`; what the cap cuts
short is reported.

The pieces live by concern: in_place (kernels morphed in place and
restored), estimates (the estimator adapter and speedups), results (the
result records and their tables), sweeps (the sweep), sensitivity (the
calibration proxy and the measured costs) and knapsack (the choice). This
module re-exports their names as they were when they all lived here
(search.sweep, search.SweepResult, search.ModelEstimator, ...).

Example:
  result = sweep(model, metric, {"paper": [0.05, 0.1], "round": [4, 7]})
  print(result.table())
  found = search_precisions(model, metric, budget=0.01)
  morph_model(model, "paper", precision=found.precisions)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Mapping, Sequence

import numpy as np

from mortar_tf import backends
from mortar_tf import compression
from mortar_tf import morphing
from mortar_tf.estimator import engines as engines_lib
from mortar_tf.explore import estimates
from mortar_tf.explore import in_place
from mortar_tf.explore import knapsack
from mortar_tf.explore import metrics as metrics_lib
from mortar_tf.explore import models
from mortar_tf.explore import sensitivity as sensitivity_lib
from mortar_tf.explore.results import SearchResult
from mortar_tf.explore.results import SweepPoint
from mortar_tf.explore.sweeps import report_progress

# Re-exported: the names this module held before the split, public and
# private, for user code, docs and tools that reach them here.
# pylint: disable=unused-import,g-bad-import-order
from mortar_tf.explore.estimates import ModelEstimator
from mortar_tf.explore.estimates import estimator_map
from mortar_tf.explore.estimates import match_layer as _match_layer
from mortar_tf.explore.estimates import model_input_shape
from mortar_tf.explore.estimates import mortar_cycle_gains as _mortar_cycle_gains
from mortar_tf.explore.estimates import speedups as _speedups
from mortar_tf.explore.estimates import unmorphed_speedup as _unmorphed_speedup
from mortar_tf.explore.in_place import Applied as _Applied
from mortar_tf.explore.in_place import morph as _morph
from mortar_tf.explore.in_place import ratios as _ratios
from mortar_tf.explore.knapsack import solve as _knapsack
from mortar_tf.explore.metrics import Metric
from mortar_tf.explore.metrics import as_metric as _as_metric
from mortar_tf.explore.results import SweepResult
from mortar_tf.explore.results import _speedups_text
from mortar_tf.explore.sensitivity import calibration_size as _calibration_size
from mortar_tf.explore.sensitivity import coarse_to_fine as _coarse_to_fine
from mortar_tf.explore.sensitivity import monotone_costs as _monotone_costs
from mortar_tf.explore.sensitivity import output_change as _proxy
from mortar_tf.explore.sensitivity import predict as _predict
from mortar_tf.explore.sweeps import DEFAULT_GRID
from mortar_tf.explore.sweeps import _GRID_HELP
from mortar_tf.explore.sweeps import _SETTING
from mortar_tf.explore.sweeps import _specs
from mortar_tf.explore.sweeps import report_progress as _progress
from mortar_tf.explore.sweeps import sweep
# pylint: enable=unused-import,g-bad-import-order

# A drop equal to the budget meets it: 0.98 - 0.96 is 0.020000000000000018.
_SLACK = 1e-9
OBJECTIVES = ("aligned", "speedup", "size")
DEFAULT_SEARCH_PRECISIONS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def search_precisions(model, evaluate, budget: float, *, method: str = "fewest_ones",
                      precisions: Sequence[float] = DEFAULT_SEARCH_PRECISIONS,
                      higher_is_better: bool = True, objective: str = "aligned",
                      input_shape=None, group_size: int = engines_lib.DEFAULT_GROUP_SIZE,
                      width: int = engines_lib.DEFAULT_WIDTH, calibration=None,
                      max_evaluations: int = 30, estimate_speedup: bool = True,
                      refine=None, progress=False, compensate=None, held_out=None,
                      max_held_out: int = 6, compressed: bool = True) -> SearchResult:
  """A {kernel: P} map that saves the most within a metric budget.

  0. The floor, first: the best global P that meets the budget, by
     bisection over the grid (assuming drops grow with P).
  1. Sensitivity: on a calibration subset (`calibration`, else the inputs a
     built-in metric holds, first 1/8, 16..256 samples), each kernel alone at
     each P, scored by a continuous proxy: the mean squared change of the
     outputs over their mean square. Without inputs, the metric itself, a
     drop's size counted as its cost (a negative drop is noise, never free):
     each is a full evaluation, so they are made coarse to fine over the
     grid (every kernel's largest P first) within what the cap leaves, and
     an unmeasured P counts the next larger measured P's cost.
  2. Choice: an exact multiple-choice knapsack maximising the gain (aligned
     ones removed; the mortar engine's estimated cycles saved with
     objective="speedup"; compressed bytes saved with objective="size": each
     candidate kernel's zlib 9 bytes measured, exactly, once, and since each
     kernel is compressed alone the gains add up exactly) within a proxy
     budget.
  3. Calibration: the proxy budget is bisected against the real metric on the
     full data, one full evaluation a step; the best map that meets the
     budget is kept, then single verified upgrades spend what is left. When
     no map beats the global floor, it is returned as {"*": P} and labelled
     global.
  Every full evaluation counts against `max_evaluations`, the original's
  score included; a map is never evaluated twice, and the returned point
  is the evaluation of exactly the returned map. What the cap cut short is
  in the result's `cut_short` and summary, and raised as a RuntimeWarning
  (unless every kernel got the grid's largest P anyway).
  Memory: one morphed copy of a kernel at a time, besides the originals
  (objective "size" and the points' compressed sizes: up to one a thread
  while they are compressed). Time: objective "size" compresses every
  kernel at every P of the grid once (zlib 9 runs at 0.6-20 MB/s a core,
  slower the more a morph repeats; on parallel threads).

  Args:
    model: a Keras model or a models.LoadedSavedModel (kernels morphed in
      place and restored).
    evaluate: a Metric or callable model -> float.
    budget: the largest allowed drop of the metric from the original (>= 0,
      in the metric's units, e.g. 0.01 = one point of accuracy).
    method: "fewest_ones" (default: never more ones than "paper") or "paper".
    precisions: the P candidates per kernel (and for the global comparison).
    objective: "aligned" (aligned 1 bits removed), "speedup" (mortar cycles
      saved, estimated) or "size" (zlib 9 bytes saved, measured: the map
      with the smallest compressed kernels within the budget; never larger
      than the best global P's, which the floor keeps).
    input_shape: for the estimator (default: the model's, batch 1).
    group_size, width: the aligned domain (default: the engines' 64, 24).
    calibration: inputs for the proxy (an array), or None.
    max_evaluations: cap on full evaluations of the metric (>= 4), held
      on every path.
    estimate_speedup: estimate the points' speedups (objective "speedup"
      always does).
    refine: None, or a function {kernel key: P} -> metric value that a full
      evaluation calls instead of scoring the morphed model as it is
      (finetune.search_with_finetune distils each candidate this way).
    progress: a bar on stderr over the sensitivity measurements; or a
      callable (done, total, label), called for each of them and for each
      full evaluation (done counting up to max_evaluations).
    compensate: None, or calibration inputs / a mortar_tf.keras.Calibration
      (Keras models): every candidate is morphed with its errors
      compensated and biases corrected (SPEC 6), statistics collected once
      from the original model; gains count the compensated kernels' ones.
      The returned map gives the same values through
      morph_model(..., compensate=) with the same Calibration. Keep its
      samples apart from the metric's and `held_out`'s.
    held_out: None, or a second Metric / callable scored on samples the
      search never chooses on: the returned map is the best-gain map that
      met the budget on the search's samples AND meets it there (up to
      `max_held_out` held-out evaluations, then the unmorphed map).
    compressed: measure the points' compressed sizes (their `compressed`;
      objective "size" measures them anyway). With compensate, compressed
      bytes (gains and points) are those of the compensated kernels.

  Returns:
    A SearchResult whose map, applied through the map matcher as morph_model
    and the converter apply it, was evaluated to get its point.

  Raises:
    ValueError: budget < 0 or not a number, an empty or bad P grid, a
      method without P, an unknown objective, or a metric returning NaN.
  """
  if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
    raise ValueError(f"budget must be a number >= 0, got {budget!r}")
  if method not in ("paper", "fewest_ones"):
    raise ValueError(f"the search chooses P: method must be 'paper' or 'fewest_ones', "
                     f"not {method!r}")
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, got "
                     f"{objective!r}")
  if isinstance(precisions, (str, bytes)) or not isinstance(precisions, Sequence):
    raise ValueError(f"precisions must be a list of P values, got {precisions!r}")
  if not precisions:
    raise ValueError("the P grid is empty")
  if held_out is not None and refine is not None:
    raise ValueError("held_out scores the morphed model as it is; it does not combine with "
                     "refine")
  if not isinstance(max_evaluations, int) or max_evaluations < 4:
    raise ValueError(f"max_evaluations must be an integer >= 4, got {max_evaluations!r}")
  grid = sorted({morphing.check_precision(p) for p in precisions})
  metric = metrics_lib.as_metric(evaluate, higher_is_better)
  kernels = models.model_kernels(model, group_size, width)
  compensator = in_place.compensator(model, kernels, compensate)
  check = None if held_out is None else metrics_lib.as_metric(held_out, higher_is_better)
  in_place.check_disjoint(compensator, metric, check)

  def morphed(chosen: Mapping[int, float]):
    """({kernel index: final value}, [(variable, value)] to assign)."""
    specs = {i: morphing.MorphSpec.create(method, p) for i, p in chosen.items()}
    if compensator is None:
      values = {i: in_place.morph(kernels[i], spec) for i, spec in specs.items()}
      return values, [(kernels[i].variable, v) for i, v in values.items()]
    done = compensator.values({id(kernels[i].variable): spec for i, spec in specs.items()})
    values = {i: done.values[id(kernels[i].variable)] for i in specs}
    return values, [(done.variables[k], v) for k, v in done.values.items()]
  estimator = (estimates.ModelEstimator(model, input_shape or estimates.model_input_shape(model))
               if estimate_speedup or objective == "speedup" else None)
  size_cache: dict[tuple[int, float], compression.Sizes] = {}  # (kernel, P): measured

  def sizes_of(chosen: Mapping[int, float]):
    """The measured compressed bytes of all kernels with `chosen` applied;
    each (kernel, P) compressed once."""
    missing = {i: p for i, p in chosen.items() if (i, p) not in size_cache}
    if missing:
      measured = in_place.measure({i: morphed({i: p})[0][i] for i, p in missing.items()})
      size_cache.update({(i, missing[i]): s for i, s in measured.items()})
    return in_place.compressed(kernels, {i: size_cache[(i, p)] for i, p in chosen.items()})
  measure_points = compressed or objective == "size"
  counter = {"full": 0, "calibration": 0}
  evaluated: dict[tuple, float] = {}  # every full evaluation, by its map

  def left() -> int:
    """Full evaluations still allowed."""
    return max_evaluations - counter["full"]

  def key(chosen: Mapping[int, float], refined: bool = True) -> tuple:
    return (tuple(sorted(chosen.items())), refined and refine is not None and bool(chosen))

  def affordable(chosen: Mapping[int, float], refined: bool = True) -> bool:
    """True when full(chosen) is known already or the cap allows one more."""
    return key(chosen, refined) in evaluated or left() > 0

  def full(chosen: Mapping[int, float], refined: bool = True) -> float:
    """The metric with `chosen` applied, on the full data; each map once (a
    repeat is looked up), and never past the cap. `refined`: through
    `refine` when one is given (the sensitivity scores the plain morph)."""
    signature = key(chosen, refined)
    if signature in evaluated:
      return evaluated[signature]
    if left() <= 0:  # every caller checks affordable() first
      raise AssertionError(f"the search would pass its cap of {max_evaluations} full "
                           "evaluations")
    counter["full"] += 1
    if callable(progress):  # a bar has no total to show these against
      progress(counter["full"], max_evaluations, f"full evaluation {counter['full']}")
    if signature[1]:
      value = float(refine({kernels[i].key: p for i, p in chosen.items()}))
    else:
      with in_place.Assigned(morphed(chosen)[1]):
        value = metric(model)
    evaluated[signature] = value
    return value

  cut_short = []  # what the cap stopped, in words

  try:
    original = full({})

    def fits(value):
      return metric.drop(original, value) <= budget + _SLACK

    # Gains per kernel and P, in the objective's units (morphed values dropped at once).
    if objective == "speedup":
      gains = estimates.mortar_cycle_gains(kernels, grid, method, estimator)
    elif objective == "size":
      originals = in_place.original_sizes(kernels)
      with compression.Measurer() as measurer:
        pending = {(i, p): measurer.submit(morphed({i: p})[0][i])
                   for i in range(len(kernels)) for p in grid}
        size_cache.update({pair: future.result() for pair, future in pending.items()})
      gains = {(i, p): float(originals[i].zlib - sizes.zlib)
               for (i, p), sizes in size_cache.items()}
    else:
      gains = {}
      for i, k in enumerate(kernels):
        for p in grid:
          value = morphed({i: p})[0][i]
          gains[(i, p)] = float(k.ones["aligned"] - backends.count_ones(
              value, "aligned", reduction_axes=k.axes, group_size=group_size, width=width))

    # The floor first, so that nothing else can starve it: the best global P
    # within the budget, by bisection over the grid (drops grow with P).
    lo, hi, best_global = 0, len(grid) - 1, None
    while lo <= hi and left() > 0:
      mid = (lo + hi) // 2
      if fits(full({i: grid[mid] for i in range(len(kernels))})):
        best_global, lo = grid[mid], mid + 1
      else:
        hi = mid - 1
    global_complete = lo > hi
    if not global_complete:
      untried = f"{grid[lo]:g}" if lo == hi else f"{grid[lo]:g} to {grid[hi]:g}"
      cut_short.append(
          f"the global bisection stopped with P {untried} untried"
          + (f" (P = {best_global:g} meets the budget; a larger P may too)"
             if best_global is not None else " (no global P tried meets the budget)"))

    # 1. Sensitivity per kernel and P.
    inputs = calibration if calibration is not None else getattr(metric, "inputs", None)
    if inputs is not None:
      cal = np.asarray(inputs)[:sensitivity_lib.calibration_size(len(inputs))]
      reference = sensitivity_lib.predict(model, cal)
      proxy_name = f"output change on {len(cal)} calibration samples"
      pairs = [(i, j) for i in range(len(kernels)) for j in range(len(grid))]
    else:
      # Each measurement is a full evaluation: coarse to fine over the grid
      # (every kernel's largest P first), as many as the cap allows while
      # keeping some for choosing and verifying a map.
      cal, proxy_name = None, f"{metric.name} drop (no calibration inputs)"
      pairs = [(i, j) for j in sensitivity_lib.coarse_to_fine(len(grid))
               for i in range(len(kernels))]
      spare = left()
      if len(pairs) > spare - 1:
        pairs = pairs[:max(0, spare - max(1, spare // 5))]
    raw: dict[int, dict[float, float]] = {i: {} for i in range(len(kernels))}
    for n, (i, j) in enumerate(pairs):
      k, p = kernels[i], grid[j]
      report_progress(progress, n, len(pairs), f"{k.key} P={p:g}")
      if cal is not None:
        # The morphed copy lives only inside the context: one at a time.
        with in_place.Assigned(morphed({i: p})[1]):
          raw[i][p] = sensitivity_lib.output_change(reference, sensitivity_lib.predict(model, cal))
        counter["calibration"] += len(cal)
      else:  # a negative drop is noise, never free
        raw[i][p] = abs(metric.drop(original, full({i: p}, refined=False)))
    report_progress(progress, len(pairs), len(pairs), "sensitivity done")
    sensitivity, bounded = sensitivity_lib.monotone_costs(kernels, grid, raw)
    total_pairs = len(kernels) * len(grid)
    if not pairs:
      cut_short.append(
          f"the sensitivity measured none of the {total_pairs} (kernel, P) pairs (without "
          "calibration inputs each is a full evaluation), so no per-kernel map was chosen")
    elif len(pairs) < total_pairs:
      unmeasured = [k.key for i, k in enumerate(kernels) if not raw[i]]
      cut_short.append(
          f"the sensitivity measured {len(pairs)} of {total_pairs} (kernel, P) pairs (without "
          "calibration inputs each is a full evaluation); an unmeasured P counts what the next "
          "larger measured P costs" +
          (f"; kernels with no measurement are left out: {', '.join(unmeasured)}"
           if unmeasured else ""))

    options = [[(sensitivity[k.key][p], gains[(i, p)], p) for p in grid if p in sensitivity[k.key]]
               for i, k in enumerate(kernels)]

    def choose(proxy_budget):
      picks = knapsack.solve(options, proxy_budget)
      return {i: p for i, p in enumerate(picks) if p is not None}

    def gain_of(chosen):
      return sum(gains[(i, p)] for i, p in chosen.items())

    tried = set()  # per-kernel maps evaluated

    def verify(chosen) -> float:
      if chosen:
        tried.add(key(chosen))
      return full(chosen)

    # 3. Calibrate the proxy budget against the metric, by bisection in log space,
    # starting from the budget that lets every kernel take its largest P.
    positive = sorted({c for costs in sensitivity.values() for c in costs.values() if c > 0})
    best = ({}, original)  # (chosen, value): the empty map always meets the budget
    if positive:
      low, high = math.log(positive[0]) - 1.0, math.log(sum(
          max(costs.values()) for costs in sensitivity.values() if costs) + positive[0])
      log_b = high
      while True:
        chosen = choose(math.exp(log_b))
        if not affordable(chosen):
          cut_short.append("the proxy budget's bisection stopped before it converged")
          break
        value = verify(chosen)
        if fits(value):
          if gain_of(chosen) > gain_of(best[0]):
            best = (chosen, value)
          low = log_b
        else:
          high = log_b
        if high - low < 0.05:
          break
        log_b = (low + high) / 2
    else:  # nothing moves the proxy: everything measured at the largest P is free
      chosen = {i: grid[-1] for i, k in enumerate(kernels) if grid[-1] in sensitivity[k.key]}
      if chosen and affordable(chosen):
        value = verify(chosen)
        if fits(value):
          best = (chosen, value)
      elif chosen:
        cut_short.append("no map of the kernels at the largest P could be verified")
    chosen, value = best

    # 4. Spend what is left of the evaluations on verified single upgrades:
    # one kernel one P up, best gain per proxy cost first.
    def upgrades(current):
      out = []
      for i, k in enumerate(kernels):
        now = current.get(i)
        higher = [p for p in grid if (now is None or p > now) and p in sensitivity[k.key]]
        if not higher:
          continue
        p = higher[0]
        cost = sensitivity[k.key][p] - (sensitivity[k.key][now] if now is not None else 0.0)
        gain = gains[(i, p)] - (gains[(i, now)] if now is not None else 0.0)
        if gain > 0:
          out.append((gain / max(cost, 1e-12), i, p))
      return sorted(out, reverse=True)

    rejected = set()
    while True:
      options_left = [(r, i, p) for r, i, p in upgrades(chosen) if (i, p) not in rejected]
      if not options_left:
        break
      _, i, p = options_left[0]
      trial = {**chosen, i: p}
      if not affordable(trial):
        break  # the usual end: the rest of the cap is spent
      trial_value = verify(trial)
      if fits(trial_value):
        chosen, value = trial, trial_value
      else:
        rejected.add((i, p))

    global_gain = (sum(gains[(i, best_global)] for i in range(len(kernels)))
                   if best_global is not None else -math.inf)
    chose_global = best_global is not None and global_gain >= gain_of(chosen)
    if chose_global:
      chosen = {i: best_global for i in range(len(kernels))}
    held = None
    if check is not None:  # the budget must hold on samples the search never chose on
      chosen, held = _held_out_choice(model, check, chosen, evaluated, fits, gain_of,
                                      lambda ch: in_place.Assigned(morphed(ch)[1]),
                                      max_held_out, best_global, len(kernels), budget)
      chose_global = (best_global is not None and len(chosen) == len(kernels)
                      and set(chosen.values()) == {best_global})
    precision_map = ({"*": best_global} if chose_global else
                     {kernels[i].key: p for i, p in chosen.items()})

    # The point: the returned map applied through the matcher; its value is
    # the full evaluation of exactly that map (made above: no extra one).
    applied = resolve_map(precision_map, kernels, method) if precision_map else {}
    if applied != chosen:
      raise AssertionError(f"the map {precision_map} resolves to {applied}, not {chosen}")
    if key(applied) not in evaluated:
      raise AssertionError(f"the chosen map {applied} was never evaluated")
    value = full(applied)
    values_of = lambda ch: morphed(ch)[0]  # pylint: disable=unnecessary-lambda-assignment
    point = _point(method, precision_map, applied, kernels, metric, original, value, estimator,
                   group_size, width, global_p=best_global if chose_global else None,
                   values_of=values_of)
    if measure_points:
      point = dataclasses.replace(point, compressed=sizes_of(applied))
    global_point = None
    if best_global is not None:
      everything = {i: best_global for i in range(len(kernels))}
      global_point = _point(method, None, everything, kernels, metric, original,
                            full(everything), estimator, group_size, width,
                            global_p=best_global, values_of=values_of)
      if measure_points:
        global_point = dataclasses.replace(global_point, compressed=sizes_of(everything))
    compensation_record = None
    if compensator is not None:  # estimated on the compensated values themselves

      def compensated(p, chosen):
        speedup = unmorphed = None
        if estimator is not None and chosen:
          speedup, unmorphed = estimator.of_values(morphed(chosen)[1])
        elif estimator is not None:
          speedup, unmorphed = p.speedup, p.speedup_unmorphed
        return dataclasses.replace(p, settings=dict(p.settings, compensated=True),
                                   speedup=speedup, speedup_unmorphed=unmorphed)

      point = compensated(point, applied)
      if global_point is not None:
        global_point = compensated(global_point, {i: best_global for i in range(len(kernels))})
      done = compensator.values({id(kernels[i].variable): morphing.MorphSpec.create(method, p)
                                 for i, p in applied.items()})
      compensation_record = {**compensator.calibration.settings(),
                             "label": compensator.calibration.label(), **done.totals(),
                             "plain": dict(done.plain)}
    coverage = estimator.reference().coverage() if estimator is not None else None
  finally:
    if estimator is not None:
      estimator.close()
  at_the_top = len(applied) == len(kernels) and all(p == grid[-1] for p in applied.values())
  if at_the_top:  # every kernel at the grid's largest P: the cap cost nothing
    cut_short = []
  if cut_short:
    warnings.warn(f"search_precisions: the cap of {max_evaluations} full evaluations cut the "
                  f"search short: {'; '.join(cut_short)}", RuntimeWarning, stacklevel=2)
  return SearchResult(method, precision_map, point, global_point, float(budget), objective,
                      sensitivity, counter["full"], chose_global,
                      calibration_samples=counter["calibration"], proxy=proxy_name,
                      full_samples=len(inputs) if inputs is not None else None,
                      max_evaluations=max_evaluations, global_complete=global_complete,
                      maps_tried=len(tried), cut_short=tuple(cut_short),
                      bounded={k: tuple(v) for k, v in bounded.items()},
                      coverage=coverage, group_size=group_size, width=width,
                      compensation=compensation_record, held_out=held)


def _held_out_choice(model, check, chosen, evaluated, fits, gain_of, assigned, max_held_out,
                     best_global, n_kernels, budget):
  """(map, record): the best-gain map that met the budget on the search's samples
  and meets it on the held-out ones.

  Tried in order: the search's choice, then the other maps that met the budget
  on the search's samples, largest gain first (at most `max_held_out`), then
  the global maps among the rest (as many again); the unmorphed map when
  none passes.
  """
  count = {"n": 0}

  def score(ch):
    count["n"] += 1
    if not ch:
      return check(model)
    with assigned(ch):
      return check(model)

  def uniform(items):
    return len(items) == n_kernels and len({p for _, p in items}) == 1

  original = score({})
  maps = {items: v for (items, _), v in evaluated.items() if items and fits(v)}
  by_gain = sorted(maps, key=lambda items: -gain_of(dict(items)))
  first = tuple(sorted(chosen.items()))
  ranked = ([first] if chosen else []) + [m for m in by_gain if m != first]
  order = ranked[:max_held_out] + [m for m in ranked[max_held_out:] if uniform(m)][:max_held_out]
  pick, value, replaced = {}, original, 0
  for items in order:
    trial = score(dict(items))
    if check.drop(original, trial) <= budget + _SLACK:
      pick, value = dict(items), trial
      break
    replaced += 1
  record = {"samples": _sample_count(check), "original": original, "value": value,
            "drop": check.drop(original, value), "global_value": None, "global_drop": None,
            "replaced": replaced}
  if best_global is not None:
    everything = {i: best_global for i in range(n_kernels)}
    g = value if pick == everything else score(everything)
    record["global_value"], record["global_drop"] = g, check.drop(original, g)
  record["evaluations"] = count["n"]
  return pick, record


def _sample_count(metric):
  inputs = getattr(metric, "inputs", None)
  return None if inputs is None else len(inputs)


def resolve_map(precision_map, kernels, method) -> dict[int, float]:
  """{kernel index: P} as morph_model and the converter would apply the map."""
  from mortar_tf import precision_map as matcher  # pylint: disable=import-outside-toplevel
  specs = matcher.resolve(precision_map, {i: k.names for i, k in enumerate(kernels)}, method,
                          what="kernel")
  return {i: spec.precision for i, spec in specs.items()}


def _point(method, precision_map, chosen, kernels, metric, original, value, estimator,
           group_size, width, global_p=None, values_of=None):
  values = (values_of(chosen) if values_of is not None else
            {i: in_place.morph(kernels[i], morphing.MorphSpec.create(method, p))
             for i, p in chosen.items()})
  ratio, _, _ = in_place.ratios(kernels, values, group_size, width)
  if estimator is None:
    return SweepPoint(method, {"precision": global_p} if global_p is not None else {}, value,
                      metric.drop(original, value), ratio, None,
                      precisions=dict(precision_map) if precision_map is not None else None)
  if global_p is not None:
    speedup, unmorphed = estimates.speedups(estimator(method, global_p))
    return SweepPoint(method, {"precision": global_p}, value, metric.drop(original, value),
                      ratio, speedup, precisions=dict(precision_map) if precision_map else None,
                      speedup_unmorphed=unmorphed)
  if precision_map:
    estimated_map = estimates.estimator_map(estimator, precision_map, kernels, chosen)
    speedup, unmorphed = estimates.speedups(estimator(method, estimated_map))
  else:  # nothing morphed: the original weights on mortar, over stripes
    speedup, unmorphed = estimates.unmorphed_speedup(estimator), 1.0
  return SweepPoint(method, {}, value, metric.drop(original, value), ratio, speedup,
                    precisions=dict(precision_map), speedup_unmorphed=unmorphed)
