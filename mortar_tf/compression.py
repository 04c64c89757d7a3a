"""Compressed size of float32 weights: what morphing saves on a download, measured.

Morphing leaves mantissas with fewer 1 bits and longer runs of trailing
zeros, which a general-purpose compressor packs far tighter. This module
measures it; nothing here is an estimate or a model:

- A tensor's compressed bytes are the length of one zlib stream, level 9
  (deflate, as in zip and gzip files; the zlib container adds 6 bytes to the
  raw deflate), of its float32 values as little-endian bytes in C order. Each
  tensor is compressed alone, so a tensor's bytes do not depend on the others
  and totals are sums.
- `compressed x` = the original tensors' total compressed bytes over the
  morphed tensors' (1.000x for unmorphed weights, like the ones ratios).
- zstd (level ZSTD_LEVEL) is measured beside it where the optional
  `zstandard` package is installed (`pip install mortar_tf[zstd]`); without
  it the zstd figures are None and labelled "not measured".

Cost: deflate at level 9 searches long match chains, and morphed weights are
full of matches: on one core of this project's machine, zlib 9 ran at about
20 MB/s on original kernels and 0.6-2 MB/s on morphed ones (HED's 14.7M
weights: 2.6 s original; 27 s, 63 s and 95 s morphed by fewest_ones at
P = 0.001, 0.01, 0.1). zstd level 9 took 0.4-4 s on the same weights.
`Measurer` runs tensors on parallel threads (zlib and zstandard release the
GIL), one tensor per thread. Memory: each stream is fed 1 MiB slices of the
array's own buffer (no copy for a C-contiguous little-endian float32 array;
other arrays are copied once), plus the compressors' own state (under 1 MiB
each); compressed output is counted and dropped.

Example:
  >>> import numpy as np, zlib
  >>> w = np.float32([[0.1, 0.2], [0.3, 0.4]])
  >>> measure(w).zlib == len(zlib.compress(w.tobytes(), 9))
  True
  >>> CompressedSize.of(measure(w), measure(w)).ratio
  1.0
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import zlib
from typing import Iterable

import numpy as np

ZLIB_LEVEL = 9
# zstd's level: within 7% of level 19's bytes on HED's morphed kernels at 1/20 of its time.
ZSTD_LEVEL = 9
ZSTD_MISSING = ("not measured: the optional zstandard package is not installed "
                "(pip install 'mortar_tf[zstd]')")
LABEL = "zlib level 9 of each tensor's float32 bytes, measured"
_CHUNK = 1 << 20


def _zstd_module():
  try:
    import zstandard  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return zstandard


def zstd_available() -> bool:
  """True when the optional zstandard package can be imported."""
  return _zstd_module() is not None


def _as_bytes(array) -> memoryview:
  """The array's float32 little-endian C-order bytes, as a flat byte view
  (the array's own buffer when it already is one: no copy).

  Raises:
    TypeError: an array that is not float32.
  """
  arr = np.asarray(array)
  if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:  # either byte order
    raise TypeError(f"compressed size is measured on float32 tensors, got {arr.dtype}")
  arr = np.ascontiguousarray(arr, dtype="<f4")
  return memoryview(arr.reshape(-1)).cast("B")


def zlib_size(array) -> int:
  """Bytes of one zlib stream (level 9) of the array's float32 bytes; equal to
  len(zlib.compress(array.astype('<f4').tobytes(), 9)), fed in 1 MiB slices."""
  return _stream_zlib_size(_as_bytes(array))


def _stream_zlib_size(data: memoryview) -> int:
  """Bytes of one zlib stream (level 9) of `data`, fed in 1 MiB slices."""
  stream = zlib.compressobj(ZLIB_LEVEL)
  size = 0
  for start in range(0, len(data), _CHUNK):
    size += len(stream.compress(data[start:start + _CHUNK]))
  return size + len(stream.flush())


def stored_zlib_size(array) -> int:
  """Bytes of one zlib stream (level 9) of an array of any numeric dtype as it
  would be stored: its little-endian values in C order (2 bytes a value for
  float16, 1 for int8). For float32 it equals zlib_size. For comparing other
  formats (float16 casts, int8 tensors) with morphed float32 on one scale."""
  arr = np.asarray(array)
  if arr.dtype.kind not in "fiu":
    raise TypeError(f"compressed size is measured on numeric tensors, got {arr.dtype}")
  return _stream_zlib_size(memoryview(
      np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1)).cast("B"))


def zstd_size(array) -> int | None:
  """Bytes of one zstd frame (level ZSTD_LEVEL, content size recorded) of the
  array's float32 bytes, or None without the zstandard package."""
  zstandard = _zstd_module()
  if zstandard is None:
    return None
  data = _as_bytes(array)
  return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data))


