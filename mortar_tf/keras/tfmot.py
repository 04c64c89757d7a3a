"""Morph-aware training through TFMOT's own QAT API (tf_keras only).

    import os; os.environ["TF_USE_LEGACY_KERAS"] = "1"   # before TF/Keras are imported
    import tensorflow_model_optimization as tfmot
    from mortar_tf import MorphSpec
    from mortar_tf.keras import tfmot as mortar_tfmot
    q = tfmot.quantization.keras

    with mortar_tfmot.scope():
      qat = q.quantize_apply(q.quantize_annotate_model(model),
                             scheme=mortar_tfmot.MorphScheme(MorphSpec("paper", 0.1)))
    qat.compile(...); qat.fit(...)
    deployable = mortar_tfmot.strip_morph_quantization(qat)

MorphScheme("paper", precision=0.1) is the same scheme. Layers annotated with
their own MorphQuantizeConfig(MorphSpec("fewest_ones", 0.2)) keep it; layers
without kernels (ReLU, pooling, BN) are left alone.

MorphScheme adds nothing of its own: TFMOT's default scheme would put an 8-bit
QuantizeLayer in front of the annotated layers (and fake-quantize their
outputs), which is not Mortar's arithmetic; with MorphScheme the forward pass
equals MorphWrapper's bit for bit.

This module imports TFMOT when it is imported, and TFMOT switches the whole
process to tf_keras: import it only where tf_keras is the Keras in use
(mortar_tf.keras never imports it by itself).
"""

from __future__ import annotations

import numpy as np

from mortar_tf import backends
from mortar_tf import bits
from mortar_tf import morph_tf
from mortar_tf.keras import apply
from mortar_tf.keras.compat import LEGACY
from mortar_tf.keras.compat import keras
from mortar_tf.keras.wrapper import _straight_through
from mortar_tf.keras.wrapper import kernels_of
from mortar_tf.keras.wrapper import morph_targets_of
from mortar_tf.morphing import as_spec

if not LEGACY:
  raise ImportError(
      "mortar_tf.keras.tfmot needs tf_keras, but this process already chose Keras 3: set "
      "TF_USE_LEGACY_KERAS=1 before TensorFlow and mortar_tf are imported (TFMOT works only "
      "on tf_keras models)")

import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top,wrong-import-position

_quantization = tfmot.quantization.keras


