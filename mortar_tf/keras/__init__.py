"""Keras integration (Keras 3, or tf_keras with TF_USE_LEGACY_KERAS=1).

Example:
  >>> from mortar_tf.keras import MorphWrapper, morph_model, save_compressed, strip_morphing
"""

from mortar_tf.keras.apply import find_kernels
from mortar_tf.keras.apply import fold_batchnorm
from mortar_tf.keras.apply import morph_model
from mortar_tf.keras.apply import morph_scope
from mortar_tf.keras.apply import strip_morphing
from mortar_tf.keras.calibration import Calibration
from mortar_tf.keras.calibration import compensate_model
from mortar_tf.keras.callbacks import MortarCallback
from mortar_tf.keras.registry import register_kernels
from mortar_tf.keras.saving import save_compressed
from mortar_tf.keras.wrapper import MorphableLayer
from mortar_tf.keras.wrapper import MorphWrapper

__all__ = ["Calibration", "MortarCallback", "MorphWrapper", "MorphableLayer", "compensate_model",
           "find_kernels", "fold_batchnorm", "morph_model", "morph_scope", "register_kernels",
           "save_compressed", "strip_morphing"]
