"""Design-space exploration of a Keras model: sweeps and a per-layer P search.

`sweep` is the paper's table and more: for each method and each of its own
settings (P for paper/fewest_ones, keep_bits for round, columns for bitx) it
morphs the kernels in place (the model is never rebuilt), evaluates, and
restores them; each row has the metric, the ones ratio in the three domains
and SPEC 4's two estimated speedups: the mortar engine on the morphed
weights over stripes and over mortar on the original weights. The aligned
ratio uses the default engines' G and width (64, 24), as the estimates do.

`search_precisions` finds a {layer: P} map that removes the most aligned 1
bits (or saves the most estimated cycles) while the metric stays within
`budget` of the original: it measures each layer's sensitivity at each P,
picks one P per layer by an exact multiple-choice knapsack on those
measurements, checks the choice with one evaluation (stepping back the
layer that costs most if interactions push it past the budget), and never
returns less than the best single global P that meets the budget.

Example:
  result = sweep(model, metric, {"paper": [0.05, 0.1], "round": [4, 7]})
  print(result.table())
  found = search_precisions(model, metric, budget=0.01)
  morph_model(model, "paper", precision=found.precisions)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Mapping, Sequence

import numpy as np

from mortar_tf import bits
from mortar_tf import files
from mortar_tf import morphing
from mortar_tf import table
from mortar_tf.estimator import engines as engines_lib
from mortar_tf.explore import models
from mortar_tf.explore.metrics import Metric

DEFAULT_GRID = {"paper": (0.01, 0.05, 0.1, 0.2, 0.3), "fewest_ones": (0.01, 0.05, 0.1, 0.2, 0.3),
                "round": (4, 7, 10), "bitx": (8, 12)}
_SETTING = {"paper": "precision", "fewest_ones": "precision", "round": "keep_bits",
            "bitx": "columns"}


# --------------------------------------------------------------------------
# Kernels of a Keras model, morphed in place and restored


def _morph(kernel: models.Kernel, spec: morphing.MorphSpec) -> np.ndarray:
  grouping = {"reduction_axes": kernel.axes} if spec.method == "bitx" else {}
  return morphing.morph(kernel.original, spec.method, **spec.settings(), **grouping)


class _Applied:
  """Context: kernels set to morphed values; restored bit for bit on exit."""

  def __init__(self, kernels, values: Mapping[int, np.ndarray]):
    self.kernels, self.values = kernels, values

  def __enter__(self):
    for index, value in self.values.items():
      self.kernels[index].variable.assign(value)
    return self

  def __exit__(self, *exc):
    for index in self.values:
      self.kernels[index].variable.assign(self.kernels[index].original)
    return False


def _ratios(kernels, morphed: Mapping[int, np.ndarray], group_size, width):
  before = {d: sum(k.ones[d] for k in kernels) for d in bits.DOMAINS}
  after = dict(before)
  for index, value in morphed.items():
    k = kernels[index]
    now = bits.ones_by_domain(value, reduction_axes=k.axes, group_size=group_size, width=width)
    for d in bits.DOMAINS:
      after[d] += now[d] - k.ones[d]
  return {d: bits.sparsity_ratio(before[d], after[d]) for d in bits.DOMAINS}, before, after


# --------------------------------------------------------------------------
# Speedup estimates through the estimator (one SavedModel export per model)


class ModelEstimator:
  """Exports a Keras model once and runs mortar_tf.estimator on it per setting.

  Call close() (or use the sweep/search functions, which do) to remove the
  temporary export.
  """

  def __init__(self, model, input_shape):
    self.model = model
    self.input_shape = input_shape
    self.dir = None

  def _export(self):
    if isinstance(self.model, models.LoadedSavedModel):
      return self.model.path
    if self.dir is None:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      from mortar_tf.keras.compat import IS_KERAS3  # pylint: disable=import-outside-toplevel
      self.dir = tempfile.mkdtemp(prefix="mortar_explore_")
      path = os.path.join(self.dir, "model")
      if IS_KERAS3:
        self.model.export(path, verbose=False)
      else:
        tf.saved_model.save(self.model, path)
    return os.path.join(self.dir, "model")

  def __call__(self, method: str, precision=None, **kwargs):
    from mortar_tf import estimator  # pylint: disable=import-outside-toplevel
    return estimator.estimate(self._export(), input_shape=self.input_shape, method=method,
                              precision=precision, **kwargs)

  def close(self):
    if self.dir is not None:
      shutil.rmtree(self.dir, ignore_errors=True)
      self.dir = None


def model_input_shape(model, batch: int = 1):
  """The model's input shape with `batch` and unknown dims set to 1, or None."""
  if isinstance(model, models.LoadedSavedModel):
    return model.input_shape
  shape = getattr(model, "input_shape", None)
  if isinstance(shape, list) or shape is None:
    return None
  return (batch,) + tuple(1 if d is None else int(d) for d in shape[1:])


