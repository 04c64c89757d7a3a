"""Hand-written tf.Modules that tests export as SavedModels: structures Keras
does not produce but real SavedModels hold."""

import numpy as np
import tensorflow as tf


class SlicedWeight(tf.Module):
  """x w + x v[:, :3]: the second weight is cut by a StridedSlice, which the
  graph reader does not trace to a stored tensor (a partly estimated model)."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(5)
    self.w = tf.Variable(rng.standard_normal((6, 3)).astype(np.float32), name="w")
    self.v = tf.Variable(rng.standard_normal((6, 4)).astype(np.float32), name="v")

  @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])
  def __call__(self, x):
    return tf.matmul(x, self.w) + tf.matmul(x, self.v[:, :3])
