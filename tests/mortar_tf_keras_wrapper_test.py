"""MorphWrapper, morph_model and strip_morphing; run under Keras 3 and, via
scripts/test.sh, again under tf_keras (TF_USE_LEGACY_KERAS=1)."""

import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import installed_tool
import keras_zoo
import mortar_tf
from mortar_tf import bits
from mortar_tf import ops
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras import find_kernels
from mortar_tf.keras import fold_batchnorm
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing
from mortar_tf.keras import wrapper as wrapper_lib
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
  with pytest.raises(ValueError, match=r"entries \['nope'\] match no kernel.*conv/kernel"):
    morph_model(model, precision={"nope": 0.1})
  with pytest.raises(ValueError, match=r"entries \['bn'\] match no kernel"):
    morph_model(model, precision={"bn": 0.1})  # a BN has no kernel


def test_a_map_can_name_one_kernel_of_a_layer_with_two():
  inputs = keras.Input((6, 6, 3))
  model = keras.Model(inputs, layers.SeparableConv2D(4, 3, name="sep")(inputs))
  model.set_weights([np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
                     for w in model.weights])
  wrapped = morph_model(model, "paper", precision={"sep/pointwise_kernel": 0.3, "sep": 0.05})
  stripped = strip_morphing(wrapped)
  sep, fresh = model.get_layer("sep"), stripped.get_layer("sep")
  np.testing.assert_array_equal(u32(fresh.pointwise_kernel.numpy()), u32(mortar_tf.morph(
      sep.pointwise_kernel.numpy(), "paper", 0.3, backend="numpy")))
  np.testing.assert_array_equal(u32(fresh.depthwise_kernel.numpy()), u32(mortar_tf.morph(
      sep.depthwise_kernel.numpy(), "paper", 0.05, backend="numpy")))
  # a map naming only the pointwise kernel leaves the depthwise one alone
  stripped = strip_morphing(morph_model(model, "paper", precision={"*pointwise*": 0.3}))
  np.testing.assert_array_equal(u32(stripped.get_layer("sep").depthwise_kernel.numpy()),
                                u32(sep.depthwise_kernel.numpy()))


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


def _graph_op_types(fn, *args):
  """Op types of a traced function's graph and of the functions it calls."""
  graph = fn.get_concrete_function(*args).graph
  types = {op.type for op in graph.get_operations()}
  for f in graph.as_graph_def().library.function:
    types |= {node.op for node in f.node_def}
  return types


@pytest.mark.parametrize("args", METHODS)
@pytest.mark.parametrize("kind", ["dense", "conv2d", "depthwise", "separable"])
def test_forward_morph_runs_the_op_where_it_may_and_gives_the_tf_ops_bits(kind, args):
  """Eager and a training trace without XLA run the C++ op; inference traces,
  jit_compile=True and tf_ops_only() run TF ops; all equal the numpy reference."""
  assert ops.is_built(), ops.why_not_built()
  layer, shape, names = _built(kind)
  # weights near powers of two and exact zeros, where the methods' edge cases are
  for w in layer.weights:
    value = w.numpy()
    value.flat[::7] = 0.0
    value.flat[1::7] = np.float32(0.5) * np.float32(1 + 2.0 ** -20)
    w.assign(value)
  wrapper = MorphWrapper(layer, **args)
  x = np.random.default_rng(1).standard_normal((2,) + shape).astype(np.float32)
  wrapper(x)
  targets = {t.name: t for t in wrapper.targets}
  equation = getattr(layer, "equation", None)
  for name, layout in names.items():
    target = targets[name]
    master = tf.constant(target.kernel.variable.numpy())
    expected = u32(_expected_morph(master.numpy(), args, layout, equation))
    runs = {
        "eager": lambda: wrapper._morph(master, target, training=True),
        "train graph": tf.function(lambda: wrapper._morph(master, target, training=True)),
        "inference graph": tf.function(lambda: wrapper._morph(master, target, training=False)),
        "xla": tf.function(lambda: wrapper._morph(master, target, training=True),
                           jit_compile=True),
    }
    for mode, run in runs.items():
      np.testing.assert_array_equal(u32(run()), expected, err_msg=f"{name} {mode}")
    with wrapper_lib.tf_ops_only():
      np.testing.assert_array_equal(u32(wrapper._morph(master, target, training=True)), expected)
    assert any(t.startswith("Mortar") for t in _graph_op_types(runs["train graph"]))
    assert not any(t.startswith("Mortar") for t in _graph_op_types(runs["inference graph"]))
    with wrapper_lib.tf_ops_only():
      traced = tf.function(lambda: wrapper._morph(master, target, training=True))
      assert not any(t.startswith("Mortar") for t in _graph_op_types(traced))


