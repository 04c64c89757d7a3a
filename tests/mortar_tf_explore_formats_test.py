"""The results page's formats section (mortar_tf.explore.formats): morphing
beside a float16 cast and TFLite's dynamic-range int8.

Every figure is checked against an independent computation: zlib.compress of
the bytes as stored, SPEC's plain-loop morph, the model's score with the
float16 values set by Keras' own set_weights, and TFLite's interpreter run by
the test on a file converted by the test.
"""

import zlib

import numpy as np
import pytest
import tensorflow as tf

import keras_zoo
import spec_reference
from mortar_tf import compression
from mortar_tf import tflite
from mortar_tf.explore import formats
from mortar_tf.explore import metrics
from mortar_tf.explore import models

keras = keras_zoo.keras


def _cnn():
  keras.utils.set_random_seed(3)
  return keras.Sequential([
      keras.Input((12, 12, 1)),
      keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
      keras.layers.Flatten(),
      keras.layers.Dense(40, activation="relu", name="fc1"),  # 32,000 weights: quantized
      keras.layers.Dense(5, name="fc2")])                      # 200: TFLite keeps it float32


@pytest.fixture(scope="module")
def setup():
  model = _cnn()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 12, 12, 1)).astype(np.float32)
  # mse against the original's outputs: any change of any output shows.
  metric = metrics.builtin_metric("mse", model, {"x": x})
  kernels = models.model_kernels(model)
  search = {"method": "paper", "precisions": {"conv": 0.1},
            "point": {"metric": 0.25},
            "best_global": {"method": "paper", "settings": {"precision": 0.3}, "metric": 0.5}}
  before = [np.array(w) for w in model.get_weights()]
  section = formats.formats_section(model, metric, kernels, search)
  return {"model": model, "x": x, "section": section, "before": before,
          "rows": {r["name"]: r for r in section["rows"]}}


def _kernels(model):
  return {w.path if hasattr(w, "path") else w.name: np.asarray(w.numpy())
          for w in model.weights if keras_zoo.is_kernel(w)}


def _zlib(a):
  return len(zlib.compress(np.ascontiguousarray(a).tobytes(), 9))


def test_the_rows_are_every_format_in_order(setup):
  assert [r["name"] for r in setup["section"]["rows"]] == [
      "float32", "searched", "global", "float16", "int8"]
  assert setup["section"]["version"] == formats.FORMATS_VERSION


def test_float32_and_morphed_bytes_are_zlib_of_the_kernels_as_stored(setup):
  model, rows = setup["model"], setup["rows"]
  kernels = _kernels(model)
  original = sum(_zlib(k) for k in kernels.values())
  assert rows["float32"]["zlib_bytes"] == original
  assert rows["float32"]["compressed_x"] == 1.0
  assert rows["float32"]["raw_bytes"] == 4 * sum(k.size for k in kernels.values())
  # The searched map morphs conv alone; the global row every kernel (SPEC's loop).
  morph = np.vectorize(lambda v, p: spec_reference.paper(np.float32(v), p), otypes=[np.float32])
  searched = sum(_zlib(morph(k, 0.1)) if "conv" in name else _zlib(k)
                 for name, k in kernels.items())
  everywhere = sum(_zlib(morph(k, 0.3)) for k in kernels.values())
  assert rows["searched"]["zlib_bytes"] == searched
  assert rows["global"]["zlib_bytes"] == everywhere
  assert rows["searched"]["compressed_x"] == pytest.approx(original / searched)
  assert rows["searched"]["morphed_kernels"] == 1
  # Scores are the search's own, drops from the original measured here (mse 0).
  assert rows["float32"]["metric"] == 0.0
  assert rows["searched"]["metric"] == 0.25
  assert rows["global"]["drop"] == 0.5
  assert rows["global"]["label"] == "morphed: paper P=0.3 everywhere"


