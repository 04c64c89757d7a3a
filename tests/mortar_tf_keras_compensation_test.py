"""Compensated morphing of Keras models (SPEC 6): the invariants on a model with
every compensated kind (Conv2D into a BatchNormalization, DepthwiseConv2D,
SeparableConv2D, Dense with and without bias), on Keras 3 and tf_keras."""

import os

import numpy as np
import pytest

from mortar_tf import morphing
from mortar_tf.keras import Calibration
from mortar_tf.keras import compensate_model
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing
from mortar_tf.keras.compat import keras

import installed_tool

SPEC = morphing.MorphSpec("fewest_ones", 0.1)


def _model():
  keras.utils.set_random_seed(0)
  layers = keras.layers
  x = keras.Input((12, 12, 3), name="image")
  y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(x)
  y = layers.BatchNormalization(name="bn")(y)
  y = layers.ReLU()(y)
  y = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw")(y)
  y = layers.ReLU()(y)
  y = layers.SeparableConv2D(12, 3, padding="valid", activation="relu", name="sep")(y)
  y = layers.GlobalAveragePooling2D()(y)
  y = layers.Dense(10, use_bias=False, activation="relu", name="hidden")(y)
  y = layers.Dense(5, name="head")(y)
  model = keras.Model(x, y)
  rng = np.random.default_rng(0)
  bn = model.get_layer("bn")
  bn.moving_mean.assign(rng.normal(size=8).astype(np.float32) * 0.1)
  bn.moving_variance.assign(rng.uniform(0.5, 2, size=8).astype(np.float32))
  return model


def _inputs(n, seed):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, 12, 12, 3)).astype(np.float32)
  return base + np.float32(0.5)  # an offset, so the output shifts are not zero by symmetry


def _snapshot(model):
  return [np.array(w.numpy()) for w in model.weights]


