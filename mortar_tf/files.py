"""Output files written whole or not at all, numbers JSON can hold, .npz inputs.

Every report, record and plot is written to a temp name beside its path and
renamed into place, so a failure or a kill never leaves a partial file.
Inside `output_set()`, the renames wait until the whole set is written: a
command that writes a CSV, a JSON and plots leaves all of them or none. Any
OS error while writing becomes an OutputError naming the path and the cause
(read-only file system, permission denied, disk full, ...).

Example:
  >>> finite_or_none(float("inf")) is None
  True
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import shutil
import socket
import sys
import uuid
from typing import Mapping

import numpy as np

_HINTS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "a directory on the way does not exist",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory",
}


class OutputError(ValueError):
  """An output that cannot be written; the message names the path and why."""


def os_error_reason(error: BaseException) -> str:
  """Why an OSError (or TensorFlow's I/O error) happened, in words."""
  code = getattr(error, "errno", None)
  return (_HINTS.get(code) or getattr(error, "strerror", None) or str(error)
          or type(error).__name__)


def describe_os_error(error: BaseException, path: str) -> str:
  """'cannot write PATH: WHY' for an OSError (or TensorFlow's I/O errors)."""
  return f"cannot write {path!r}: {os_error_reason(error)}"


def check_writable_dir(directory: str, what: str = "output directory", role: str = "") -> None:
  """Raises OutputError unless a file can really be created in `directory`.

  Creates and removes an empty hidden file there. Permission bits and
  os.access cannot say it: they answer yes to root everywhere but on a
  read-only mount, yet root cannot create a file in /sys (permission denied)
  or /proc (no such file), and a network mount may refuse what its bits allow.

  Args:
    directory: the directory, as the user named it (the message names it so).
    what: what it is, for the message (e.g. "figures directory").
    role: said after the directory's name (" that would hold ...").

  Raises:
    OutputError: `directory` does not exist, is not a directory, or refuses
      a new file (the message names it and why).
  """
  if not os.path.exists(directory):
    raise OutputError(f"the {what} {directory!r}{role} does not exist")
  if not os.path.isdir(directory):
    raise OutputError(f"the {what} {directory!r}{role} is not a directory")
  probe = os.path.join(directory, f".mortar-probe-{uuid.uuid4().hex[:8]}")
  try:
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
  except OSError as e:
    # ENOENT in a directory that exists: the file system takes no new files (/proc).
    why = ("its file system takes no new files" if e.errno == errno.ENOENT
           else os_error_reason(e))
    raise OutputError(f"cannot write in the {what} {directory!r}{role}: {why}") from e
  try:
    os.remove(probe)
  except OSError as e:
    raise OutputError(f"the {what} {directory!r}{role} lets a file be created but not removed "
                      f"({probe!r} is left there): {e.strerror or e}") from e


def check_creatable_dir(directory: str, what: str = "output directory") -> None:
  """Raises OutputError unless `directory` exists and takes a new file, or can
  be made: its nearest existing ancestor takes one (check_writable_dir)."""
  head = os.path.abspath(directory)
  while not os.path.exists(head):
    parent = os.path.dirname(head)
    if parent == head:
      break
    head = parent
  if head != os.path.abspath(directory):
    check_writable_dir(head, "path" if os.path.lexists(head) and not os.path.isdir(head)
                       else "directory", role=f" that would hold the {what} {directory!r}")
    return
  check_writable_dir(directory, what)


def check_output_file(path: str) -> None:
  """Checks before any work that `path` can be written: its directory exists and
  is writable, and `path` is not a directory."""
  check_writable_dir(os.path.dirname(os.path.abspath(path)), f"directory of {path!r}")
  if os.path.isdir(path):
    raise OutputError(f"{path!r} is a directory, not a file")


FILE, FOLDER, TREE = "file", "folder", "tree"


def _real(path: str) -> str:
  """The path with `..` and every symlink of its existing part resolved. A
  `~` is a name like any other: the writers take paths literally (the shell
  expands `~` before a command sees it), so the rule must too."""
  return os.path.realpath(os.path.abspath(path))


def _under(inner: str, outer: str) -> bool:
  """`inner` equals `outer` or lies below it (both resolved)."""
  return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def same_path(a: str, b: str) -> bool:
  """Whether two paths name one place (after `..` and symlinks), existing or not."""
  return _real(a) == _real(b) or _same_file(a, b)


def _same_file(a: str, b: str) -> bool:
  """Two existing paths that are one file (hard links, bind mounts)."""
  try:
    return os.path.samefile(a, b)
  except OSError:
    return False


def check_apart(outputs, inputs=()) -> None:
  """Refuses, before any work, a path a tool writes that could damage what it reads.

  The rule, for every output of a tool: it is never equal to an input, never
  inside an input directory, and never the same file as an input under
  another name (a symlink, `..`, a hard link); and no two outputs are the
  same path, nor is one output inside a directory another output writes
  whole. Paths are compared after resolving `..` and the symlinks of their
  existing part (`~` is taken literally, as the writers take it).

  Args:
    outputs: (label, path, kind) triples, `label` as the user gave it
      ("--report"); `kind` is FILE (a file written whole), FOLDER (a directory
      the tool writes named files into; list those files as FILE outputs
      too) or TREE (a directory written whole, e.g. a SavedModel: nothing
      else may lie inside it, and no input either).
    inputs: (label, path) pairs of everything the tool reads.

  Raises:
    OutputError: one line naming the output and the path it would damage.

  Example:
    >>> check_apart([("--report", "in/saved_model.pb", FILE)], [("--input", "in")])
    Traceback (most recent call last):
    ...
    mortar_tf.files.OutputError: --report 'in/saved_model.pb' lies inside the input --input 'in': choose a path outside it
  """
  outs = [(label, path, kind, _real(path)) for label, path, kind in outputs if path]
  ins = [(label, path, _real(path)) for label, path in inputs if path]
  for label, path, kind, real in outs:
    for in_label, in_path, in_real in ins:
      if real == in_real or _same_file(path, in_path):
        why = "is" if real == in_real else "is the same file as"
        raise OutputError(f"{label} {path!r} {why} the input {in_label} {in_path!r}: it would "
                          "be overwritten; choose another path")
      if _under(real, in_real):
        raise OutputError(f"{label} {path!r} lies inside the input {in_label} {in_path!r}: "
                          "choose a path outside it")
      if kind == TREE and _under(in_real, real):
        raise OutputError(f"the input {in_label} {in_path!r} lies inside {label} {path!r}, "
                          "which is written whole: choose another path")
  for i, (label, path, kind, real) in enumerate(outs):
    for other_label, other_path, other_kind, other_real in outs[i + 1:]:
      if real == other_real and not kind == other_kind == FOLDER:
        raise OutputError(f"{label} {path!r} and {other_label} {other_path!r} are the same "
                          "path: one would overwrite the other")
      for (a_label, a_path, a_real), (b_label, b_path, b_kind, b_real) in (
          ((label, path, real), (other_label, other_path, other_kind, other_real)),
          ((other_label, other_path, other_real), (label, path, kind, real))):
        if b_kind == TREE and a_real != b_real and _under(a_real, b_real):
          raise OutputError(f"{a_label} {a_path!r} lies inside {b_label} {b_path!r}, which is "
                            "written whole: choose a path outside it")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


@functools.cache
def _renameat2():
  """libc's renameat2, or None (not Linux, or a libc older than glibc 2.28)."""
  if sys.platform != "linux":
    return None
  try:
    function = ctypes.CDLL(None, use_errno=True).renameat2
  except (OSError, AttributeError):
    return None
  function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  function.restype = ctypes.c_int
  return function


def _exchange(a: str, b: str) -> bool:
  """Swaps the names `a` and `b` in one step (Linux renameat2 with
  RENAME_EXCHANGE); False where this system or file system cannot."""
  function = _renameat2()
  if function is None:
    return False
  if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
    return True
  code = ctypes.get_errno()
  if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
    return False  # the file system has no exchange (or a seccomp filter forbids it)
  raise OSError(code, os.strerror(code), b)


def _remove(path: str) -> None:
  """Removes the file or directory tree `path`, as far as it can (no error)."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(OSError):
      os.remove(path)


def move_into_place(tmp: str, path: str) -> None:
  """Gives the finished file or directory `tmp` the name `path` in one step,
  replacing what `path` names (a file by a file, a directory by a directory);
  `path` always names either the old whole or the new whole.

  Where `path` exists, the two names are exchanged (renameat2 with
  RENAME_EXCHANGE) and the old one, now at `tmp`, is removed: ext4 forces
  the new file's blocks to disk when a rename replaces a file
  (auto_da_alloc), which made a 100 MB save 1.2-1.6x slower than writing
  the file in place; an exchange is not treated so. Elsewhere a plain
  os.replace (for a file; a directory is removed first where no exchange
  exists). Like Keras' own saves, nothing is fsynced: this guards against a
  failure or a kill of the writer, not against the machine losing power.
  """
  if not os.path.lexists(path):
    os.rename(tmp, path)
    return
  directory = os.path.isdir(tmp) and not os.path.islink(tmp)
  if directory != (os.path.isdir(path) and not os.path.islink(path)):
    raise OSError(errno.EISDIR if os.path.isdir(path) else errno.ENOTDIR,
                  "a file cannot replace a directory, nor a directory a file", path)
  if _exchange(tmp, path):
    _remove(tmp)  # the old one
    return
  if directory:
    shutil.rmtree(path)
  os.replace(tmp, path)


class _OutputSet:
  """Temp files waiting to be renamed together (and directories made for them)."""

  def __init__(self):
    self.pending: list[tuple[str, str]] = []
    self.made: list[str] = []

  def commit(self):
    for _, path in self.pending:  # what would fail a rename, before the first one
      if os.path.isdir(path):
        raise OutputError(describe_os_error(OSError(errno.EISDIR, "Is a directory"), path))
    for tmp, path in self.pending:
      try:
        move_into_place(tmp, path)
      except OSError as e:
        raise OutputError(describe_os_error(e, path)) from e
    self.pending = []

  def discard(self):
    for tmp, _ in self.pending:
      if os.path.exists(tmp):
        os.remove(tmp)
    self.pending = []
    for directory in reversed(self.made):
      try:
        os.rmdir(directory)  # only if still empty
      except OSError:
        pass
    self.made = []


_ACTIVE: list[_OutputSet] = []


@contextlib.contextmanager
def output_set():
  """Within the block, files written through this module are renamed into place
  only when the block ends without error; on an error none are (and their
  temps are removed)."""
  batch = _OutputSet()
  _ACTIVE.append(batch)
  try:
    yield batch
  except BaseException:
    batch.discard()
    raise
  finally:
    _ACTIVE.remove(batch)
  try:
    batch.commit()
  except BaseException:
    batch.discard()
    raise


def _host_tag() -> str:
  """"mortar-HOST-": the start of temp_tag, the same for every process here."""
  host = "".join(c if c.isalnum() or c in "_." else "_" for c in socket.gethostname()) or "host"
  return f"mortar-{host}-"


def temp_tag() -> str:
  """"mortar-HOST-PID": what names the temp files and directories this process
  writes beside its outputs, so that those a killed process left can be told
  apart and removed (sweep_stale)."""
  return f"{_host_tag()}{os.getpid()}"


def sweep_stale(directory: str, stem: str) -> list[str]:
  """Removes the entries of `directory` named `stem` + "mortar-HOST-PID-..."
  (temp_tag) whose process is dead on this machine: what a process killed
  mid-write left. A live process's, another machine's and any other name are
  kept. Returns the names removed."""
  prefix = stem + _host_tag()
  removed = []
  try:
    names = os.listdir(directory or ".")
  except OSError:
    return removed
  for name in names:
    pid = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
    if not pid.isdigit() or int(pid) == os.getpid():
      continue
    try:
      os.kill(int(pid), 0)
    except ProcessLookupError:
      _remove(os.path.join(directory, name))
      removed.append(name)
    except OSError:  # alive (another user's), or not ours to ask
      pass
  return removed


@contextlib.contextmanager
def replaced(path: str, suffix: str = ".tmp"):
  """Yields a temp path beside `path` (unique, so two writers never share one);
  renames it to `path` if the block succeeds (at the end of the enclosing
  output_set, if any), removes it if the block raises. `suffix` keeps an
  extension that writers infer the format from (e.g. ".tmp.png").

  The temp is named "<path>.mortar-HOST-PID-<random><suffix>"; those that a
  killed process left beside `path` are removed first (sweep_stale).

  Raises:
    OutputError: an OS error while writing or renaming (the message names it).
  """
  sweep_stale(os.path.dirname(path), os.path.basename(path) + ".")
  tmp = f"{path}.{temp_tag()}-{uuid.uuid4().hex[:8]}{suffix}"
  try:
    yield tmp
    if _ACTIVE:
      _ACTIVE[-1].pending.append((tmp, path))
      return
    move_into_place(tmp, path)
  except OSError as e:
    raise OutputError(describe_os_error(e, path)) from e
  finally:
    if not (_ACTIVE and any(t == tmp for t, _ in _ACTIVE[-1].pending)) and os.path.exists(tmp):
      os.remove(tmp)


def make_dirs(directory: str) -> str:
  """os.makedirs(exist_ok=True) with an OutputError for OS errors; inside an
  output_set, directories it creates are removed again if the set fails."""
  missing = []
  head = os.path.abspath(directory)
  while head and not os.path.exists(head):
    missing.append(head)
    head = os.path.dirname(head)
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise OutputError(describe_os_error(e, directory)) from e
  if _ACTIVE:
    _ACTIVE[-1].made += reversed(missing)
  return directory


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically; returns `path`."""
  with replaced(path) as tmp:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
  return path


def write_json(path: str, data) -> str:
  """Writes `data` as indented JSON atomically; NaN or inf is an error
  (strict JSON has neither: pass numbers through finite_or_none first)."""
  return write_text(path, json.dumps(data, indent=1, allow_nan=False))


def finite_or_none(x):
  """`x`, or None where it is None, inf or NaN (JSON has no inf)."""
  return None if x is None or not math.isfinite(x) else x


def finite_tree(tree):
  """`tree` (mappings, lists, tuples, scalars) with inf and NaN as None and
  numpy scalars as Python numbers: what strict JSON can hold."""
  if isinstance(tree, Mapping):
    return {k: finite_tree(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [finite_tree(v) for v in tree]
  if isinstance(tree, np.integer):
    return int(tree)
  if isinstance(tree, (float, np.floating)):
    return finite_or_none(float(tree))
  return tree


def read_npz(path: str, what: str = "data file") -> dict:
  """Every array of an .npz file, or a ValueError naming the problem (a
  missing path, a file numpy cannot read)."""
  if not os.path.isfile(path):
    raise ValueError(f"no such {what}: {path!r}")
  try:
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path!r} is not a readable .npz file: {e}") from e
