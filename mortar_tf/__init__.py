"""mortar_tf: mantissa morphing of float32 weights for bit-serial accelerators.

Importing the package does not import TensorFlow: morphing and counting numpy
arrays run on the C++ kernels over the numpy buffer (or numpy). TensorFlow is
loaded by the modules that need it (mortar_tf.keras, mortar_tf.savedmodel,
mortar_tf.estimator, mortar_tf.ops, ...) when they are imported.

Example:
  >>> import numpy as np, mortar_tf
  >>> mortar_tf.morph(np.float32([1.375]), "paper", precision=0.1)
  array([1.5], dtype=float32)
"""

import importlib

from mortar_tf import _keras_registration
from mortar_tf.backends import aligned_statistics
from mortar_tf.backends import bit_histogram
from mortar_tf.backends import count_ones
from mortar_tf.backends import morph
from mortar_tf.morphing import MorphSpec
from mortar_tf.report import SparsityReport
from mortar_tf.report import sparsity_report

__version__ = "0.1.0"

# A saved model holding MorphWrappers loads after a plain `import mortar_tf`:
# the Keras classes are registered once TensorFlow and Keras are loaded.
_keras_registration.install()

__all__ = [
    "MorphSpec",
    "SparsityReport",
    "aligned_statistics",
    "bit_histogram",
    "count_ones",
    "morph",
    "sparsity_report",
]


def __getattr__(name):
  """`mortar_tf.ops` on first use (it imports TensorFlow; not in __all__, so
  `from mortar_tf import *` does not)."""
  if name == "ops":
    return importlib.import_module("mortar_tf.ops")
  raise AttributeError(f"module 'mortar_tf' has no attribute {name!r}")