def test_bitx_groups_past_the_ops_counters_morph_with_tf_ops_everywhere():
  """A group larger than the op's counters hold (backends.MAX_KERNEL_GROUP_SIZE)
  never reaches the op: eager and training traces give numpy's bits on TF ops."""
  from mortar_tf import backends  # pylint: disable=import-outside-toplevel
  group = 2 * backends.MAX_KERNEL_GROUP_SIZE
  layer = layers.Dense(2)
  layer.build((None, group + 100))
  wrapper = MorphWrapper(layer, "bitx", columns=5, group_size=group)
  wrapper(np.ones((1, group + 100), np.float32))
  (target,) = wrapper.targets
  master = tf.constant(layer.weights[0].numpy())
  expected = u32(_expected_morph(master.numpy(), dict(method="bitx", columns=5, group_size=group),
                                 "dense"))
  train = tf.function(lambda: wrapper._morph(master, target, training=True))
  np.testing.assert_array_equal(u32(wrapper._morph(master, target, training=True)), expected)
  np.testing.assert_array_equal(u32(train()), expected)
  assert not any(t.startswith("Mortar") for t in _graph_op_types(train))


@pytest.mark.parametrize("args", METHODS)
def test_a_training_step_runs_the_op_and_trains_the_masters_as_the_tf_ops_step_does(args):
  """One SGD step on a wrapped model with the op and with TF ops only: the same
  master kernels after it, bit for bit (the gradient is straight-through both ways)."""
  assert ops.is_built(), ops.why_not_built()
  results = []
  for tf_only in (False, True):
    keras.utils.set_random_seed(3)
    model = morph_model(_functional(), **args)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 8, 8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 3)).astype(np.float32)

    @tf.function
    def step(x, y):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
      grads = tape.gradient(loss, model.trainable_variables)
      for v, g in zip(model.trainable_variables, grads):
        v.assign_sub(0.1 * g)
      return loss

    if tf_only:
      with wrapper_lib.tf_ops_only():
        types = _graph_op_types(step, x, y)
        step(x, y)
      assert not any(t.startswith("Mortar") for t in types)
    else:
      assert any(t.startswith("Mortar") for t in _graph_op_types(step, x, y))
      step(x, y)
    results.append([u32(v.numpy()) for v in model.trainable_variables])
  for a, b in zip(*results):
    np.testing.assert_array_equal(a, b)


def test_exported_model_has_no_mortar_ops_and_loads_without_the_library(tmp_path):
  model = morph_model(_functional(), "fewest_ones", precision=0.2)
  x = np.random.default_rng(7).standard_normal((2, 8, 8, 3)).astype(np.float32)
  # a training graph traced first (with the op where it is built) must not leak into the export
  model.compile(optimizer="sgd", loss="mse")
  model.fit(x, np.asarray(model(x)), epochs=1, verbose=0)
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
  env = dict(installed_tool.ENV, MORTAR_TF_DISABLE_OPS="1")
  result = installed_tool.python("-c", script, env=env, cwd=str(tmp_path))
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
  return keras_zoo.with_batchnorm_statistics(keras.Model(inputs, outputs), seed=8)


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
  folded = fold_batchnorm(model)  # folding only
  np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)),
                             rtol=2e-5, atol=2e-5)
  kinds = {type(l).__name__ for l in folded.layers}
  assert {l.name for l in folded.layers
          if type(l).__name__ == "Identity"} == {"bn1", "bn2", "bn3"}
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
  with pytest.raises(ValueError, match="subclassed models cannot be cloned.*MortarCallback"):
    morph_model(net)


def test_morph_model_folds_batchnorm_into_the_forward_pass(tmp_path):
  model = _bn_model()
  x = np.random.default_rng(11).standard_normal((4, 7, 7, 3)).astype(np.float32)
  folded_only = morph_model(model, "paper", precision=0.1, morph_forward=False,
                            fold_batchnorm=True)
  np.testing.assert_allclose(np.asarray(folded_only(x)), np.asarray(model(x, training=False)),
                             rtol=2e-5, atol=2e-5)
  wrapped = morph_model(model, "paper", precision=0.1, fold_batchnorm=True)
  assert {l.name for l in wrapped.layers if type(l).__name__ == "Identity"} == {
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


# --------------------------------------------------------------------------
# Real structures: kernels found as objects, never matched by name


def _seeded(model, seed=0):
  rng = np.random.default_rng(seed)
  model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.weights])
  return model


