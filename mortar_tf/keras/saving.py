"""Reading and writing Keras models: whole files or nothing, plain or compressed.

Example:
  >>> check_path("out/morphed-{epoch}.keras", "keras")
  'out/morphed-{epoch}.keras'
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import re
import shutil
import string
import tempfile
import threading
import zipfile

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
  if fmt == "savedmodel" and filepath.endswith((".keras", ".h5", ".hdf5")):
    raise ValueError(f"format 'savedmodel' writes a directory; {filepath!r} is named like a "
                     "Keras file, which keras.models.load_model would read as one (drop the "
                     "suffix, or use format='keras')")
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


def export_saved_model(model, path: str) -> None:
  """Writes a Keras model as a SavedModel at `path`, not atomically (Keras 3:
  model.export; tf_keras: tf.saved_model.save), with a serving_default
  signature."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mortar_tf.keras import wrapper  # pylint: disable=import-outside-toplevel
  with wrapper.tf_ops_only():  # a wrapped model's graph must not need our op library
    if IS_KERAS3:
      model.export(path, verbose=False)
    else:
      tf.saved_model.save(model, path)


class Substitution:
  """What `substituted_values` did: `available` (this Keras' writer can take
  values in place of variables), `written` (how many it did take)."""

  def __init__(self, values: dict):
    self.values = values  # {id(variable): (variable, value)}
    self.available = False
    self.written = 0

  @property
  def complete(self) -> bool:
    """Every value was written in its variable's place."""
    return self.available and self.written == len(self.values)


_SUBSTITUTING = threading.local()
_HOOK_LOCK = threading.Lock()
_HOOKED = {"count": 0, "original": None}


def _keras3_store():
  """Keras 3's .keras weights store class, or None where its layout is not
  the one this hook knows (a store whose __setitem__ takes the variable)."""
  if not IS_KERAS3:
    return None
  try:
    from keras.src.saving import saving_lib  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  store = getattr(saving_lib, "H5IOStore", None)
  return store if store is not None and "__setitem__" in vars(store) else None


def _setitem(store, key, value):
  """H5IOStore.__setitem__ while a substitution is open on this thread: a
  listed variable is written as its given value."""
  substitution = getattr(_SUBSTITUTING, "current", None)
  if substitution is not None:
    listed = substitution.values.get(id(value))
    if listed is not None and listed[0] is value:
      value = listed[1]
      if isinstance(value, concurrent.futures.Future):
        value = value.result()  # made on another thread (raises its error)
      substitution.written += 1
  return _HOOKED["original"](store, key, value)


@contextlib.contextmanager
def substituted_values(values: dict):
  """Within the block, Keras 3's .keras writer (model.save) on this thread
  stores `values[id(variable)] = (variable, array)`'s array in place of the
  variable's value: a morphed copy is written without assigning to the
  model's variables and restoring them. The array may be a
  concurrent.futures.Future of one, which the writer waits for when it
  reaches the variable (and whose error it raises). Yields a Substitution: where it is
  not `complete` after the save (tf_keras, a sharded or other store, a layer
  that writes a converted copy of its variable), the file holds the
  variables' own values for the missed ones, and the caller must save another
  way.
  """
  substitution = Substitution(values)
  store = _keras3_store()
  if store is None or getattr(_SUBSTITUTING, "current", None) is not None:
    yield substitution
    return
  with _HOOK_LOCK:
    if _HOOKED["count"] == 0:
      _HOOKED["original"] = vars(store)["__setitem__"]
      store.__setitem__ = _setitem
    _HOOKED["count"] += 1
  substitution.available = True
  _SUBSTITUTING.current = substitution
  try:
    yield substitution
  finally:
    _SUBSTITUTING.current = None
    with _HOOK_LOCK:
      _HOOKED["count"] -= 1
      if _HOOKED["count"] == 0:
        store.__setitem__ = _HOOKED["original"]
        _HOOKED["original"] = None


def write_model(model, path: str, fmt: str, compress: bool = False, accept=None) -> bool:
  """Writes beside `path` and renames into place: no partial file is ever left.

  The write goes to a staging directory ".mortar-HOST-PID-..." beside `path`,
  removed afterwards; one that a killed process left is removed by the next
  save into that directory (files.sweep_stale).

  fmt "keras": model.save, then with `compress` the file rewritten deflated
  (compress_keras_file); "savedmodel": Keras 3's model.export, tf_keras'
  tf.saved_model.save (no `compress`: check_compressible says why).
  `accept`: called once the model is written, before it replaces anything;
  where it returns False, nothing is replaced and this returns False.
  """
  if compress:
    check_compressible(path, fmt)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  files.sweep_stale(directory, ".")
  staging = tempfile.mkdtemp(prefix=f".{files.temp_tag()}-", dir=directory)
  try:
    if fmt == "keras":
      temp = os.path.join(staging, os.path.basename(path))
      model.save(temp)
      if accept is not None and not accept():
        return False
      if compress:
        packed = os.path.join(staging, "compressed-" + os.path.basename(path))
        compress_keras_file(temp, packed)
        temp = packed
      files.move_into_place(temp, path)
    else:
      temp = os.path.join(staging, "saved_model")
      export_saved_model(model, temp)
      if accept is not None and not accept():
        return False
      check_replaceable(path)  # again: it may have appeared during training
      files.move_into_place(temp, path)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return True


# --------------------------------------------------------------------------
# Compressed saves: the files plain Keras writes, with their bytes deflated.

# zlib's highest level: the deflate of zip, gzip and HDF5's gzip filter.
DEFLATE_LEVEL = 9
_WHOLE_CHUNK_BYTES = 1 << 30
SAVEDMODEL_HINT = ("for a SavedModel, archive its directory with "
                   "mortar_tf.savedmodel.write_archive(directory, 'model.tar.gz'), or morph an "
                   "unmorphed SavedModel with mortar-morph --archive=model.tar.gz")


