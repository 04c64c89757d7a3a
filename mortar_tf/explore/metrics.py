"""Metrics for exploration: a user function, or a built-in one over labelled data.

A Metric pairs `evaluate(model) -> float` with its direction. Built-ins run
`model.predict` on the inputs of an .npz (or arrays) in batches:
  accuracy   top-1 accuracy against the labels (higher is better)
  agreement  top-1 agreement with the original model's predictions (higher)
  mse        mean squared difference to the original outputs (lower)
  psnr       peak signal-to-noise ratio to the original outputs, in dB, capped
             at 300 dB (identical outputs) (higher)

Example:
  >>> m = Metric("score", lambda model: 0.5, higher_is_better=True)
  >>> m.drop(1.0, 0.75)
  0.25
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from mortar_tf import files

BUILTIN = ("accuracy", "agreement", "mse", "psnr")
# Identical outputs have infinite PSNR; a cap keeps drops and JSON finite.
PSNR_CAP = 300.0


@dataclasses.dataclass(frozen=True)
class Metric:
  """A model score and which way is better.

  Attributes:
    name: how reports name it.
    evaluate: model -> float.
    higher_is_better: the direction.
    inputs: the inputs a built-in metric runs the model on (the search takes
      its calibration subset from them), or None.
  """
  name: str
  evaluate: Callable[[object], float]
  higher_is_better: bool = True
  inputs: object = dataclasses.field(default=None, repr=False, compare=False)

  def __call__(self, model) -> float:
    value = self.evaluate(model)
    try:
      value = float(value)
    except (TypeError, ValueError):
      raise ValueError(f"metric {self.name!r} returned {value!r}, not a number") from None
    if math.isnan(value):
      raise ValueError(f"metric {self.name!r} returned NaN; a score must be a number "
                       "(check the model's outputs and the data)")
    return value

  def drop(self, original: float, value: float) -> float:
    """How much worse `value` is than `original` (negative: better)."""
    return original - value if self.higher_is_better else value - original

  def better(self, a: float, b: float) -> bool:
    return a > b if self.higher_is_better else a < b


def as_metric(evaluate, higher_is_better) -> Metric:
  """`evaluate` itself when a Metric, else a Metric of the callable model ->
  float (named after it) with the direction `higher_is_better`."""
  if isinstance(evaluate, Metric):
    return evaluate
  if not callable(evaluate):
    raise TypeError("evaluate must be a Metric or a callable model -> float")
  return Metric(getattr(evaluate, "__name__", "metric"), evaluate, higher_is_better)


def load_npz(path: str, x_key: str = "x", y_key: str | None = "y") -> dict[str, np.ndarray]:
  """{"x": inputs, "y": labels or absent} from an .npz, naming missing arrays.

  Raises:
    ValueError: a missing or unreadable file, or absent arrays.
  """
  arrays = files.read_npz(path, "data file")
  wanted = [k for k in (x_key, y_key) if k is not None]
  missing = [k for k in wanted if k not in arrays]
  if missing:
    raise ValueError(f"{path!r} has no array {missing}; it holds {sorted(arrays)}")
  out = {"x": arrays[x_key]}
  if y_key is not None:
    out["y"] = arrays[y_key]
    if len(out["y"]) != len(out["x"]):
      raise ValueError(f"{path!r}: {len(out['x'])} inputs but {len(out['y'])} labels")
  return out


def predict(model, x, batch_size: int = 256, strategy=None) -> np.ndarray:
  """The model's outputs on `x` (float64), batch by batch.

  With a tf.distribute `strategy` (MirroredStrategy over local devices,
  MultiWorkerMirroredStrategy over machines), each batch is split across its
  replicas (data parallel) and the parts are put back in order: the same
  outputs as one device. The model's variables are read where they live (a
  model built outside the strategy's scope works).
  """
  if strategy is None:
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import models  # pylint: disable=import-outside-toplevel
  if isinstance(model, models.LoadedSavedModel):
    forward = model.forward
  else:
    def forward(batch):
      return model(batch, training=False)
  replicas = strategy.num_replicas_in_sync
  # Keras divides a global batch by the replicas: keep it a multiple.
  global_batch = max(replicas, batch_size - batch_size % replicas)
  dataset = tf.data.Dataset.from_tensor_slices(np.asarray(x)).batch(global_batch)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  dataset = strategy.experimental_distribute_dataset(dataset.with_options(options))

  @tf.function
  def step(batch):
    return strategy.run(forward, args=(batch,))

  parts = []
  for batch in dataset:
    local = strategy.experimental_local_results(step(batch))
    parts.extend(np.asarray(p) for p in local if np.asarray(p).shape[0])
  if not parts:
    return np.zeros((0,))
  return np.concatenate(parts).astype(np.float64)


def builtin_metric(name: str, model, data: Mapping[str, np.ndarray],
                   batch_size: int = 256, strategy=None) -> Metric:
  """A built-in Metric over `data` ({"x": ..., "y": ...}); `model` is the
  original, whose outputs agreement, mse and psnr compare against. With a
  tf.distribute `strategy`, every prediction runs data parallel (predict).

  Raises:
    ValueError: an unknown metric, or labels missing for accuracy.
  """
  if name not in BUILTIN:
    raise ValueError(f"unknown metric {name!r}; built-in metrics: {', '.join(BUILTIN)}")
  x = data["x"]

  def _predict(m, inputs, size):
    return predict(m, inputs, size, strategy)

  if name == "accuracy":
    if data.get("y") is None:
      raise ValueError("the accuracy metric needs labels (y)")
    y = np.asarray(data["y"]).reshape(-1)
    if y.size != len(x):
      raise ValueError(f"{len(x)} inputs but {y.size} labels")
    return Metric("accuracy", lambda m: float(np.mean(np.argmax(_predict(m, x, batch_size),
                                                                 -1) == y)), inputs=x)
  reference = _predict(model, x, batch_size)
  if name == "agreement":
    top = np.argmax(reference, -1)
    return Metric("agreement", lambda m: float(np.mean(np.argmax(_predict(m, x, batch_size),
                                                                  -1) == top)), inputs=x)
  if name == "mse":
    return Metric("mse", lambda m: float(np.mean((_predict(m, x, batch_size) - reference) ** 2)),
                  higher_is_better=False, inputs=x)
  peak = float(np.max(np.abs(reference))) or 1.0

  def _psnr(m):
    mse = float(np.mean((_predict(m, x, batch_size) - reference) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(peak * peak / mse))

  return Metric("psnr", _psnr, inputs=x)
