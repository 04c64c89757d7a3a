"""Registers mortar_tf's Keras classes with Keras once Keras is loaded.

A model saved while it holds MorphWrappers (an unstripped model, a
ModelCheckpoint of morph-aware training) names "mortar_tf>MorphWrapper" in its
config; Keras can only load it when that class is registered, which happens
when mortar_tf.keras is imported. `import mortar_tf` does not import
TensorFlow, so it cannot import mortar_tf.keras itself; instead it registers
the classes as soon as both TensorFlow and the Keras that mortar_tf.keras would
use are loaded: at once if they already are, else right after the later of
the two finishes importing (a finder on sys.meta_path wraps their loaders and
removes itself once the classes are registered).

`mortar_tf.keras.morph_scope()` is the explicit alternative, like TFMOT's
`quantize_scope()`.
"""

import importlib
import importlib.abc
import os
import sys
import threading
import warnings

_lock = threading.RLock()
_TRIGGERS = ("tensorflow", "keras", "tf_keras")


def _keras_name() -> str:
  """The Keras mortar_tf.keras.compat imports, by the same rule."""
  legacy = os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")
  return "tf_keras" if legacy else "keras"


def _loaded(name: str) -> bool:
  """Whether module `name` is imported and done executing."""
  module = sys.modules.get(name)
  if module is None:
    return False
  spec = getattr(module, "__spec__", None)
  return not getattr(spec, "_initializing", False)


def registered() -> bool:
  """Whether mortar_tf's Keras classes are registered (mortar_tf.keras imported)."""
  return "mortar_tf.keras" in sys.modules


def register_if_ready() -> bool:
  """Imports mortar_tf.keras (which registers its classes) when TensorFlow and
  the Keras it would use are both loaded; True once registered. A failure is a
  warning, never an error in the user's own import."""
  with _lock:
    if not registered():
      if not (_loaded("tensorflow") and _loaded(_keras_name())):
        return False
      try:
        importlib.import_module("mortar_tf.keras")
      except Exception as e:  # pylint: disable=broad-except
        warnings.warn(f"mortar_tf could not register its Keras classes ({type(e).__name__}: "
                      f"{e}); import mortar_tf.keras before loading a model that holds "
                      "MorphWrappers", RuntimeWarning, stacklevel=2)
    _remove_finder()  # registered, or failed for good: nothing left to wait for
    return registered()


class _Loader(importlib.abc.Loader):
  """Runs the real loader, then tries to register."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    # The module's spec must point at the real loader for anything that reads it later.
    module.__spec__.loader = self._loader
    module.__loader__ = self._loader
    self._loader.exec_module(module)
    module.__spec__._initializing = False  # pylint: disable=protected-access
    register_if_ready()

  def __getattr__(self, name):
    return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
  """Wraps the loaders of TensorFlow and Keras (top-level packages only)."""

  def find_spec(self, fullname, path, target=None):
    if fullname not in _TRIGGERS or path is not None:
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(fullname, path, target)
      if spec is not None:
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
          spec.loader = _Loader(spec.loader)
        return spec
    return None


_finder = _Finder()


def _remove_finder():
  if _finder in sys.meta_path:
    sys.meta_path.remove(_finder)


def install():
  """Registers now if TensorFlow and Keras are loaded, else once they are."""
  with _lock:
    if register_if_ready():
      return
    if _finder not in sys.meta_path:
      sys.meta_path.insert(0, _finder)
