"""The sweep: the paper's table for a model, one row per morphing setting.

For each method and each of its own settings (P for paper/fewest_ones,
keep_bits for round, columns for bitx) `sweep` morphs the kernels in place
(the model is never rebuilt), evaluates, and restores them; each row has the
metric, the ones ratio in the three domains, the measured compressed size
(`compressed x`: zlib 9 bytes of the original kernels over those of the
morphed ones, each kernel compressed alone; mortar_tf.compression) and SPEC
4's two estimated speedups: the mortar engine on the morphed weights over
stripes and over mortar on the original weights. The aligned ratio uses the default engines'
G and width (64, 24), as the estimates do.

Example:
  result = sweep(model, metric, {"paper": [0.05, 0.1], "round": [4, 7]})
  print(result.table())
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mortar_tf import compensation
from mortar_tf import morphing
from mortar_tf import table
from mortar_tf.estimator import engines as engines_lib
from mortar_tf.explore import estimates
from mortar_tf.explore import in_place
from mortar_tf.explore import metrics as metrics_lib
from mortar_tf.explore import models
from mortar_tf.explore.results import SweepPoint
from mortar_tf.explore.results import SweepResult

DEFAULT_GRID = {"paper": (0.01, 0.05, 0.1, 0.2, 0.3), "fewest_ones": (0.01, 0.05, 0.1, 0.2, 0.3),
                "round": (4, 7, 10), "bitx": (8, 12)}
_SETTING = {"paper": "precision", "fewest_ones": "precision", "round": "keep_bits",
            "bitx": "columns"}
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


def report_progress(enabled, done: int, total: int, label: str) -> None:
  """A bar on stderr when `enabled` is True; a callable is called instead."""
  if callable(enabled):
    enabled(done, total, label)
  elif enabled:
    table.progress(done, total, label, width=24, label_width=32)


def sweep(model, evaluate, grid: Mapping[str, Sequence] | None = None, *,
          higher_is_better: bool = True, estimate_speedup: bool = True, input_shape=None,
          group_size: int = engines_lib.DEFAULT_GROUP_SIZE,
          width: int = engines_lib.DEFAULT_WIDTH, progress=False,
          compensate=None, compressed: bool = True) -> SweepResult:
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
    compensate: None, or calibration inputs / a mortar_tf.keras.Calibration
      (a Keras model or a SavedModel: see in_place.compensator): each
      per-weight setting (paper, fewest_ones, round) gets a second row,
      compensated (SPEC 6; statistics collected once from the original
      model), its speedups estimated on the compensated values themselves
      (estimates.ModelEstimator.of_values).
    compressed: measure each row's compressed bytes (zlib 9 of each kernel
      alone, zstd where installed; the originals once): measured, not
      estimated, and slow on large models (zlib 9 runs at 0.6-20 MB/s a
      core: about a minute a row for 15M weights, on parallel threads).

  Raises:
    ValueError: an empty grid or method grid, a bad setting, a model without
      float32 kernels, or a metric returning NaN.
  """
  metric = metrics_lib.as_metric(evaluate, higher_is_better)
  specs = _specs(DEFAULT_GRID if grid is None else grid, group_size, width)
  kernels = models.model_kernels(model, group_size, width)
  compensator = in_place.compensator(model, kernels, compensate)
  in_place.check_disjoint(compensator, metric)
  original = metric(model)
  estimator = (estimates.ModelEstimator(model, input_shape or estimates.model_input_shape(model))
               if estimate_speedup else None)
  points = []
  original_speedup = coverage = None
  try:
    if estimator is not None:
      original_speedup = estimates.unmorphed_speedup(estimator)
      coverage = estimator.reference().coverage()
    for n, spec in enumerate(specs):
      report_progress(progress, n, len(specs), spec.label())
      morphed = {i: in_place.morph(k, spec) for i, k in enumerate(kernels)}
      with in_place.Applied(kernels, morphed):
        value = metric(model)
      ratio, _, _ = in_place.ratios(kernels, morphed, group_size, width)
      sizes = in_place.compressed(kernels, in_place.measure(morphed)) if compressed else None
      speedup = unmorphed = None
      if estimator is not None:
        # The estimator's engines set bitx's G and width (the same as here by default).
        speedup, unmorphed = estimates.speedups(estimator(spec))
      points.append(SweepPoint(spec.method, spec.settings(), value,
                               metric.drop(original, value), ratio, speedup,
                               speedup_unmorphed=unmorphed, compressed=sizes))
      if compensator is not None and spec.method in compensation.METHODS:
        done = compensator.values({id(k.variable): spec for k in kernels})
        with in_place.Assigned((done.variables[key], v) for key, v in done.values.items()):
          value = metric(model)
        values = {i: done.values[id(k.variable)] for i, k in enumerate(kernels)}
        ratio, _, _ = in_place.ratios(kernels, values, group_size, width)
        sizes = in_place.compressed(kernels, in_place.measure(values)) if compressed else None
        speedup = unmorphed = None
        if estimator is not None:
          speedup, unmorphed = estimator.of_values(
              [(done.variables[key], v) for key, v in done.values.items()])
        points.append(SweepPoint(spec.method, dict(spec.settings(), compensated=True), value,
                                 metric.drop(original, value), ratio, speedup,
                                 speedup_unmorphed=unmorphed, compressed=sizes))
    report_progress(progress, len(specs), len(specs), "done")
  finally:
    if estimator is not None:
      estimator.close()
  return SweepResult(metric.name, metric.higher_is_better, original, tuple(points), group_size,
                     width, original_speedup, coverage)
