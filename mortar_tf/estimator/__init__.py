"""Accelerator performance estimates from a SavedModel's graph (SPEC 4).

  from mortar_tf import estimator
  result = estimator.estimate("model_dir", input_shape=(1, 224, 224, 3))
  print(result.table())
"""

from mortar_tf.estimator.engines import Engine
from mortar_tf.estimator.engines import MODELS
from mortar_tf.estimator.engines import default_engines
from mortar_tf.estimator.engines import load_engines
from mortar_tf.estimator.estimation import Estimate
from mortar_tf.estimator.estimation import LayerEstimate
from mortar_tf.estimator.estimation import estimate

__all__ = ["Engine", "Estimate", "LayerEstimate", "MODELS", "default_engines", "estimate",
           "load_engines"]
