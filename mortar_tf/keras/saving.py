"""Reading and writing Keras models: whole files or nothing.

Example:
  >>> check_path("out/morphed-{epoch}.keras", "keras")
  'out/morphed-{epoch}.keras'
"""

from __future__ import annotations

import errno
import os
import shutil
import string
import tempfile

from mortar_tf import files
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

FORMATS = ("keras", "savedmodel")
KERAS_SUFFIXES = (".keras",) if IS_KERAS3 else (".keras", ".h5", ".hdf5")


def load_model(path: str):
  """Loads a .keras or .h5 model without compiling it.

  Raises:
    ValueError: the file cannot be read as a Keras model (the message names it).
  """
  try:
    return keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises many types for a bad file
    raise ValueError(f"cannot load a Keras model from {path!r}: {e}") from e


def check_path(filepath: str, fmt: str) -> str:
  """Validates a save path pattern (`{epoch}`, `{batch}`, logs keys) for `fmt`.

  Raises:
    ValueError: an unknown format, a broken pattern, or a file name Keras
      cannot save `fmt` under.
  """
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  filepath = os.fspath(filepath)
  try:
    fields = {name for _, name, _, _ in string.Formatter().parse(filepath) if name}
    filepath.format(**{name.split(".")[0].split("[")[0]: 1 for name in fields})
  except (ValueError, KeyError, IndexError, AttributeError) as e:
    raise ValueError(f"bad file path pattern {filepath!r}: {e}") from None
  if fmt == "keras" and not filepath.endswith(KERAS_SUFFIXES):
    raise ValueError(f"format 'keras' writes {' or '.join(KERAS_SUFFIXES)} files; "
                     f"{filepath!r} ends otherwise (use format='savedmodel' for a directory)")
  return filepath


def format_path(filepath: str, epoch: int, batch, logs) -> str:
  """The path for one save: `filepath` with {epoch}, {batch} and logs keys filled in.

  Raises:
    ValueError: a placeholder that is none of them (the message lists the keys).
  """
  values = dict(logs or {})
  try:
    return filepath.format(epoch=epoch, batch=batch, **values)
  except (KeyError, IndexError) as e:
    raise ValueError(f"the file path {filepath!r} names {e}, which is neither epoch, batch nor "
                     f"a logs key ({', '.join(sorted(values)) or 'no logs keys'})") from None


def check_exportable(model) -> None:
  """Fails now for a model Keras 3's model.export will refuse at the first save.

  Keras 3 exports a subclassed model only when it knows its input shapes,
  which it records when the model is first built by a call or by
  model.build(shape); it keeps them in the private `_build_shapes_dict`, read
  here and only here (tf_keras' tf.saved_model.save has no such limit).

  Raises:
    ValueError: naming the model and what to do.
  """
  if not IS_KERAS3 or any(cls.__name__ in ("Functional", "Sequential")
                          for cls in type(model).__mro__):
    return
  if not getattr(model, "_build_shapes_dict", None):
    raise ValueError(
        f"Keras 3 cannot export {type(model).__name__} {model.name!r} as a SavedModel: it does "
        "not know the model's input shape (its build() took none). Call the model once on a "
        "batch before fit, or save with format='keras'")


