"""Folding a BatchNormalization into the conv/dense layer before it (inference statistics).

One implementation, in TF ops with float64 arithmetic, serves MorphWrapper's
forward pass (where gradients reach the kernel and the BN's gamma and beta)
and strip_morphing / the callback (eagerly), so all of them agree bit for bit.

  scale  = gamma / sqrt(moving_variance + epsilon)
  kernel = kernel * scale   (along the layer's output-channel axis)
  bias   = (bias - moving_mean) * scale + beta
"""

from __future__ import annotations

import tensorflow as tf

from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras


def fold_axes(layer) -> dict | None:
  """{kernel name: output-channel axis or "depthwise"} for a foldable layer, else None.

  A layer with a nonlinearity inside (activation) cannot take the BN in.
  """
  if getattr(layer, "activation", None) not in (None, keras.activations.linear):
    return None
  name = type(layer).__name__
  if name.startswith("SeparableConv"):
    return {"pointwise_kernel": -1}
  if name.startswith("Conv") and name.endswith("Transpose"):
    return {"kernel": -2}
  if name.startswith("DepthwiseConv"):  # Keras 3 names it "kernel", tf_keras "depthwise_kernel"
    return {("kernel" if IS_KERAS3 else "depthwise_kernel"): "depthwise"}
  if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                        keras.layers.Conv3D)):
    return {"kernel": -1}
  return None


def fold(kernels: dict, bias, gamma, beta, mean, variance, epsilon: float, axes: dict):
  """Folded (kernels, bias) as float32 tensors; `bias` may be None (then 0).

  Args:
    kernels: {name: kernel tensor} for the names in `axes`.
    bias, gamma, beta, mean, variance: tensors of the output channels.
    epsilon: the BN's epsilon.
    axes: fold_axes(layer).
  """
  f64 = lambda t: tf.cast(t, tf.float64)  # pylint: disable=unnecessary-lambda-assignment
  scale = f64(gamma) / tf.sqrt(f64(variance) + epsilon)
  folded = {}
  for name, axis in axes.items():
    kernel = f64(kernels[name])
    if axis == "depthwise":  # [k..., cin, mult]: output channel c * mult + j
      factor = tf.reshape(scale, tf.shape(kernel)[-2:])
    else:
      shape = [1] * kernel.shape.rank
      shape[axis] = -1
      factor = tf.reshape(scale, shape)
    folded[name] = tf.cast(kernel * factor, tf.float32)
  base = tf.zeros_like(scale) if bias is None else f64(bias)
  new_bias = tf.cast((base - f64(mean)) * scale + f64(beta), tf.float32)
  return folded, new_bias


def batchnorm_statistics(bn) -> tuple:
  """(gamma, beta, moving_mean, moving_variance) of a BN layer, with 1/0 where absent
  (scale=False, center=False); read from its attributes, as variable objects."""
  mean = tf.convert_to_tensor(bn.moving_mean)
  gamma, beta = getattr(bn, "gamma", None), getattr(bn, "beta", None)
  return (tf.ones_like(mean) if gamma is None else tf.convert_to_tensor(gamma),
          tf.zeros_like(mean) if beta is None else tf.convert_to_tensor(beta),
          mean, tf.convert_to_tensor(bn.moving_variance))
