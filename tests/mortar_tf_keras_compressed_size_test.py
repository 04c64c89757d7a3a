"""MortarCallback's measured compressed size (logs and TensorBoard); run under
Keras 3 and, via scripts/test.sh, tf_keras.

Reference: zlib level 9 run here on each kernel's float32 bytes alone, the
morph by the numpy reference.
"""

import glob
import zlib

import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf.keras import MortarCallback
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

SUFFIX = ".keras" if IS_KERAS3 else ".h5"


def _zlib(arrays):
  return sum(len(zlib.compress(np.asarray(a).astype("<f4").tobytes(), 9)) for a in arrays)


def _model():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, name="conv"),
                            keras.layers.Flatten(name="flat"), keras.layers.Dense(2, name="fc")])
  model.compile(optimizer="sgd", loss="mse")
  return model


def test_logs_and_tensorboard_carry_the_measured_compressed_size(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 6, 6, 1)).astype(np.float32)
  y = rng.standard_normal((16, 2)).astype(np.float32)
  model = _model()
  callback = MortarCallback(str(tmp_path / ("m-{epoch}" + SUFFIX)), "fewest_ones",
                            precision=0.1, log_dir=str(tmp_path / "logs"), log_compressed=True)
  history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                      callbacks=[callback])
  # The last save morphed the kernels as they are now (nothing trains after it).
  kernels = {n: model.get_layer(n).weights[0].numpy() for n in ("conv", "fc")}
  morphed = {n: mortar_tf.morph(k, "fewest_ones", 0.1, backend="numpy")
             for n, k in kernels.items()}
  expected = _zlib(kernels.values()) / _zlib(morphed.values())
  assert expected > 1.0
  assert len(history.history["mortar_ratio_compressed"]) == 2
  assert history.history["mortar_ratio_compressed"][-1] == pytest.approx(expected, rel=1e-12)
  assert callback.last_ratios["compressed"] == pytest.approx(expected, rel=1e-12)

  events = glob.glob(str(tmp_path / "logs" / "train" / "events.out.tfevents.*"))
  scalars = {}
  for path in events:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag.endswith("/morphed"):  # the histograms
          continue
        scalars.setdefault(value.tag, {})[event.step] = float(
            tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
  last = max(scalars["mortar/total/ratio_compressed"])
  assert scalars["mortar/total/ratio_compressed"][last] == pytest.approx(expected, rel=1e-6)
  assert scalars["mortar/total/compressed_bytes"][last] == _zlib(morphed.values())
  for name, kernel in kernels.items():
    assert scalars[f"mortar/{name}/kernel/ratio_compressed"][last] == pytest.approx(
        _zlib([kernel]) / _zlib([morphed[name]]), rel=1e-6)


def test_by_default_the_callback_does_not_compress_to_measure(tmp_path, monkeypatch):
  """Measuring is opt-in (it costs more than a save on large models): the
  default callback never calls zlib and logs no compressed figure."""
  import zlib  # pylint: disable=import-outside-toplevel
  calls = []
  real = zlib.compressobj
  monkeypatch.setattr(zlib, "compressobj", lambda *a, **k: calls.append(a) or real(*a, **k))
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 6, 6, 1)).astype(np.float32)
  y = rng.standard_normal((16, 2)).astype(np.float32)
  callback = MortarCallback(str(tmp_path / ("m-{epoch}" + SUFFIX)), "fewest_ones", precision=0.1)
  history = _model().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
  assert "mortar_ratio_compressed" not in history.history and "mortar_ratio_word" in history.history
  assert "compressed" not in callback.last_ratios and not calls