def _assert_copy_invariant(source, copy, args):
  """Every kernel of `copy` is morph(the same place in `source`), the rest identical."""
  kernels = {id(k.variable) for k in find_kernels(source).kernels}
  assert len(source.weights) == len(copy.weights)
  for a, b in zip(source.weights, copy.weights):
    want = np.asarray(a.numpy())
    if id(a) in kernels:
      want = mortar_tf.morph(want, **args, backend="numpy")
    np.testing.assert_array_equal(u32(b.numpy()), u32(want), err_msg=a.name)


def test_bidirectional_lstm_directions_keep_their_own_kernels():
  # Forward and backward kernels share name and shape: matched by name they swap.
  inputs = keras.Input((7, 4))
  model = _seeded(keras.Model(inputs, layers.Bidirectional(layers.LSTM(5), name="bi")(inputs)))
  x = np.random.default_rng(1).standard_normal((3, 7, 4)).astype(np.float32)
  args = dict(method="paper", precision=1e-6)
  stripped = strip_morphing(morph_model(model, **args))
  _assert_copy_invariant(model, stripped, args)
  np.testing.assert_allclose(np.asarray(stripped(x)), np.asarray(model(x)), atol=1e-5)
  names = [k.name for k in find_kernels(model).kernels]
  assert len(names) == 4 and any("forward" in n for n in names) and any("backward" in n
                                                                         for n in names)


def test_multi_head_attention_morphs_its_four_projections():
  query = keras.Input((5, 8))
  model = _seeded(keras.Model(query, layers.MultiHeadAttention(2, 4, name="mha")(query, query)))
  args = dict(method="fewest_ones", precision=0.2)
  wrapped = morph_model(model, **args)
  assert [n for n, _, _ in wrapped.get_layer("morph_mha").morph_targets] == [
      "query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"]
  stripped = strip_morphing(wrapped)
  _assert_copy_invariant(model, stripped, args)
  x = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
  np.testing.assert_array_equal(u32(np.asarray(wrapped(x))), u32(np.asarray(stripped(x))))


def test_wrapping_an_unbuilt_multi_head_attention_builds_it_on_the_first_call():
  wrapper = MorphWrapper(layers.MultiHeadAttention(2, 4), "paper", precision=0.1)
  x = np.random.default_rng(3).standard_normal((2, 5, 8)).astype(np.float32)
  out = wrapper(x, x)
  assert out.shape == (2, 5, 8) and len(wrapper.morph_targets) == 4


def test_masks_pass_through_a_wrapped_recurrent_layer():
  tokens = keras.Input((6,), dtype="int32")
  x = layers.Embedding(10, 4, mask_zero=True)(tokens)
  model = _seeded(keras.Model(tokens, layers.LSTM(3, name="lstm")(x)))
  ids = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9]], np.int32)
  wrapped = morph_model(model, "paper", precision=1e-6)
  # masked steps are skipped: the first sequence ends after three tokens either way
  np.testing.assert_allclose(np.asarray(wrapped(ids)), np.asarray(model(ids)), atol=1e-5)
  short = np.array([[1, 2, 3]], np.int32)
  np.testing.assert_allclose(np.asarray(wrapped(ids))[0], np.asarray(
      model(np.pad(short, ((0, 0), (0, 3)))))[0], atol=1e-5)


