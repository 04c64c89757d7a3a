"""Reads a TensorFlow checkpoint's index and writes it again with new checksums.

A TF2 checkpoint (a "tensor bundle") is `<prefix>.index`, a sorted string
table (LevelDB's table format, uncompressed blocks) mapping each key to a
`BundleEntryProto` (dtype, shape, shard, offset, size, crc32c of the bytes),
and `<prefix>.data-NNNNN-of-MMMMM` files holding the tensors' raw bytes at
those offsets. A morphed variable keeps its dtype, shape and size, so its
bytes can be written at the same offset and only its entry's crc32c changes:
a fixed32 field, the same length whatever its value. `Index.write` writes the
index byte for byte with those four bytes replaced and the checksum of each
block that holds one recomputed. Anything this reader does not expect (a
compressed block, a slice entry, big-endian data) is a BundleError, so that
the caller can take TensorFlow's own route instead.

Example:
  index = Index.read("model/variables/variables")
  entry = index.entries["dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
  index.write("out/variables/variables.index", {entry.key: new_crc})
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Mapping

import numpy as np

from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import tensor_bundle_pb2

from mortar_tf import backends

_MAGIC = 0xdb4775248b80fb57  # LevelDB's table magic (TF's lib/io/table)
_FOOTER = 48
_TRAILER = 5  # a block's type byte and masked crc32c
_MASK_DELTA = 0xa282ead8
_CRC_TAG = (6 << 3) | 5  # BundleEntryProto.crc32c: field 6, fixed32


class BundleError(ValueError):
  """The index is not one this module can rewrite in place."""


def crc32c(data) -> int:
  """CRC-32C of a bytes-like object or an array's bytes (read in place), by
  the native library (hardware crc32 where the CPU has it).

  Raises:
    BundleError: the native library is not built (the caller takes
      TensorFlow's route).
  """
  try:
    return backends.crc32c(data)
  except RuntimeError as e:
    raise BundleError(f"no CRC-32C without the native library: {e}") from None


def checksum(data) -> int:
  """The crc32c a bundle entry stores for these bytes (the CRC-32C, masked
  as LevelDB masks stored checksums)."""
  return masked(crc32c(data))


def masked(crc: int) -> int:
  """A CRC-32C masked as LevelDB stores checksums (what entries hold)."""
  return ((((crc >> 15) | (crc << 17)) & 0xffffffff) + _MASK_DELTA) & 0xffffffff


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    if pos >= len(data) or shift > 63:
      raise BundleError("a varint runs past its block")
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7f) << shift
    if not byte & 0x80:
      return value, pos
    shift += 7


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor of the bundle: where its bytes are and their checksum."""
  key: str
  dtype: int  # a types_pb2 DataType
  shape: tuple[int, ...]
  shard_id: int
  offset: int
  size: int
  crc32c: int  # as stored: checksum() of its bytes
  crc_at: int | None  # offset of the crc32c's 4 bytes in the index file (None: absent)
  sliced: bool
  block: int  # which data block of the index holds it

  @property
  def float32(self) -> bool:
    """Stored as plain little-endian float32 values, whole (not sliced)."""
    return (self.dtype == types_pb2.DT_FLOAT and not self.sliced
            and self.size == 4 * int(np.prod(self.shape, dtype=np.int64)))


def _crc_position(value: bytes) -> int | None:
  """Offset of the crc32c's 4 bytes within an encoded BundleEntryProto."""
  pos, found = 0, None
  while pos < len(value):
    tag, pos = _varint(value, pos)
    wire = tag & 7
    if tag == _CRC_TAG:
      found = pos
      pos += 4
    elif wire == 0:
      _, pos = _varint(value, pos)
    elif wire == 1:
      pos += 8
    elif wire == 2:
      length, pos = _varint(value, pos)
      pos += length
    elif wire == 5:
      pos += 4
    else:
      raise BundleError(f"unexpected wire type {wire} in a bundle entry")
  if pos != len(value):
    raise BundleError("a bundle entry runs past its value")
  return found


@dataclasses.dataclass
class Index:
  """A parsed `<prefix>.index` (header, entries by key, the file's bytes)."""
  path: str
  data: bytes
  num_shards: int
  entries: dict[str, Entry]
  blocks: list[tuple[int, int]]  # (offset, size) of each data block

  @classmethod
  def read(cls, prefix: str) -> "Index":
    """Raises BundleError for an index this module does not rewrite, OSError
    when it cannot be read."""
    path = prefix + ".index"
    with open(path, "rb") as f:
      data = f.read()
    if len(data) < _FOOTER:
      raise BundleError(f"{path} is too short for a table")
    footer = data[-_FOOTER:]
    if struct.unpack("<Q", footer[-8:])[0] != _MAGIC:
      raise BundleError(f"{path} does not end with a table's magic number")
    _, pos = _varint(footer, 0)  # the metaindex block (empty in TF's bundles)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    blocks = [_block_handle(value) for _, value, _ in _block_entries(data, index_offset,
                                                                     index_size)]
    entries, header = {}, None
    for number, (offset, size) in enumerate(blocks):
      for key, value, at in _block_entries(data, offset, size):
        if key == b"":
          header = tensor_bundle_pb2.BundleHeaderProto.FromString(value)
          continue
        proto = tensor_bundle_pb2.BundleEntryProto.FromString(value)
        crc_at = _crc_position(value)
        name = key.decode("utf-8", "surrogateescape")
        entries[name] = Entry(name, proto.dtype, tuple(d.size for d in proto.shape.dim),
                              proto.shard_id, proto.offset, proto.size, proto.crc32c,
                              None if crc_at is None else at + crc_at, bool(proto.slices), number)
    if header is None:
      raise BundleError(f"{path} has no bundle header")
    if header.endianness != tensor_bundle_pb2.BundleHeaderProto.LITTLE:
      raise BundleError(f"{path} holds big-endian data")
    return cls(path, data, max(header.num_shards, 1), entries, blocks)

  def data_path(self, prefix: str, shard_id: int) -> str:
    return f"{prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

  def write(self, path: str, crcs: Mapping[str, int]) -> None:
    """Writes the index to `path` with these entries' crc32c replaced (values
    of checksum(), masked as stored) and the checksums of the blocks holding
    them recomputed; every other byte as read."""
    out = bytearray(self.data)
    touched = set()
    for key, crc in crcs.items():
      entry = self.entries[key]
      if entry.crc_at is None:
        raise BundleError(f"{key}'s entry has no crc32c field to replace")
      struct.pack_into("<I", out, entry.crc_at, crc & 0xffffffff)
      touched.add(entry.block)
    for number in sorted(touched):
      offset, size = self.blocks[number]
      check = crc32c(memoryview(out)[offset:offset + size + 1])  # contents + type byte
      struct.pack_into("<I", out, offset + size + 1, masked(check))
    with open(path, "wb") as f:
      f.write(out)


