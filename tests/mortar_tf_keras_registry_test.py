"""The kernel registry (mortar_tf.keras.registry); run under Keras 3 and, via
scripts/test.sh, tf_keras.

Expected layouts are written out from SPEC 3 by hand (which axes a layer sums
over), not read back from the registry.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import analyze
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras import find_kernels
from mortar_tf.keras import morph_model
from mortar_tf.keras import register_kernels
from mortar_tf.keras import registry
from mortar_tf.keras import strip_morphing
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

layers = keras.layers


def _built(layer, *shapes):
  layer(*[np.zeros(s, np.float32) for s in shapes])
  return layer


def _axes(layer):
  return {k.name: k.reduction_axes() for k in find_kernels(layer).kernels}


# (layer factory, input shapes, {kernel name: reduction axes, by SPEC 3})
KINDS = {
    "dense": (lambda: layers.Dense(3), [(1, 4)], {"kernel": (0,)}),
    "einsum": (lambda: layers.EinsumDense("abc,cd->abd", output_shape=(None, 5)), [(1, 2, 4)],
               {"kernel": (0,)}),
    "conv1d": (lambda: layers.Conv1D(2, 3), [(1, 6, 4)], {"kernel": (0, 1)}),
    "conv3d": (lambda: layers.Conv3D(2, 2), [(1, 4, 4, 4, 3)], {"kernel": (0, 1, 2, 3)}),
    "depthwise": (lambda: layers.DepthwiseConv2D(3), [(1, 5, 5, 2)],
                  {("kernel" if IS_KERAS3 else "depthwise_kernel"): (0, 1)}),
    "separable": (lambda: layers.SeparableConv1D(4, 3), [(1, 6, 2)],
                  {"depthwise_kernel": (0,), "pointwise_kernel": (0, 1)}),
    "transpose": (lambda: layers.Conv2DTranspose(3, 2), [(1, 4, 4, 2)], {"kernel": (3,)}),
    "mha": (lambda: layers.MultiHeadAttention(2, 4, name="mha"), [(1, 5, 8), (1, 5, 8)],
            {"query/kernel": (0,), "key/kernel": (0,), "value/kernel": (0,),
             "attention_output/kernel": (0, 1)}),
    "lstm": (lambda: layers.LSTM(3, name="lstm"), [(1, 4, 5)],
             {"lstm_cell/kernel": (0,), "lstm_cell/recurrent_kernel": (0,)}),
    "gru": (lambda: layers.GRU(3, name="gru"), [(1, 4, 5)],
            {"gru_cell/kernel": (0,), "gru_cell/recurrent_kernel": (0,)}),
    "simple_rnn": (lambda: layers.SimpleRNN(3, name="rnn"), [(1, 4, 5)],
                   {"simple_rnn_cell/kernel": (0,), "simple_rnn_cell/recurrent_kernel": (0,)}),
    "conv_lstm": (lambda: layers.ConvLSTM1D(2, 3, name="cl"), [(1, 3, 6, 2)],
                  {"conv_lstm_cell/kernel": (0, 1), "conv_lstm_cell/recurrent_kernel": (0, 1)}),
    "time_distributed": (lambda: layers.TimeDistributed(layers.Dense(3, name="fc")),
                         [(1, 4, 5)], {"fc/kernel": (0,)}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_registered_kind_has_its_kernels_and_axes(kind):
  factory, shapes, expected = KINDS[kind]
  layer = _built(factory(), *shapes)
  got = _axes(layer)
  # tf_keras' ConvLSTM cell and TimeDistributed inner layer sit one level up
  normalise = lambda n: n.replace("conv_lstm_cell/", "").replace(  # pylint: disable=unnecessary-lambda-assignment
      "lstm_cell/", "").replace("gru_cell/", "").replace("simple_rnn_cell/", "")
  assert {normalise(k): v for k, v in got.items()} == {normalise(k): v
                                                      for k, v in expected.items()}
  # each is a variable of the layer, found as an object
  ids = {id(w) for w in layer.weights}
  assert all(id(k.variable) in ids for k in find_kernels(layer).kernels)


def test_bidirectional_gives_each_direction_its_own_kernels():
  bi = _built(layers.Bidirectional(layers.LSTM(3)), (1, 4, 5))
  kernels = find_kernels(bi).kernels
  assert len(kernels) == 4 and len({id(k.variable) for k in kernels}) == 4
  forward = [k for k in kernels if k.name.startswith(bi.forward_layer.name)]
  backward = [k for k in kernels if k.name.startswith(bi.backward_layer.name)]
  assert {id(k.variable) for k in forward} == {id(w) for w in bi.forward_layer.weights
                                               if "kernel" in w.name}
  assert {id(k.variable) for k in backward} == {id(w) for w in bi.backward_layer.weights
                                                if "kernel" in w.name}


def test_subclasses_of_keras_layers_use_their_parents_entry():

  class MyDense(layers.Dense):
    pass

  assert _axes(_built(MyDense(2), (1, 3))) == {"kernel": (0,)}


def test_register_your_own_layer():

  class Bilinear(layers.Layer):

    def build(self, input_shape):
      self.w = self.add_weight(name="w", shape=(input_shape[-1], 4))
      self.scale = self.add_weight(name="scale", shape=(4,))

    def call(self, x):
      return tf.matmul(x, self.w) * self.scale

  layer = _built(Bilinear(name="bil"), (1, 3))
  plan = find_kernels(layer)
  assert plan.kernels == () and {s.code for s in plan.skipped} == {registry.UNREGISTERED,
                                                                   registry.NOT_A_KERNEL}
  register_kernels(Bilinear, {"w": "dense"}, reason="an elementwise scale")
  plan = find_kernels(layer)
  assert [(k.name, k.variable is layer.w) for k in plan.kernels] == [("w", True)]
  assert [s.reason for s in plan.skipped] == ["an elementwise scale of Bilinear"]
  wrapper = MorphWrapper(layer, "paper", precision=0.2)
  x = np.ones((1, 3), np.float32)
  want = (x @ mortar_tf.morph(layer.w.numpy(), "paper", 0.2, backend="numpy")) * \
      layer.scale.numpy()
  np.testing.assert_allclose(np.asarray(wrapper(x)), want, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown layout 'dens'"):
    register_kernels(Bilinear, {"w": "dens"})
  register_kernels(Bilinear, {"nope": "dense"})  # a typo: found when the layer is walked
  with pytest.raises(ValueError, match="attribute 'nope' of Bilinear 'bil'.*variables: w, scale"):
    find_kernels(layer)
  register_kernels(Bilinear, {"w": "dense"})
  with pytest.raises(ValueError, match="Keras layer class"):
    register_kernels(int, {"w": "dense"})


def test_unregistered_weights_are_warned_about_and_vectors_are_not():

  class Mystery(layers.Layer):

    def build(self, input_shape):
      self.m = self.add_weight(name="m", shape=(input_shape[-1], 2))
      self.v = self.add_weight(name="v", shape=(2,))

    def call(self, x):
      return tf.matmul(x, self.m) + self.v

  inputs = keras.Input((3,))
  model = keras.Model(inputs, layers.Dense(2, name="fc")(Mystery(name="mystery")(inputs)))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    plan = registry.find_kernels(model, warn=True)
  assert [k.name for k in plan.kernels] == ["fc/kernel"]
  reasons = {s.name: s.code for s in plan.skipped}
  assert reasons == {"mystery/m": registry.UNREGISTERED, "mystery/v": registry.NOT_A_KERNEL,
                     "fc/bias": registry.NOT_A_KERNEL}
  assert any("mystery/m" in str(w.message) for w in caught)


def test_embeddings_are_lookups_found_only_on_request():
  tokens = keras.Input((4,), dtype="int32")
  model = keras.Model(tokens, layers.Dense(2, name="fc")(layers.Embedding(9, 3, name="emb")(
      tokens)))
  plan = find_kernels(model)
  assert [k.name for k in plan.kernels] == ["fc/kernel"]
  assert [(s.name, s.code) for s in plan.skipped if s.code == registry.LOOKUP] == [
      ("emb/embeddings", registry.LOOKUP)]
  assert [k.name for k in find_kernels(model, embeddings=True).kernels] == [
      "emb/embeddings", "fc/kernel"]


def test_shared_nested_and_duplicate_names():
  shared = layers.Dense(3, name="shared")
  a, b = keras.Input((4,)), keras.Input((4,))
  head = keras.Sequential([keras.Input((6,)), layers.Dense(2, name="logits")], name="head")
  model = keras.Model([a, b], head(layers.Concatenate()([shared(a), shared(b)])))
  assert [k.name for k in find_kernels(model).kernels] == ["shared/kernel", "head/logits/kernel"]

  class Twin(layers.Layer):  # two sublayers of one name (HED-style)

    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.a, self.b = layers.Dense(2, name="d"), layers.Dense(2, name="d")

    def call(self, x):
      return self.b(self.a(x))

  twin = _built(Twin(name="twin"), (1, 3))
  kernels = find_kernels(twin).kernels
  assert [k.name for k in kernels] == ["d/kernel", "d/kernel#2"]
  assert kernels[0].variable is twin.a.kernel and kernels[1].variable is twin.b.kernel


def test_wrappers_are_looked_through_and_their_state_is_not_a_kernel():
  model = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="a"),
                            layers.Dense(2, name="b")])
  wrapped = morph_model(model, "paper", precision=0.1, preserve_zeros=True)
  before = [(k.name, id(k.variable)) for k in find_kernels(model).kernels]
  after = [(k.name, id(k.variable)) for k in find_kernels(wrapped).kernels]
  assert before == after == [("a/kernel", id(model.get_layer("a").kernel)),
                             ("b/kernel", id(model.get_layer("b").kernel))]
  state = [s for s in find_kernels(wrapped).skipped if s.code == registry.WRAPPER_STATE]
  assert len(state) == 2 and all("nonzero_mask" in s.name for s in state)


def test_model_weights_all_lists_every_variable_once():
  model = keras.Sequential([keras.Input((6, 6, 2)), layers.Conv2D(3, 3, name="conv"),
                            layers.BatchNormalization(name="bn"), layers.Flatten(),
                            layers.Dense(2, name="fc")])
  found = registry.model_weights(model, "all")
  assert sorted(id(w.variable) for w in found) == sorted(id(w) for w in model.weights)
  layouts = {w.name: w.layout for w in found}
  assert layouts["conv/kernel"] == "conv" and layouts["fc/kernel"] == "dense"
  assert layouts["bn/gamma"] == "default"
  with pytest.raises(ValueError, match="select"):
    registry.model_weights(model, "some")


def test_mortar_analyze_reads_recurrent_and_attention_kernels(tmp_path):
  tokens = keras.Input((5,), dtype="int32")
  x = layers.Embedding(9, 8, name="emb")(tokens)
  x = layers.MultiHeadAttention(2, 4, name="mha")(x, x)
  x = layers.Bidirectional(layers.GRU(3), name="bi")(x)
  model = keras.Model(tokens, layers.Dense(2, name="fc")(x))
  path = str(tmp_path / ("m.keras" if IS_KERAS3 else "m.h5"))
  model.save(path)
  loaded = analyze.load_weights(path)
  assert len(loaded.weights) == 4 + 4 + 1  # MHA, both GRU directions, fc
  assert "mha/query/kernel" in loaded.weights
  assert loaded.groupings["mha/attention_output/kernel"]["layout"] == "einsum"


def test_lora_layers_are_skipped_with_the_reason():
  dense = _built(layers.Dense(4, name="fc"), (1, 6))
  if not IS_KERAS3:
    assert not hasattr(dense, "enable_lora")  # tf_keras has no LoRA: nothing to guard
    return
  dense.enable_lora(2)
  plan = find_kernels(dense)
  assert plan.kernels == ()
  assert [s.code for s in plan.skipped if s.name == "kernel"] == [registry.LORA]


def test_stripping_through_the_registry_keeps_every_other_variable():
  inputs = keras.Input((5, 8))
  x = layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
  x = layers.LayerNormalization(name="ln")(x)
  model = keras.Model(inputs, layers.TimeDistributed(layers.Dense(3, name="fc"),
                                                     name="td")(x))
  rng = np.random.default_rng(0)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
  stripped = strip_morphing(morph_model(model, "fewest_ones", precision=0.3))
  kernels = {id(k.variable) for k in find_kernels(model).kernels}
  assert len(kernels) == 5
  for a, b in zip(model.weights, stripped.weights):
    want = a.numpy()
    if id(a) in kernels:
      want = mortar_tf.morph(want, "fewest_ones", 0.3, backend="numpy")
    np.testing.assert_array_equal(b.numpy().view(np.uint32), want.view(np.uint32))