def test_float16_is_scored_with_half_values_and_measured_at_two_bytes(setup):
  model, rows, x = setup["model"], setup["rows"], setup["x"]
  reference = np.float64(model.predict(x, batch_size=256, verbose=0))
  clone = keras.models.clone_model(model)
  clone.set_weights([w.astype(np.float16).astype(np.float32) if w.ndim > 1 else w
                     for w in model.get_weights()])
  expected = float(np.mean((np.float64(clone.predict(x, batch_size=256, verbose=0))
                            - reference) ** 2))
  assert expected > 0  # the cast changes the outputs
  assert rows["float16"]["metric"] == pytest.approx(expected, rel=1e-6)
  kernels = _kernels(model)
  assert rows["float16"]["zlib_bytes"] == sum(_zlib(k.astype(np.float16))
                                              for k in kernels.values())
  assert rows["float16"]["raw_bytes"] == 2 * sum(k.size for k in kernels.values())
  assert rows["float16"]["overflow"] == 0


def test_the_models_weights_are_restored_bit_for_bit(setup):
  after = setup["model"].get_weights()
  assert len(after) == len(setup["before"])
  for a, b in zip(after, setup["before"]):
    assert a.tobytes() == b.tobytes()


def test_int8_is_tflites_own_file_run_by_its_interpreter(setup, tmp_path):
  model, rows, x = setup["model"], setup["rows"], setup["x"]
  row = rows["int8"]
  # Convert and run independently of formats.py.
  path = str(tmp_path / "saved")
  if keras_zoo.IS_KERAS3:
    model.export(path, verbose=False)
  else:
    tf.saved_model.save(model, path)
  converter = tf.lite.TFLiteConverter.from_saved_model(path)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  blob = converter.convert()
  runner = tf.lite.Interpreter(model_content=blob).get_signature_runner()
  (name,), (out,) = list(runner.get_input_details()), list(runner.get_output_details())
  predicted = np.float64(runner(**{name: x})[out])  # one batch, as the metric runs it
  reference = np.float64(model.predict(x, batch_size=256, verbose=0))
  expected = float(np.mean((predicted - reference) ** 2))
  assert expected > 0
  assert row["metric"] == pytest.approx(expected, rel=1e-6)
  assert row["file_bytes"] == len(blob)
  assert row["file_gzip_bytes"] == len(zlib.compress(blob, 9)) + 12  # gzip: 18 - zlib's 6
  # fc1 (32,000 weights) is int8; conv (72) and fc2 (200) stay float32.
  assert row["int8_weights"] == 32000 and row["float32_weights"] == 72 + 200
  file = tmp_path / "m.tflite"
  file.write_bytes(blob)
  (quantized,) = tflite.quantized_weights(str(file))
  fc1 = _kernels(model)[next(n for n in _kernels(model) if "fc1" in n)]
  assert quantized.value.dtype == np.int8 and quantized.value.shape == (40, 800)
  # Symmetric per-channel: value * scale is within half a step of the kernel.
  restored = quantized.value.astype(np.float32) * quantized.scales[:, None]
  assert np.all(np.abs(restored - fc1.T) <= quantized.scales[:, None] / 2 * (1 + 1e-5))
  floats, _ = tflite.read_weights(str(file))
  expected = (_zlib(quantized.value) + _zlib(quantized.scales)
              + sum(_zlib(w.value) for w in floats))
  assert row["zlib_bytes"] == expected


def test_stored_zlib_size_is_zlib_of_the_little_endian_bytes():
  rng = np.random.default_rng(1)
  for array in (rng.normal(size=3000).astype(np.float16), np.arange(-128, 128, dtype=np.int8),
                # few distinct values: the byte order changes the compressed size
                ((rng.normal(size=(40, 50)) * 8).round() / 8).astype(">f4"),
                rng.normal(size=(5, 5)).T.astype("f4")):
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    assert compression.stored_zlib_size(array) == len(zlib.compress(little.tobytes(), 9))
  with pytest.raises(TypeError, match="numeric"):
    compression.stored_zlib_size(np.array(["a"]))


def test_a_model_tflite_cannot_convert_gets_an_error_row_not_a_crash(monkeypatch):
  model = _cnn()
  x = np.zeros((4, 12, 12, 1), np.float32)
  metric = metrics.builtin_metric("mse", model, {"x": x})

  def refuse(*args, **kwargs):
    raise RuntimeError("unsupported op: MysteryOp\nmore lines")
  monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", refuse)
  section = formats.formats_section(model, metric, models.model_kernels(model), None)
  assert [r["name"] for r in section["rows"]] == ["float32", "float16", "int8"]
  assert section["rows"][-1]["error"] == "TFLite could not convert it: unsupported op: MysteryOp"
