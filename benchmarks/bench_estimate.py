"""Time of `mortar_tf.estimator.estimate` on MobileNetV2- and ResNet50-size SavedModels.

The Keras applications are built with random weights (weights=None: nothing is
downloaded) and exported; the estimate is then timed in this process after
TensorFlow is imported, all five default engines, mortar on paper P=0.1.
Goals: < 3 s for MobileNetV2 (3.5M weights), < 15 s for ResNet50 (25.6M).
Printed with a baseline from the same run: reading every weight of the
checkpoint and copying it once (np.copy).

  python benchmarks/bench_estimate.py
  python benchmarks/bench_estimate.py --models=mobilenet_v2 --input_size=32 --alpha=0.35
"""

import os
import shutil
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

_MODELS = flags.DEFINE_list("models", ["mobilenet_v2", "resnet50"], "Keras applications.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 224, "Input height and width.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "MobileNetV2 width multiplier.")

GOALS = {"mobilenet_v2": 3.0, "resnet50": 15.0}


def _build(name, size):
  import keras  # pylint: disable=import-outside-toplevel
  shape = (size, size, 3)
  if name == "mobilenet_v2":
    return keras.applications.MobileNetV2(input_shape=shape, alpha=_ALPHA.value, weights=None)
  if name == "resnet50":
    return keras.applications.ResNet50(input_shape=shape, weights=None)
  raise app.UsageError(f"unknown model {name!r}")


def _read_and_copy(path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
  for key in reader.get_variable_to_shape_map():
    value = reader.get_tensor(key)
    if isinstance(value, np.ndarray):
      np.copy(value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # Keras' export logs each step at INFO
  from mortar_tf import estimator  # pylint: disable=import-outside-toplevel  (imports TF)
  root = tempfile.mkdtemp(prefix="bench_estimate_")
  try:
    for name in _MODELS.value:
      model = _build(name, _INPUT_SIZE.value)
      path = os.path.join(root, name)
      model.export(path, verbose=False)
      weights = model.count_params()
      start = time.perf_counter()
      _read_and_copy(path)
      baseline = time.perf_counter() - start
      start = time.perf_counter()
      result = estimator.estimate(path, input_shape=(1, _INPUT_SIZE.value, _INPUT_SIZE.value, 3))
      seconds = time.perf_counter() - start
      head = result.headline()
      print(f"{name}: {weights / 1e6:.1f}M weights, {len(result.mapped)} layers estimated, "
            f"{len(result.unmapped)} not; estimate {seconds:.2f} s "
            f"(goal < {GOALS.get(name, float('nan')):g} s at full size) = "
            f"{seconds / baseline:.1f}x read+copy ratio; mortar (morphed) "
            f"{head['over_stripes']:.3f}x over stripes, {head['over_unmorphed']:.3f}x over "
            f"mortar (original)")
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
