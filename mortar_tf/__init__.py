"""mortar_tf: mantissa morphing of float32 weights for bit-serial accelerators.

Example:
  >>> import numpy as np, mortar_tf
  >>> mortar_tf.morph(np.float32([1.375]), "paper", precision=0.1)
  array([1.5], dtype=float32)
"""

from mortar_tf import ops
from mortar_tf.bits import bit_histogram
from mortar_tf.bits import count_ones
from mortar_tf.morphing import MorphSpec
from mortar_tf.morphing import morph
from mortar_tf.report import SparsityReport
from mortar_tf.report import sparsity_report

__version__ = "0.1.0"

__all__ = [
    "MorphSpec",
    "SparsityReport",
    "bit_histogram",
    "count_ones",
    "morph",
    "ops",
    "sparsity_report",
]
