"""Overhead of MortarCallback on the fit of a small CNN (Fashion-MNIST-sized random data).

Times the same fit without and with the callback (saving a morphed .keras copy
every epoch) in one run and prints the ratio. Not asserted anywhere.

  .venv/bin/python benchmarks/bench_callback.py [--epochs=3] [--samples=4096]
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from mortar_tf.keras import MortarCallback
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per fit.")
_SAMPLES = flags.DEFINE_integer("samples", 4096, "Training samples (28x28x1).")


def _fit(callbacks):
  keras.utils.set_random_seed(0)
  model = keras.Sequential([
      keras.Input((28, 28, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
      keras.layers.MaxPooling2D(), keras.layers.Conv2D(32, 3, activation="relu"),
      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
  model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x = rng.standard_normal((_SAMPLES.value, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, _SAMPLES.value)
  start = time.perf_counter()
  model.fit(x, y, batch_size=64, epochs=_EPOCHS.value, verbose=0, callbacks=callbacks)
  return time.perf_counter() - start


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  _fit([])  # warm up TF
  plain = _fit([])
  with tempfile.TemporaryDirectory() as d:
    suffix = ".keras" if IS_KERAS3 else ".h5"
    path = os.path.join(d, "m-{epoch}" + suffix)
    with_callback = _fit([MortarCallback(path, "fewest_ones", precision=0.1)])
  print(f"fit {_EPOCHS.value} epochs x {_SAMPLES.value} samples: {plain:.2f} s without, "
        f"{with_callback:.2f} s with MortarCallback (save every epoch): "
        f"ratio {with_callback / plain:.3f}")


if __name__ == "__main__":
  app.run(main)