def test_morph_model_on_a_list_of_layers_takes_a_map():
  a, b = layers.Dense(3, name="a"), layers.Dense(3, name="b")
  for layer in (a, b):
    layer.build((None, 4))
  wrapped = morph_model([a, b], "paper", precision={"a": 0.2})
  assert isinstance(wrapped[0], MorphWrapper) and wrapped[1] is b
  with pytest.raises(ValueError, match=r"entries \['c'\] match no kernel"):
    morph_model([a, b], precision={"c": 0.1})


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(method="papr"), ValueError, "unknown morphing method 'papr'"),
    (dict(precision="0.1"), ValueError, "precision must be a real number"),
    (dict(precision=-0.1), ValueError, "0 < P <= 1"),
    (dict(precision={"conv": 2.0}), ValueError, "entry 'conv'.*0 < P <= 1"),
    (dict(precision={1: 0.1}), ValueError, "keys are layer or weight name patterns"),
    (dict(method="round", precision={"conv": 0.1}), ValueError, "needs method 'paper'"),
    (dict(precision=[0.1]), ValueError, "precision must be a real number"),
])
def test_argument_errors_name_their_cause_before_any_cloning(kwargs, error, match):
  with pytest.raises(error, match=match) as info:
    morph_model(_functional(), **kwargs)
  assert "clone" not in str(info.value)


def test_double_wrapping_and_nothing_to_morph_are_errors():
  with pytest.raises(ValueError, match="already wrapped") as info:
    morph_model(morph_model(_functional()))
  assert "clone" not in str(info.value)
  plain = keras.Sequential([keras.Input((4,)), layers.ReLU(name="relu"),
                            layers.LayerNormalization(name="ln")])
  with pytest.raises(ValueError, match="(?s)nothing to morph.*ln/gamma"):
    morph_model(plain)
  tokens = keras.Input((3,), dtype="int32")
  lookup = keras.Model(tokens, layers.Embedding(9, 2, name="emb")(tokens))
  with pytest.raises(ValueError, match="(?s)nothing to morph.*lookup table"):
    morph_model(lookup)
  stripped = strip_morphing(morph_model(lookup, "paper", precision=0.2, embeddings=True))
  np.testing.assert_array_equal(u32(stripped.get_layer("emb").weights[0].numpy()), u32(
      mortar_tf.morph(lookup.get_layer("emb").weights[0].numpy(), "paper", 0.2,
                      backend="numpy")))


def test_fold_batchnorm_folds_only_into_layers_it_morphs():
  model = _bn_model()
  x = np.random.default_rng(12).standard_normal((4, 7, 7, 3)).astype(np.float32)
  wrapped = morph_model(model, "paper", precision={"dw": 0.1}, fold_batchnorm=True,
                        morph_forward=False)
  kinds = {l.name: type(l).__name__ for l in wrapped.layers}
  assert kinds["bn2"] == "Identity"  # after dw: folded into its wrapper
  assert kinds["bn1"] == kinds["bn3"] == "BatchNormalization"  # after unwrapped layers: kept
  np.testing.assert_allclose(np.asarray(wrapped(x)), np.asarray(model(x, training=False)),
                             rtol=2e-5, atol=2e-5)
  morphing = morph_model(model, "paper", precision={"dw": 0.1}, fold_batchnorm=True)
  stripped = strip_morphing(morphing)
  assert {l.name: type(l).__name__ for l in stripped.layers if l.name.startswith("bn")} == {
      "bn1": "BatchNormalization", "bn2": "Identity", "bn3": "BatchNormalization",
      "bn4": "BatchNormalization"}
  np.testing.assert_array_equal(u32(np.asarray(stripped(x))), u32(np.asarray(morphing(x))))


