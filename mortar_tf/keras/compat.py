"""The one place mortar_tf imports Keras.

Keras 3 by default; tf_keras when TF_USE_LEGACY_KERAS is set to a true value,
as TFMOT does (importing TFMOT sets it for the whole process, so nothing in
mortar_tf may use `tf.keras`, whose meaning that variable changes).
"""

import os

LEGACY = os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")

if LEGACY:
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
else:
  import keras  # pylint: disable=g-import-not-at-top

IS_KERAS3 = keras.__version__.startswith("3.")

__all__ = ["keras", "LEGACY", "IS_KERAS3"]
