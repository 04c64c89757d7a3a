"""Overhead of MortarCallback on the fit of a small CNN (Fashion-MNIST-sized random data),
and the cost of one save by the two routes a callback could take.

1. Times the same fit without and with the callback (saving a morphed .keras
   copy every epoch) in one run and prints the ratio.
2. On a keras.applications model, times one save in place (morph the kernels
   in the model, save it, restore them: what MortarCallback does) against one
   save through a clone (a fresh model with morphed kernels, what
   strip_morphing does), and prints the ratio clone / in place.

Not asserted anywhere.

  .venv/bin/python benchmarks/bench_callback.py [--epochs=3] [--samples=4096] \
      [--model=ResNet50] [--input_size=64] [--repeats=3]
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from mortar_tf.keras import MortarCallback
from mortar_tf.keras import apply
from mortar_tf.keras import saving
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras
import timing

_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per fit.")
_SAMPLES = flags.DEFINE_integer("samples", 4096, "Training samples (28x28x1).")
_MODEL = flags.DEFINE_string("model", "ResNet50", "keras.applications model for the save routes.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 64, "Its input height and width.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Saves per route (median).")


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
  _save_routes()


def _save_routes():
  """One save in place against one save through a clone, on a real architecture."""
  size = _INPUT_SIZE.value
  model = getattr(keras.applications, _MODEL.value)(weights=None, input_shape=(size, size, 3),
                                                     classes=10)
  suffix = ".keras" if IS_KERAS3 else ".h5"
  with tempfile.TemporaryDirectory() as d:
    callback = MortarCallback(os.path.join(d, "m" + suffix), "paper", precision=0.1)
    callback.set_model(model)
    path = os.path.join(d, "m" + suffix)
    in_place = timing.median_seconds(lambda: callback._save_in_place(path),  # pylint: disable=protected-access
                                     _REPEATS.value, warmup=True)

    def clone():
      copy, _ = apply.copy_and_values(model, callback.specs)
      saving.write_model(copy, path, "keras")

    cloned = timing.median_seconds(clone, _REPEATS.value, warmup=True)
  print(f"one save of {_MODEL.value} ({model.count_params() / 1e6:.1f}M weights, "
        f"{len(callback.specs)} kernels): {in_place:.2f} s in place (morph, save, restore), "
        f"{cloned:.2f} s through a clone: ratio clone / in place {cloned / in_place:.2f}")


if __name__ == "__main__":
  app.run(main)