# --------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One setting: its metric, ones ratios (all kernels) and estimated speedup.

  Attributes:
    method, settings: the morphing; precisions: the {layer: P} map of a
      searched point (else None).
    metric: the score; drop: how much worse than the original.
    ratio: ones(original) / ones(morphed) per domain.
    speedup: estimated cycles(stripes, original weights) / cycles(mortar,
      morphed weights), or None.
    speedup_unmorphed: cycles(mortar, original) / cycles(mortar, morphed):
      what morphing alone buys, or None.
  """
  method: str
  settings: Mapping[str, object]
  metric: float
  drop: float
  ratio: Mapping[str, float]
  speedup: float | None
  precisions: Mapping[str, float] | None = None
  speedup_unmorphed: float | None = None

  def label(self) -> str:
    if self.precisions is not None:
      return f"{self.method} per-layer search"
    return morphing.MorphSpec.create(self.method, **self.settings).label()

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["label"] = self.label()
    out["ratio"] = {k: files.finite_or_none(v) for k, v in self.ratio.items()}
    return out


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """The paper's table for one model and metric."""
  metric_name: str
  higher_is_better: bool
  original_metric: float
  points: tuple[SweepPoint, ...]
  group_size: int
  width: int
  original_speedup: float | None = None  # mortar over stripes, both on the original weights

  def table(self) -> str:
    headers = ["method", "setting", self.metric_name, "drop", "significand x", "word x",
               "aligned x", "est. x stripes", "est. x unmorphed"]
    rows = [["original", "", f"{self.original_metric:.4f}", "", "1.000x", "1.000x", "1.000x",
             table.ratio(self.original_speedup) if self.original_speedup else "-", "1.000x"]]
    for p in self.points:
      setting = ("per layer" if p.precisions is not None else
                 ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in p.settings.items() if k not in ("group_size", "width")))
      rows.append([p.method, setting, f"{p.metric:.4f}", f"{p.drop:+.4f}",
                   table.ratio(p.ratio["significand"]), table.ratio(p.ratio["word"]),
                   table.ratio(p.ratio["aligned"]),
                   table.ratio(p.speedup) if p.speedup is not None else "-",
                   table.ratio(p.speedup_unmorphed) if p.speedup_unmorphed is not None else "-"])
    return table.format_table(headers, rows)

  def to_dict(self) -> dict:
    return {"metric": self.metric_name, "higher_is_better": self.higher_is_better,
            "original_metric": self.original_metric, "group_size": self.group_size,
            "width": self.width, "original_speedup": self.original_speedup,
            "points": [p.to_dict() for p in self.points]}

  def csv_rows(self) -> list[list]:
    rows = [["method", "setting", "precisions", self.metric_name, "drop", "ratio_significand",
             "ratio_word", "ratio_aligned", "speedup_over_stripes", "speedup_over_unmorphed"]]
    for p in self.points:
      rows.append([p.method, json.dumps(dict(p.settings)),
                   json.dumps(p.precisions) if p.precisions else "", p.metric, p.drop,
                   p.ratio["significand"], p.ratio["word"], p.ratio["aligned"],
                   "" if p.speedup is None else p.speedup,
                   "" if p.speedup_unmorphed is None else p.speedup_unmorphed])
    return rows


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """A per-layer precision map and how it compares.

  Attributes:
    precisions: {layer name: P} (layers absent keep their weights); what
      morph_model, MortarCallback and the converter accept.
    point: its SweepPoint (metric re-evaluated with the whole map).
    best_global: the best single-P SweepPoint within the budget, or None.
    budget: the allowed drop; objective: "aligned" or "speedup".
    sensitivity: {layer: {P: drop}} measured one layer at a time.
    evaluations: how many times the metric ran.
    chose_global: True when no per-layer map beat the best global P.
  """
  method: str
  precisions: Mapping[str, float]
  point: SweepPoint
  best_global: SweepPoint | None
  budget: float
  objective: str
  sensitivity: Mapping[str, Mapping[float, float]]
  evaluations: int
  chose_global: bool

  def summary(self) -> str:
    lines = [f"Per-layer search ({self.method}, budget {self.budget:g} {self.objective}): "
             f"{self.point.metric:.4f} (drop {self.point.drop:+.4f}), aligned "
             f"{table.ratio(self.point.ratio['aligned'])}, est. "
             f"{_speedups_text(self.point)} "
             f"after {self.evaluations} evaluations"]
    if self.best_global is not None:
      g = self.best_global
      lines.append(f"Best global P within budget: {g.settings.get('precision')} -> "
                   f"{g.metric:.4f} (drop {g.drop:+.4f}), aligned {table.ratio(g.ratio['aligned'])}"
                   f", est. {_speedups_text(g)}")
    else:
      lines.append("No global P of the grid meets the budget.")
    if self.chose_global:
      lines.append("The per-layer map found no better point: it is the best global P.")
    lines.append("Per layer: " + ", ".join(f"{k}: P={v:g}" for k, v in self.precisions.items())
                 if self.precisions else "Per layer: no layer can be morphed within the budget")
    return "\n".join(lines)

  def to_dict(self) -> dict:
    return {"method": self.method, "precisions": dict(self.precisions),
            "point": self.point.to_dict(),
            "best_global": self.best_global.to_dict() if self.best_global else None,
            "budget": self.budget, "objective": self.objective,
            "sensitivity": {k: {str(p): d for p, d in v.items()}
                            for k, v in self.sensitivity.items()},
            "evaluations": self.evaluations, "chose_global": self.chose_global}


