"""Speedup estimates of explored models, through mortar_tf.estimator.

ModelEstimator exports a Keras model once (a loaded SavedModel is used as it
is) and runs the estimator on it per morphing setting; the helpers here read
SPEC 4's two headline speedups off an estimate, match the estimate's layers
to the model's kernels by name and shape, turn a {kernel key: P} map into the
names the export gives the weights, and compute the mortar engine's cycles
each kernel saves at each P (the search's objective "speedup").

Example:
  estimator = ModelEstimator(model, model_input_shape(model))
  try:
    over_stripes, over_unmorphed = speedups(estimator("paper", 0.1))
  finally:
    estimator.close()
"""

from __future__ import annotations

import os
import shutil
import tempfile

from mortar_tf import morphing
from mortar_tf.explore import in_place
from mortar_tf.explore import models


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
      self.dir = tempfile.mkdtemp(prefix="mortar_explore_")
      from mortar_tf.keras import saving  # pylint: disable=import-outside-toplevel
      saving.export_saved_model(self.model, os.path.join(self.dir, "model"))
    return os.path.join(self.dir, "model")

  def __call__(self, method, precision=None, **kwargs):
    """The estimate with `method` (a name with its settings, or a MorphSpec)."""
    from mortar_tf import estimator  # pylint: disable=import-outside-toplevel
    return estimator.estimate(self._export(), input_shape=self.input_shape, method=method,
                              precision=precision, **kwargs)

  def of_values(self, pairs) -> tuple[float | None, float | None]:
    """(over stripes, over unmorphed) of the model with [(variable, value)]
    assigned as they are (compensated kernels, which no method re-creates):
    exported with those values (a LoadedSavedModel saved again with its
    signature), estimated with round at keep_bits=23 (the identity), so the "morphed" cells are the values themselves. Stripes reads
    every bit, so its cycles do not depend on the values; over unmorphed is
    over stripes divided by the original weights' own."""
    from mortar_tf import estimator  # pylint: disable=import-outside-toplevel
    from mortar_tf import morphing  # pylint: disable=import-outside-toplevel
    from mortar_tf.explore import in_place  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    scratch = tempfile.mkdtemp(prefix="mortar_explore_values_")
    try:
      path = os.path.join(scratch, "model")
      with in_place.Assigned(pairs):
        if isinstance(self.model, models.LoadedSavedModel):  # saved again as loaded
          tf.saved_model.save(self.model.loaded, path,
                              signatures={self.model.signature: self.model.fn})
        else:
          from mortar_tf.keras import saving  # pylint: disable=import-outside-toplevel
          saving.export_saved_model(self.model, path)
      result = estimator.estimate(path, input_shape=self.input_shape,
                                  method=morphing.MorphSpec("round", keep_bits=23))
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
    over_stripes, _ = speedups(result)
    unmorphed = unmorphed_speedup(self)
    if over_stripes is None or not unmorphed:
      return over_stripes, None
    return over_stripes, over_stripes / unmorphed

  def reference(self):
    """The estimate of the original weights (any setting's original cells,
    N_pos and engines), computed once."""
    if self._reference is None:
      self._reference = self("paper", 0.1)
    return self._reference

  def readers(self, kernels) -> dict[int, list]:
    """{kernel index: the estimated layers that read it}, matched by name and
    shape (see match_layer); computed once."""
    if self._readers is None:
      self._readers = {}
      for layer in self.reference().mapped:
        index = match_layer(layer, kernels)
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


def match_layer(layer, kernels):
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


def speedups(result) -> tuple[float | None, float | None]:
  """SPEC 4's two headline figures of an Estimate."""
  head = result.headline()
  return head["over_stripes"], head["over_unmorphed"]


def unmorphed_speedup(estimator) -> float | None:
  """cycles(stripes) / cycles(mortar), both on the original weights."""
  cycles = estimator.reference().total_cycles()
  if "stripes" not in cycles or "mortar" not in cycles:
    return None
  return cycles["stripes"]["original"] / max(1, cycles["mortar"]["original"])


def mortar_cycle_gains(kernels, grid, method, estimator):
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
      value = in_place.morph(k, morphing.MorphSpec.create(method, p))
      after = estimation.group_figures(value, k.axes, *engine.geometry)[1]
      gains[(i, p)] = float(n_pos.get(i, 0) * (base - after)) / engine.num_pes
  return gains
