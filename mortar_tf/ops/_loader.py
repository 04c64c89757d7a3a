"""Loads the op library built beside this file (or says why it could not)."""

import glob
import os

import tensorflow as tf

DISABLE_VARIABLE = "MORTAR_TF_DISABLE_OPS"


def load():
  """Returns (library module or None, reason it is None or "")."""
  if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
    return None, f"disabled by {DISABLE_VARIABLE}"
  here = os.path.dirname(os.path.abspath(__file__))
  paths = sorted(glob.glob(os.path.join(here, "_mortar_ops*.so")))
  if not paths:
    return None, f"not built: no _mortar_ops.so in {here} (install with setup.py build_ext)"
  try:
    return tf.load_op_library(paths[0]), ""
  except (tf.errors.NotFoundError, OSError) as e:  # e.g. built against another TensorFlow
    return None, f"cannot load {paths[0]}: {e}"