def _speedups_text(point: SweepPoint) -> str:
  if point.speedup is None:
    return "speedup -"
  return (f"{table.ratio(point.speedup)} over stripes, "
          f"{table.ratio(point.speedup_unmorphed)} over unmorphed")


def _unmorphed_speedup(estimator) -> float | None:
  """cycles(stripes) / cycles(mortar), both on the original weights."""
  result = estimator("paper", 0.1)
  cycles = result.total_cycles()
  if "stripes" not in cycles or "mortar" not in cycles:
    return None
  return cycles["stripes"]["original"] / max(1, cycles["mortar"]["original"])


def _speedups(result) -> tuple[float | None, float | None]:
  """SPEC 4's two headline figures of an Estimate."""
  head = result.headline()
  return head["over_stripes"], head["over_unmorphed"]


# --------------------------------------------------------------------------
# Sweep


def _as_metric(evaluate, higher_is_better) -> Metric:
  if isinstance(evaluate, Metric):
    return evaluate
  if not callable(evaluate):
    raise TypeError("evaluate must be a Metric or a callable model -> float")
  return Metric(getattr(evaluate, "__name__", "metric"), evaluate, higher_is_better)


def _specs(grid: Mapping[str, Sequence], group_size, width) -> list[morphing.MorphSpec]:
  if not grid:
    raise ValueError("the grid is empty: give {method: [settings]}")
  specs = []
  for method, values in grid.items():
    if method not in _SETTING:
      raise ValueError(f"unknown method {method!r} in the grid; expected one of "
                       f"{', '.join(_SETTING)}")
    if not values:
      raise ValueError(f"the grid for {method!r} is empty")
    for value in values:
      extra = dict(group_size=group_size, width=width) if method == "bitx" else {}
      specs.append(morphing.MorphSpec.create(method, **{_SETTING[method]: value}, **extra))
  return specs


def _progress(enabled: bool, done: int, total: int, label: str) -> None:
  if enabled:
    table.progress(done, total, label, width=24, label_width=32)


