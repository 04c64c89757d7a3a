"""MorphWrapper: morph-aware training of a layer's kernels, in Keras 3 and tf_keras.

The wrapped layer keeps its float32 master kernels and trains them; its forward
pass multiplies with the morphed kernels (SPEC 2, computed with TF ops only,
so exported models need nothing of ours), and the gradient passes straight
through the morphing to the master kernels. `strip_morphing` (apply.py) turns a
wrapped model back into a plain one whose kernels are the morphed values.

Example:
  >>> from mortar_tf.keras.compat import keras
  >>> layer = MorphWrapper(keras.layers.Dense(2), "fewest_ones", precision=0.1)
  >>> y = layer(np.ones((1, 3), np.float32))
  >>> [name for name, _, _ in layer.morph_targets]
  ['kernel']
"""

from __future__ import annotations

import inspect
from typing import Protocol
from typing import runtime_checkable

import tensorflow as tf

from mortar_tf import bits
from mortar_tf import morph_tf
from mortar_tf.keras import folding
from mortar_tf.keras import weights as weights_lib
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras
from mortar_tf.morphing import MorphSpec


@runtime_checkable
class MorphableLayer(Protocol):
  """A layer of your own that MorphWrapper can morph.

  `get_morphable_weights()` returns [(weight name, layout)] pairs, the layout
  being one of mortar_tf.bits.LAYOUTS or ("einsum", equation); the names are
  the weights' own names (as in `layer.weights`).
  """

  def get_morphable_weights(self) -> list:
    ...


def register_serializable(cls):
  """Registers a class for (de)serialization under the "mortar_tf" package."""
  if IS_KERAS3:
    return keras.saving.register_keras_serializable(package="mortar_tf")(cls)
  return keras.utils.register_keras_serializable(package="mortar_tf")(cls)


def morph_targets_of(layer) -> list[tuple[str, object, dict]]:
  """[(weight name, variable, grouping kwargs)] of the kernels MorphWrapper morphs.

  Raises:
    ValueError: the layer is neither a supported Keras layer nor a MorphableLayer.
  """
  if isinstance(layer, MorphableLayer):
    kinds = {}
    for name, layout in layer.get_morphable_weights():
      if isinstance(layout, tuple):
        kinds[name] = (layout[0], layout[1])
      else:
        kinds[name] = (layout, None)
  else:
    kinds = weights_lib.kernel_layouts(layer)
  if not kinds:
    raise ValueError(
        f"MorphWrapper cannot morph a {type(layer).__name__} layer ({layer.name!r}); supported: "
        "Dense, EinsumDense, Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D, "
        "Conv1D/2D/3DTranspose, or a layer implementing get_morphable_weights() "
        "(mortar_tf.keras.MorphableLayer)")
  targets = []
  for variable in layer.weights:
    name = weights_lib.short_name(variable)
    if name in kinds:
      layout, equation = kinds[name]
      grouping = {"layout": layout}
      if equation is not None:
        grouping["equation"] = equation
      targets.append((name, variable, grouping))
  missing = set(kinds) - {name for name, _, _ in targets}
  if missing:
    raise ValueError(f"{type(layer).__name__} {layer.name!r} has no weights named "
                     f"{sorted(missing)}; it has {[weights_lib.short_name(w) for w in layer.weights]}")
  return targets


@tf.custom_gradient
def _straight_through(value, morphed):
  """Returns `morphed` with the gradient of the identity on `value` (and none on morphed)."""
  def grad(upstream):
    return upstream, tf.zeros_like(upstream)
  return tf.identity(morphed), grad


