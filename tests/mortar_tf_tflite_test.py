"""The deployed artifact keeps its bits: a morphed Keras model converted to
TFLite (float32, no optimisation) ships the morphed kernels bit for bit, in
TFLite's layouts; TFLite's own BatchNorm folding breaks that unless folded
first. mortar-analyze reads what a .tflite file ships.

References: the numpy mortar_tf.morph of the Keras kernels, rearranged by
hand into TFLite's documented layouts.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import analyze
from mortar_tf import tflite
from mortar_tf.keras import fold_batchnorm
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing

import installed_tool


def _model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
  x = keras.layers.Conv2DTranspose(2, 2, name="up")(x)
  x = keras.layers.Flatten()(x)
  model = keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if layer.weights:
      layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                         if "variance" in w.name else
                         rng.standard_normal(w.shape).astype(np.float32)
                         for w in layer.weights])
  return model


def _tflite(model, path):
  data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
  path.write_bytes(data)
  return str(path)


def _as_shipped(name, kernel):
  """A Keras kernel rearranged into TFLite's layout for its op."""
  if name == "conv":  # [h, w, in, out] -> [out, h, w, in]
    return np.transpose(kernel, (3, 0, 1, 2))
  if name == "dw":  # [h, w, c, m] -> [1, h, w, c * m]
    return kernel.reshape((1,) + kernel.shape[:2] + (-1,))
  if name == "up":  # [h, w, out, in] -> [out, h, w, in]
    return np.transpose(kernel, (2, 0, 1, 3))
  return kernel.T  # dense [in, out] -> [out, in]


def _u32(a):
  return np.ascontiguousarray(a, np.float32).view(np.uint32)


def test_morphed_kernels_ship_bit_for_bit_when_bn_is_folded_first(tmp_path):
  model = fold_batchnorm(_model())  # TFLite would fold BN into the conv after morphing
  morphed = strip_morphing(morph_model(model, "fewest_ones", precision=0.1))
  path = _tflite(morphed, tmp_path / "m.tflite")
  shipped, skipped = tflite.read_weights(path)
  assert not skipped and {w.op for w in shipped} == {"CONV_2D", "DEPTHWISE_CONV_2D",
                                                     "TRANSPOSE_CONV", "FULLY_CONNECTED"}
  values = [w.value for w in shipped]
  for name in ("conv", "dw", "up", "fc"):
    want = _as_shipped(name, mortar_tf.morph(model.get_layer(name).weights[0].numpy(),
                                             "fewest_ones", 0.1, backend="numpy"))
    assert any(v.shape == want.shape and np.array_equal(_u32(v), _u32(want)) for v in values), name


def test_tflite_folding_batchnorm_after_morphing_undoes_the_morph(tmp_path):
  model = _model()
  morphed = strip_morphing(morph_model(model, "fewest_ones", precision=0.1))
  path = _tflite(morphed, tmp_path / "m.tflite")
  (conv,) = [w for w in tflite.read_weights(path)[0] if w.op == "CONV_2D"]
  want = _as_shipped("conv", morphed.get_layer("conv").kernel.numpy())
  assert not np.array_equal(_u32(conv.value), _u32(want))  # scaled by gamma / sigma
  ones = lambda a: mortar_tf.count_ones(a, "word", backend="numpy")  # pylint: disable=unnecessary-lambda-assignment
  assert ones(conv.value) > 1.3 * ones(want)  # the scaling fills the cleared bits again


def test_mortar_analyze_reports_what_a_tflite_file_ships(tmp_path):
  model = fold_batchnorm(_model())
  path = _tflite(model, tmp_path / "m.tflite")
  loaded = analyze.load_weights(path)
  assert loaded.kind == "tflite" and len(loaded.weights) == 4
  (name,) = [n for n, v in loaded.weights.items() if v.ndim == 4 and v.shape[0] == 4
             and v.shape[-1] == 3]
  assert loaded.groupings[name] == {"reduction_axes": (1, 2, 3)}
  want = _as_shipped("conv", model.get_layer("conv").kernel.numpy())
  assert mortar_tf.count_ones(loaded.weights[name], "aligned", reduction_axes=(1, 2, 3)) == \
      mortar_tf.count_ones(want, "aligned", reduction_axes=(1, 2, 3), backend="numpy")
  result = installed_tool.run("mortar-analyze", f"--model={path}", "--methods=paper",
                              "--precisions=0.1")
  assert result.returncode == 0, result.stderr
  assert "(tflite): 4 weight tensors" in result.stdout


def test_a_file_that_is_not_tflite_is_named(tmp_path):
  (tmp_path / "x.tflite").write_bytes(b"not a flatbuffer")
  with pytest.raises(ValueError, match="cannot read .*x.tflite.* as a TFLite model"):
    tflite.read_weights(str(tmp_path / "x.tflite"))