def sweep(model, evaluate, grid: Mapping[str, Sequence] | None = None, *,
          higher_is_better: bool = True, estimate_speedup: bool = True, input_shape=None,
          group_size: int = engines_lib.DEFAULT_GROUP_SIZE,
          width: int = engines_lib.DEFAULT_WIDTH, progress: bool = False) -> SweepResult:
  """Evaluates the model with its kernels morphed at each setting of `grid`.

  Args:
    model: a Keras model or a models.LoadedSavedModel (its kernels are
      morphed in place and restored).
    evaluate: a Metric, or a callable model -> float (direction from
      `higher_is_better`).
    grid: {method: settings} (P for paper/fewest_ones, keep_bits for round,
      columns for bitx); default DEFAULT_GRID.
    estimate_speedup: also estimate SPEC 4's two speedups per setting.
    input_shape: for the estimator (default: the model's, batch 1).
    group_size, width: the aligned domain's grouping (bitx's, and the
      ratios'); default the engines' (64, 24).
    progress: draw a progress bar on stderr.

  Raises:
    ValueError: an empty grid or method grid, a bad setting, a model without
      float32 kernels, or a metric returning NaN.
  """
  metric = _as_metric(evaluate, higher_is_better)
  specs = _specs(DEFAULT_GRID if grid is None else grid, group_size, width)
  kernels = models.model_kernels(model, group_size, width)
  original = metric(model)
  estimator = (ModelEstimator(model, input_shape or model_input_shape(model))
               if estimate_speedup else None)
  points = []
  original_speedup = None
  try:
    if estimator is not None:
      original_speedup = _unmorphed_speedup(estimator)
    for n, spec in enumerate(specs):
      _progress(progress, n, len(specs), spec.label())
      morphed = {i: _morph(k, spec) for i, k in enumerate(kernels)}
      with _Applied(kernels, morphed):
        value = metric(model)
      ratio, _, _ = _ratios(kernels, morphed, group_size, width)
      speedup = unmorphed = None
      if estimator is not None:
        # The estimator's engines set bitx's G and width (the same as here by default).
        kwargs = {k: v for k, v in spec.settings().items()
                  if k not in ("precision", "group_size", "width")}
        speedup, unmorphed = _speedups(estimator(spec.method, spec.precision, **kwargs))
      points.append(SweepPoint(spec.method, spec.settings(), value,
                               metric.drop(original, value), ratio, speedup,
                               speedup_unmorphed=unmorphed))
    _progress(progress, len(specs), len(specs), "done")
  finally:
    if estimator is not None:
      estimator.close()
  return SweepResult(metric.name, metric.higher_is_better, original, tuple(points), group_size,
                     width, original_speedup)


# --------------------------------------------------------------------------
# Per-layer search


def _knapsack(options: list[list[tuple[float, float, object]]], budget: float):
  """Picks one option per layer maximising total gain with total drop <= budget.

  options[l] = [(drop, gain, choice), ...]; (0, 0, None) is always allowed.
  Drops are rounded up to 1/2000 of the budget (exact for budget 0: only
  options that do not worsen the metric are free).
  """
  units = 2000
  scale = units / budget if budget > 0 else 0.0

  def cost(drop):
    if drop <= 0:
      return 0
    if budget <= 0:
      return units + 1
    return math.ceil(drop * scale - 1e-9)

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


