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
measurements, calibrates the knapsack's budget against the metric (a
bisection, one full evaluation a step), and never returns less than the
best single global P its bisection over the grid finds within the budget.
Every full evaluation counts against `max_evaluations`; what the cap cuts
short is reported.

Example:
  result = sweep(model, metric, {"paper": [0.05, 0.1], "round": [4, 7]})
  print(result.table())
  found = search_precisions(model, metric, budget=0.01)
  morph_model(model, "paper", precision=found.precisions)
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import math
import os
import shutil
import tempfile
import warnings
from typing import Mapping, Sequence

import numpy as np

from mortar_tf import backends
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
  return backends.morph(kernel.original, spec, **grouping)


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
    now = backends.ones_by_domain(value, reduction_axes=k.axes, group_size=group_size, width=width)
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
    self._reference = None
    self._readers = None

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

  def __call__(self, method, precision=None, **kwargs):
    """The estimate with `method` (a name with its settings, or a MorphSpec)."""
    from mortar_tf import estimator  # pylint: disable=import-outside-toplevel
    return estimator.estimate(self._export(), input_shape=self.input_shape, method=method,
                              precision=precision, **kwargs)

  def reference(self):
    """The estimate of the original weights (any setting's original cells,
    N_pos and engines), computed once."""
    if self._reference is None:
      self._reference = self("paper", 0.1)
    return self._reference

  def readers(self, kernels) -> dict[int, list]:
    """{kernel index: the estimated layers that read it}, matched by name and
    shape (see _match_layer); computed once."""
    if self._readers is None:
      self._readers = {}
      for layer in self.reference().mapped:
        index = _match_layer(layer, kernels)
        if index is not None:
          self._readers.setdefault(index, []).append(layer)
    return self._readers

  def weight_names(self, kernels) -> dict[int, str]:
    """{kernel index: the name its weight has in the estimate}."""
    return {i: layers[0].weight for i, layers in self.readers(kernels).items()}

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
    distilled = " + distilled" if "distilled" in self.settings else ""
    if self.precisions is not None and "precision" not in self.settings:
      return f"{self.method} per-kernel search{distilled}"
    settings = {k: v for k, v in self.settings.items() if k != "distilled"}
    return morphing.MorphSpec.create(self.method, **settings).label() + distilled

  def __repr__(self) -> str:
    speedup = "-" if self.speedup is None else table.ratio(self.speedup)
    return (f"SweepPoint({self.label()!r}, metric={self.metric:.4g}, drop={self.drop:+.4g}, "
            f"aligned={table.ratio(self.ratio['aligned'])}, speedup={speedup})")

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
  # What the estimated speedups cover (estimator.Coverage; one graph, so the
  # same for every point), or None without estimates.
  coverage: object = None

  def coverage_text(self) -> str:
    """"Estimated speedups cover ..." (one line), or "" without estimates."""
    return "" if self.coverage is None else (
        f"Estimated speedups cover {self.coverage.summary()}.")

  def table(self) -> str:
    """One row per setting (the original first): metric, drop, ones ratios in
    each domain (the aligned one at this result's G and width, named in its
    header) and the two estimated speedups, over the same engine unmorphed
    first, then over stripes. What print() shows."""
    headers = ["method", "setting", self.metric_name, "drop", "significand x", "word x",
               f"aligned x ({bits.geometry_text(self.group_size, self.width)})",
               "est. x unmorphed", "est. x stripes"]
    rows = [["original", "", f"{self.original_metric:.4f}", "", "1.000x", "1.000x", "1.000x",
             "1.000x", table.ratio(self.original_speedup) if self.original_speedup else "-"]]
    for p in self.points:
      setting = (("search: global" if "precision" in p.settings else "search: per kernel") +
                 (" + distilled" if "distilled" in p.settings else "")
                 if p.precisions is not None else
                 ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in p.settings.items() if k not in ("group_size", "width")))
      rows.append([p.method, setting, f"{p.metric:.4f}", f"{p.drop:+.4f}",
                   table.ratio(p.ratio["significand"]), table.ratio(p.ratio["word"]),
                   table.ratio(p.ratio["aligned"]),
                   table.ratio(p.speedup_unmorphed) if p.speedup_unmorphed is not None else "-",
                   table.ratio(p.speedup) if p.speedup is not None else "-"])
    return table.format_table(headers, rows)

  def __str__(self) -> str:
    return self.table()

  def __repr__(self) -> str:
    return (f"SweepResult(metric={self.metric_name!r}, original_metric={self.original_metric:.4g}, "
            f"points={len(self.points)}, group_size={self.group_size}, width={self.width})")

  def to_dict(self) -> dict:
    return {"metric": self.metric_name, "higher_is_better": self.higher_is_better,
            "original_metric": self.original_metric, "group_size": self.group_size,
            "width": self.width, "original_speedup": self.original_speedup,
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
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
    sensitivity: {kernel key: {P: cost}} measured one kernel at a time
      (the proxy, or the metric's drop without calibration inputs), made
      monotone in P; the P in `bounded` were not measured (see there), and
      a P absent from a kernel's costs could not be chosen.
    evaluations: how many times the metric ran on the full data (the
      original's score, the global bisection, the sensitivity without
      calibration inputs and every verified map), at most max_evaluations.
    chose_global: True when no per-kernel map beat the best global P (the
      map is then {"*": P}).
    calibration_samples: samples predicted for the sensitivity (all kernels
      and P together); full_samples: samples in one full evaluation, if known.
    proxy: what the sensitivity measured.
    max_evaluations: the cap on `evaluations`.
    global_complete: False when the cap stopped the global bisection (a
      larger global P than best_global's may meet the budget).
    maps_tried: per-kernel maps verified by a full evaluation.
    cut_short: what the cap stopped, one sentence each ("" when nothing).
    bounded: {kernel key: P values whose cost was not measured but bounded
      by the next larger measured P} (the cap cut the sensitivity short).
    coverage: what the estimated speedups cover (estimator.Coverage), or None.
    group_size, width: the aligned domain of the points' ratios (and of the
      objective "aligned").
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
  calibration_samples: int = 0
  proxy: str = ""
  full_samples: int | None = None
  max_evaluations: int | None = None
  global_complete: bool = True
  maps_tried: int = 0
  cut_short: tuple[str, ...] = ()
  bounded: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
  coverage: object = None
  group_size: int = bits.DEFAULT_GROUP_SIZE
  width: int = bits.DEFAULT_WIDTH

  def cost_text(self) -> str:
    """Full evaluations, plus the calibration work in full evaluations' worth."""
    text = f"{self.evaluations} full evaluations"
    if self.calibration_samples and self.full_samples:
      text += (f" + calibration work worth {self.calibration_samples / self.full_samples:.1f} "
               f"more ({self.calibration_samples} samples)")
    return text

  def _cap_text(self) -> str:
    return (f"the cap of {self.max_evaluations} full evaluations"
            if self.max_evaluations is not None else "the evaluation cap")

  def summary(self) -> str:
    if not self.chose_global:
      kind = "per kernel"
    elif self.maps_tried or not self.cut_short:
      kind = "global P (no per-kernel map did better)"
    else:
      kind = f"global P (no per-kernel map was verified within {self._cap_text()})"
    lines = [f"Search ({self.method}, budget {self.budget:g}, objective {self.objective}, "
             f"aligned at {bits.geometry_text(self.group_size, self.width)}): "
             f"{kind}: {self.point.metric:.4f} (drop {self.point.drop:+.4f}), aligned "
             f"{table.ratio(self.point.ratio['aligned'])}, est. "
             f"{_speedups_text(self.point)}; {self.cost_text()}; sensitivity: {self.proxy}"]
    if self.best_global is not None:
      g = self.best_global
      lines.append(f"Best global P within budget: {g.settings.get('precision')} -> "
                   f"{g.metric:.4f} (drop {g.drop:+.4f}), aligned {table.ratio(g.ratio['aligned'])}"
                   f", est. {_speedups_text(g)}" +
                   ("" if self.global_complete else
                    f" (the bisection was stopped by {self._cap_text()}: a larger P may fit)"))
    elif self.global_complete:
      lines.append("No global P of the grid meets the budget.")
    else:
      lines.append(f"No global P was found: {self._cap_text()} was reached before the "
                   "bisection over the grid finished.")
    if self.coverage is not None:
      lines.append(f"Estimated speedups cover {self.coverage.summary()}.")
    if self.chose_global:
      lines.append(f"Map: {{'*': {self.precisions['*']:g}}} (every kernel)")
    elif self.precisions:
      lines.append("Per kernel: " + ", ".join(f"{k}: P={v:g}" for k, v in self.precisions.items()))
      left = [k for k in self.sensitivity if k not in self.precisions]
      if left:
        lines.append("Left unmorphed: " + ", ".join(left))
    elif self.maps_tried:
      lines.append(f"Per kernel: nothing morphed: none of the {self.maps_tried} maps tried meets "
                   "the budget" + (f" ({self._cap_text()} stopped the search)"
                                   if self.cut_short else ""))
    elif self.cut_short:
      lines.append(f"Per kernel: nothing morphed: {self._cap_text()} was reached before any "
                   "per-kernel map could be tried")
    else:
      lines.append("Per kernel: nothing morphed: no kernel gains anything at any P of the grid")
    for text in self.cut_short:
      lines.append(f"Cut short by {self._cap_text()}: {text}.")
    return "\n".join(lines)

  def to_dict(self) -> dict:
    return {"method": self.method, "precisions": dict(self.precisions),
            "point": self.point.to_dict(),
            "best_global": self.best_global.to_dict() if self.best_global else None,
            "budget": self.budget, "objective": self.objective,
            "sensitivity": {k: {str(p): d for p, d in v.items()}
                            for k, v in self.sensitivity.items()},
            "evaluations": self.evaluations, "chose_global": self.chose_global,
            "calibration_samples": self.calibration_samples, "proxy": self.proxy,
            "full_samples": self.full_samples, "max_evaluations": self.max_evaluations,
            "global_complete": self.global_complete, "maps_tried": self.maps_tried,
            "cut_short": list(self.cut_short),
            "bounded": {k: list(v) for k, v in self.bounded.items()},
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "group_size": self.group_size, "width": self.width}

  def __str__(self) -> str:
    return self.summary()

  def __repr__(self) -> str:
    kind = "global" if self.chose_global else f"{len(self.precisions)} kernels"
    return (f"SearchResult(method={self.method!r}, budget={self.budget:g}, "
            f"objective={self.objective!r}, map={kind}, metric={self.point.metric:.4g}, "
            f"aligned={table.ratio(self.point.ratio['aligned'])}, "
            f"evaluations={self.evaluations}, group_size={self.group_size}, width={self.width})")


def _speedups_text(point: SweepPoint) -> str:
  if point.speedup is None:
    return "speedup -"
  return (f"{table.ratio(point.speedup_unmorphed)} over unmorphed, "
          f"{table.ratio(point.speedup)} over stripes")


def _unmorphed_speedup(estimator) -> float | None:
  """cycles(stripes) / cycles(mortar), both on the original weights."""
  cycles = estimator.reference().total_cycles()
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


_GRID_HELP = ("a grid is {method: [settings]} (e.g. {'paper': [0.05, 0.1], 'round': [4]}) or a "
              "list of MorphSpec objects or (method, setting) pairs")


def _specs(grid, group_size, width) -> list[morphing.MorphSpec]:
  """MorphSpecs from {method: [settings]}, or from a list of MorphSpecs or
  (method, setting) pairs."""
  if isinstance(grid, (list, tuple)):
    if not grid:
      raise ValueError(f"the grid is empty: {_GRID_HELP}")
    pairs = []
    for entry in grid:
      if isinstance(entry, morphing.MorphSpec):
        pairs.append((entry.method, entry))
      elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str):
        pairs.append((entry[0], entry[1]))
      else:
        raise ValueError(f"grid entry {entry!r} is not understood: {_GRID_HELP}")
  elif isinstance(grid, Mapping):
    if not grid:
      raise ValueError(f"the grid is empty: {_GRID_HELP}")
    pairs = []
    for method, values in grid.items():
      if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        values = [values]
      if not len(values):  # pylint: disable=g-explicit-length-test
        raise ValueError(f"the grid for {method!r} is empty")
      pairs.extend((method, value) for value in values)
  else:
    raise ValueError(f"grid must not be a {type(grid).__name__}: {_GRID_HELP}")
  specs = []
  for method, value in pairs:
    if method not in _SETTING:
      raise ValueError(f"unknown method {method!r} in the grid; expected one of "
                       f"{', '.join(_SETTING)}")
    if isinstance(value, morphing.MorphSpec):
      specs.append(value)
      continue
    extra = dict(group_size=group_size, width=width) if method == "bitx" else {}
    specs.append(morphing.MorphSpec.create(method, **{_SETTING[method]: value}, **extra))
  return specs


def _progress(enabled, done: int, total: int, label: str) -> None:
  """A bar on stderr when `enabled` is True; a callable is called instead."""
  if callable(enabled):
    enabled(done, total, label)
  elif enabled:
    table.progress(done, total, label, width=24, label_width=32)


def sweep(model, evaluate, grid: Mapping[str, Sequence] | None = None, *,
          higher_is_better: bool = True, estimate_speedup: bool = True, input_shape=None,
          group_size: int = engines_lib.DEFAULT_GROUP_SIZE,
          width: int = engines_lib.DEFAULT_WIDTH, progress=False) -> SweepResult:
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
    progress: draw a progress bar on stderr; or a callable (done, total,
      label), called before each setting and at the end.

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
  original_speedup = coverage = None
  try:
    if estimator is not None:
      original_speedup = _unmorphed_speedup(estimator)
      coverage = estimator.reference().coverage()
    for n, spec in enumerate(specs):
      _progress(progress, n, len(specs), spec.label())
      morphed = {i: _morph(k, spec) for i, k in enumerate(kernels)}
      with _Applied(kernels, morphed):
        value = metric(model)
      ratio, _, _ = _ratios(kernels, morphed, group_size, width)
      speedup = unmorphed = None
      if estimator is not None:
        # The estimator's engines set bitx's G and width (the same as here by default).
        speedup, unmorphed = _speedups(estimator(spec))
      points.append(SweepPoint(spec.method, spec.settings(), value,
                               metric.drop(original, value), ratio, speedup,
                               speedup_unmorphed=unmorphed))
    _progress(progress, len(specs), len(specs), "done")
  finally:
    if estimator is not None:
      estimator.close()
  return SweepResult(metric.name, metric.higher_is_better, original, tuple(points), group_size,
                     width, original_speedup, coverage)


# --------------------------------------------------------------------------
# Per-layer search


def _knapsack(options: list[list[tuple[float, float, object]]], budget: float):
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


# A drop equal to the budget meets it: 0.98 - 0.96 is 0.020000000000000018.
_SLACK = 1e-9
DEFAULT_SEARCH_PRECISIONS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def _coarse_to_fine(n: int) -> list[int]:
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


def _monotone_costs(kernels, grid, raw):
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


def _calibration_size(n: int) -> int:
  """Samples in the calibration subset: enough for a stable proxy, small
  next to the full set (1/8 of it, 16..256)."""
  return max(1, min(n, max(16, min(256, n // 8))))


def _proxy(reference: np.ndarray, outputs: np.ndarray) -> float:
  """Mean squared change of the outputs over their mean square (>= 0, 0 only
  for identical outputs): continuous where a top-1 metric moves in steps."""
  scale = float(np.mean(reference * reference)) or 1.0
  return float(np.mean((outputs - reference) ** 2)) / scale


def _predict(model, x, batch_size=256):
  out = model.predict(x, batch_size=batch_size, verbose=0)
  return np.asarray(out[0] if isinstance(out, (list, tuple)) else out, np.float64)


def _mortar_cycle_gains(kernels, grid, method, estimator):
  """{(kernel index, P): mortar cycles saved}: each kernel's N_pos from the
  estimate of the original model (matched to the kernel by name and shape),
  its per-group lane figures at the mortar engine's geometry computed here."""
  from mortar_tf.estimator import estimation  # pylint: disable=import-outside-toplevel
  result = estimator.reference()
  engine = next((e for e in result.engines if e.model == "mortar"), None)
  if engine is None:
    raise ValueError("objective 'speedup' needs an engine of the mortar model")
  # A weight several ops read counts for each.
  n_pos = {i: sum(layer.n_pos for layer in layers)
           for i, layers in estimator.readers(kernels).items()}
  gains = {}
  for i, k in enumerate(kernels):
    base = estimation.group_figures(k.original, k.axes, *engine.geometry)[1]
    for p in grid:
      value = _morph(k, morphing.MorphSpec.create(method, p))
      after = estimation.group_figures(value, k.axes, *engine.geometry)[1]
      gains[(i, p)] = float(n_pos.get(i, 0) * (base - after)) / engine.num_pes
  return gains


def _match_layer(layer, kernels):
  """The kernel an estimated layer reads: the same name, or the longest name
  one ends with ("sequential/a/kernel" is "a/kernel"), of the same shape."""
  best, best_len = None, -1
  for i, k in enumerate(kernels):
    if tuple(k.original.shape) != tuple(layer.weight_shape or ()):
      continue
    for name in (k.name, *k.names):
      if layer.weight == name or layer.weight.endswith("/" + name):
        if len(name) > best_len:
          best, best_len = i, len(name)
  return best


def search_precisions(model, evaluate, budget: float, *, method: str = "fewest_ones",
                      precisions: Sequence[float] = DEFAULT_SEARCH_PRECISIONS,
                      higher_is_better: bool = True, objective: str = "aligned",
                      input_shape=None, group_size: int = engines_lib.DEFAULT_GROUP_SIZE,
                      width: int = engines_lib.DEFAULT_WIDTH, calibration=None,
                      max_evaluations: int = 30, estimate_speedup: bool = True,
                      refine=None, progress=False) -> SearchResult:
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
     ones removed, or the mortar engine's estimated cycles saved with
     objective="speedup") within a proxy budget.
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
  Memory: one morphed copy of a kernel at a time, besides the originals.

  Args:
    model: a Keras model or a models.LoadedSavedModel (kernels morphed in
      place and restored).
    evaluate: a Metric or callable model -> float.
    budget: the largest allowed drop of the metric from the original (>= 0,
      in the metric's units, e.g. 0.01 = one point of accuracy).
    method: "fewest_ones" (default: never more ones than "paper") or "paper".
    precisions: the P candidates per kernel (and for the global comparison).
    objective: "aligned" or "speedup".
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
  if objective not in ("aligned", "speedup"):
    raise ValueError(f"objective must be 'aligned' or 'speedup', got {objective!r}")
  if isinstance(precisions, (str, bytes)) or not isinstance(precisions, Sequence):
    raise ValueError(f"precisions must be a list of P values, got {precisions!r}")
  if not precisions:
    raise ValueError("the P grid is empty")
  if not isinstance(max_evaluations, int) or max_evaluations < 4:
    raise ValueError(f"max_evaluations must be an integer >= 4, got {max_evaluations!r}")
  grid = sorted({morphing.check_precision(p) for p in precisions})
  metric = _as_metric(evaluate, higher_is_better)
  kernels = models.model_kernels(model, group_size, width)
  estimator = (ModelEstimator(model, input_shape or model_input_shape(model))
               if estimate_speedup or objective == "speedup" else None)
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
      # One morphed copy at a time: assigned as soon as it is made (memory:
      # the variables and the originals, ~2x the kernels).
      try:
        for i, p in chosen.items():
          kernels[i].variable.assign(_morph(kernels[i], morphing.MorphSpec.create(method, p)))
        value = metric(model)
      finally:
        for i in chosen:
          kernels[i].variable.assign(kernels[i].original)
    evaluated[signature] = value
    return value

  cut_short = []  # what the cap stopped, in words

  try:
    original = full({})

    def fits(value):
      return metric.drop(original, value) <= budget + _SLACK

    # Gains per kernel and P, in the objective's units (morphed values dropped at once).
    if objective == "speedup":
      gains = _mortar_cycle_gains(kernels, grid, method, estimator)
    else:
      gains = {}
      for i, k in enumerate(kernels):
        for p in grid:
          value = _morph(k, morphing.MorphSpec.create(method, p))
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
      cal = np.asarray(inputs)[:_calibration_size(len(inputs))]
      reference = _predict(model, cal)
      proxy_name = f"output change on {len(cal)} calibration samples"
      pairs = [(i, j) for i in range(len(kernels)) for j in range(len(grid))]
    else:
      # Each measurement is a full evaluation: coarse to fine over the grid
      # (every kernel's largest P first), as many as the cap allows while
      # keeping some for choosing and verifying a map.
      cal, proxy_name = None, f"{metric.name} drop (no calibration inputs)"
      pairs = [(i, j) for j in _coarse_to_fine(len(grid)) for i in range(len(kernels))]
      spare = left()
      if len(pairs) > spare - 1:
        pairs = pairs[:max(0, spare - max(1, spare // 5))]
    raw: dict[int, dict[float, float]] = {i: {} for i in range(len(kernels))}
    for n, (i, j) in enumerate(pairs):
      k, p = kernels[i], grid[j]
      _progress(progress, n, len(pairs), f"{k.key} P={p:g}")
      if cal is not None:
        with _Applied(kernels, {i: _morph(k, morphing.MorphSpec.create(method, p))}):
          raw[i][p] = _proxy(reference, _predict(model, cal))
        counter["calibration"] += len(cal)
      else:  # a negative drop is noise, never free
        raw[i][p] = abs(metric.drop(original, full({i: p}, refined=False)))
    _progress(progress, len(pairs), len(pairs), "sensitivity done")
    sensitivity, bounded = _monotone_costs(kernels, grid, raw)
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
      picks = _knapsack(options, proxy_budget)
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
    point = _point(method, precision_map, applied, kernels, metric, original, value, estimator,
                   group_size, width, global_p=best_global if chose_global else None)
    global_point = None
    if best_global is not None:
      everything = {i: best_global for i in range(len(kernels))}
      global_point = _point(method, None, everything, kernels, metric, original,
                            full(everything), estimator, group_size, width,
                            global_p=best_global)
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
                      coverage=coverage, group_size=group_size, width=width)


def resolve_map(precision_map, kernels, method) -> dict[int, float]:
  """{kernel index: P} as morph_model and the converter would apply the map."""
  from mortar_tf import precision_map as matcher  # pylint: disable=import-outside-toplevel
  specs = matcher.resolve(precision_map, {i: k.names for i, k in enumerate(kernels)}, method,
                          what="kernel")
  return {i: spec.precision for i, spec in specs.items()}


def _point(method, precision_map, chosen, kernels, metric, original, value, estimator,
           group_size, width, global_p=None):
  values = {i: _morph(kernels[i], morphing.MorphSpec.create(method, p))
            for i, p in chosen.items()}
  ratio, _, _ = _ratios(kernels, values, group_size, width)
  if estimator is None:
    return SweepPoint(method, {"precision": global_p} if global_p is not None else {}, value,
                      metric.drop(original, value), ratio, None,
                      precisions=dict(precision_map) if precision_map is not None else None)
  if global_p is not None:
    speedup, unmorphed = _speedups(estimator(method, global_p))
    return SweepPoint(method, {"precision": global_p}, value, metric.drop(original, value),
                      ratio, speedup, precisions=dict(precision_map) if precision_map else None,
                      speedup_unmorphed=unmorphed)
  if precision_map:
    speedup, unmorphed = _speedups(estimator(method, estimator_map(estimator, precision_map,
                                                                    kernels, chosen)))
  else:  # nothing morphed: the original weights on mortar, over stripes
    speedup, unmorphed = _unmorphed_speedup(estimator), 1.0
  return SweepPoint(method, {}, value, metric.drop(original, value), ratio, speedup,
                    precisions=dict(precision_map), speedup_unmorphed=unmorphed)


def estimator_map(estimator, precision_map, kernels, chosen):
  """The map as the estimator of the model's SavedModel matches it: a
  SavedModel's own keys as they are; for a Keras model (whose export may
  prefix the names, e.g. Keras 3's "sequential/"), each chosen kernel by the
  name the export gives it."""
  if isinstance(estimator.model, models.LoadedSavedModel):
    return dict(precision_map)
  names = estimator.weight_names(kernels)
  missing = [kernels[i].name for i in chosen if i not in names]
  if missing:
    raise ValueError(f"the estimator finds no weight for kernels {missing} in the export")
  from mortar_tf import precision_map as matcher  # pylint: disable=import-outside-toplevel
  return {matcher.literal(names[i]): p for i, p in chosen.items()}
