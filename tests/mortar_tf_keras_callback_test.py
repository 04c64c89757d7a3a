"""MortarCallback in model.fit; run under Keras 3 and, via scripts/test.sh, tf_keras."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf.keras import MortarCallback
from mortar_tf.keras import morph_model
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

layers = keras.layers
SUFFIX = ".keras" if IS_KERAS3 else ".h5"


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


def _model():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(3, 3, name="conv"),
                            layers.Flatten(name="flat"), layers.Dense(2, name="fc")])
  model.compile(optimizer="sgd", loss="mse")
  return model


def _data():
  rng = np.random.default_rng(0)
  return (rng.standard_normal((16, 6, 6, 1)).astype(np.float32),
          rng.standard_normal((16, 2)).astype(np.float32))


def _fit(model, callbacks, epochs=2):
  x, y = _data()
  return model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
                   callbacks=callbacks)


@pytest.fixture(autouse=True)
def _deterministic():
  tf.config.experimental.enable_op_determinism()


def test_saves_morphed_copies_and_leaves_training_untouched(tmp_path):
  pattern = str(tmp_path / ("m-{epoch}" + SUFFIX))
  model = _model()
  history = _fit(model, [MortarCallback(pattern, "fewest_ones", precision=0.1)])
  plain = _model()
  _fit(plain, [])
  for a, b in zip(model.get_weights(), plain.get_weights()):
    np.testing.assert_array_equal(u32(a), u32(b))  # the callback changed nothing
  assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "m-*"))) == [
      "m-1" + SUFFIX, "m-2" + SUFFIX]
  saved = keras.models.load_model(str(tmp_path / ("m-2" + SUFFIX)), compile=False)
  for name in ("conv", "fc"):
    kernel = model.get_layer(name).weights[0].numpy()
    np.testing.assert_array_equal(u32(saved.get_layer(name).weights[0].numpy()),
                                  u32(mortar_tf.morph(kernel, "fewest_ones", 0.1,
                                                      backend="numpy")))
    np.testing.assert_array_equal(u32(saved.get_layer(name).weights[1].numpy()),
                                  u32(model.get_layer(name).weights[1].numpy()))
  for key in ("mortar_ratio_significand", "mortar_ratio_word", "mortar_ratio_aligned"):
    assert len(history.history[key]) == 2 and history.history[key][-1] > 1.0
  kernels = [model.get_layer(n).weights[0].numpy() for n in ("conv", "fc")]
  morphed = [mortar_tf.morph(k, "fewest_ones", 0.1, backend="numpy") for k in kernels]
  word_before = sum(mortar_tf.count_ones(k, "word", backend="numpy") for k in kernels)
  word_after = sum(mortar_tf.count_ones(k, "word", backend="numpy") for k in morphed)
  assert history.history["mortar_ratio_word"][-1] == pytest.approx(word_before / word_after)


def test_wrapped_model_saves_the_stripped_model(tmp_path):
  model = morph_model(_model(), "paper", precision=0.2)
  model.compile(optimizer="sgd", loss="mse")
  path = str(tmp_path / ("w" + SUFFIX))
  _fit(model, [MortarCallback(path, "round", keep_bits=1)], epochs=1)
  saved = keras.models.load_model(path, compile=False)
  assert [type(l).__name__ for l in saved.layers] == ["Conv2D", "Flatten", "Dense"]
  master = model.get_layer("morph_conv").layer.weights[0].numpy()
  # the wrappers' method (paper), applied once: not the callback's round
  np.testing.assert_array_equal(u32(saved.get_layer("conv").weights[0].numpy()),
                                u32(mortar_tf.morph(master, "paper", 0.2, backend="numpy")))


def test_save_every_n_batches_savedmodel_and_tensorboard(tmp_path):
  pattern = str(tmp_path / "sm-{epoch}-{batch}")
  callback = MortarCallback(pattern, "paper", precision=0.1, save_freq=3, format="savedmodel",
                            log_dir=str(tmp_path / "logs"))
  _fit(_model(), [callback], epochs=2)  # 2 batches an epoch: batch 3 overall is epoch 2, batch 1
  saved = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "sm-*")))
  assert saved == ["sm-2-1"]
  assert os.path.isfile(tmp_path / "sm-2-1" / "saved_model.pb")
  events = glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))
  assert events
  tags = {value.tag for path in events for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value}
  assert {"mortar/conv/kernel/ratio_word", "mortar/fc/kernel/ratio_aligned",
          "mortar/conv/kernel/morphed"} <= tags
  assert not glob.glob(str(tmp_path / ".mortar-*"))  # no staging left behind


@pytest.mark.parametrize("kwargs,match", [
    (dict(save_freq=0), "save_freq"), (dict(save_freq="batch"), "save_freq"),
    (dict(format="onnx"), "format"), (dict(precision=2.0), "precision"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MortarCallback("/tmp/x.keras", **kwargs)


def test_callback_folds_batchnorm_before_morphing(tmp_path):
  keras.utils.set_random_seed(1)
  model = keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(3, 3, name="conv"),
                            layers.BatchNormalization(name="bn"), layers.Flatten(),
                            layers.Dense(2, name="fc")])
  model.compile(optimizer="sgd", loss="mse")
  path = str(tmp_path / ("f" + SUFFIX))
  _fit(model, [MortarCallback(path, "paper", precision=0.1, fold_batchnorm=True)], epochs=1)
  from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
  saved = keras.models.load_model(path, compile=False,
                                  custom_objects={"FoldedBatchNorm": apply.FoldedBatchNorm})
  assert type(saved.get_layer("bn")).__name__ == "FoldedBatchNorm"
  gamma, beta, mean, var = (w.numpy().astype(np.float64) for w in model.get_layer("bn").weights)
  scale = gamma / np.sqrt(var + model.get_layer("bn").epsilon)
  folded = (model.get_layer("conv").weights[0].numpy() * scale).astype(np.float32)
  np.testing.assert_array_equal(u32(saved.get_layer("conv").weights[0].numpy()),
                                u32(mortar_tf.morph(folded, "paper", 0.1, backend="numpy")))


def test_a_per_layer_precision_map_morphs_only_its_layers(tmp_path):
  path = str(tmp_path / ("p" + SUFFIX))
  model = _model()
  _fit(model, [MortarCallback(path, "paper", precision={"conv": 0.3})], epochs=1)
  saved = keras.models.load_model(path, compile=False)
  conv = model.get_layer("conv").weights[0].numpy()
  np.testing.assert_array_equal(u32(saved.get_layer("conv").weights[0].numpy()),
                                u32(mortar_tf.morph(conv, "paper", 0.3, backend="numpy")))
  np.testing.assert_array_equal(u32(saved.get_layer("fc").weights[0].numpy()),
                                u32(model.get_layer("fc").weights[0].numpy()))
  with pytest.raises(ValueError, match="precision"):
    MortarCallback(path, "paper", precision={"conv": 2.0})
