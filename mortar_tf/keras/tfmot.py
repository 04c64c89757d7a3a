"""Morph-aware training through TFMOT's own QAT API (tf_keras only).

    import os; os.environ["TF_USE_LEGACY_KERAS"] = "1"   # before TF/Keras are imported
    import tensorflow_model_optimization as tfmot
    from mortar_tf.keras import tfmot as mortar_tfmot

    annotated = tfmot.quantization.keras.quantize_annotate_model(keras.Sequential([
        tfmot.quantization.keras.quantize_annotate_layer(
            keras.layers.Dense(8), quantize_config=mortar_tfmot.MorphQuantizeConfig("paper", 0.1)),
        ...]))
    with mortar_tfmot.scope():
      model = tfmot.quantization.keras.quantize_apply(annotated, scheme=mortar_tfmot.MorphScheme())

MorphScheme adds nothing of its own: TFMOT's default scheme would put an 8-bit
QuantizeLayer in front of the annotated layers (and fake-quantize their
outputs), which is not Mortar's arithmetic; with MorphScheme the forward pass
equals MorphWrapper's bit for bit.

This module imports TFMOT when it is imported, and TFMOT switches the whole
process to tf_keras: import it only where tf_keras is the Keras in use
(mortar_tf.keras never imports it by itself).
"""

from __future__ import annotations

from mortar_tf import bits
from mortar_tf import morph_tf
from mortar_tf.keras.compat import LEGACY
from mortar_tf.keras.wrapper import _straight_through
from mortar_tf.keras.wrapper import morph_targets_of
from mortar_tf.morphing import MorphSpec

if not LEGACY:
  raise ImportError(
      "mortar_tf.keras.tfmot needs tf_keras, but this process already chose Keras 3: set "
      "TF_USE_LEGACY_KERAS=1 before TensorFlow and mortar_tf are imported (TFMOT works only "
      "on tf_keras models)")

import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top,wrong-import-position

_quantization = tfmot.quantization.keras


class MorphQuantizer(_quantization.quantizers.Quantizer):
  """Morphs a kernel (TF ops only) with a straight-through gradient."""

  def __init__(self, method="paper", precision=None, keep_bits=None, columns=None,
               group_size=None, width=None, reduction_axes=()):
    self.spec = MorphSpec.create(method, precision, keep_bits=keep_bits, columns=columns,
                                 group_size=group_size, width=width)
    self.reduction_axes = tuple(reduction_axes)

  def build(self, tensor_shape, name, layer):
    return {}

  def __call__(self, inputs, training, weights, **kwargs):
    return _straight_through(inputs, morph_tf.morph_tensor(inputs, self.spec,
                                                            self.reduction_axes))

  def get_config(self):
    return dict(self.spec.settings(), method=self.spec.method,
                reduction_axes=list(self.reduction_axes))

  def __eq__(self, other):
    return isinstance(other, MorphQuantizer) and self.get_config() == other.get_config()

  def __ne__(self, other):
    return not self == other


class MorphQuantizeConfig(_quantization.QuantizeConfig):
  """Tells TFMOT to morph a layer's kernels (the ones MorphWrapper would) and nothing else.

  Args: the morphing, as mortar_tf.morph.
  """

  def __init__(self, method="paper", precision=None, keep_bits=None, columns=None,
               group_size=None, width=None):
    self.spec = MorphSpec.create(method, precision, keep_bits=keep_bits, columns=columns,
                                 group_size=group_size, width=width)

  def _quantizer(self, variable, grouping):
    axes = ()
    if self.spec.method == "bitx":
      axes = bits.resolve_reduction_axes(tuple(variable.shape), **grouping)
    return MorphQuantizer(self.spec.method, **self.spec.settings(), reduction_axes=axes)

  def get_weights_and_quantizers(self, layer):
    return [(variable, self._quantizer(variable, grouping))
            for _, variable, grouping in morph_targets_of(layer)]

  def get_activations_and_quantizers(self, layer):
    return []

  def set_quantize_weights(self, layer, quantize_weights):
    names = [name for name, _, _ in morph_targets_of(layer)]
    if len(names) != len(quantize_weights):
      raise ValueError(f"expected {len(names)} morphed weights for {layer.name!r}, got "
                       f"{len(quantize_weights)}")
    for name, value in zip(names, quantize_weights):
      # object.__setattr__: tf_keras' tracking would untrack the kernel variable
      # (dropping it from layer.weights) when a tensor replaces it.
      object.__setattr__(layer, name, value)

  def set_quantize_activations(self, layer, quantize_activations):
    pass

  def get_output_quantizers(self, layer):
    return []

  def get_config(self):
    return dict(self.spec.settings(), method=self.spec.method)


class _NoLayoutChange(_quantization.QuantizeLayoutTransform):
  """Leaves the model as it is (the default scheme inserts an input QuantizeLayer)."""

  def apply(self, model, layer_quantize_map):
    return model, layer_quantize_map


class _NothingElse(_quantization.QuantizeRegistry):
  """A registry that quantizes nothing but what MorphQuantizeConfig names."""

  def supports(self, layer):
    return False

  def get_quantize_config(self, layer):
    raise ValueError(f"layer {layer.name!r} has no MorphQuantizeConfig; annotate it with "
                     "quantize_annotate_layer(..., quantize_config=MorphQuantizeConfig(...))")


class MorphScheme(_quantization.QuantizeScheme):
  """A quantize scheme that only applies the MorphQuantizeConfigs of annotated layers."""

  def get_layout_transformer(self):
    return _NoLayoutChange()

  def get_quantize_registry(self):
    return _NothingElse()


def scope():
  """tfmot's quantize_scope with this module's classes, for quantize_apply and loading."""
  return _quantization.quantize_scope({"MorphQuantizeConfig": MorphQuantizeConfig,
                                       "MorphQuantizer": MorphQuantizer})
