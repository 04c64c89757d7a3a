"""One compressed file holding a directory (a SavedModel): .tar.gz, .tar.xz or .zip.

A SavedModel is a directory that TensorFlow loads only from disk, so it ships
as an archive. Morphed weights (runs of trailing zero mantissa bits) shrink
far more under compression than the original weights do; the figures that
say by how much are measured by writing the archives, not estimated. No
TensorFlow here: mortar_tf.savedmodel re-exports write_archive.

The archive holds the directory's entries at its root, in sorted order, as
TensorFlow Hub's compressed models do: extract it into an empty directory
(`mkdir m && tar -xzf model.tar.gz -C m`, `unzip model.zip -d m`) and load
that. Tar members carry no user or group names (uid/gid 0). Compression:
gzip and zip deflate at zlib level 9 (what `.keras` files, zip and gzip use),
xz at lzma's default preset 6.

Example:
  >>> archive_format("out/model.tar.gz")
  'tar.gz'
"""

from __future__ import annotations

import dataclasses
import gzip
import lzma
import os
import tarfile
import time
import zipfile

from mortar_tf import files

# suffix -> format; the longest suffix is matched first.
SUFFIXES = {".tar.gz": "tar.gz", ".tgz": "tar.gz", ".tar.xz": "tar.xz", ".txz": "tar.xz",
            ".zip": "zip"}
DEFLATE_LEVEL = 9
COMPRESSION = {"tar.gz": "gzip level 9", "tar.xz": "xz preset 6", "zip": "deflate level 9"}


def archive_format(path: str) -> str:
  """The format an archive path names by its suffix: "tar.gz", "tar.xz" or "zip".

  Raises:
    ValueError: another suffix (the message lists the ones known).
  """
  name = os.fspath(path)
  for suffix in sorted(SUFFIXES, key=len, reverse=True):
    if name.endswith(suffix) and len(os.path.basename(name)) > len(suffix):
      return SUFFIXES[suffix]
  raise ValueError(f"cannot tell the archive format of {name!r}: give a file name ending in "
                   f"{', '.join(SUFFIXES)}")


@dataclasses.dataclass(frozen=True)
class ArchiveReport:
  """An archive written, and what it saves.

  Attributes:
    path: the archive (absolute).
    format: "tar.gz", "tar.xz" or "zip"; compression: its codec and level.
    bytes: the archive's size on disk.
    raw_bytes: the sizes of the files it holds, summed.
    input_bytes: the input SavedModel in an archive of the same format, or
      None when not measured; input_raw_bytes: the input's files, summed.
    seconds: wall time writing the archive (the input's not included).
  """
  path: str
  format: str
  compression: str
  bytes: int
  raw_bytes: int
  input_bytes: int | None = None
  input_raw_bytes: int | None = None
  seconds: float = 0.0

  @property
  def ratio(self) -> float | None:
    """How many times smaller than the input archived alike."""
    return None if not self.input_bytes else self.input_bytes / self.bytes

  def to_dict(self) -> dict:
    return {"path": self.path, "format": self.format, "compression": self.compression,
            "bytes": self.bytes, "raw_bytes": self.raw_bytes, "input_bytes": self.input_bytes,
            "input_raw_bytes": self.input_raw_bytes, "ratio": self.ratio,
            "seconds": self.seconds}

  def lines(self) -> list[str]:
    out = [f"Archive {self.path} ({self.format}, {self.compression}): {self.bytes:,} bytes, "
           f"{self.bytes / max(self.raw_bytes, 1):.3f} of the {self.raw_bytes:,} bytes it "
           f"holds (written in {self.seconds:.1f} s)"]
    if self.input_bytes:
      out.append(f"The input archived alike: {self.input_bytes:,} bytes "
                 f"({self.input_bytes / max(self.input_raw_bytes or 1, 1):.3f} of its "
                 f"{self.input_raw_bytes:,}); the morphed archive is {self.ratio:.3f}x smaller")
    return out


def _entries(directory: str, skip) -> list[str]:
  return sorted(e for e in os.listdir(directory) if e not in skip)


