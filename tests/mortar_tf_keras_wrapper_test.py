"""MorphWrapper, morph_model and strip_morphing; run under Keras 3 and, via
scripts/test.sh, again under tf_keras (TF_USE_LEGACY_KERAS=1)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import bits
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

layers = keras.layers


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


# (factory, input shape, {weight name: layout}) per supported layer kind
DEPTHWISE_NAME = "kernel" if IS_KERAS3 else "depthwise_kernel"
KINDS = {
    "dense": (lambda: layers.Dense(5), (7,), {"kernel": "dense"}),
    "einsum": (lambda: layers.EinsumDense("ab,bc->ac", output_shape=4), (6,),
               {"kernel": "einsum"}),
    "conv1d": (lambda: layers.Conv1D(3, 3), (9, 4), {"kernel": "conv"}),
    "conv2d": (lambda: layers.Conv2D(3, 3), (6, 6, 2), {"kernel": "conv"}),
    "conv3d": (lambda: layers.Conv3D(2, 2), (4, 4, 4, 2), {"kernel": "conv"}),
    "depthwise": (lambda: layers.DepthwiseConv2D(3), (6, 6, 3), {DEPTHWISE_NAME: "depthwise"}),
    "separable": (lambda: layers.SeparableConv2D(4, 3), (6, 6, 3),
                  {"depthwise_kernel": "separable_depthwise",
                   "pointwise_kernel": "separable_pointwise"}),
    "transpose": (lambda: layers.Conv2DTranspose(3, 3), (5, 5, 2), {"kernel": "conv_transpose"}),
}
METHODS = [dict(method="paper", precision=0.1), dict(method="fewest_ones", precision=0.3),
           dict(method="round", keep_bits=3), dict(method="bitx", columns=6, group_size=4)]


def _built(kind, seed=0):
  factory, shape, names = KINDS[kind]
  layer = factory()
  layer.build((None,) + shape)
  rng = np.random.default_rng(seed)
  layer.set_weights([(rng.standard_normal(w.shape) * 0.3).astype(np.float32)
                     for w in layer.weights])
  return layer, shape, names


def _expected_morph(value, args, layout, equation=None):
  grouping = {}
  if args["method"] == "bitx":
    grouping = {"layout": layout}
    if equation:
      grouping["equation"] = equation
  return mortar_tf.morph(value, **args, **grouping, backend="numpy")


@pytest.mark.parametrize("args", METHODS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_stripped_kernels_are_the_morphed_master_kernels(kind, args):
  layer, shape, names = _built(kind)
  wrapper = MorphWrapper(layer, **args)
  x = np.random.default_rng(1).standard_normal((2,) + shape).astype(np.float32)
  wrapper(x)
  stripped = strip_morphing(wrapper)
  equation = getattr(layer, "equation", None)
  for original, new in zip(layer.weights, stripped.weights):
    name = original.name.split("/")[-1].split(":")[0]
    if name in names:
      expected = _expected_morph(original.numpy(), args, names[name], equation)
    else:
      expected = original.numpy()  # biases untouched
    np.testing.assert_array_equal(u32(new.numpy()), u32(expected))
  # the wrapper's forward pass is the stripped layer's, bit for bit
  np.testing.assert_array_equal(u32(np.asarray(wrapper(x))), u32(np.asarray(stripped(x))))


@pytest.mark.parametrize("kind", ["dense", "conv2d", "depthwise", "separable"])
def test_gradient_is_the_unwrapped_gradient_at_the_morphed_kernel(kind):
  layer, shape, names = _built(kind, seed=3)
  wrapper = MorphWrapper(layer, "fewest_ones", precision=0.2)
  x = tf.constant(np.random.default_rng(2).standard_normal((3,) + shape).astype(np.float32))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(wrapper(x)))
  wrapped_grads = tape.gradient(loss, layer.trainable_weights)
  stripped = strip_morphing(wrapper)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(stripped(x)))
  plain_grads = tape.gradient(loss, stripped.trainable_weights)
  for got, want in zip(wrapped_grads, plain_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def _functional():
  inputs = keras.Input((8, 8, 3), name="image")
  x = layers.Conv2D(4, 3, name="conv")(inputs)
  x = layers.DepthwiseConv2D(3, name="dw")(x)
  x = layers.BatchNormalization(name="bn")(x)
  x = layers.Flatten(name="flat")(x)
  head = keras.Sequential([keras.Input((64,)), layers.Dense(6, name="hidden"),
                           layers.Dense(3, name="logits")], name="head")
  return keras.Model(inputs, head(x), name="net")


def test_strip_of_wrap_gives_the_original_config_and_morphed_kernels():
  model = _functional()
  wrapped = morph_model(model, "paper", precision=0.1)
  wrapped_names = [l.name for l in wrapped.layers if isinstance(l, MorphWrapper)]
  assert wrapped_names == ["morph_conv", "morph_dw"]
  nested = wrapped.get_layer("head")
  assert all(isinstance(l, MorphWrapper) for l in nested.layers)
  stripped = strip_morphing(wrapped)
  assert stripped.get_config() == model.get_config()
  np.testing.assert_array_equal(
      u32(stripped.get_layer("head").get_layer("logits").weights[0].numpy()),
      u32(mortar_tf.morph(model.get_layer("head").get_layer("logits").weights[0].numpy(),
                          "paper", 0.1, backend="numpy")))
  bn_before = [w.numpy() for w in model.get_layer("bn").weights]
  bn_after = [w.numpy() for w in stripped.get_layer("bn").weights]
  for a, b in zip(bn_before, bn_after):
    np.testing.assert_array_equal(u32(a), u32(b))
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_array_equal(u32(np.asarray(wrapped(x))), u32(np.asarray(stripped(x))))
  # the original model is untouched: its kernels are not the morphed ones
  assert not np.array_equal(u32(model.get_layer("conv").weights[0].numpy()),
                            u32(stripped.get_layer("conv").weights[0].numpy()))


def test_per_layer_precision_wraps_only_the_named_layers():
  model = _functional()
  wrapped = morph_model(model, "fewest_ones", precision={"conv": 0.3, "dw": 0.05})
  specs = {l.layer.name: l.spec.precision for l in wrapped.layers if isinstance(l, MorphWrapper)}
  assert specs == {"conv": 0.3, "dw": 0.05}
  with pytest.raises(ValueError, match="does not have"):
    morph_model(model, precision={"nope": 0.1})
  with pytest.raises(ValueError, match="BatchNormalization"):
    morph_model(model, precision={"bn": 0.1})


def test_misuse_errors_name_the_problem():
  with pytest.raises(ValueError, match="BatchNormalization.*get_morphable_weights"):
    bn = layers.BatchNormalization()
    bn.build((None, 4))
    MorphWrapper(bn)
  with pytest.raises(ValueError, match="precision"):
    MorphWrapper(layers.Dense(2), precision=1.5)
  with pytest.raises(ValueError, match="already wrapped"):
    morph_model(morph_model(_functional()))
  with pytest.raises(ValueError, match="Keras layer"):
    MorphWrapper("dense")


def test_config_round_trip_and_keras_file(tmp_path):
  wrapper = MorphWrapper(layers.Dense(3, name="fc"), "bitx", columns=5, group_size=8, width=20)
  config = wrapper.get_config()
  for key, value in {"method": "bitx", "columns": 5, "group_size": 8, "width": 20,
                     "morph_forward": True}.items():
    assert config[key] == value
  assert MorphWrapper.from_config(config).get_config() == config
  model = morph_model(_functional(), "paper", precision=0.2)
  x = np.random.default_rng(4).standard_normal((2, 8, 8, 3)).astype(np.float32)
  path = str(tmp_path / ("m.keras" if IS_KERAS3 else "m.h5"))
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(u32(np.asarray(loaded(x))), u32(np.asarray(model(x))))


class Scale(layers.Layer):
  """A custom layer that opts in through get_morphable_weights()."""

  def build(self, input_shape):
    self.w = self.add_weight(name="w", shape=(input_shape[-1], 2))

  def call(self, x):
    return tf.matmul(x, self.w)

  def get_morphable_weights(self):
    return [("w", "dense")]


def test_morphable_layer_protocol():
  layer = Scale()
  layer.build((None, 5))
  layer.set_weights([np.random.default_rng(5).standard_normal((5, 2)).astype(np.float32)])
  wrapper = MorphWrapper(layer, "paper", precision=0.3)
  x = np.ones((1, 5), np.float32)
  expected = x @ mortar_tf.morph(layer.weights[0].numpy(), "paper", 0.3, backend="numpy")
  np.testing.assert_allclose(np.asarray(wrapper(x)), expected, rtol=1e-6)


def test_fit_with_xla_trains_the_master_kernels():
  model = morph_model(keras.Sequential([keras.Input((4,)), layers.Dense(8, name="a"),
                                        layers.Dense(1, name="b")]), "fewest_ones", precision=0.1)
  model.compile(optimizer="sgd", loss="mse", jit_compile=True)
  before = model.get_layer("morph_a").layer.weights[0].numpy().copy()
  rng = np.random.default_rng(6)
  model.fit(rng.standard_normal((32, 4)).astype(np.float32),
            rng.standard_normal((32, 1)).astype(np.float32), epochs=1, verbose=0)
  after = model.get_layer("morph_a").layer.weights[0].numpy()
  assert not np.array_equal(before, after)


def test_exported_model_has_no_mortar_ops_and_loads_without_the_library(tmp_path):
  model = morph_model(_functional(), "fewest_ones", precision=0.2)
  x = np.random.default_rng(7).standard_normal((2, 8, 8, 3)).astype(np.float32)
  export_dir = str(tmp_path / "exported")
  if IS_KERAS3:
    model.export(export_dir, verbose=False)
  else:
    tf.saved_model.save(model, export_dir)
  text = open(os.path.join(export_dir, "saved_model.pb"), "rb").read()
  assert b"Mortar" not in text
  np.save(tmp_path / "x.npy", x)
  script = textwrap.dedent(f"""
      import numpy as np, tensorflow as tf
      m = tf.saved_model.load({export_dir!r})
      fn = m.serve if hasattr(m, "serve") else m.signatures["serving_default"]
      out = fn(tf.constant(np.load({str(tmp_path / "x.npy")!r})))
      out = out if isinstance(out, tf.Tensor) else list(out.values())[0]
      np.save({str(tmp_path / "y.npy")!r}, out.numpy())
      """)
  env = dict(os.environ, MORTAR_TF_DISABLE_OPS="1", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr
  np.testing.assert_array_equal(u32(np.load(tmp_path / "y.npy")), u32(np.asarray(model(x))))


def test_bitx_groups_along_each_kernels_reduction_axes():
  layer, _, _ = _built("depthwise")
  wrapper = MorphWrapper(layer, "bitx", columns=3, group_size=4)
  value = layer.weights[0].numpy()
  got = wrapper.morphed_values()[DEPTHWISE_NAME].numpy()
  axes = bits.reduction_axes_for("depthwise", value.ndim)
  np.testing.assert_array_equal(
      u32(got), u32(mortar_tf.morph(value, "bitx", columns=3, group_size=4, reduction_axes=axes,
                                    backend="numpy")))


def _bn_model():
  inputs = keras.Input((7, 7, 3), name="img")
  x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
  x = layers.BatchNormalization(name="bn1")(x)
  x = layers.ReLU(name="relu")(x)
  x = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
  x = layers.BatchNormalization(name="bn2")(x)
  x = layers.Conv2DTranspose(3, 2, name="up")(x)
  x = layers.BatchNormalization(name="bn3")(x)
  x = layers.Flatten(name="flat")(x)
  x = layers.Dense(5, activation="relu", name="fc")(x)
  outputs = layers.BatchNormalization(name="bn4")(x)  # after a ReLU: not foldable
  model = keras.Model(inputs, outputs)
  rng = np.random.default_rng(8)
  for layer in model.layers:
    if isinstance(layer, layers.BatchNormalization):
      n = layer.weights[0].shape[0]
      layer.set_weights([rng.uniform(0.5, 2, n).astype(np.float32),   # gamma
                         rng.normal(0, 0.5, n).astype(np.float32),    # beta
                         rng.normal(0, 0.5, n).astype(np.float32),    # moving mean
                         rng.uniform(0.2, 3, n).astype(np.float32)])  # moving variance
  return model


def _folded_by_hand(kernel, bias, bn, axis):
  gamma, beta, mean, var = (w.numpy().astype(np.float64) for w in bn.weights)
  scale = gamma / np.sqrt(var + bn.epsilon)
  k = kernel.astype(np.float64)
  if axis == "depthwise":
    k = k * scale.reshape(k.shape[-2], k.shape[-1])
  else:
    k = np.moveaxis(np.moveaxis(k, axis, -1) * scale, -1, axis)
  return k.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)


def test_batchnorm_folding_matches_outputs_then_morphs_the_folded_kernels():
  model = _bn_model()
  x = np.random.default_rng(9).standard_normal((4, 7, 7, 3)).astype(np.float32)
  folded = strip_morphing(model, fold_batchnorm=True)  # no wrappers: folding only
  np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)),
                             rtol=2e-5, atol=2e-5)
  kinds = {type(l).__name__ for l in folded.layers}
  assert {l.name for l in folded.layers
          if type(l).__name__ == "FoldedBatchNorm"} == {"bn1", "bn2", "bn3"}
  assert "BatchNormalization" in kinds  # bn4 follows a ReLU and stays
  morphed = strip_morphing(morph_model(model, "fewest_ones", precision=0.1), fold_batchnorm=True)
  for name, bn, axis in [("conv", "bn1", -1), ("dw", "bn2", "depthwise"), ("up", "bn3", -2)]:
    layer = model.get_layer(name)
    bias = layer.weights[1].numpy().astype(np.float64) if len(layer.weights) > 1 else 0.0
    kernel, new_bias = _folded_by_hand(layer.weights[0].numpy(), bias, model.get_layer(bn), axis)
    got = morphed.get_layer(name)
    np.testing.assert_array_equal(
        u32(got.weights[0].numpy()),
        u32(mortar_tf.morph(kernel, "fewest_ones", 0.1, backend="numpy")))
    np.testing.assert_allclose(got.weights[1].numpy(), new_bias, rtol=1e-6, atol=1e-7)


# Keras 3 saves .keras/.h5 only (its SavedModel route is model.export, tested above);
# tf_keras also saves a SavedModel directory.
SAVE_FORMATS = ["keras", "h5"] + ([] if IS_KERAS3 else ["savedmodel"])


@pytest.mark.parametrize("fmt", SAVE_FORMATS)
def test_wrapped_model_save_formats_round_trip_exactly(tmp_path, fmt):
  model = morph_model(_functional(), "fewest_ones", precision=0.2)
  x = np.random.default_rng(10).standard_normal((2, 8, 8, 3)).astype(np.float32)
  path = str(tmp_path / ("m" if fmt == "savedmodel" else f"m.{fmt}"))
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(u32(np.asarray(loaded(x))), u32(np.asarray(model(x))))
  assert sum(isinstance(l, MorphWrapper) for l in loaded.layers) == 2


def test_subclassed_model_is_a_clear_error():
  class Net(keras.Model):

    def __init__(self):
      super().__init__()
      self.fc = layers.Dense(2)

    def call(self, x):
      return self.fc(x)

  net = Net()
  net(np.ones((1, 3), np.float32))
  with pytest.raises(ValueError, match="Subclassed models cannot be cloned"):
    morph_model(net)


def test_morph_model_folds_batchnorm_into_the_forward_pass(tmp_path):
  model = _bn_model()
  x = np.random.default_rng(11).standard_normal((4, 7, 7, 3)).astype(np.float32)
  folded_only = morph_model(model, "paper", precision=0.1, morph_forward=False,
                            fold_batchnorm=True)
  np.testing.assert_allclose(np.asarray(folded_only(x)), np.asarray(model(x, training=False)),
                             rtol=2e-5, atol=2e-5)
  wrapped = morph_model(model, "paper", precision=0.1, fold_batchnorm=True)
  assert {l.name for l in wrapped.layers if type(l).__name__ == "FoldedBatchNorm"} == {
      "bn1", "bn2", "bn3"}
  stripped = strip_morphing(wrapped)
  np.testing.assert_array_equal(u32(np.asarray(wrapped(x))), u32(np.asarray(stripped(x))))
  layer, bn = model.get_layer("dw"), model.get_layer("bn2")
  kernel, _ = _folded_by_hand(layer.weights[0].numpy(), layer.weights[1].numpy(), bn, "depthwise")
  np.testing.assert_array_equal(u32(stripped.get_layer("dw").weights[0].numpy()),
                                u32(mortar_tf.morph(kernel, "paper", 0.1, backend="numpy")))
  # training moves the kernels and the folded gamma, not the frozen statistics
  conv = wrapped.get_layer("morph_conv")
  mean_before = conv.bn_moving_mean.numpy().copy()
  gamma_before = conv.bn_gamma.numpy().copy()
  wrapped.compile(optimizer="sgd", loss="mse")
  wrapped.fit(x, np.zeros((4, 5), np.float32), epochs=1, verbose=0)
  np.testing.assert_array_equal(conv.bn_moving_mean.numpy(), mean_before)
  assert not np.array_equal(conv.bn_gamma.numpy(), gamma_before)
  path = str(tmp_path / ("f.keras" if IS_KERAS3 else "f.h5"))
  wrapped.save(path)
  loaded = keras.models.load_model(path, compile=False)
  np.testing.assert_array_equal(u32(np.asarray(loaded(x))), u32(np.asarray(wrapped(x))))