def gzip_file_size(path: str) -> int:
  """Bytes of `gzip -9` of a file (a gzip stream at level 9 without a file
  name in its header: what gzip.compress(data, 9) writes), read in 1 MiB
  slices."""
  stream = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
  size = 0
  with open(path, "rb") as f:
    while True:
      block = f.read(_CHUNK)
      if not block:
        break
      size += len(stream.compress(block))
  return size + len(stream.flush())


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Measured bytes of one tensor (or a sum of tensors).

  Attributes:
    raw: float32 bytes (4 per value).
    zlib: compressed bytes, zlib level 9, each tensor alone.
    zstd: compressed bytes, zstd level ZSTD_LEVEL, or None (not measured).
  """
  raw: int
  zlib: int
  zstd: int | None

  def __add__(self, other: "Sizes") -> "Sizes":
    zstd = None if self.zstd is None or other.zstd is None else self.zstd + other.zstd
    return Sizes(self.raw + other.raw, self.zlib + other.zlib, zstd)


def measure(array, zstd: bool = True) -> Sizes:
  """The measured Sizes of one float32 array (zstd where installed and `zstd`)."""
  arr = np.asarray(array)
  return Sizes(4 * int(arr.size), zlib_size(arr), zstd_size(arr) if zstd else None)


def _ratio(before: int | None, after: int | None) -> float | None:
  if before is None or after is None:
    return None
  if after == 0:
    return 1.0 if before == 0 else float("inf")
  return before / after


@dataclasses.dataclass(frozen=True)
class CompressedSize:
  """Measured compressed bytes of a set of tensors, original against morphed.

  Each tensor is compressed alone and the bytes are summed (module docstring):
  `ratio` is the `compressed x` figure, zlib(original) / zlib(morphed).

  Attributes:
    original, morphed: the summed Sizes of the original and morphed tensors.
    tensors: how many tensors were measured.
  """
  original: Sizes
  morphed: Sizes
  tensors: int = 1

  @classmethod
  def of(cls, original: Sizes, morphed: Sizes) -> "CompressedSize":
    """One tensor's figure."""
    if original.raw != morphed.raw:
      raise ValueError(f"the morphed tensor has {morphed.raw} raw bytes, the original "
                       f"{original.raw}")
    return cls(original, morphed, 1)

  @classmethod
  def total(cls, parts: Iterable["CompressedSize"]) -> "CompressedSize":
    """The sum over tensors (an empty sum: zero bytes, ratio 1.0)."""
    out = cls(Sizes(0, 0, 0), Sizes(0, 0, 0), 0)
    for part in parts:
      out = out + part
    return out

  def __add__(self, other: "CompressedSize") -> "CompressedSize":
    return CompressedSize(self.original + other.original, self.morphed + other.morphed,
                          self.tensors + other.tensors)

  @property
  def raw_bytes(self) -> int:
    return self.original.raw

  @property
  def ratio(self) -> float:
    """zlib bytes of the originals over those of the morphed tensors."""
    return _ratio(self.original.zlib, self.morphed.zlib)

  @property
  def zstd_ratio(self) -> float | None:
    """The same with zstd, or None where zstd was not measured."""
    return _ratio(self.original.zstd, self.morphed.zstd)

  def text(self) -> str:
    """"2.332x (23,464,018 of 54,719,204 bytes, zlib 9; zstd 2.427x)"."""
    out = (f"{self.ratio:.3f}x ({self.morphed.zlib:,} of {self.original.zlib:,} bytes, "
           f"zlib {ZLIB_LEVEL}")
    zstd = self.zstd_ratio
    return out + (f"; zstd {zstd:.3f}x)" if zstd is not None else "; zstd not measured)")

  def to_dict(self) -> dict:
    """JSON-ready (kept short: reports hold one per tensor): {"raw_bytes",
    "tensors", "zlib": {"level", "original_bytes", "morphed_bytes", "ratio"},
    "zstd": the same, or {"level", "not_measured": why}}; ratio = original
    bytes / morphed bytes, each tensor compressed alone (module docstring)."""
    zstd = ({"level": ZSTD_LEVEL, "original_bytes": self.original.zstd,
             "morphed_bytes": self.morphed.zstd, "ratio": self.zstd_ratio}
            if self.zstd_ratio is not None else {"level": ZSTD_LEVEL, "not_measured": ZSTD_MISSING})
    return {"raw_bytes": self.raw_bytes, "tensors": self.tensors,
            "zlib": {"level": ZLIB_LEVEL, "original_bytes": self.original.zlib,
                     "morphed_bytes": self.morphed.zlib, "ratio": self.ratio},
            "zstd": zstd}


def workers() -> int:
  """Threads a Measurer uses by default: the CPUs this process may run on."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


class Measurer:
  """Measures arrays on background threads: submit() returns a future of Sizes.

  At most `threads` arrays are in flight (submit blocks until one is done),
  and with `max_bytes` at most that many bytes of them (a larger array waits
  until nothing else is in flight): memory holds no more than that for
  compression besides what the caller keeps. Use as a context manager
  (threads joined on exit).
  """

  def __init__(self, threads: int | None = None, zstd: bool = True,
               max_bytes: int | None = None):
    self.threads = threads or workers()
    self.zstd = zstd
    self.max_bytes = max_bytes
    self._pool = concurrent.futures.ThreadPoolExecutor(self.threads,
                                                       thread_name_prefix="mortar-compress")
    self._room = threading.Condition()
    self._in_flight = [0, 0]  # arrays, bytes

  def _fits(self, nbytes: int) -> bool:
    arrays, held = self._in_flight
    if arrays >= self.threads:
      return False
    return self.max_bytes is None or arrays == 0 or held + nbytes <= self.max_bytes

  def _done(self, nbytes: int) -> None:
    with self._room:
      self._in_flight[0] -= 1
      self._in_flight[1] -= nbytes
      self._room.notify_all()

  def submit(self, array) -> concurrent.futures.Future:
    nbytes = int(np.asarray(array).nbytes)
    with self._room:
      self._room.wait_for(lambda: self._fits(nbytes))
      self._in_flight[0] += 1
      self._in_flight[1] += nbytes
    try:
      future = self._pool.submit(measure, array, self.zstd)
    except BaseException:
      self._done(nbytes)
      raise
    future.add_done_callback(lambda _: self._done(nbytes))
    return future

  def map(self, arrays) -> list[Sizes]:
    """Sizes of each array, in order."""
    return [f.result() for f in [self.submit(a) for a in arrays]]

  def close(self) -> None:
    self._pool.shutdown(wait=True)

  def __enter__(self) -> "Measurer":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False
