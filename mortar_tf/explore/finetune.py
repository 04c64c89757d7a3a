"""Label-free, morph-aware distillation: recover what a precision map costs.

`finetune` wraps a Keras model's kernels with MorphWrapper (the forward pass
uses the morphed kernels, the straight-through gradient trains the float32
masters), trains it to reproduce the original model's outputs on unlabelled
inputs (mean squared error to the teacher's outputs: no labels anywhere),
strips the wrappers (their morphed kernels written into plain layers) and
scores the result. If the metric is not better than the morphed model's
without training, the untrained morph is returned: training never makes the
answer worse.

`search_with_finetune` is the per-kernel search whose every full evaluation
fine-tunes the candidate map first, so the calibrated budget reaches larger
P at the same metric.

Example:
  tuned = finetune(model, {"conv1": 0.3, "fc": 0.5}, unlabelled_x, metric=metric)
  print(tuned.before, tuned.after)   # the metric without and with distillation
  tuned.model.save("morphed.keras")
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from mortar_tf.explore import metrics as metrics_lib
from mortar_tf.explore import models


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
  """What distillation gave.

  Attributes:
    model: the stripped model with morphed kernels (distilled when that
      helped, else the plain morph).
    before, after: the metric of the plain morph and of the distilled one.
    improved: whether `model` is the distilled one.
    losses: the distillation loss per epoch.
  """
  model: object
  before: float
  after: float
  improved: bool
  losses: tuple[float, ...]


def finetune(model, precision, inputs, *, metric, method: str = "fewest_ones",
             epochs: int = 3, batch_size: int = 32, learning_rate: float = 1e-4,
             seed: int = 0) -> FinetuneResult:
  """Distils `model` morphed with `precision` (a P or a {pattern: P} map)
  against its own original outputs on `inputs`.

  Args:
    model: a Keras model with its original weights (left as it is).
    precision: P for every kernel, or a map as morph_model takes it.
    inputs: unlabelled inputs to distil on (keep them apart from the data the
      metric scores, or the score flatters the result).
    metric: a Metric (e.g. builtin_metric(...) against the original).
    method: "fewest_ones" or "paper".
    epochs, batch_size, learning_rate, seed: the training.

  Raises:
    ValueError: a SavedModel (it cannot be trained here), no inputs, or bad
      training settings.
  """
  if isinstance(model, models.LoadedSavedModel):
    raise ValueError("fine-tuning needs a Keras model; a SavedModel cannot be trained here "
                     "(load the Keras model it was exported from)")
  for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  if not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
  inputs = np.asarray(inputs)
  if not len(inputs):  # pylint: disable=g-explicit-length-test
    raise ValueError("no inputs to distil on")
  from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
  from mortar_tf.keras.compat import keras  # pylint: disable=import-outside-toplevel
  teacher = metrics_lib.predict(model, inputs, 256).astype(np.float32)
  kwargs = {"precision": dict(precision) if isinstance(precision, Mapping) else precision}

  plain = apply.strip_morphing(apply.morph_model(model, method, **kwargs))
  before = metric(plain)
  keras.utils.set_random_seed(seed)
  # morph_model's wrappers share the source's layers (as TFMOT's do): train a copy.
  student = apply.morph_model(apply.copy_and_values(model)[0], method, **kwargs)
  student.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
  history = student.fit(inputs, teacher, epochs=epochs, batch_size=batch_size, shuffle=True,
                        verbose=0)
  tuned = apply.strip_morphing(student)
  after = metric(tuned)
  improved = metric.better(after, before)
  return FinetuneResult(tuned if improved else plain, before, after, improved,
                        tuple(float(v) for v in history.history.get("loss", ())))


def search_with_finetune(model, evaluate, budget: float, inputs, *, epochs: int = 2,
                         batch_size: int = 32, learning_rate: float = 1e-4, **search_kwargs):
  """search_precisions where each full evaluation distils the candidate map
  first (finetune), so the budget is met by the distilled models.

  Returns:
    (SearchResult, FinetuneResult of its map or None for an empty map).
  """
  from mortar_tf.explore import search  # pylint: disable=import-outside-toplevel
  metric = search._as_metric(evaluate, search_kwargs.pop("higher_is_better", True))  # pylint: disable=protected-access
  method = search_kwargs.get("method", "fewest_ones")
  cache = {}

  def refine(precision_map):
    key = tuple(sorted(precision_map.items()))
    if key not in cache:
      cache[key] = finetune(model, precision_map, inputs, metric=metric, method=method,
                            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    result = cache[key]
    return max(result.before, result.after) if metric.higher_is_better else min(
        result.before, result.after)

  found = search.search_precisions(model, metric, budget, refine=refine, **search_kwargs)
  if not found.precisions:
    return found, None
  if found.chose_global:  # evaluated as every kernel's key at that P
    kernels = models.model_kernels(model)
    p = found.precisions["*"]
    return found, cache.get(tuple(sorted((k.key, p) for k in kernels)))
  return found, cache.get(tuple(sorted(found.precisions.items())))
