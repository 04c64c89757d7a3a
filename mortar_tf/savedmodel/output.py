"""Writing a SavedModel directory safely: one writer per destination, a unique
temp directory beside it, clear errors for I/O faults, nothing left behind.

  with Destination("out/model") as dest:      # refuses if another run holds it
    write_everything_into(dest.tmp)
    dest.publish()                           # renames tmp -> out/model

A destination may be a file (an archive): the run writes it inside its temp
directory and `publish_file` renames it into place.

While a run holds the destination, an exclusive lock (`flock` on
".<name>.mortar-lock" beside it) makes a second run on the same destination
fail at once instead of mixing their files. Each run writes into its own
temp directory (".<name>.<random>.mortar-tmp", with an owner file naming the
process) and removes only that one; temp directories that killed runs left
behind are never deleted, only reported with how to remove them.

Example:
  >>> error = OSError(28, "No space left on device")
  >>> describe_error(error, "out/model")
  "cannot write 'out/model': no space left on the device"
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import socket
import tempfile

from mortar_tf import files

TMP_SUFFIX = ".mortar-tmp"
LOCK_SUFFIX = ".mortar-lock"
OWNER_FILE = ".mortar-owner"


def describe_error(error: BaseException, path: str) -> str:
  """One line for an OS or TensorFlow I/O error while writing `path`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if isinstance(error, tf.errors.ResourceExhaustedError):
    return f"cannot write {path!r}: no space left (TensorFlow: {error.message.splitlines()[0]})"
  if isinstance(error, tf.errors.PermissionDeniedError):
    return f"cannot write {path!r}: permission denied ({error.message.splitlines()[0]})"
  if isinstance(error, tf.errors.OpError):
    return f"cannot write {path!r}: {error.message.splitlines()[0]}"
  return files.describe_os_error(error, path)


@contextlib.contextmanager
def writing(path: str):
  """Turns OS and TensorFlow I/O errors raised in the block into one OutputError."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    yield
  except (OSError, tf.errors.OpError) as e:
    raise files.OutputError(describe_error(e, path)) from e


def lock_path(dst: str) -> str:
  """The lock file a run writing `dst` holds (beside it): an output too."""
  dst = os.path.abspath(dst)
  return os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}{LOCK_SUFFIX}")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def stale_temps(dst: str) -> list[str]:
  """Temp directories beside `dst` that no running process owns (a killed run's)."""
  dst = os.path.abspath(dst)
  pattern = os.path.join(glob.escape(os.path.dirname(dst)),
                         f".{glob.escape(os.path.basename(dst))}.*{TMP_SUFFIX}")
  out = []
  for path in sorted(glob.glob(pattern)):
    try:
      with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as f:
        owner = json.load(f)
      alive = owner.get("host") == socket.gethostname() and _pid_alive(int(owner["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
      alive = False
    if not alive:
      out.append(path)
  return out


class Destination:
  """Exclusive use of an output directory (or file) for one run (a context manager).

  Attributes:
    dst: the destination (absolute).
    what: what it is, in messages ("output", "archive").
    tmp: this run's temp directory (after __enter__).
    stale: temp directories killed runs left beside dst (reported, kept).

  Raises (on entering):
    ValueError: another run holds the destination, or it exists already.
    OutputError: its directory cannot be written.
  """

  def __init__(self, dst: str, what: str = "output"):
    self.dst = os.path.abspath(dst)
    self.what = what
    self.parent = os.path.dirname(self.dst)
    self.lock_path = lock_path(self.dst)
    self.tmp = None
    self.stale: list[str] = []
    self._lock = None
    self._published = False

  def __enter__(self):
    files.check_writable_dir(self.parent, f"{self.what}'s parent directory")
    self._acquire()
    try:
      if os.path.lexists(self.dst):
        raise ValueError(f"{self.what} {self.dst!r} already exists; remove it or choose another "
                         "path")
      self.stale = stale_temps(self.dst)
      with writing(self.parent):
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.dst)}.", suffix=TMP_SUFFIX,
                                    dir=self.parent)
        # mkdtemp makes it 0700; the output is an ordinary directory (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)
        with open(os.path.join(self.tmp, OWNER_FILE), "w", encoding="utf-8") as f:
          json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    except BaseException:
      self._release()
      raise
    return self

  def _acquire(self):
    """flock on the lock file; retried if another run removed the file meanwhile
    (then the lock would be on an unlinked file another run cannot see)."""
    for _ in range(10):
      with writing(self.lock_path):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another run is writing {self.dst!r} (it holds {self.lock_path!r}); "
                         "wait for it to finish or choose another output") from None
      try:
        same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd
        return
      os.close(fd)
    raise ValueError(f"cannot lock {self.lock_path!r}: other runs keep replacing it")

  def _release(self):
    if self._lock is not None:
      with contextlib.suppress(OSError):
        os.unlink(self.lock_path)
      fcntl.flock(self._lock, fcntl.LOCK_UN)
      os.close(self._lock)
      self._lock = None

  def publish(self):
    """Renames the temp directory to the destination (its owner file removed)."""
    with writing(self.dst):
      os.remove(os.path.join(self.tmp, OWNER_FILE))
      if os.path.lexists(self.dst):  # only a writer ignoring the lock gets here
        raise ValueError(f"output {self.dst!r} appeared while this run wrote it")
      os.rename(self.tmp, self.dst)
    self._published = True

  def publish_file(self, path: str):
    """Renames the file `path` (written in the temp directory) to the destination."""
    with writing(self.dst):
      if os.path.lexists(self.dst):  # only a writer ignoring the lock gets here
        raise ValueError(f"{self.what} {self.dst!r} appeared while this run wrote it")
      os.replace(path, self.dst)
    self._published = True

  def unpublish(self):
    """Removes the published destination again (when a later step fails)."""
    if self._published:
      if os.path.isdir(self.dst) and not os.path.islink(self.dst):
        shutil.rmtree(self.dst, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(self.dst)
      self._published = False

  def __exit__(self, exc_type, exc, tb):
    try:
      if exc_type is not None:
        self.unpublish()
      if self.tmp is not None and os.path.isdir(self.tmp):
        shutil.rmtree(self.tmp, ignore_errors=True)
    finally:
      self._release()
    return False

  def stale_note(self) -> list[str]:
    return [f"a killed run left {path!r}: remove it with `rm -r {path}`" for path in self.stale]
