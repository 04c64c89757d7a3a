"""Label-free, morph-aware distillation: recover what a precision map costs.

`finetune` trains a copy of a Keras model to reproduce the original model's
outputs on unlabelled inputs (mean squared error to the teacher's outputs:
no labels anywhere) with the straight-through estimator of MorphWrapper:
each step runs forward and backward with the kernels morphed, and applies
the gradient to the float32 masters. It then writes the morphed masters into
the copy and scores it. If the metric is not better than the plain morph's,
the plain morph is returned: training never makes the answer worse.

The loop is MorphWrapper's arithmetic without the wrapper: the morph runs
outside the graph (backends.morph: the C++ kernels, or numpy), so one
compiled step serves every map; the wrapper's TF-ops morph took 43 s to
compile per map on the FER model, against 0.7 s an epoch after it (the
wrapper now uses the C++ op in training steps, but a step traced per map
would still be traced once per map).

`search_with_finetune` is the per-kernel search whose every full evaluation
distils the candidate map first, so the calibrated budget reaches larger P at
the same metric.

Example:
  tuned = finetune(model, {"conv1": 0.3, "fc": 0.5}, unlabelled_x, metric=metric)
  print(tuned.before, tuned.after)   # the metric without and with distillation
  tuned.model.save("morphed.keras")
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mortar_tf import backends
from mortar_tf import morphing
from mortar_tf import precision_map
from mortar_tf.explore import metrics as metrics_lib
from mortar_tf.explore import models


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
  """What distillation gave.

  Attributes:
    model: a copy of the model with morphed kernels (distilled when that
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


class Distiller:
  """A trainable copy of a Keras model and its compiled step, reused across maps.

  Args:
    model: the Keras model with its original weights (never changed).
    inputs: unlabelled inputs; the teacher's outputs on them are computed once.
  """

  def __init__(self, model, inputs):
    if isinstance(model, models.LoadedSavedModel):
      raise ValueError("fine-tuning needs a Keras model; a SavedModel cannot be trained here "
                       "(load the Keras model it was exported from)")
    inputs = np.asarray(inputs)
    if not len(inputs):  # pylint: disable=g-explicit-length-test
      raise ValueError("no inputs to distil on")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
    self.model = model
    self.inputs = inputs
    self.teacher = metrics_lib.predict(model, inputs, 256).astype(np.float32)
    self.student = apply.copy_and_values(model)[0]
    self.originals = [np.array(v.numpy()) for v in self.student.weights]
    self.kernels = models.model_kernels(self.student)
    self._tf = tf
    variables = self.student.trainable_variables

    @tf.function
    def step(x, y):
      with tf.GradientTape() as tape:
        out = self.student(x, training=False)  # normalisation statistics stay
        out = out[0] if isinstance(out, (list, tuple)) else out
        loss = tf.reduce_mean(tf.square(tf.cast(out, tf.float32) - y))
      return loss, tape.gradient(loss, variables)

    self._step = step

  def _reset(self):
    for variable, value in zip(self.student.weights, self.originals):
      variable.assign(value)

  def _specs(self, precision, method) -> dict[int, morphing.MorphSpec]:
    chosen = precision_map.check_morphing(method, precision)
    if isinstance(chosen, morphing.MorphSpec):
      return {i: chosen for i in range(len(self.kernels))}
    return precision_map.resolve(chosen, {i: k.names for i, k in enumerate(self.kernels)},
                                 what="kernel")

  def _assign_morphed(self, specs, masters):
    for i, spec in specs.items():
      grouping = {"reduction_axes": self.kernels[i].axes} if spec.method == "bitx" else {}
      self.kernels[i].variable.assign(backends.morph(masters[i], spec, **grouping))

  def run(self, precision, *, metric, method="fewest_ones", epochs=3, batch_size=32,
          learning_rate=3e-4, seed=0, keep_model=True) -> FinetuneResult:
    """Distils the copy for one map; see finetune(). keep_model=False leaves
    the result's model None (a search scoring many maps keeps no copies)."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    from mortar_tf.keras.compat import keras  # pylint: disable=import-outside-toplevel
    specs = self._specs(precision, method)
    self._reset()
    originals = {i: self.kernels[i].original for i in specs}
    self._assign_morphed(specs, originals)
    before = metric(self.student)
    plain = [np.array(v.numpy()) for v in self.student.weights]

    self._reset()
    variables = self.student.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate)
    rng = np.random.default_rng(seed)
    masters = dict(originals)
    losses = []
    for _ in range(epochs):
      order = rng.permutation(len(self.inputs))
      total, count = 0.0, 0
      for start in range(0, len(order), batch_size):
        pick = order[start:start + batch_size]
        self._assign_morphed(specs, masters)  # forward and backward at the morphed point
        loss, grads = self._step(self._tf.constant(self.inputs[pick]),
                                 self._tf.constant(self.teacher[pick]))
        for i, value in masters.items():  # the straight-through step lands on the masters
          self.kernels[i].variable.assign(value)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        masters = {i: np.array(self.kernels[i].variable.numpy()) for i in specs}
        total += float(loss) * len(pick)
        count += len(pick)
      losses.append(total / count)
    self._assign_morphed(specs, masters)
    after = metric(self.student)
    improved = metric.better(after, before)
    if not improved:
      for variable, value in zip(self.student.weights, plain):
        variable.assign(value)
    result = None
    if keep_model:
      from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
      result = apply.copy_and_values(self.student)[0]  # the caller's own copy
    return FinetuneResult(result, before, after, improved, tuple(losses))


def finetune(model, precision, inputs, *, metric, method="fewest_ones",
             epochs: int = 3, batch_size: int = 32, learning_rate: float = 3e-4,
             seed: int = 0) -> FinetuneResult:
  """Distils `model` morphed with `precision` (a P or a {pattern: P or
  MorphSpec} map) against its own original outputs on `inputs`.

  Args:
    model: a Keras model with its original weights (left as it is).
    precision: P for every kernel, or a map as morph_model takes it (None
      with a MorphSpec as `method`).
    inputs: unlabelled inputs to distil on (keep them apart from the data the
      metric scores, or the score flatters the result).
    metric: a Metric (e.g. builtin_metric(...) against the original).
    method: a method name (the one the map's numbers are P for), or a
      MorphSpec for every kernel.
    epochs, batch_size, learning_rate, seed: the training (Adam).

  Raises:
    ValueError: a SavedModel (it cannot be trained here), no inputs, or bad
      training settings.
  """
  return Distiller(model, inputs).run(precision, metric=metric, method=method, epochs=epochs,
                                      batch_size=batch_size, learning_rate=learning_rate,
                                      seed=seed)


def search_with_finetune(model, evaluate, budget: float, inputs, *, epochs: int = 2,
                         batch_size: int = 32, learning_rate: float = 3e-4, **search_kwargs):
  """search_precisions where each full evaluation distils the candidate map
  first (finetune), so the budget is met by the distilled models.

  Returns:
    (SearchResult, FinetuneResult of its map or None for an empty map).
  """
  from mortar_tf.explore import search  # pylint: disable=import-outside-toplevel
  metric = metrics_lib.as_metric(evaluate, search_kwargs.pop("higher_is_better", True))
  method = search_kwargs.get("method", "fewest_ones")
  cache = {}
  distiller = Distiller(model, inputs)

  def refine(precision_map):
    key = tuple(sorted(precision_map.items()))
    if key not in cache:
      cache[key] = distiller.run(precision_map, metric=metric, method=method, epochs=epochs,
                                 batch_size=batch_size, learning_rate=learning_rate,
                                 keep_model=False)
    result = cache[key]
    return max(result.before, result.after) if metric.higher_is_better else min(
        result.before, result.after)

  found = search.search_precisions(model, metric, budget, refine=refine, **search_kwargs)
  if not found.precisions:
    return found, None
  # The chosen map once more, keeping the model this time (same seed: same result).
  return found, distiller.run(dict(found.precisions), metric=metric, method=method,
                              epochs=epochs, batch_size=batch_size,
                              learning_rate=learning_rate)