def _tar_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
  info.uid = info.gid = 0
  info.uname = info.gname = ""
  return info


def pack(directory: str, path: str, fmt: str, skip=()) -> None:
  """Writes the archive of `directory` (its entries but `skip` at the root) to
  `path` as it goes (replaced if it exists): the caller makes it atomic
  (write_archive writes a temp file beside the final name)."""
  entries = _entries(directory, skip)
  with open(path, "wb") as sink:
    if fmt == "zip":
      with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED,
                           compresslevel=DEFLATE_LEVEL) as zf:
        for entry in entries:
          for root, dirs, names in _walk(directory, entry):
            dirs.sort()
            rel = os.path.relpath(root, directory)
            if root != directory:
              zf.write(root, rel + "/")
            for name in sorted(names):
              zf.write(os.path.join(root, name), os.path.normpath(os.path.join(rel, name)))
      return
    if fmt == "tar.gz":  # filename "": the gzip header names no file (not this temp one)
      stream = gzip.GzipFile(filename="", mode="wb", compresslevel=DEFLATE_LEVEL, fileobj=sink)
    else:
      stream = lzma.LZMAFile(sink, "wb", preset=6)
    with stream, tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
      for entry in entries:  # tar.add recurses in sorted order
        tar.add(os.path.join(directory, entry), arcname=entry, filter=_tar_member)


def _walk(directory: str, entry: str):
  """os.walk of one root entry of `directory` (a file: one step naming it)."""
  top = os.path.join(directory, entry)
  return os.walk(top) if os.path.isdir(top) else [(directory, [], [entry])]


def raw_size(directory: str, skip=()) -> int:
  """The bytes of the regular files under `directory` (but `skip` at its root)."""
  total = 0
  for entry in _entries(directory, skip):
    for root, _, names in _walk(directory, entry):
      total += sum(os.path.getsize(os.path.join(root, n)) for n in names
                   if not os.path.islink(os.path.join(root, n)))
  return total


def write_archive(directory: str, path: str, *, skip=()) -> ArchiveReport:
  """Writes `directory` (a SavedModel) as one compressed archive at `path`.

  The format comes from the suffix (".tar.gz"/".tgz", ".tar.xz"/".txz",
  ".zip"); the entries of `directory` lie at the archive's root. Written to a
  temp file beside `path` and renamed into place (at the end of the enclosing
  mortar_tf.files.output_set, if any): a failure leaves no file and no temp,
  and an earlier file at `path` is replaced only by a whole new one.

  Args:
    directory: the directory to archive.
    path: the archive to write, outside `directory`.
    skip: names at the directory's root to leave out.

  Returns:
    An ArchiveReport (input_bytes None).

  Raises:
    ValueError: an unknown suffix, `path` inside or equal to `directory`, or
      `directory` not a directory.
    OutputError: the archive cannot be written (the message names it and why).

  Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp(); open(os.path.join(d, "saved_model.pb"), "wb").close()
    >>> write_archive(d, d + ".tar.gz").raw_bytes
    0
  """
  fmt = archive_format(path)
  if not os.path.isdir(directory):
    raise ValueError(f"cannot archive {directory!r}: it is not a directory")
  files.check_apart([("the archive", path, files.FILE)], [("directory", directory)])
  files.check_output_file(path)
  start = time.monotonic()
  with files.replaced(path) as tmp:
    pack(directory, tmp, fmt, skip)
    size = os.path.getsize(tmp)
  return ArchiveReport(os.path.abspath(path), fmt, COMPRESSION[fmt], size,
                       raw_size(directory, skip), seconds=time.monotonic() - start)


def measure_archive(directory: str, fmt: str, scratch: str, skip=()) -> tuple[int, int]:
  """(archive bytes, raw bytes) of `directory` archived in `fmt`, written to a
  file in the directory `scratch` and removed again."""
  path = os.path.join(scratch, f"measure.{fmt}")
  try:
    pack(directory, path, fmt, skip)
    return os.path.getsize(path), raw_size(directory, skip)
  finally:
    if os.path.exists(path):
      os.remove(path)