def test_stripping_one_wrapper_with_a_folded_batchnorm_keeps_the_folded_bias():
  model = _bn_model()  # conv has use_bias=False, followed by bn1
  wrapped = morph_model(model, "paper", precision={"conv": 1e-6}, fold_batchnorm=True)
  wrapper = wrapped.get_layer("morph_conv")
  layer = strip_morphing(wrapper)
  assert layer.use_bias
  kernel, bias = _folded_by_hand(model.get_layer("conv").weights[0].numpy(), 0.0,
                                 model.get_layer("bn1"), -1)
  np.testing.assert_allclose(layer.bias.numpy(), bias, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(u32(layer.kernel.numpy()),
                                u32(mortar_tf.morph(kernel, "paper", 1e-6, backend="numpy")))
  x = np.random.default_rng(13).standard_normal((2, 7, 7, 3)).astype(np.float32)
  want = model.get_layer("bn1")(model.get_layer("conv")(x), training=False)
  np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_folded_artifact_loads_without_mortar_tf(tmp_path):
  model = _bn_model()
  stripped = strip_morphing(morph_model(model, "paper", precision=0.1, fold_batchnorm=True))
  path = str(tmp_path / "folded.keras")
  stripped.save(path)
  x = np.random.default_rng(14).standard_normal((2, 7, 7, 3)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  np.save(tmp_path / "y.npy", np.asarray(stripped(x)))
  script = textwrap.dedent(f"""
      import os, sys, numpy as np
      if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        import tf_keras as keras
      else:
        import keras
      model = keras.models.load_model({path!r}, compile=False)
      assert "Identity" in {{type(l).__name__ for l in model.layers}}
      y = np.asarray(model(np.load({str(tmp_path / "x.npy")!r})))
      assert np.array_equal(y, np.load({str(tmp_path / "y.npy")!r}))
      assert "mortar_tf" not in sys.modules
      print("OK")
      """)
  result = installed_tool.python("-c", script, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("morph_forward", [False, True])
def test_activity_regularizer_losses_reach_the_model(morph_forward):
  inputs = keras.Input((4,))
  hidden = layers.Dense(3, activity_regularizer=keras.regularizers.L2(0.5), name="fc")(inputs)
  model = _seeded(keras.Model(inputs, layers.Dense(1, name="out")(hidden)))
  x = np.random.default_rng(15).standard_normal((5, 4)).astype(np.float32)
  model(x)
  want = float(sum(np.asarray(l) for l in model.losses))
  wrapped = morph_model(model, "paper", precision=1e-6, morph_forward=morph_forward)
  wrapped(x)
  got = float(sum(np.asarray(l) for l in wrapped.losses))
  assert want > 0 and got == pytest.approx(want, rel=1e-4)
  # and fit minimises it: a loss of zero data error still trains on the penalty
  wrapped.compile(optimizer="sgd", loss="mse")
  history = wrapped.fit(x, np.asarray(wrapped(x)), epochs=1, verbose=0)
  assert history.history["loss"][0] >= got * 0.5


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_morphs_the_float32_masters(policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, name="conv")(inputs)
    x = layers.Flatten()(x)
    outputs = layers.Activation("linear", dtype="float32")(layers.Dense(2, name="fc")(x))
    model = keras.Model(inputs, outputs)
    wrapped = morph_model(model, "paper", precision=0.1)
    data = np.random.default_rng(16).standard_normal((4, 6, 6, 2)).astype(np.float32)
    wrapped.compile(optimizer="sgd", loss="mse")
    wrapped.fit(data, np.zeros((4, 2), np.float32), epochs=1, verbose=0)
    stripped = strip_morphing(wrapped)
    conv = model.get_layer("conv")
    assert conv.kernel.dtype == "float32" or conv.kernel.dtype == tf.float32
    np.testing.assert_array_equal(
        u32(np.asarray(stripped.get_layer("conv").kernel.numpy(), np.float32)),
        u32(mortar_tf.morph(np.asarray(conv.kernel.numpy(), np.float32), "paper", 0.1,
                            backend="numpy")))
    np.testing.assert_array_equal(np.asarray(wrapped(data), np.float32),
                                  np.asarray(stripped(data), np.float32))
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_non_float32_masters_are_a_clear_error():
  keras.mixed_precision.set_global_policy("bfloat16")
  try:
    model = keras.Sequential([keras.Input((4,)), layers.Dense(2, name="fc")])
  finally:
    keras.mixed_precision.set_global_policy("float32")
  with pytest.raises(TypeError, match="fc/kernel.*bfloat16.*mixed_float16"):
    morph_model(model)
  with pytest.raises(TypeError, match="bfloat16"):
    MorphWrapper(model.get_layer("fc"))


def test_preserve_zeros_keeps_a_pruned_kernel_sparse_through_training():
  model = _seeded(keras.Sequential([keras.Input((8,)), layers.Dense(16, name="a"),
                                    layers.Dense(4, name="b")]))
  for layer in model.layers:  # prune half of each kernel by magnitude
    k = layer.kernel.numpy()
    k[np.abs(k) < np.median(np.abs(k))] = 0.0
    layer.kernel.assign(k)
  zeros = {l.name: l.kernel.numpy() == 0 for l in model.layers}
  rng = np.random.default_rng(17)
  x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.standard_normal((32, 4))
  kept = morph_model(model, "paper", precision=0.1, preserve_zeros=True)
  kept.compile(optimizer="adam", loss="mse")
  kept.fit(x, y.astype(np.float32), epochs=2, verbose=0)
  stripped = strip_morphing(kept)
  for name, mask in zeros.items():
    assert mask.mean() >= 0.45
    np.testing.assert_array_equal(stripped.get_layer(name).kernel.numpy() == 0, mask)
  # without the option, training fills the zeros in (the behaviour it exists for)
  lost = morph_model(strip_morphing(kept), "paper", precision=0.1)
  lost.compile(optimizer="adam", loss="mse")
  lost.fit(x, y.astype(np.float32), epochs=2, verbose=0)
  assert (strip_morphing(lost).get_layer("a").kernel.numpy() == 0).mean() < 0.1


class Stubborn(layers.Layer):
  """A layer that cannot be re-created from its own config (as a layer
  TensorFlow revives from a SavedModel without its class)."""

  def __init__(self, units=0, **kwargs):
    super().__init__(**kwargs)
    self.units = units

  def build(self, input_shape):
    if self.units:
      self.w = self.add_weight(name="w", shape=(input_shape[-1], self.units))

  def call(self, x):
    return tf.matmul(x, self.w) if self.units else x * 2.0

  def get_config(self):
    return dict(super().get_config(), units=self.units, sample_rate=22050.0)  # not accepted


def test_a_stateless_layer_without_a_usable_config_is_shared_by_the_copy():
  inputs = keras.Input((4,))
  model = keras.Model(inputs, layers.Dense(2, name="fc")(Stubborn(name="odd")(inputs)))
  stripped = strip_morphing(morph_model(model, "paper", precision=0.1))
  assert stripped.get_layer("odd") is model.get_layer("odd")
  x = np.ones((1, 4), np.float32)
  want = (2 * x) @ mortar_tf.morph(model.get_layer("fc").kernel.numpy(), "paper", 0.1,
                                   backend="numpy") + model.get_layer("fc").bias.numpy()
  np.testing.assert_allclose(np.asarray(stripped(x)), want, rtol=1e-6)


def test_a_stateful_layer_without_a_usable_config_fails_before_training():
  inputs = keras.Input((4,))
  model = keras.Model(inputs, layers.Dense(2, name="fc")(Stubborn(3, name="odd")(inputs)))
  with pytest.raises(ValueError, match="cannot re-create Stubborn 'odd' from its config"):
    morph_model(model, "paper", precision={"fc": 0.1})


def test_misuse_of_strip_find_and_wrap_is_named():
  with pytest.raises(ValueError, match="strip_morphing takes a Keras model"):
    strip_morphing(3)
  with pytest.raises(ValueError, match="find_kernels takes a Keras model"):
    find_kernels("model")
  with pytest.raises(ValueError, match="LayerNormalization.*holds no kernel"):
    MorphWrapper(layers.LayerNormalization())  # unbuilt, but it never has kernels
  plain = keras.Sequential([keras.Input((3,)), layers.Dense(2, name="fc")])
  with pytest.warns(UserWarning, match="holds no MorphWrapper"):
    copy = strip_morphing(plain)
  np.testing.assert_array_equal(copy.get_layer("fc").kernel.numpy(),
                                plain.get_layer("fc").kernel.numpy())


def test_input_names_survive_wrapping_and_stripping():
  a, b = keras.Input((4,)), keras.Input((4,))  # unnamed: Keras names them
  model = keras.Model([a, b], layers.Dense(2, name="fc")(layers.Add()([a, b])))
  assert strip_morphing(morph_model(model, "paper", precision=0.1)).get_config() == \
      model.get_config()


class DenseBN(layers.Layer):
  """A block of our own: Dense then BatchNormalization (state updated in call)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.fc = layers.Dense(3, name="fc")
    self.bn = layers.BatchNormalization(name="bn")

  def build(self, input_shape):
    self.fc.build(input_shape)
    self.bn.build(tuple(input_shape[:-1]) + (3,))

  def call(self, x, training=None):
    return self.bn(self.fc(x), training=training)


def test_updates_inside_a_wrapped_block_are_kept():
  # Keras 3 runs the inner layer in a StatelessScope, which holds updates back
  block = DenseBN(name="block")
  wrapper = MorphWrapper(block, "paper", precision=0.1)
  x = np.random.default_rng(18).normal(3.0, 1.0, (16, 4)).astype(np.float32)
  wrapper(x[:1])
  before = block.bn.moving_mean.numpy().copy()
  wrapper(x, training=True)
  assert not np.array_equal(block.bn.moving_mean.numpy(), before)
  assert [n for n, _, _ in wrapper.morph_targets] == ["fc/kernel"]