def check_compressible(path: str, fmt: str = "keras") -> None:
  """Raises ValueError unless a compressed save can write `path` in `fmt`:
  a ".keras" file (a zip whose members are deflated), or with tf_keras an
  ".h5"/".hdf5" file (HDF5 datasets with the gzip filter). A SavedModel is a
  directory that Keras loads only as files on disk, so no save can compress it
  in place (the message says what to do instead)."""
  path = os.fspath(path)
  if fmt != "keras" or not path.endswith(KERAS_SUFFIXES):
    what = "a SavedModel directory" if fmt == "savedmodel" else repr(path)
    raise ValueError(f"a compressed save writes {' or '.join(KERAS_SUFFIXES)} files, not "
                     f"{what}: {SAVEDMODEL_HINT}")


def compress_keras_file(src: str, dst: str) -> None:
  """Writes `dst`: the Keras file `src` with its bytes deflated at level 9.

  A ".keras" file is a zip that Keras writes with its members stored (its
  weights member, an HDF5 file, uncompressed) and reads through `zipfile`,
  which inflates deflated members transparently: each member is streamed
  into a new zip in order, under its name, deflated (zip64 where a member
  passes 2 GiB). An ".h5"/".hdf5" file (tf_keras) is copied object by object
  into an HDF5 1.10-format file (readable by HDF5 1.10 and later) with every
  non-scalar dataset gzip-filtered (h5py decodes the filter on read);
  attributes, which hold the config and the weight names, are copied
  as they are, and one dataset is in memory at a time.
  """
  if src.endswith(".keras"):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(
        dst, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=DEFLATE_LEVEL) as zout:
      for info in zin.infolist():
        if info.is_dir():
          zout.writestr(info, b"")
          continue
        # Opened by name, a member takes the archive's compression and level
        # (a ZipInfo would keep its own level, settable only through writestr).
        with zin.open(info) as reader, zout.open(
            info.filename, "w", force_zip64=info.file_size >= zipfile.ZIP64_LIMIT) as writer:
          shutil.copyfileobj(reader, writer, 1 << 20)
    return
  import h5py  # pylint: disable=import-outside-toplevel

  def copy_attrs(source, target):
    for key, value in source.attrs.items():
      target.attrs[key] = value

  # HDF5 1.10's file format: its chunk indexes and object headers are far
  # smaller than 1.8's, whose per-dataset B-trees outweigh what deflate saves
  # on the small datasets (BatchNormalization vectors) models are full of.
  with h5py.File(src, "r") as fin, h5py.File(dst, "w", libver=("v110", "latest")) as fout:
    copy_attrs(fin, fout)

    def copy(name, obj):
      if isinstance(obj, h5py.Group):
        copy_attrs(obj, fout.require_group(name))
      elif isinstance(obj, h5py.Dataset):
        deflate = {}
        if obj.shape and obj.size:  # a scalar or empty dataset takes no filter
          deflate = {"compression": "gzip", "compression_opts": DEFLATE_LEVEL,
                     # One chunk per dataset (HDF5 caps a chunk below 4 GiB).
                     "chunks": obj.shape if obj.nbytes < _WHOLE_CHUNK_BYTES else True}
        copy_attrs(obj, fout.create_dataset(name, data=obj[()], dtype=obj.dtype, **deflate))

    fin.visititems(copy)


def save_compressed(model, filepath, *, strip: bool = True) -> str:
  """Saves `model` as a Keras file with its bytes deflated; plain Keras loads it.

  Morphed kernels have runs of trailing zero mantissa bits, which deflate
  (zlib level 9, as zip and gzip use it) shrinks where the original bits
  barely shrink; Keras' own save stores its weights uncompressed. The file is
  what `model.save` writes, its bytes deflated (compress_keras_file): a
  ".keras" zip with deflated members, or with tf_keras an ".h5"/".hdf5" file
  with gzip-filtered datasets. `keras.saving.load_model` (tf_keras:
  `tf_keras.models.load_model`) loads it without mortar_tf, every variable
  bit for bit as saved. Written beside `filepath` and renamed into place: a
  failure leaves no file, and an earlier file at `filepath` is replaced only
  by a whole new one.

  Save a morphed model (mortar_tf.morph_model's plain result, or one holding
  MorphWrappers: with `strip`, it is saved as strip_morphing(model) makes it,
  kernels morphed once and no wrapper left, so Keras alone loads it). An
  unmorphed model is saved compressed as it is (its size is the baseline).

  Args:
    model: a Keras model.
    filepath: a ".keras" file (tf_keras: also ".h5" or ".hdf5"); its
      directory is created if needed.
    strip: save a model holding MorphWrappers stripped (needs a Sequential
      or Functional model); False saves the wrappers, and loading then needs
      `import mortar_tf`.

  Returns:
    `filepath`.

  Raises:
    ValueError: a path that is not a Keras file (a SavedModel directory: the
      message says how to archive one), a directory that cannot be written,
      or a subclassed model holding MorphWrappers with `strip`.

  Example:
    >>> import os, tempfile
    >>> from mortar_tf.keras.compat import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> path = save_compressed(model, os.path.join(tempfile.mkdtemp(), "m.keras"))
    >>> keras.models.load_model(path).count_params()
    10
  """
  path = os.fspath(filepath)
  check_compressible(path)
  check_writable(path, "keras")
  if strip:
    from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
    if any(isinstance(layer, apply.MorphWrapper) for layer in apply.every_layer(model)):
      model = apply.strip_morphing(model)
  write_model(model, path, "keras", compress=True)
  return path