def _block_handle(value: bytes) -> tuple[int, int]:
  offset, pos = _varint(value, 0)
  size, _ = _varint(value, pos)
  return offset, size


def _block_entries(data: bytes, offset: int, size: int):
  """(key, value, file offset of the value) of each entry of one block,
  after checking the block's trailer (uncompressed, checksum)."""
  end = offset + size
  if end + _TRAILER > len(data) or size < 4:
    raise BundleError("a block runs past the end of the index")
  if data[end] != 0:
    raise BundleError("a block of the index is compressed")
  stored = struct.unpack_from("<I", data, end + 1)[0]
  if masked(crc32c(memoryview(data)[offset:end + 1])) != stored:
    raise BundleError("a block of the index fails its checksum")
  restarts = struct.unpack_from("<I", data, end - 4)[0]
  limit = end - 4 - 4 * restarts
  if limit < offset:
    raise BundleError("a block's restart array is larger than the block")
  pos, key = offset, b""
  while pos < limit:
    shared, pos = _varint(data, pos)
    unshared, pos = _varint(data, pos)
    length, pos = _varint(data, pos)
    if shared > len(key) or pos + unshared + length > limit:
      raise BundleError("an entry runs past its block")
    key = key[:shared] + data[pos:pos + unshared]
    pos += unshared
    yield key, data[pos:pos + length], pos
    pos += length
