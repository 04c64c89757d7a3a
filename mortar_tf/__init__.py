"""mortar_tf: mantissa morphing of float32 weights for bit-serial accelerators."""

from mortar_tf.bits import bit_histogram
from mortar_tf.bits import count_ones
from mortar_tf.morphing import MorphSpec
from mortar_tf.morphing import morph

__version__ = "0.1.0"
