"""morph_model, strip_morphing and fold_batchnorm on Functional subclasses (every
keras-hub Backbone is one: a class whose __init__ builds a graph from its own
arguments, calls super().__init__(inputs, outputs) and has its own get_config);
run under Keras 3 and, via scripts/test.sh, tf_keras. The model is the zoo's
ConvBackbone (tests/keras_zoo.py), which also runs through every zoo check."""

import numpy as np
import pytest

import keras_zoo
import mortar_tf
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras import fold_batchnorm
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

layers = keras.layers
PAIRS = keras_zoo.BACKBONE_FOLDS
PLAIN_COPY = "plain Functional model, not a ConvBackbone"


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


def _batch(model):
  return keras_zoo.inputs(model, batch=4, seed=3)


def test_fold_batchnorm_equals_a_hand_fold():
  model = keras_zoo.build("backbone")
  with pytest.warns(UserWarning, match=PLAIN_COPY):
    folded = fold_batchnorm(model)
  kinds = {l.name: type(l).__name__ for l in folded.layers}
  assert [kinds[bn] for _, bn in PAIRS] == ["Identity"] * 3
  for producer, bn in PAIRS:
    kernel, bias = keras_zoo.folded_by_hand(model, producer, bn)
    got = folded.get_layer(producer)
    np.testing.assert_array_equal(u32(got.kernel.numpy()), u32(kernel), err_msg=producer)
    np.testing.assert_array_equal(u32(got.bias.numpy()), u32(bias), err_msg=producer)
  np.testing.assert_array_equal(u32(folded.get_layer("token_embedding").embeddings.numpy()),
                                u32(model.token_embedding.embeddings.numpy()))
  x = _batch(model)
  np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)),
                             rtol=2e-5, atol=2e-5)


def test_morph_model_folds_a_functional_subclass():
  model = keras_zoo.build("backbone")
  x = _batch(model)
  folding_only = morph_model(model, "paper", precision=0.1, morph_forward=False,
                             fold_batchnorm=True)
  np.testing.assert_allclose(np.asarray(folding_only(x)), np.asarray(model(x, training=False)),
                             rtol=2e-5, atol=2e-5)
  wrapped = morph_model(model, "paper", precision=0.1, fold_batchnorm=True)
  assert {l.name for l in wrapped.layers if type(l).__name__ == "Identity"} == {
      bn for _, bn in PAIRS}
  with pytest.warns(UserWarning, match=PLAIN_COPY):
    stripped = strip_morphing(wrapped)
  for producer, bn in PAIRS:
    kernel, _ = keras_zoo.folded_by_hand(model, producer, bn)
    np.testing.assert_array_equal(
        u32(stripped.get_layer(producer).kernel.numpy()),
        u32(mortar_tf.morph(kernel, "paper", 0.1, backend="numpy")), err_msg=producer)
  np.testing.assert_array_equal(u32(np.asarray(stripped(x))), u32(np.asarray(wrapped(x))))


def test_strip_gives_the_class_its_config_and_its_attributes_back():
  model = keras_zoo.build("backbone")
  wrapped = morph_model(model, "fewest_ones", precision=0.1)
  stripped = strip_morphing(wrapped)
  assert type(stripped) is keras_zoo.ConvBackbone
  assert stripped.get_config() == model.get_config()
  assert stripped.token_embedding is stripped.get_layer("token_embedding")
  assert stripped.token_embedding is not model.token_embedding
  assert (stripped.vocab_size, stripped.filters) == (keras_zoo.VOCAB, 6)
  assert not any(isinstance(l, MorphWrapper) for l in stripped.layers)
  assert len(stripped.weights) == len(model.weights)
  for w, source in zip(stripped.weights, model.weights):
    want = source.numpy()
    if keras_zoo.is_kernel(source):
      want = mortar_tf.morph(want, "fewest_ones", 0.1, backend="numpy")
    np.testing.assert_array_equal(u32(w.numpy()), u32(want), err_msg=source.name)
  x = _batch(model)
  np.testing.assert_array_equal(u32(np.asarray(stripped(x))), u32(np.asarray(wrapped(x))))
  # a copy of the unwrapped model (no fold) keeps the class too
  with pytest.warns(UserWarning) as caught:
    plain = strip_morphing(stripped)
  assert [str(w.message) for w in caught if PLAIN_COPY in str(w.message)] == []
  assert type(plain) is keras_zoo.ConvBackbone and plain.get_config() == model.get_config()