class MorphQuantizer(_quantization.quantizers.Quantizer):
  """Morphs a kernel (TF ops only) with a straight-through gradient."""

  def __init__(self, method="paper", precision=None, *, keep_bits=None, columns=None,
               group_size=None, width=None, reduction_axes=()):
    self.spec = as_spec(method, precision, keep_bits=keep_bits, columns=columns,
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

  Args: the morphing, as mortar_tf.morph: a MorphSpec, or a method name with
    its flat settings.
  """

  def __init__(self, method="paper", precision=None, *, keep_bits=None, columns=None,
               group_size=None, width=None):
    self.spec = as_spec(method, precision, keep_bits=keep_bits, columns=columns,
                        group_size=group_size, width=width)

  def _quantizer(self, variable, grouping):
    axes = ()
    if self.spec.method == "bitx":
      axes = bits.resolve_reduction_axes(tuple(variable.shape), **grouping)
    return MorphQuantizer(self.spec, reduction_axes=axes)

  def get_weights_and_quantizers(self, layer):
    return [(variable, self._quantizer(variable, grouping))
            for _, variable, grouping in morph_targets_of(layer)]

  def get_activations_and_quantizers(self, layer):
    return []

  def set_quantize_weights(self, layer, quantize_weights):
    kernels = kernels_of(layer).kernels
    if len(kernels) != len(quantize_weights):
      raise ValueError(f"expected {len(kernels)} morphed weights for {layer.name!r}, got "
                       f"{len(quantize_weights)}")
    for kernel, value in zip(kernels, quantize_weights):
      if kernel.attribute is None:
        raise ValueError(f"cannot find the attribute of {kernel.owner.name!r} holding "
                         f"{kernel.name!r}")
      # object.__setattr__: tf_keras' tracking would untrack the kernel variable
      # (dropping it from layer.weights) when a tensor replaces it.
      object.__setattr__(kernel.owner, kernel.attribute, value)

  def set_quantize_activations(self, layer, quantize_activations):
    pass

  def get_output_quantizers(self, layer):
    return []

  def get_config(self):
    return dict(self.spec.settings(), method=self.spec.method)


class _LeaveAlone(_quantization.QuantizeConfig):
  """The QuantizeConfig of a layer without kernels (ReLU, pooling, BN): nothing changes."""

  def get_weights_and_quantizers(self, layer):
    return []

  def get_activations_and_quantizers(self, layer):
    return []

  def set_quantize_weights(self, layer, quantize_weights):
    pass

  def set_quantize_activations(self, layer, quantize_activations):
    pass

  def get_output_quantizers(self, layer):
    return []

  def get_config(self):
    return {}


class _NoLayoutChange(_quantization.QuantizeLayoutTransform):
  """Leaves the model as it is (the default scheme inserts an input QuantizeLayer),
  after refusing models whose layers pass Keras masks on: TFMOT's
  QuantizeWrapper does not, so the QAT model would compute something else."""

  def apply(self, model, layer_quantize_map):
    masking = [l.name for l in model.layers
               if getattr(l, "mask_zero", False) or isinstance(l, keras.layers.Masking)]
    if masking:
      raise ValueError(
          f"the model computes Keras masks ({', '.join(masking)}), and TFMOT's "
          "QuantizeWrapper does not pass masks on, so the QAT model would not compute what "
          "the model does: train morph-aware with mortar_tf.keras.morph_model instead "
          "(MorphWrapper passes masks)")
    return model, layer_quantize_map


class _MorphRegistry(_quantization.QuantizeRegistry):
  """Configs for layers annotated without one: MorphQuantizeConfig for layers
  holding kernels (when the scheme was given a morphing), no change for the rest."""

  def __init__(self, settings):
    self.settings = settings

  def supports(self, layer):
    return True

  def get_quantize_config(self, layer):
    try:
      morph_targets_of(layer)
    except ValueError:
      return _LeaveAlone()
    if self.settings is None:
      raise ValueError(
          f"layer {layer.name!r} holds kernels but was annotated without a quantize_config: "
          "give MorphScheme the morphing (MorphScheme('paper', precision=0.1)) or annotate it "
          "with quantize_annotate_layer(..., quantize_config=MorphQuantizeConfig(...))")
    return MorphQuantizeConfig(self.settings)


class MorphScheme(_quantization.QuantizeScheme):
  """A quantize scheme that morphs kernels and quantizes nothing.

  Layers annotated with a MorphQuantizeConfig use it. Layers annotated
  without a config (quantize_annotate_model annotates every layer) get
  MorphQuantizeConfig(method, precision, ...) when they hold kernels and the
  scheme was given a method, and are left alone otherwise (ReLU, pooling,
  normalization).

  Args: the morphing for layers annotated without a config, as
    MorphQuantizeConfig (a MorphSpec, or a method name with its flat
    settings); none means such layers must not hold kernels.

  Attributes:
    settings: the MorphSpec, or None.
  """

  def __init__(self, method=None, precision=None, *, keep_bits=None, columns=None,
               group_size=None, width=None):
    self.settings = None
    if method is not None:
      self.settings = as_spec(method, precision, keep_bits=keep_bits, columns=columns,
                              group_size=group_size, width=width)
    elif (precision, keep_bits, columns, group_size, width) != (None,) * 5:
      raise ValueError("MorphScheme got morphing settings without a method: give the method "
                       "(a name or a MorphSpec) too")

  def get_layout_transformer(self):
    return _NoLayoutChange()

  def get_quantize_registry(self):
    return _MorphRegistry(self.settings)


def scope():
  """tfmot's quantize_scope with this module's classes, for quantize_apply and loading."""
  return _quantization.quantize_scope({"MorphQuantizeConfig": MorphQuantizeConfig,
                                       "MorphQuantizer": MorphQuantizer,
                                       "_LeaveAlone": _LeaveAlone})


def _quantized_weights(wrapper):
  """[(variable, quantizer)] of a TFMOT QuantizeWrapper: the master variables its
  forward pass replaces. TFMOT keeps them only in the private `_weight_vars`
  (after a call the inner layer's attributes hold the quantized tensors)."""
  return [(variable, quantizer) for variable, quantizer, _ in wrapper._weight_vars]  # pylint: disable=protected-access


def strip_morph_quantization(model):
  """A plain Keras model from a model trained with MorphScheme: every
  QuantizeWrapper replaced by a fresh copy of its layer, whose kernels are the
  morphed values of the wrapper's master kernels (as the forward pass used
  them, bit for bit) and whose other variables are copied bit for bit.

  Raises:
    ValueError: a QuantizeWrapper whose quantizers are not mortar_tf's (a model
      quantized with another scheme: use tfmot's own tools for it).
  """
  def unwrap(layer):
    if not isinstance(layer, _quantization.QuantizeWrapper) and \
        type(layer).__name__ not in ("QuantizeWrapper", "QuantizeWrapperV2"):
      return None
    by_id = {}
    for variable, quantizer in _quantized_weights(layer):
      if not isinstance(quantizer, MorphQuantizer):
        raise ValueError(f"layer {layer.name!r} is quantized by {type(quantizer).__name__}, "
                         "not by mortar_tf's MorphQuantizer: strip_morph_quantization only "
                         "strips models trained with MorphScheme / MorphQuantizeConfig")
      value = np.asarray(variable.numpy(), np.float32)
      grouping = {"reduction_axes": quantizer.reduction_axes} if quantizer.spec.method == "bitx" else {}
      by_id[id(variable)] = backends.morph(value, quantizer.spec, **grouping)
    return layer.layer, by_id

  return apply.rebuild(model, unwrap=unwrap)