def _bits(a):
  return np.asarray(a, np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def done():
  model = _model()
  before = _snapshot(model)
  copy, result = compensate_model(model, SPEC, calibration=_inputs(64, 1))
  return model, before, copy, result


def test_every_kind_is_compensated_and_each_value_is_the_methods_morph(done):
  model, _, copy, result = done
  assert result.plain == {}
  assert sorted(result.results) == ["conv/kernel", "dw/kernel" if keras.__version__[0] == "3"
                                    else "dw/depthwise_kernel", "head/kernel", "hidden/kernel",
                                    "sep/depthwise_kernel", "sep/pointwise_kernel"]
  for source, new in zip(model.weights, copy.weights):
    if id(source) in result.premorph:
      np.testing.assert_array_equal(
          _bits(new.numpy()), _bits(morphing.morph_numpy(result.premorph[id(source)], SPEC)))


def test_other_variables_are_copied_bit_for_bit_and_the_source_is_unchanged(done):
  model, before, copy, result = done
  for value, source, new in zip(before, model.weights, copy.weights):
    np.testing.assert_array_equal(_bits(source.numpy()), _bits(value))
    if id(source) not in result.values:
      np.testing.assert_array_equal(_bits(new.numpy()), _bits(value))
  changed = {model.weights[i].name for i in range(len(before)) if id(model.weights[i])
             in result.values and not np.array_equal(result.values[id(model.weights[i])],
                                                      before[i])}
  assert any("moving_mean" in n for n in changed)  # the conv's shift went to the BN
  assert result.corrected["hidden/kernel"].startswith("no bias")


def _linear_outputs(model, name, x):
  """The layer's output before its activation, on its input in `model`."""
  layer = model.get_layer(name)
  feed = keras.Model(model.inputs, layer.input)
  kept = layer.activation
  layer.activation = keras.activations.linear
  try:
    return np.asarray(layer(feed(x)), np.float64)
  finally:
    layer.activation = kept


def test_bias_correction_zeroes_the_mean_output_change_on_the_calibration_inputs(done):
  model, _, copy, _ = done
  x = _inputs(64, 1)
  plain, _ = compensate_model(model, SPEC, calibration=Calibration(x, bias=False))
  for name in ("dw", "sep", "head"):
    # Each layer fed with the original model's activations (the statistics' inputs).
    feed = keras.Model(model.inputs, model.get_layer(name).input)(x)
    original = _linear_outputs(model, name, x)
    for other, expect_zero in ((copy, True), (plain, False)):
      layer = other.get_layer(name)
      kept = layer.activation
      layer.activation = keras.activations.linear
      try:
        shift = (np.asarray(layer(feed), np.float64) - original)
      finally:
        layer.activation = kept
      mean = shift.reshape(-1, shift.shape[-1]).mean(axis=0)
      if expect_zero:
        np.testing.assert_allclose(mean, 0, atol=2e-6 * np.abs(original).max())
      else:
        assert np.abs(mean).max() > 1e-4
  # conv -> bn: the BN's input minus its moving mean keeps its mean.
  conv_in = x
  deltas = []
  for other in (model, copy):
    y = np.asarray(other.get_layer("conv")(conv_in), np.float64)
    deltas.append(y.reshape(-1, 8).mean(axis=0) - other.get_layer("bn").moving_mean.numpy())
  np.testing.assert_allclose(deltas[1], deltas[0], atol=1e-5)


def test_output_error_on_held_out_inputs_is_smaller_than_plain(done):
  model, _, copy, _ = done
  held = _inputs(128, 2)
  reference = model.predict(held, verbose=0)
  plain = morph_model(model, SPEC)
  plain_error = np.mean((strip_morphing(plain).predict(held, verbose=0) - reference) ** 2)
  error = np.mean((copy.predict(held, verbose=0) - reference) ** 2)
  assert error < 0.7 * plain_error


def test_morph_model_with_compensate_strips_to_the_same_values(done):
  model, before, copy, _ = done
  wrapped = morph_model(model, SPEC, compensate=_inputs(64, 1))
  stripped = strip_morphing(wrapped)
  for a, b in zip(copy.weights, stripped.weights):
    np.testing.assert_array_equal(_bits(a.numpy()), _bits(b.numpy()))
  for value, source in zip(before, model.weights):
    np.testing.assert_array_equal(_bits(source.numpy()), _bits(value))


def test_morphed_statistics_differ_and_restore_the_model():
  model = _model()
  before = _snapshot(model)
  x = _inputs(32, 1)
  _, original = compensate_model(model, SPEC, calibration=x)
  _, sequential = compensate_model(model, SPEC, calibration=Calibration(x, statistics="morphed"))
  for value, source in zip(before, model.weights):
    np.testing.assert_array_equal(_bits(source.numpy()), _bits(value))
  first = model.get_layer("conv").weights[0]
  last = model.get_layer("head").weights[0]
  # The first layer sees the same inputs either way; a later one does not.
  np.testing.assert_array_equal(_bits(original.values[id(first)]),
                                _bits(sequential.values[id(first)]))
  assert not np.array_equal(original.values[id(last)], sequential.values[id(last)])


def test_projected_keeps_every_value_in_the_ball(done):
  model = done[0]
  _, result = compensate_model(model, SPEC, calibration=Calibration(_inputs(64, 1),
                                                                     projected=True))
  totals = result.totals()
  assert totals["outside"] == 0 and totals["fallbacks"] > 0
  assert done[3].totals()["outside"] > 0  # unprojected: some are farther than P
  assert "outside the ball" in result.summary()


def test_the_compensated_model_saves_as_a_plain_keras_model(done, tmp_path):
  model, _, copy, _ = done
  path = str(tmp_path / "compensated.keras" if keras.__version__[0] == "3"
             else tmp_path / "compensated.h5")
  copy.save(path)
  x = _inputs(8, 3)
  np.save(tmp_path / "x.npy", x)
  expected = copy.predict(x, verbose=0)
  zoo_dir = os.path.dirname(os.path.abspath(__file__))
  code = (f"import sys; sys.path.insert(0, {zoo_dir!r}); import numpy as np; import keras_zoo; "
          f"m = keras_zoo.keras.models.load_model({path!r}); "
          "assert 'mortar_tf' not in sys.modules; "
          f"np.save({str(tmp_path / 'y.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}),"
          " verbose=0))")
  result = installed_tool.python("-c", code, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_bad_use_is_refused():
  model = _model()
  x = _inputs(8, 1)
  with pytest.raises(ValueError, match="not True"):
    morph_model(model, SPEC, compensate=True)
  with pytest.raises(ValueError, match="fold first"):
    morph_model(model, SPEC, compensate=x, fold_batchnorm=True)
  with pytest.raises(ValueError, match="empty"):
    Calibration(x[:0])
  with pytest.raises(ValueError, match="compensates nothing"):
    Calibration(x, error=False, bias=False)
  with pytest.raises(ValueError, match="statistics"):
    Calibration(x, statistics="sequential")
  with pytest.raises(ValueError, match="MorphWrappers"):
    compensate_model(morph_model(model, SPEC), SPEC, calibration=x)
  with pytest.raises(ValueError, match="no kernel could be compensated"):
    compensate_model(model, "bitx", columns=8, calibration=x)
  bitx = {"conv": morphing.MorphSpec("bitx", columns=8), "head": 0.1}
  with pytest.warns(RuntimeWarning, match="morphed plain"):
    _, result = compensate_model(model, "fewest_ones", bitx, calibration=x)
  assert "per group" in result.plain["conv/kernel"] and "head/kernel" in result.results


def test_callback_saves_the_compensated_model_and_restores_the_trained_one(tmp_path):
  from mortar_tf.keras import MortarCallback  # pylint: disable=import-outside-toplevel
  model = _model()
  model.compile(optimizer="sgd", loss="mse")
  x, y = _inputs(32, 4), np.zeros((32, 5), np.float32)
  path = str(tmp_path / "morphed.keras" if keras.__version__[0] == "3"
             else tmp_path / "morphed.h5")
  calibration = _inputs(32, 1)
  callback = MortarCallback(path, SPEC, compensate=calibration, log_dir=str(tmp_path / "logs"))
  model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[callback])
  after = _snapshot(model)
  expected, _ = compensate_model(model, SPEC, calibration=calibration)  # the trained model's
  saved = keras.models.load_model(path, compile=False)
  for a, b in zip(expected.weights, saved.weights):
    np.testing.assert_array_equal(_bits(a.numpy()), _bits(b.numpy()))
  for value, w in zip(after, model.weights):  # training state restored after the save
    np.testing.assert_array_equal(_bits(w.numpy()), _bits(value))
  assert callback.last_compensation.totals()["weights"] > 0
  with pytest.raises(ValueError, match="fold"):
    MortarCallback(path, SPEC, compensate=calibration, fold_batchnorm=True)