def search_precisions(model, evaluate, budget: float, *, method: str = "paper",
                      precisions: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
                      higher_is_better: bool = True, objective: str = "aligned",
                      input_shape=None, group_size: int = engines_lib.DEFAULT_GROUP_SIZE,
                      width: int = engines_lib.DEFAULT_WIDTH,
                      progress: bool = False) -> SearchResult:
  """A {layer: P} map that saves the most within a metric budget.

  Args:
    model: a Keras model or a models.LoadedSavedModel (kernels morphed in
      place and restored).
    evaluate: a Metric or callable model -> float.
    budget: the largest allowed drop of the metric from the original (>= 0,
      in the metric's units, e.g. 0.01 = one point of accuracy).
    method: "paper" or "fewest_ones".
    precisions: the P candidates per layer (and for the global comparison).
    objective: "aligned" (aligned-domain 1 bits removed) or "speedup"
      (estimated cycles the mortar engine saves on the morphed weights).
    input_shape: for the estimator (default: the model's, batch 1).

  Returns:
    A SearchResult; its point meets the budget on re-evaluation and removes
    at least as much as the best global P of `precisions` that meets it.

  Raises:
    ValueError: budget < 0 or not a number, an empty or bad P grid, a
      method without P, an unknown objective, or a metric returning NaN.
  """
  if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
    raise ValueError(f"budget must be a number >= 0, got {budget!r}")
  if method not in ("paper", "fewest_ones"):
    raise ValueError(f"the search chooses P: method must be 'paper' or 'fewest_ones', "
                     f"not {method!r}")
  if objective not in ("aligned", "speedup"):
    raise ValueError(f"objective must be 'aligned' or 'speedup', got {objective!r}")
  if not precisions:
    raise ValueError("the P grid is empty")
  grid = sorted({morphing.check_precision(p) for p in precisions})
  metric = _as_metric(evaluate, higher_is_better)
  kernels = models.model_kernels(model, group_size, width)
  estimator = ModelEstimator(model, input_shape or model_input_shape(model))
  evaluations = 0
  try:
    original = metric(model)
    evaluations += 1
    morphed = {(i, p): _morph(k, morphing.MorphSpec.create(method, p))
               for i, k in enumerate(kernels) for p in grid}

    # Gains per layer and P, in the objective's units.
    gains = {}
    if objective == "speedup":
      by_layer = {}
      for p in grid:
        result = estimator(method, p)
        for layer in result.mapped:
          cells = layer.cycles["mortar"]
          by_layer.setdefault(layer.weight, {})[p] = cells["original"] - cells["morphed"]
      for i, k in enumerate(kernels):
        name = k.name
        for p in grid:
          gains[(i, p)] = float(by_layer.get(name, {}).get(p, 0))
    else:
      for (i, p), value in morphed.items():
        k = kernels[i]
        after = bits.count_ones(value, "aligned", reduction_axes=k.axes, group_size=group_size,
                                width=width)
        gains[(i, p)] = float(k.ones["aligned"] - after)

    # Sensitivity: one layer at a time.
    sensitivity: dict[str, dict[float, float]] = {}
    total = len(kernels) * len(grid) + len(grid)
    for i, k in enumerate(kernels):
      for p in grid:
        _progress(progress, evaluations - 1, total, f"{k.layer} P={p:g}")
        with _Applied(kernels, {i: morphed[(i, p)]}):
          value = metric(model)
        evaluations += 1
        sensitivity.setdefault(k.layer, {})[p] = metric.drop(original, value)

    # Global P's (also the floor the answer must beat).
    global_points = []
    for p in grid:
      _progress(progress, evaluations - 1, total, f"global P={p:g}")
      with _Applied(kernels, {i: morphed[(i, p)] for i in range(len(kernels))}):
        value = metric(model)
      evaluations += 1
      global_points.append((p, value, sum(gains[(i, p)] for i in range(len(kernels)))))
    _progress(progress, total, total, "done")

    options = [[(sensitivity[k.layer][p], gains[(i, p)], p) for p in grid]
               for i, k in enumerate(kernels)]
    picks = _knapsack(options, budget)
    # Check the combination; interactions can push it past the budget.
    while True:
      chosen = {i: p for i, p in enumerate(picks) if p is not None}
      with _Applied(kernels, {i: morphed[(i, p)] for i, p in chosen.items()}):
        value = metric(model)
      evaluations += 1
      if metric.drop(original, value) <= budget or not chosen:
        break
      # Step back the layer whose measured drop is largest, to its next smaller P.
      worst = max(chosen, key=lambda i: sensitivity[kernels[i].layer][chosen[i]])
      smaller = [p for p in grid if p < chosen[worst]]
      picks[worst] = smaller[-1] if smaller else None
    search_gain = sum(gains[(i, p)] for i, p in chosen.items())

    feasible = [(p, v, g) for p, v, g in global_points if metric.drop(original, v) <= budget]
    best_global = max(feasible, key=lambda t: t[2]) if feasible else None
    chose_global = best_global is not None and best_global[2] >= search_gain
    if chose_global:
      chosen = {i: best_global[0] for i in range(len(kernels))}
      value = best_global[1]

    precision_map = {kernels[i].layer: p for i, p in chosen.items()}
    point = _point(method, precision_map, chosen, morphed, kernels, metric, original, value,
                   estimator, group_size, width)
    global_point = None
    if best_global is not None:
      p = best_global[0]
      global_point = _point(method, None, {i: p for i in range(len(kernels))}, morphed, kernels,
                            metric, original, best_global[1], estimator, group_size, width,
                            global_p=p)
  finally:
    estimator.close()
  return SearchResult(method, precision_map, point, global_point, float(budget), objective,
                      sensitivity, evaluations, chose_global)


def _point(method, precision_map, chosen, morphed, kernels, metric, original, value, estimator,
           group_size, width, global_p=None):
  values = {i: morphed[(i, p)] for i, p in chosen.items()}
  ratio, _, _ = _ratios(kernels, values, group_size, width)
  if global_p is not None:
    speedup, unmorphed = _speedups(estimator(method, global_p))
    return SweepPoint(method, {"precision": global_p}, value, metric.drop(original, value),
                      ratio, speedup, speedup_unmorphed=unmorphed)
  if precision_map:
    speedup, unmorphed = _speedups(estimator(method, dict(precision_map)))
  else:  # nothing morphed: the original weights on mortar, over stripes
    speedup, unmorphed = _unmorphed_speedup(estimator), 1.0
  return SweepPoint(method, {}, value, metric.drop(original, value), ratio, speedup,
                    precisions=dict(precision_map), speedup_unmorphed=unmorphed)