@register_serializable
class MorphWrapper(keras.layers.Wrapper):
  """Morphs a layer's kernels in its forward pass (TFMOT-style wrapper).

  Args:
    layer: a built or unbuilt Dense, EinsumDense, Conv*, DepthwiseConv*,
      SeparableConv*, Conv*Transpose, or MorphableLayer.
    method, precision, keep_bits, columns, group_size, width: the morphing,
      as for mortar_tf.morph (bitx groups along each kernel's reduction axes).
    morph_forward: False runs the layer with its master kernels (the wrapper
      then only marks what strip_morphing morphs).
    fold_batchnorm_epsilon: set (by morph_model(fold_batchnorm=True)) when a
      BatchNormalization was folded into this layer: its statistics then live
      in the wrapper's bn_* weights and the forward pass folds them in first.
    **kwargs: Keras layer arguments (name, ...).

  Raises:
    ValueError: an unsupported layer or bad morphing arguments.
  """

  def __init__(self, layer, method="paper", precision=None, keep_bits=None, columns=None,
               group_size=None, width=None, morph_forward=True, fold_batchnorm_epsilon=None,
               **kwargs):
    if not isinstance(layer, keras.layers.Layer):
      raise ValueError(f"MorphWrapper wraps a Keras layer, got {type(layer).__name__}")
    kwargs.setdefault("name", f"morph_{layer.name}")
    super().__init__(layer, **kwargs)
    self.spec = MorphSpec.create(method, precision, keep_bits=keep_bits, columns=columns,
                                 group_size=group_size, width=width)
    self.morph_forward = bool(morph_forward)
    self.fold_batchnorm_epsilon = (None if fold_batchnorm_epsilon is None
                                   else float(fold_batchnorm_epsilon))
    if layer.built:
      morph_targets_of(layer)  # fail at wrap time, not at the first call
    if self.fold_batchnorm_epsilon is not None and folding.fold_axes(layer) is None:
      raise ValueError(f"cannot fold a BatchNormalization into {type(layer).__name__} "
                       f"{layer.name!r} (an activation inside, or no per-channel kernel)")

  def build(self, input_shape=None):
    # tf_keras leaves `built` False after a direct build() call; a layer that
    # already has weights must not be built again (that would replace them).
    if not self.layer.built and not self.layer.weights:
      self.layer.build(input_shape)
    self.layer.built = True
    morph_targets_of(self.layer)
    if self.folds_batchnorm:
      # The folded BN's statistics live in the wrapper (TFMOT keeps state in
      # weights too): gamma and beta train, the moving statistics stay frozen.
      channels = self._fold_channels()
      self.bn_gamma = self.add_weight(name="bn_gamma", shape=(channels,), initializer="ones")
      self.bn_beta = self.add_weight(name="bn_beta", shape=(channels,), initializer="zeros")
      self.bn_moving_mean = self.add_weight(name="bn_moving_mean", shape=(channels,),
                                            initializer="zeros", trainable=False)
      self.bn_moving_variance = self.add_weight(name="bn_moving_variance", shape=(channels,),
                                                initializer="ones", trainable=False)
    super().build(input_shape)

  @property
  def folds_batchnorm(self) -> bool:
    """Whether a BatchNormalization was folded into this layer (see morph_model)."""
    return self.fold_batchnorm_epsilon is not None

  def _fold_channels(self) -> int:
    by_name = {weights_lib.short_name(v): v for v in self.layer.weights}
    name, axis = next(iter(folding.fold_axes(self.layer).items()))
    shape = by_name[name].shape
    return int(shape[-2] * shape[-1]) if axis == "depthwise" else int(shape[axis])

  def folded_values(self):
    """({kernel name: folded kernel}, folded bias) from the current weights (tensors)."""
    by_name = {weights_lib.short_name(v): v for v in self.layer.weights}
    axes = folding.fold_axes(self.layer)
    return folding.fold({n: tf.convert_to_tensor(by_name[n]) for n in axes}, by_name.get("bias"),
                        self.bn_gamma, self.bn_beta, self.bn_moving_mean,
                        self.bn_moving_variance, self.fold_batchnorm_epsilon, axes)

  @property
  def morph_targets(self) -> list[tuple[str, object, dict]]:
    """[(weight name, master variable, grouping)] of the morphed kernels."""
    return morph_targets_of(self.layer)

  def morphed_values(self) -> dict[str, tf.Tensor]:
    """{weight name: morphed kernel} from the current master kernels (folded first
    when a BatchNormalization was folded in)."""
    folded = self.folded_values()[0] if self.folds_batchnorm else {}
    return {name: self._morph(folded.get(name, variable), grouping)
            for name, variable, grouping in self.morph_targets}

  def _morph(self, variable, grouping) -> tf.Tensor:
    value = tf.convert_to_tensor(variable)
    axes = ()
    if self.spec.method == "bitx":
      axes = bits.resolve_reduction_axes(tuple(value.shape), **grouping)
    return morph_tf.morph_tensor(value, self.spec, axes)

  if IS_KERAS3:

    def compute_output_spec(self, *args, **kwargs):
      """The inner layer's: morphing never changes shapes, and tracing it
      symbolically (what Keras 3 would do) costs a whole morph graph per wrapper
      each time a functional model is built or cloned."""
      return self.layer.compute_output_spec(*args, **kwargs)

  def _inner_kwargs(self, training):
    """Passes `training` on only to layers whose call takes it (Conv's does not)."""
    if training is None or "training" not in inspect.signature(self.layer.call).parameters:
      return {}
    return {"training": training}

  def call(self, inputs, training=None):
    kwargs = self._inner_kwargs(training)
    if not self.morph_forward and not self.folds_batchnorm:
      return self.layer(inputs, **kwargs)
    replaced = []
    folded, extra_bias = ({}, None)
    if self.folds_batchnorm:
      folded, folded_bias = self.folded_values()
      bias = {weights_lib.short_name(v): v for v in self.layer.weights}.get("bias")
      if bias is not None:
        replaced.append(("bias", bias, folded_bias))
      else:
        extra_bias = folded_bias  # the layer has no bias variable to stand in for
    for name, variable, grouping in self.morph_targets:
      value = folded.get(name, tf.convert_to_tensor(variable))
      if self.morph_forward:
        value = _straight_through(value, self._morph(value, grouping))
      replaced.append((name, variable, value))
    outputs = self._call_with(replaced, inputs, kwargs)
    return outputs if extra_bias is None else outputs + extra_bias

  def _call_with(self, replaced, inputs, kwargs):
    """Runs the inner layer with each (name, variable, tensor) read as the tensor."""
    if IS_KERAS3:
      # Keras 3 kernels are read-only properties on Dense/Conv; the public
      # StatelessScope reads the morphed tensors in place of the variables.
      with keras.StatelessScope(state_mapping=[(v, t) for _, v, t in replaced]):
        return self.layer(inputs, **kwargs)
    # tf_keras keeps kernels in plain attributes: swap them for the call, as
    # TFMOT's QuantizeWrapper does, and put the variables back afterwards.
    # object.__setattr__ bypasses Keras' attribute tracking, which would
    # otherwise untrack and re-append the variable (reordering layer.weights).
    attributes = {name: _attribute_of(self.layer, variable, name) for name, variable, _ in replaced}
    try:
      for name, _, tensor in replaced:
        object.__setattr__(self.layer, attributes[name], tensor)
      return self.layer.call(inputs, **kwargs)
    finally:
      for name, variable, _ in replaced:
        object.__setattr__(self.layer, attributes[name], variable)

  def get_config(self):
    config = super().get_config()
    config.update({key: value for key, value in self.spec.settings().items()})
    config["method"] = self.spec.method
    config["morph_forward"] = self.morph_forward
    config["fold_batchnorm_epsilon"] = self.fold_batchnorm_epsilon
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    if IS_KERAS3:
      inner = keras.saving.deserialize_keras_object(config.pop("layer"),
                                                    custom_objects=custom_objects)
    else:
      inner = keras.layers.deserialize(config.pop("layer"), custom_objects=custom_objects)
    return cls(inner, **config)


def _attribute_of(layer, variable, name: str) -> str:
  """The attribute of a tf_keras layer that holds `variable` (e.g. "kernel")."""
  for attribute in (name, f"_{name}"):
    if getattr(layer, attribute, None) is variable:
      return attribute
  raise ValueError(f"cannot find the attribute of {layer.name!r} that holds its {name!r}")