def test_a_nested_functional_subclass_comes_back_as_its_class():
  backbone = keras_zoo.build("backbone")
  tokens = keras.Input((10,), dtype="int32", name="tokens")
  outer = keras.Model(tokens, layers.Dense(2, name="head")(backbone(tokens)), name="task")
  stripped = strip_morphing(morph_model(outer, "paper", precision=0.1))
  inner = stripped.get_layer("backbone")
  assert type(inner) is keras_zoo.ConvBackbone
  assert inner.get_config() == backbone.get_config()
  assert inner.token_embedding is inner.get_layer("token_embedding")
  np.testing.assert_array_equal(
      u32(inner.get_layer("mix").kernel.numpy()),
      u32(mortar_tf.morph(backbone.get_layer("mix").kernel.numpy(), "paper", 0.1,
                          backend="numpy")))
  np.testing.assert_array_equal(u32(stripped.get_layer("head").kernel.numpy()), u32(
      mortar_tf.morph(outer.get_layer("head").kernel.numpy(), "paper", 0.1, backend="numpy")))


@keras.utils.register_keras_serializable(package="apply_test")
class Forgetful(keras_zoo.ConvBackbone):
  """A Backbone whose get_config leaves out a constructor argument."""

  def get_config(self):
    config = super().get_config()
    del config["filters"]
    return config


@keras.utils.register_keras_serializable(package="apply_test")
class Liar(keras_zoo.ConvBackbone):
  """A Backbone whose get_config gives a wrong value (another model would come back)."""

  def get_config(self):
    return dict(super().get_config(), filters=self.filters + 1)


@pytest.mark.parametrize("cls,match", [
    (Forgetful, r"cannot re-create Forgetful 'f' from its config \(TypeError: .*filters"),
    (Liar, r"cannot re-create Liar 'f' from its config: its layer 'conv' gets weights of "
           r"shapes \[\(3, 8, 7\)\] instead of \[\(3, 8, 6\)\]"),
])
def test_a_class_that_cannot_rebuild_itself_fails_before_anything_is_cloned(cls, match):
  model = cls(keras_zoo.VOCAB, 8, 6, 10, name="f")
  with pytest.raises(ValueError, match=match):
    morph_model(model, "paper", precision=0.1)
  # folding needs no re-creation: it works, as a plain Functional
  with pytest.warns(UserWarning, match="plain Functional model"):
    assert type(fold_batchnorm(model)).__name__ == "Functional"


class FunctionalArgs(keras.Model):
  """A subclass whose constructor takes Functional's own arguments (tf_keras'
  have `trainable` too): clone_model builds it as cls(inputs, outputs, name)."""

  if IS_KERAS3:
    def __init__(self, inputs, outputs, name=None, **kwargs):
      super().__init__(inputs, outputs, name=name, **kwargs)
  else:
    def __init__(self, inputs, outputs, name=None, trainable=True, **kwargs):
      super().__init__(inputs, outputs, name=name, trainable=trainable, **kwargs)


class StarArgs(keras.Model):
  """A subclass whose constructor takes *args and **kwargs."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)


@pytest.mark.parametrize("cls", [FunctionalArgs, StarArgs])
def test_subclasses_keras_itself_clones_keep_their_class(cls):
  inputs = keras.Input((5,), name="x")
  model = cls(inputs, layers.Dense(3, name="fc")(layers.Dense(4, name="a")(inputs)), name="m")
  if cls is StarArgs and not IS_KERAS3:
    # tf_keras' clone_model makes a plain Functional of it, and its get_config
    # ({name, trainable}) cannot re-create it: refused before any cloning
    with pytest.raises(ValueError, match=r"(?s)cannot re-create StarArgs 'm' from its config .*"
                                         r"keras.Model\(model.input, model.output\)"):
      morph_model(model, "paper", precision=0.1)
    return
  stripped = strip_morphing(morph_model(model, "paper", precision=0.1))
  assert type(stripped) is cls
  assert stripped.get_config() == model.get_config()
  np.testing.assert_array_equal(
      u32(stripped.get_layer("fc").kernel.numpy()),
      u32(mortar_tf.morph(model.get_layer("fc").kernel.numpy(), "paper", 0.1, backend="numpy")))