def check_writable(path: str, fmt: str, template: str | None = None) -> None:
  """Creates `path`'s directory if needed and probes it with a file.

  A file is created there and removed (mortar_tf.files.check_writable_dir):
  os.access says yes to root even where nothing can be written (/sys, /proc),
  so only a real file says whether a save will work. Also refuses a path
  taken by the other kind of entry (a directory where a ".keras" file goes,
  a file where a SavedModel directory goes).

  Args:
    path: one save's path (the template filled in).
    fmt: "keras" or "savedmodel".
    template: the path pattern the user gave, named in the messages.

  Raises:
    ValueError: the directory cannot be created or written to, or `path` is
      taken (the message names the template, the directory and why).
  """
  directory = os.path.dirname(path) or "."
  where = f"cannot save to {template or path!r}: "
  head = directory
  while head and not os.path.exists(head) and os.path.dirname(head) != head:
    head = os.path.dirname(head)
  if head and os.path.exists(head) and not os.path.isdir(head):
    raise ValueError(f"{where}cannot create the output directory {directory!r}: {head!r} is a "
                     "file, not a directory")
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    # ENOENT once makedirs made the missing parents: the file system takes no new entries (/proc).
    why = ("its file system takes no new directories" if e.errno == errno.ENOENT
           else files.os_error_reason(e))
    raise ValueError(f"{where}cannot create the output directory {directory!r}: {why}") from None
  try:
    files.check_writable_dir(directory, "output directory")
  except files.OutputError as e:
    raise ValueError(f"{where}{e}") from None
  of = f" (of {template!r})" if template and template != path else ""
  if fmt == "keras" and os.path.isdir(path):
    raise ValueError(f"cannot save to {path!r}{of}: it is a directory, and format 'keras' "
                     "writes a file")
  if fmt == "savedmodel" and os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f"cannot save to {path!r}{of}: it is a file, and format 'savedmodel' "
                     "writes a directory")
  if fmt == "savedmodel":
    check_replaceable(path, of)


# What a SavedModel directory holds; a directory with anything else is not one
# a save may replace.
SAVEDMODEL_ENTRIES = frozenset({"saved_model.pb", "saved_model.pbtxt", "variables", "assets",
                                "assets.extra", "fingerprint.pb", "keras_metadata.pb"})


def check_replaceable(path: str, of: str = "") -> None:
  """Raises ValueError when `path` is a directory a SavedModel save must not
  replace: one that is not empty and is not a SavedModel (the user's files,
  TensorBoard events). An earlier save's SavedModel is replaced, as Keras'
  ModelCheckpoint replaces its own files."""
  if not os.path.isdir(path):
    return
  entries = set(os.listdir(path))
  if entries and ("saved_model.pb" not in entries or not entries <= SAVEDMODEL_ENTRIES):
    shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
    raise ValueError(f"cannot save to {path!r}{of}: it is a directory that is not a "
                     f"SavedModel (it holds {shown}); a save would replace it whole, so it is "
                     "left alone: choose another path")


def template_reaches(template: str, path: str) -> bool:
  """Whether filling the placeholders of the save path `template` ({epoch},
  {batch}, logs values: numbers) can give `path`; the literal directory
  before the first placeholder and `path` are resolved as files.check_apart
  resolves paths (`..`, symlinks)."""
  import re  # pylint: disable=import-outside-toplevel
  pieces = [(text, name) for text, name, _, _ in string.Formatter().parse(template)]
  if all(name is None for _, name in pieces):
    return files.same_path(template, path)
  head, name = pieces[0]
  cut = head.rfind("/") + 1
  pieces[0] = (head[cut:], name)
  base = os.path.realpath(os.path.abspath(head[:cut] or "."))
  number = "[-+0-9.eEinfa ]*"  # what str.format makes of an int or a float
  pattern = re.escape(base.rstrip("/") + "/") + "".join(
      re.escape(text) + (number if name is not None else "") for text, name in pieces)
  return re.fullmatch(pattern, os.path.realpath(os.path.abspath(path))) is not None


def write_model(model, path: str, fmt: str) -> None:
  """Writes beside `path` and renames into place: no partial file is ever left.

  fmt "keras": model.save; "savedmodel": Keras 3's model.export, tf_keras'
  tf.saved_model.save.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".mortar-", dir=directory)
  try:
    if fmt == "keras":
      temp = os.path.join(staging, os.path.basename(path))
      model.save(temp)
      os.replace(temp, path)
    else:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      temp = os.path.join(staging, "saved_model")
      if IS_KERAS3:
        model.export(temp, verbose=False)
      else:
        tf.saved_model.save(model, temp)
      check_replaceable(path)  # again: it may have appeared during training
      if os.path.isdir(path):
        shutil.rmtree(path)
      os.replace(temp, path)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
