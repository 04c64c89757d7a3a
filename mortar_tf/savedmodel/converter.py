"""Writes a copy of a SavedModel whose weight variables are morphed.

Everything but the selected variables is carried over unchanged:
`saved_model.pb` and every other file byte for byte, the other checkpoint
entries (the object graph included) bit for bit. The checkpoint is streamed
in bounded batches (`tf.train.load_checkpoint`, then `SaveV2` per batch and
one `MergeV2Checkpoints`), so memory holds about two of the largest tensor,
never the model.

One run holds the destination at a time (a lock beside it: a second run on
the same output fails at once) and writes into its own temp directory beside
`dst`, renamed into place at the end: on any failure, an I/O fault included
(read-only or full disk, permission denied: one clear OutputError), nothing
is left behind, and temp directories of killed runs are reported, never
deleted. The JSON report is checked before any work and published with the
model. `assets.extra/mortar.json` records what was done; a SavedModel that
carries it is refused unless `force=True`. `fingerprint.pb` holds a
checkpoint hash that the new variables make stale: it is regenerated (or
dropped where TensorFlow cannot regenerate it), and the report says which.
`verify` compares the two models' outputs against a tolerance and fails
(VerificationError, nothing written) when they differ by more. `archive_path`
also (or, without `dst`, only) writes the morphed SavedModel as one
compressed archive (mortar_tf.savedmodel.archive), published with the rest.

Example:
  report = convert("model_dir", "model_morphed", MorphSpec("paper", 0.1), verify=True)
  convert("model_dir", None, "fewest_ones", 0.01, archive_path="model_morphed.tar.gz")
  convert("model_dir", "mixed", "fewest_ones",
          {"conv1": MorphSpec("bitx", columns=8), "*": 0.05})
  print(report.summary())
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import errno
import json
import os
import shutil
import time
import warnings
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from mortar_tf import backends
from mortar_tf import bits
from mortar_tf import compression
from mortar_tf import files
from mortar_tf import morphing
from mortar_tf import precision_map
from mortar_tf import table
from mortar_tf import archive as archive_lib
from mortar_tf.savedmodel import bundle
from mortar_tf.savedmodel import compensate as compensate_lib
from mortar_tf.savedmodel import graph as graph_lib
from mortar_tf.savedmodel import output as output_lib
from mortar_tf.savedmodel import selection
from mortar_tf.savedmodel import variables as variables_lib
from mortar_tf.savedmodel import verify as verify_lib

MORTAR_JSON = os.path.join("assets.extra", "mortar.json")
_MIN_BATCH_BYTES = 32 << 20
_SELECTIONS = ("kernels", "all")
_CHECKPOINT_ROUTES = ("auto", "patch", "tensorflow")
# copy_file_range errors that mean "not here", not "failed".
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM,
                       errno.EBADF}


@dataclasses.dataclass(frozen=True)
class MorphedVariable:
  """One morphed variable: where it is, how it was grouped, its ones and its
  measured compressed bytes before and after (`compressed`, None for an
  unread twin or with compressed=False)."""
  name: str
  key: str
  shape: tuple[int, ...]
  reduction_axes: tuple[int, ...]
  spec: morphing.MorphSpec
  ones_before: Mapping[str, int]
  ones_after: Mapping[str, int]
  max_rel_error: float
  twin_of: str | None = None
  path: str = ""
  display: str = ""
  other_readers: tuple = ()  # ((op name, axes, aligned before, aligned after), ...)
  compressed: compression.CompressedSize | None = None

  def to_dict(self) -> dict:
    return {"name": self.name, "path": self.path, "key": self.key, "shape": list(self.shape),
            "reduction_axes": list(self.reduction_axes), "method": self.spec.method,
            "settings": self.spec.settings(), "ones_before": dict(self.ones_before),
            "ones_after": dict(self.ones_after), "max_rel_error": files.finite_or_none(self.max_rel_error),
            "twin_of": self.twin_of,
            "other_readers": [{"op": op, "reduction_axes": list(axes), "aligned_before": b,
                               "aligned_after": a} for op, axes, b, a in self.other_readers],
            "compressed": None if self.compressed is None else self.compressed.to_dict()}


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What `convert` did.

  Attributes:
    src, dst: the directories.
    method: the morphing method (with a precision map: the method of its
      number entries; each variable's own is in `morphed`); settings: its
      settings, or {"precision_map": the map as JSON, specs as configs}.
    morphed: the morphed variables.
    skipped: (name, reason) for weights left unchanged.
    compressed (property): the morphed variables' measured compressed bytes
      before and after (zlib 9 of each variable alone, zstd where installed;
      twins not counted twice), or None where not measured.
    fingerprint: "regenerated", "dropped" or "absent" (none in the source).
    verification: a verify.Verification (inputs used, per-output differences,
      tolerance), or None.
    notes: things the user should know (stale temp directories of killed runs).
    seconds: wall time.
    compensation: a compensate.Compensation (per kernel compensated or
      plain with the reason, distances, corrected biases / means, the
      calibration settings and sample count), or None.
    archive: an archive.ArchiveReport (its size, the input archived alike),
      or None. `dst` is None when only the archive was written.
    checkpoint: the route that wrote the variables, named as convert's
      `checkpoint` argument names it: "patch" (changed entries written into a
      byte copy) or "tensorflow" (restored and saved by TensorFlow's ops).
  """
  src: str
  dst: str
  method: str
  settings: Mapping[str, object]
  morphed: tuple[MorphedVariable, ...]
  skipped: tuple[tuple[str, str], ...]
  fingerprint: str
  verification: verify_lib.Verification | None
  seconds: float
  group_size: int
  width: int
  notes: tuple[str, ...] = ()
  compensation: object = None
  archive: archive_lib.ArchiveReport | None = None
  checkpoint: str = "patch"

  def totals(self) -> tuple[dict, dict]:
    before = {d: sum(v.ones_before[d] for v in self.morphed if not v.twin_of)
              for d in bits.DOMAINS}
    after = {d: sum(v.ones_after[d] for v in self.morphed if not v.twin_of)
             for d in bits.DOMAINS}
    return before, after

  @property
  def compressed(self) -> compression.CompressedSize | None:
    parts = [v.compressed for v in self.morphed if not v.twin_of]
    if not parts or any(p is None for p in parts):
      return None
    return compression.CompressedSize.total(parts)

  def to_dict(self) -> dict:
    before, after = self.totals()
    measured = self.compressed
    return {"mortar_tf_version": _version(), "src": self.src, "dst": self.dst,
            "method": self.method, "settings": dict(self.settings),
            "group_size": self.group_size, "width": self.width,
            "ones_before": before, "ones_after": after,
            "ratio": {d: bits.sparsity_ratio(before[d], after[d]) for d in bits.DOMAINS},
            "compressed": None if measured is None else measured.to_dict(),
            "variables": [v.to_dict() for v in self.morphed],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "fingerprint": self.fingerprint,
            "verification": None if self.verification is None else self.verification.to_dict(),
            "notes": list(self.notes), "seconds": self.seconds,
            "compensation": None if self.compensation is None else self.compensation.to_dict(),
            "archive": None if self.archive is None else self.archive.to_dict(),
            "checkpoint": self.checkpoint}

  def __str__(self) -> str:
    return self.summary()

  def __repr__(self) -> str:
    passed = "" if self.verification is None else f", verified={self.verification.passed}"
    if self.compensation is not None:
      passed += f", compensated={len(self.compensation.kernels)}"
    return (f"ConversionReport({self.src!r} -> {self._where()!r}, method={self.method!r}, "
            f"morphed={sum(1 for v in self.morphed if not v.twin_of)}, "
            f"skipped={len(self.skipped)}, group_size={self.group_size}, "
            f"width={self.width}{passed})")

  def summary(self) -> str:
    """A per-variable table of ones before/after and the totals, as text
    (aligned ones at the report's G and width, named in the header), with
    `compressed x` where measured (zlib 9 bytes before / after, each
    variable alone; totals in bytes on a line below). What print() shows."""
    total_compressed = self.compressed
    measured = total_compressed is not None
    rows = []
    for v in self.morphed:
      if v.twin_of:
        continue
      setting = ", ".join(f"{k}={val:g}" if isinstance(val, float) else f"{k}={val}"
                          for k, val in v.spec.settings().items()
                          if k not in ("group_size", "width") or v.spec.method != self.method)
      if v.spec.method != self.method:  # a map entry's own method
        setting = f"{v.spec.method} {setting}"
      rows.append([v.display or v.name,
                   "x".join(map(str, v.shape)), setting, v.ones_before["word"],
                   v.ones_after["word"],
                   table.ratio(bits.sparsity_ratio(v.ones_before["word"], v.ones_after["word"])),
                   table.ratio(bits.sparsity_ratio(v.ones_before["aligned"],
                                                   v.ones_after["aligned"])),
                   f"{v.max_rel_error:.3g}"] +
                  ([table.ratio(v.compressed.ratio)] if measured else []))
    before, after = self.totals()
    rows.append(["total", "", "", before["word"], after["word"],
                 table.ratio(bits.sparsity_ratio(before["word"], after["word"])),
                 table.ratio(bits.sparsity_ratio(before["aligned"], after["aligned"])), ""] +
                ([table.ratio(total_compressed.ratio)] if measured else []))
    geometry = bits.geometry_text(self.group_size, self.width)
    parts = [f"Morphed {self.src} -> {self._where()} ({self.method}) in {self.seconds:.1f} s",
             table.format_table(["variable", "shape", "setting", "ones word", "after",
                                 "word x", f"aligned x ({geometry})", "max rel err"] +
                                (["compressed x"] if measured else []), rows,
                                footer_rows=1)]
    if measured:
      parts.append("Compressed, measured (each morphed variable alone): "
                   + total_compressed.text())
    for v in self.morphed:
      for op, axes, before, after in v.other_readers:
        parts.append(f"{v.display or v.name} is also read by {op} with reduction axes "
                     f"{list(axes)}: aligned ones {before} -> {after} "
                     f"({table.ratio(bits.sparsity_ratio(before, after))}) in its groups "
                     f"({geometry})")
    twins = sum(1 for v in self.morphed if v.twin_of)
    if twins:
      parts.append(f"Also morphed alike: {twins} unread twin copies of these variables "
                   "(Keras 3 exports store each variable twice)")
    for name, reason in self.skipped:
      parts.append(f"Left unchanged: {name}: {reason}")
    if self.compensation is not None:
      parts += self.compensation.lines()
    parts.append(f"fingerprint.pb: {self.fingerprint}; checkpoint: "
                 + ("changed entries patched into a byte copy" if self.checkpoint == "patch"
                    else "rewritten by TensorFlow (restore, save)"))
    if self.verification is not None:
      parts += self.verification.lines()
    if self.archive is not None:
      parts += self.archive.lines()
    parts += [f"Note: {note}" for note in self.notes]
    return "\n".join(parts)

  def _where(self) -> str:
    """Where the morphed model went: the directory, the archive, or both."""
    if self.archive is None:
      return self.dst
    return self.archive.path if self.dst is None else f"{self.dst} and {self.archive.path}"

  def write_json(self, path: str) -> None:
    files.write_json(path, self.to_dict())


def _version() -> str:
  import mortar_tf  # pylint: disable=import-outside-toplevel
  return mortar_tf.__version__


def _check_paths(src: str, dst: str | None, report_path: str | None, verify_inputs,
                 compensate=None, archive_path: str | None = None) -> None:
  if not dst and not archive_path:
    raise ValueError("no output directory (dst) or archive (archive_path) given")
  files.check_apart(
      [("dst", dst, files.TREE), ("report_path", report_path, files.FILE),
       ("dst's lock file", dst and output_lib.lock_path(dst), files.FILE),
       ("archive_path", archive_path, files.FILE),
       ("archive_path's lock file", archive_path and output_lib.lock_path(archive_path),
        files.FILE)],
      [("src", src)] + [(name, path) for name, path in (
          ("verify_inputs", verify_inputs),
          ("compensate's calibration inputs", compensate_lib.data_path(compensate)))
                        if isinstance(path, (str, os.PathLike))])
  if archive_path:
    archive_lib.archive_format(archive_path)
  for what, path in (("output", dst), ("archive", archive_path)):
    if not path:
      continue
    if os.path.lexists(path):
      raise ValueError(f"{what} {path!r} already exists; remove it or choose another path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
      raise ValueError(f"the {what}'s parent directory {parent!r} does not exist")


def _nothing_to_morph(src: str, graph, select, skipped) -> str:
  """Why a selection came out empty: the dtypes of what it would have taken,
  or what the compute ops read instead of variables."""
  if select == "kernels":
    read = {op.weight.key for op in graph.mapped if op.weight.kind == "variable"}
    found = [v for v in graph.variables if v.key in read]
    what = "the variables its compute ops read as weights"
  else:
    found = [v for v in graph.variables if v.role == "model"]
    what = "its model variables"
  dtypes: dict[str, int] = {}
  for var in found:
    dtypes[var.dtype] = dtypes.get(var.dtype, 0) + 1
  head = f"nothing to morph in {src!r}"
  if dtypes and "float32" not in dtypes:
    listed = ", ".join(f"{d} ({n})" for d, n in sorted(dtypes.items()))
    return f"{head}: {what} are {listed}, none float32; only float32 weights are morphed"
  if not found:
    constants = sum(1 for op in graph.mapped if op.weight.kind == "constant")
    unmapped = len(graph.ops) - len(graph.mapped)
    return (f"{head}: no compute op of the signature reads a variable ({len(graph.ops)} "
            f"compute ops: {constants} read graph constants, {unmapped} unmapped)")
  return f"{head}: " + "; ".join(f"{name}: {why}" for name, why in skipped[:6])


def read_record(saved_model_dir: str) -> dict | None:
  """The `assets.extra/mortar.json` of a SavedModel morphed by us, or None."""
  path = os.path.join(saved_model_dir, MORTAR_JSON)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# --------------------------------------------------------------------------
# Writing


def _view(t) -> np.ndarray:
  """A read-only numpy view of an eager tensor (Tensor.numpy() would copy it)."""
  return np.asarray(t)


def _ones(t, axes, group_size: int, width: int) -> dict[str, int]:
  """Ones of a float32 tensor in every domain, read in place (numpy view, C++ kernels)."""
  return backends.ones_by_domain(_view(t), reduction_axes=axes, group_size=group_size,
                                 width=width)


def _morph(t: tf.Tensor, target: selection.Target, given=None) -> tf.Tensor:
  """The morphed value of one variable's value `t`, as a tensor.

  `given`: the final value made elsewhere (compensation), used as it is.
  Memory: the result (the op writes TF's buffer; without the op, the native
  kernels read `t` in place and their result is copied once into a tensor).
  """
  spec = target.spec
  if given is not None:
    return tf.constant(np.asarray(given))
  grouping = {"reduction_axes": target.axes} if spec.method == "bitx" else {}
  if backends.op_morphs(spec):  # the same C++ kernels, into TF's buffer: no copy to write it
    return backends.morph(t, spec, **grouping, backend="op")
  return tf.constant(backends.morph(_view(t), spec, **grouping))


def _record(t: tf.Tensor, morphed: tf.Tensor, target: selection.Target, group_size: int,
            width: int) -> MorphedVariable:
  """The MorphedVariable of `t` morphed into `morphed`: ones in every domain
  before and after, the largest relative error (read in place, C++ kernels)."""
  from mortar_tf import report  # pylint: disable=import-outside-toplevel
  axes = target.axes
  original, value = _view(t), _view(morphed)
  before = _ones(original, axes, group_size, width)
  error = report.max_relative_error(original, value)
  after = _ones(value, axes, group_size, width)
  others = tuple((op, tuple(other), _ones(original, other, group_size, width)["aligned"],
                  _ones(value, other, group_size, width)["aligned"])
                 for op, other in target.other_readers)
  return MorphedVariable(target.var.name, target.var.key, target.var.shape, tuple(axes),
                         target.spec, before, after, error, target.twin_of, target.var.path,
                         target.display, others)


# Elements per chunk of the fused morph: a few MiB, so that the morph, the
# counts before and after, the error and both checksums read each chunk while
# it is in cache (one pass over memory instead of ten). Tests make it small.
_CHUNK_ELEMENTS = 1 << 21


def _chunks(view: tuple[int, int, int], group_size: int):
  """Slices (a0, a1, r0, r1) of the [a, r, b] view, in memory order, each
  holding whole groups (G consecutive r for one (a, b)) and each contiguous
  in memory: whole [r, b] planes where they are small, else rows of one plane."""
  a, r, b = view
  if r * b <= _CHUNK_ELEMENTS:
    step = max(1, _CHUNK_ELEMENTS // max(r * b, 1))
    for a0 in range(0, a, step):
      yield a0, min(a, a0 + step), 0, r
    return
  rows = max(group_size, _CHUNK_ELEMENTS // max(b, 1) // group_size * group_size)
  for a0 in range(a):
    for r0 in range(0, r, rows):
      yield a0, a0 + 1, r0, min(r, r0 + rows)


def _fuses(target: selection.Target, shape) -> tuple[int, int, int] | None:
  """The grouped view the fused chunk-by-chunk morph works on, or None where
  it does not apply (bitx, reduction axes with no grouped view, a kernel with
  other readers, no native kernels)."""
  if (target.spec.method == "bitx" or target.other_readers or not backends.native_built()):
    return None
  return bits.grouped_view(shape, target.axes)


class _Recorder:
  """Morphs chunks (native per-word kernels) and sums their record: the ones
  before and after in every domain and the error, each chunk counted while it
  is in cache."""

  def __init__(self, target: selection.Target, group_size: int, width: int):
    self.target, self.group_size, self.width = target, group_size, width
    self.before = {d: 0 for d in bits.DOMAINS}
    self.after = {d: 0 for d in bits.DOMAINS}
    self.error = 0.0

  def morph(self, xc: np.ndarray, yc: np.ndarray) -> None:
    """Morphs xc ([a, r, b] with whole groups along r) into yc, and counts both."""
    backends.morph_words_into(xc, yc, self.target.spec)
    ones_x, ones_y, e = backends.pair_statistics(xc, yc, xc.shape, self.group_size, self.width)
    for d in bits.DOMAINS:
      self.before[d] += ones_x[d]
      self.after[d] += ones_y[d]
    self.error = e if np.isnan(e) or np.isnan(self.error) else max(self.error, e)

  def record(self) -> MorphedVariable:
    t = self.target
    return MorphedVariable(t.var.name, t.var.key, t.var.shape, tuple(t.axes), t.spec,
                           self.before, self.after, self.error, t.twin_of, t.var.path,
                           t.display, ())


def _morph_and_record(original: np.ndarray, out: np.ndarray, target: selection.Target,
                      group_size: int, width: int, emit: Callable[[np.ndarray], None] = None):
  """Morphs `original` into `out` chunk by chunk (_Recorder), with both
  CRC-32Cs; `emit` gets each morphed chunk (in memory order, so that it can be
  written while the next is made). Returns (MorphedVariable, crc of original,
  crc of out), the record the same as _record's (tested), or None where the
  fused morph does not apply (_fuses)."""
  view = _fuses(target, original.shape)
  if view is None:
    return None
  x, y = original.reshape(view), out.reshape(view)
  recorder = _Recorder(target, group_size, width)
  crc_in, crc_out = 0, 0
  for a0, a1, r0, r1 in _chunks(view, group_size):
    xc, yc = x[a0:a1, r0:r1], y[a0:a1, r0:r1]
    recorder.morph(xc, yc)
    crc_in = backends.crc32c(xc, crc_in)
    crc_out = backends.crc32c(yc, crc_out)
    if emit is not None:
      emit(yc)
  return recorder.record(), bundle.masked(crc_in), bundle.masked(crc_out)


class _Buffers:
  """Float32 scratch arrays reused across entries (fresh ones would page-fault
  in every page of every entry, which costs more than reading it)."""

  def __init__(self):
    self._arrays = {}

  def get(self, name: str, size: int) -> np.ndarray:
    array = self._arrays.get(name)
    if array is None or array.size < size:
      array = self._arrays[name] = np.empty(size, np.float32)
    return array[:size]


def _pread_into(fin, array: np.ndarray, offset: int, entry: bundle.Entry, src: str) -> None:
  """Fills `array` (contiguous) with the bytes of fin from `offset`, inside `entry`."""
  raw = memoryview(array).cast("B")
  done = 0
  while done < len(raw):
    n = os.preadv(fin.fileno(), [raw[done:]], offset + done)
    if n <= 0:
      raise variables_lib.SavedModelError(f"the variables of {src!r} end inside {entry.key}")
    done += n


def _stream_and_record(fin, fout, entry: bundle.Entry, target: selection.Target,
                       group_size: int, width: int, reader, io, buffers: _Buffers, src: str):
  """The fused morph of one entry straight from its data file to fout, a chunk
  at a time through two input and two output buffers: `reader` reads chunk
  k + 1 (and runs the CRC of the original) while this thread morphs and counts
  chunk k and `io` writes chunk k - 1 (with the output's CRC). Memory is four
  chunks, however large the entry. Returns (MorphedVariable, masked CRC of the
  morph), or None where the fused morph does not apply or its chunks would
  hold more than the entry (the caller then reads the entry whole).

  Raises:
    SavedModelError: the original fails its checksum (after its chunks were
      written: the output is discarded by the caller's error path).
  """
  view = _fuses(target, entry.shape)
  if view is None:
    return None
  a, r, b = view
  pieces = list(_chunks(view, group_size))
  largest = max((a1 - a0) * (r1 - r0) * b for a0, a1, r0, r1 in pieces)
  if 2 * largest > max(a * r * b, _CHUNK_ELEMENTS):
    return None
  ins = [buffers.get(f"in{k}", largest) for k in range(2)]
  outs = [buffers.get(f"out{k}", largest) for k in range(2)]
  crc = {"in": 0, "out": 0}  # each updated by one thread, in chunk order

  def read(k: int) -> np.ndarray:
    a0, a1, r0, r1 = pieces[k]
    chunk = ins[k % 2][:(a1 - a0) * (r1 - r0) * b]
    _pread_into(fin, chunk, entry.offset + 4 * (a0 * r + r0) * b, entry, src)
    crc["in"] = backends.crc32c(chunk, crc["in"])
    return chunk.reshape(a1 - a0, r1 - r0, b)

  def write(chunk: np.ndarray) -> None:
    crc["out"] = backends.crc32c(chunk, crc["out"])
    _write_entry(fout, chunk, crc=0)

  recorder = _Recorder(target, group_size, width)
  reading, writes = None, [None, None]
  try:
    reading = reader.submit(read, 0)
    for k in range(len(pieces)):
      xc = reading.result()
      if k + 1 < len(pieces):  # into the buffer of chunk k - 1, morphed already
        reading = reader.submit(read, k + 1)
      slot = k % 2
      if writes[slot] is not None:
        writes[slot].result()  # chunk k - 2 is written: its buffer is free
      yc = outs[slot][:xc.size].reshape(xc.shape)
      recorder.morph(xc, yc)
      writes[slot] = io.submit(write, yc)
    for w in writes:
      if w is not None:
        w.result()
  finally:  # no thread may still fill or read a buffer once this returns
    for future in [reading] + writes:
      if future is not None:
        concurrent.futures.wait([future])
  if bundle.masked(crc["in"]) != entry.crc32c:
    raise _corrupt(entry, src)
  return recorder.record(), bundle.masked(crc["out"])


def _nbytes(shape, dtype) -> int:
  try:
    itemsize = tf.dtypes.as_dtype(dtype).size
  except TypeError:
    itemsize = 8
  return int(np.prod(shape, dtype=np.int64)) * max(itemsize, 1)


def _stream_checkpoint(src: str, reader, out_dir: str, targets: Mapping[str, selection.Target],
                       group_size: int, width: int, batch_bytes: int | None,
                       progress: Callable[[int, int, str], None] | None,
                       values: Mapping[str, np.ndarray] | None = None,
                       measurer: compression.Measurer | None = None):
  """Writes src's checkpoint (`reader` lists it) to out_dir/variables with the targets morphed
  (`values`: {key: the value to write}, for compensated kernels and corrected biases).
  With `measurer`, each morphed variable but twins gets its compressed sizes
  (measured on the measurer's threads while the stream goes on, as many bytes
  at a time as its max_bytes allows)."""
  values = values or {}
  measured = []  # (record index, original future, morphed future)
  shapes = reader.get_variable_to_shape_map()
  dtypes = reader.get_variable_to_dtype_map()
  keys = sorted(shapes)
  sizes = {k: _nbytes(shapes[k], dtypes[k]) for k in keys}
  budget = batch_bytes or max(_MIN_BATCH_BYTES, max(sizes.values(), default=0))
  var_dir = os.path.join(out_dir, "variables")
  os.makedirs(var_dir, exist_ok=True)
  shard_prefixes, batch, batch_size, records = [], [], 0, []
  # A full batch is written on `writer` while the counts of its last tensor
  # run here; the write ends before the next tensor is read, so at most two
  # tensors (an original and its morph) are held, as without the thread.
  writer = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                 thread_name_prefix="mortar-write")
  writing = []

  def _wait():
    while writing:
      writing.pop().result()  # a write's error (disk full, ...) is raised here

  def _flush():
    nonlocal batch, batch_size
    _wait()
    if not batch:
      return
    prefix = os.path.join(var_dir, f"part-{len(shard_prefixes):05d}")
    names, tensors = [k for k, _ in batch], [v for _, v in batch]
    writing.append(writer.submit(tf.raw_ops.SaveV2, prefix=prefix, tensor_names=names,
                                 shape_and_slices=[""] * len(names), tensors=tensors))
    shard_prefixes.append(prefix)
    batch, batch_size = [], 0

  try:
    for done, key in enumerate(keys):
      if progress is not None:
        progress(done, len(keys), key)
      _wait()
      if batch and batch_size + sizes[key] > budget:
        _flush()
        _wait()
      value = variables_lib.restore_tensor(src, key, dtypes[key])
      target = targets.get(key)
      if target is not None:
        morphed = _morph(value, target, values.get(key))
        batch.append((key, morphed))
        batch_size += sizes[key]
        later = keys[done + 1] if done + 1 < len(keys) else None
        if later is None or batch_size + sizes[later] > budget:
          _flush()  # written while this tensor is counted
        records.append(_record(value, morphed, target, group_size, width))
        if measurer is not None and not target.twin_of:
          measured.append((len(records) - 1, measurer.submit(_view(value)),
                           measurer.submit(_view(morphed))))
        del morphed
      else:
        if key in values:  # a corrected bias or moving mean
          given = values[key]
          if (tuple(given.shape) != tuple(value.shape)
              or given.dtype != value.dtype.as_numpy_dtype):
            raise ValueError(f"internal: the corrected value of {key} does not fit it")
          value = tf.constant(given)
        batch.append((key, value))
        batch_size += sizes[key]
      del value
    _flush()
    _wait()
  finally:
    writer.shutdown(wait=True)
  if progress is not None:
    progress(len(keys), len(keys), "")
  prefix = variables_lib.checkpoint_prefix(out_dir)
  tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=shard_prefixes, destination_prefix=prefix,
                                delete_old_dirs=True)
  for index, before, after in measured:
    records[index] = dataclasses.replace(
        records[index], compressed=compression.CompressedSize.of(before.result(), after.result()))
  return records


def _patch_plan(src: str, targets: Mapping[str, selection.Target],
                values: Mapping[str, np.ndarray]) -> tuple[bundle.Index, list, list]:
  """The checkpoint's index and, per data shard, the entries to rewrite and
  all its entries, in offset order, when the checkpoint can be patched in place: every entry to
  change is float32, whole and checksummed, and no two entries overlap.

  Raises:
    bundle.BundleError: anything else (the caller takes TensorFlow's route).
    OSError: the index or a data file cannot be read.
  """
  prefix = variables_lib.checkpoint_prefix(src)
  index = bundle.Index.read(prefix)
  shards = [[] for _ in range(index.num_shards)]
  for key in sorted(set(targets) | set(values)):
    entry = index.entries.get(key)
    if entry is None or not entry.float32:
      raise bundle.BundleError(f"{key} is not a whole float32 entry")
    if entry.crc_at is None:
      raise bundle.BundleError(f"{key}'s entry stores no checksum (TensorFlow leaves a zero "
                               "CRC out), so there is no field to replace")
    given = values.get(key)
    if given is not None and (tuple(given.shape) != entry.shape or given.dtype != np.float32):
      raise ValueError(f"internal: the corrected value of {key} does not fit it")
    if not 0 <= entry.shard_id < index.num_shards:
      raise bundle.BundleError(f"{key} names shard {entry.shard_id} of {index.num_shards}")
    shards[entry.shard_id].append(entry)
  every_shard = []
  for shard, entries in enumerate(shards):
    size = os.path.getsize(index.data_path(prefix, shard))
    every = sorted((e for e in index.entries.values() if e.shard_id == shard and e.size),
                   key=lambda e: e.offset)
    for before, after in zip(every, every[1:]):
      if before.offset + before.size > after.offset:
        raise bundle.BundleError(f"{before.key} and {after.key} overlap in the data file")
    if every and every[-1].offset + every[-1].size > size:
      raise bundle.BundleError(f"{every[-1].key} runs past the end of its data file")
    entries.sort(key=lambda e: e.offset)
    every_shard.append(every)
  return index, shards, every_shard


def _copy_range(fin, fout, offset: int, count: int) -> None:
  """count bytes of fin from offset, appended to fout (in the kernel where it can)."""
  while count > 0:
    try:
      done = os.copy_file_range(fin.fileno(), fout.fileno(), count, offset)
    except OSError as e:  # across file systems, an old kernel: through user space
      if e.errno not in _NO_COPY_FILE_RANGE:
        raise  # e.g. the disk is full
      done = 0
    if done <= 0:
      chunk = os.pread(fin.fileno(), min(count, 64 << 20), offset)
      if not chunk:
        raise OSError(f"{fin.name} ended before its entries did")
      fout.write(chunk)
      done = len(chunk)
    offset += done
    count -= done


def _read_entry(fin, entry: bundle.Entry, src: str, buffer: np.ndarray) -> np.ndarray:
  """One float32 entry's values, read into the start of `buffer` (a view of it)."""
  array = buffer[:entry.size // 4].reshape(entry.shape)
  _pread_into(fin, array, entry.offset, entry, src)
  return array


def _corrupt(entry: bundle.Entry, src: str) -> variables_lib.SavedModelError:
  return variables_lib.SavedModelError(
      f"cannot read variable {entry.key!r} of {src!r} (corrupted or missing variables data?): "
      "its bytes fail their checksum")


def _check_entry(array: np.ndarray, entry: bundle.Entry, src: str) -> None:
  """A corrupt source is an error, never laundered into a copy with a fresh checksum."""
  if bundle.checksum(array) != entry.crc32c:
    raise _corrupt(entry, src)


def _check_copied(fin, entries, src: str, scratch: np.ndarray) -> None:
  """Checks the checksums of entries copied as they are, as TensorFlow's
  restore would have: numeric ones read through `scratch`, string ones by
  TensorFlow's reader (their checksum covers lengths stored beside the bytes)."""
  raw = memoryview(scratch).cast("B")
  for entry in entries:
    if entry.dtype == types_pb2.DT_STRING:  # TensorFlow's reader checks it (SavedModelError)
      variables_lib.restore_tensor(src, entry.key, tf.string)
      continue
    if entry.dtype in (types_pb2.DT_VARIANT, types_pb2.DT_RESOURCE):
      continue
    crc, done = 0, 0
    while done < entry.size:
      n = os.preadv(fin.fileno(), [raw[:min(len(raw), entry.size - done)]], entry.offset + done)
      if n <= 0:
        raise _corrupt(entry, src)
      crc = backends.crc32c(raw[:n], crc)
      done += n
    if bundle.masked(crc) != entry.crc32c:
      raise _corrupt(entry, src)


def _copy_checked(fin, fout, start: int, end: int, entries, src: str, scratch) -> None:
  """Checks the entries copied as they are between start and end, then copies the range."""
  _check_copied(fin, entries, src, scratch)
  _copy_range(fin, fout, start, end - start)


def _write_entry(fout, value: np.ndarray, crc: int | None = None) -> int:
  """Appends value's bytes to fout; returns their bundle checksum (`crc` if known)."""
  if crc is None:
    crc = bundle.checksum(value)
  raw = memoryview(value).cast("B")
  done = 0
  while done < len(raw):
    done += fout.write(raw[done:])
  return crc


def _patch_checkpoint(src: str, plan, out_dir: str, targets: Mapping[str, selection.Target],
                      group_size: int, width: int,
                      progress: Callable[[int, int, str], None] | None,
                      values: Mapping[str, np.ndarray] | None = None,
                      measurer: compression.Measurer | None = None):
  """Writes src's checkpoint to out_dir/variables as _stream_checkpoint does,
  without TensorFlow's restore and save: each data file is copied (by the
  kernel) but for the entries to change, whose morphed bytes are written at
  their own offsets, and the index is rewritten with their new checksums
  (mortar_tf.savedmodel.bundle). A kernel of the fused morph streams through
  four chunk buffers (_stream_and_record: a reader thread, this thread's morph
  and counts, a writer thread); any other changed entry is read whole, so at
  most one original and its morph are held, while the writer thread checks
  the original's checksum, copies the bytes before it and writes the morph."""
  values = values or {}
  index, shards, every = plan
  src_prefix = variables_lib.checkpoint_prefix(src)
  dst_prefix = variables_lib.checkpoint_prefix(out_dir)
  os.makedirs(os.path.dirname(dst_prefix), exist_ok=True)
  total = sum(len(entries) for entries in shards)
  crcs, records, measured = {}, [], []
  changed = set(targets) | set(values)
  done = 0
  buffers = _Buffers()
  scratch = np.empty(1 << 18, np.float32)  # the io thread's (1 MiB), for entries copied as they are
  io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mortar-write")
  reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mortar-read")
  try:
    for shard, entries in enumerate(shards):
      src_path = index.data_path(src_prefix, shard)
      with open(src_path, "rb", buffering=0) as fin, \
          open(index.data_path(dst_prefix, shard), "wb", buffering=0) as fout:
        position = 0
        copied_as_is = [e for e in every[shard] if e.key not in changed]
        for entry in entries:
          if progress is not None:
            progress(done, total, entry.key)
          copied = io.submit(_copy_checked, fin, fout, position, entry.offset,
                             [e for e in copied_as_is if position <= e.offset < entry.offset],
                             src, scratch)
          target = targets.get(entry.key)
          streamed = None
          if (target is not None and entry.key not in values
              and (measurer is None or target.twin_of)):  # measured: read whole, below
            streamed = _stream_and_record(fin, fout, entry, target, group_size, width, reader,
                                          io, buffers, src)
          if streamed is not None:
            record, crcs[entry.key] = streamed
            copied.result()
            records.append(record)
            position = entry.offset + entry.size
            done += 1
            continue
          original = _read_entry(fin, entry, src, buffers.get("original", entry.size // 4))
          morphs = buffers.get("morph", original.size)
          fused, chunks = None, []
          if target is not None and entry.key not in values:
            fused = _morph_and_record(original, morphs.reshape(original.shape),
                                      target, group_size, width,
                                      lambda c: chunks.append(io.submit(_write_entry, fout, c)))
          if fused is not None:
            record, crc_in, crc_out = fused
            value = morphs.reshape(original.shape)
            if crc_in != entry.crc32c:
              raise _corrupt(entry, src)
            copied.result()
            for chunk in chunks:
              chunk.result()
            crcs[entry.key] = crc_out
            records.append(record)
          else:
            checked = io.submit(_check_entry, original, entry, src)
            if target is None:  # a corrected bias or moving mean
              value = np.ascontiguousarray(values[entry.key], np.float32)
            else:
              value = _morph_array(original, target, values.get(entry.key),
                                   morphs.reshape(original.shape))
            copied.result()
            written = io.submit(_write_entry, fout, value)
            if target is not None:
              records.append(_record(original, value, target, group_size, width))
            checked.result()
            crcs[entry.key] = written.result()
          if target is not None and measurer is not None and not target.twin_of:
            measured.append((len(records) - 1, measurer.submit(original.copy()),
                             measurer.submit(value.copy())))  # the buffers are reused
          position = entry.offset + entry.size
          done += 1
          del original, value
        _check_copied(fin, [e for e in copied_as_is if e.offset >= position], src, scratch)
        _copy_range(fin, fout, position, os.fstat(fin.fileno()).st_size - position)
  finally:
    reader.shutdown(wait=True)
    io.shutdown(wait=True)
  index.write(dst_prefix + ".index", crcs)
  if progress is not None:
    progress(total, total, "")
  for number, before, after in measured:
    records[number] = dataclasses.replace(
        records[number], compressed=compression.CompressedSize.of(before.result(),
                                                                  after.result()))
  return records


def _morph_array(original: np.ndarray, target: selection.Target, given=None,
                 out: np.ndarray | None = None) -> np.ndarray:
  """_morph for a numpy array: the morphed values as a C-contiguous float32
  array (in `out` where the native per-word kernels run)."""
  if given is not None:
    return np.ascontiguousarray(given, np.float32)
  spec = target.spec
  if out is not None and spec.method != "bitx" and backends.native_built():
    return backends.morph_words_into(original, out, spec)
  grouping = {"reduction_axes": target.axes} if spec.method == "bitx" else {}
  # numpy in, numpy out: the native kernels where built (no tensor copies), else numpy.
  return np.ascontiguousarray(backends.morph(original, spec, **grouping), np.float32)


def _copy_tree(src: str, out_dir: str) -> None:
  """Every file of src except the checkpoint and the fingerprint, byte for byte."""
  for entry in os.listdir(src):
    if entry in ("variables", "fingerprint.pb"):
      continue
    path = os.path.join(src, entry)
    if os.path.isdir(path):
      shutil.copytree(path, os.path.join(out_dir, entry))
    else:
      shutil.copy2(path, os.path.join(out_dir, entry))
  var_src = os.path.join(src, "variables")
  os.makedirs(os.path.join(out_dir, "variables"), exist_ok=True)
  for entry in os.listdir(var_src):  # anything beside the checkpoint (rare)
    if not entry.startswith("variables."):
      path = os.path.join(var_src, entry)
      (shutil.copytree if os.path.isdir(path) else shutil.copy2)(
          path, os.path.join(out_dir, "variables", entry))


def _regenerate_fingerprint(src: str, out_dir: str) -> str:
  if not os.path.isfile(os.path.join(src, "fingerprint.pb")):
    return "absent"
  try:
    # TF has no public API that writes a fingerprint; this is what
    # tf.saved_model.save calls. If it moves, the stale file is dropped.
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
    data = fingerprinting.CreateFingerprintDef(out_dir)
  except Exception:  # pylint: disable=broad-except
    return "dropped"
  with open(os.path.join(out_dir, "fingerprint.pb"), "wb") as f:
    f.write(data)
  return "regenerated"


# --------------------------------------------------------------------------
# The conversion


def _morphing(method, precision, keep_bits, columns, group_size, width):
  """(MorphSpec or {pattern: MorphSpec}, (group_size, width) of the aligned counts).

  group_size and width are the counting geometry, and bitx's grouping when
  `method` is "bitx"; a bitx MorphSpec brings its own for both (giving them
  as well is an error).
  """
  spec_given = isinstance(method, morphing.MorphSpec)
  if spec_given and method.method == "bitx":
    if (group_size, width) != (None, None):
      raise ValueError(f"give the morphing as a MorphSpec or as flat settings, not both: "
                       f"{method!r} groups with its own group_size and width (the aligned "
                       "counts use them too)")
    group_size, width = method.group_size, method.width
  geometry = bits.check_group_args(bits.DEFAULT_GROUP_SIZE if group_size is None else group_size,
                                   bits.DEFAULT_WIDTH if width is None else width)
  bitx = not spec_given and method == "bitx" and not isinstance(precision, Mapping)
  return precision_map.check_morphing(
      method, precision, keep_bits=keep_bits, columns=columns,
      group_size=geometry[0] if bitx else None, width=geometry[1] if bitx else None), geometry


def convert(src: str, dst: str | None, method="paper", precision=None, *, keep_bits=None,
            columns=None, group_size: int | None = None, width: int | None = None,
            select="kernels", signature: str = graph_lib.DEFAULT_SIGNATURE, input_shape=None,
            force: bool = False, verify: bool = False, verify_inputs=None,
            verify_max_rel: float | None = None, verify_max_abs: float | None = None,
            report_path: str | None = None, batch_bytes: int | None = None,
            progress: Callable[[int, int, str], None] | None = None,
            compensate=None, archive_path: str | None = None,
            compressed: bool = False, checkpoint: str = "auto") -> ConversionReport:
  """Writes `dst`: the SavedModel `src` with its selected weight variables morphed.

  Args:
    src: the SavedModel to read.
    dst: the directory to write (must not exist; one run at a time), or None
      to write only `archive_path`.
    method, precision, keep_bits, columns: as for `mortar_tf.morph`: a
      MorphSpec, or a method name with its flat settings. `precision` may be
      a {pattern: P or MorphSpec} map, matched as mortar_tf.precision_map
      says (variable names, layer paths and names, checkpoint keys and op
      names; first match wins; a map given to morph_model works as is): a
      number is P for `method` (a name), a MorphSpec (or its config, a dict
      such as {"method": "bitx", "columns": 8}) gives the variables its entry
      wins that method and settings; selected variables it does not cover
      are left unchanged and listed as skipped.
    group_size, width: the aligned grouping of the counts in the report, and
      bitx's when `method` is "bitx" (a bitx MorphSpec brings its own, and
      the counts use it; a bitx map entry groups with its spec's own).
    select: "kernels" (variables read as weights by compute ops), "all"
      (every float32 model variable) or a list of variable names/keys.
      Optimizer slots and optimizer/metric state are never selected.
    signature: the signature whose graph decides the kernels and their axes.
    input_shape: for the graph reader and random verification inputs: one
      shape (batch included) or {input name: shape}.
    force: morph a SavedModel that was already morphed by mortar_tf.
    verify: load both models and compare their outputs before publishing.
    verify_inputs: an .npz (or dict) of the signature's inputs for verify;
      without it, random inputs of `input_shape` (a dimension the signature
      leaves unknown is never invented; the batch defaults to 1).
    verify_max_rel: the largest max |a - b| / max |a| allowed per output
      (default: verify.default_tolerance of the method, twice its per-weight
      relative error bound); verify_max_abs: the largest max |a - b| (default:
      no limit).
    report_path: also write the report as JSON here (checked before any work,
      published with the model).
    batch_bytes: bytes of tensors written per checkpoint shard on
      TensorFlow's route (default: the largest tensor, at least 32 MiB).
    checkpoint: how the variables are written. "patch": the data files are
      copied by the kernel but for the changed entries, written at their own
      offsets, and the index gets their new checksums (no TensorFlow restore
      or save; each changed entry's source checksum is checked); "tensorflow":
      every entry restored and saved again by TensorFlow's ops (RestoreV2,
      SaveV2 in batches of batch_bytes, MergeV2Checkpoints); "auto" (default):
      "patch" where the checkpoint allows it (whole float32 entries in an
      uncompressed little-endian bundle, as TensorFlow writes them), else
      "tensorflow". Both give the same values; the report's `checkpoint`
      says which ran.
    progress: called as progress(done, total, key) while streaming.
    compensate: error-compensated morphing and bias correction (SPEC 6) on
      calibration inputs: the path of an .npz keyed by the signature's input
      names, {input name: array} (an array for a one-input signature), or a
      mortar_tf.keras.Calibration of those (or of a dataset) with its
      settings (error, bias, projected, damping; statistics="original" only).
      Statistics come from the original model. Kernels that cannot be
      compensated (op kind, bitx, no activations found) are morphed plain and
      named in the report, with a warning; none at all is an error. Biases
      (BiasAdd / Add right after) and BatchNormalization means right after
      take the mean output change. Keep the calibration samples apart from
      scoring ones (verify_inputs sharing a sample is an error). Memory: the
      statistics of up to 1 GiB of H (rows² float64 per kernel) at a time,
      plus the compensated kernels twice (final and pre-morph values, kept in
      the report).
    archive_path: also write the morphed SavedModel as one archive here
      (".tar.gz"/".tgz", ".tar.xz"/".txz" or ".zip"; must not exist; one run
      at a time), its entries at the archive's root, the files of `dst` byte
      for byte. The report gives its size, the sizes of the files it holds,
      and the size of `src` archived alike (written to a temp file and
      removed: the measure costs one more compression of the model). Not
      inside `dst`, `src` or another input. The `assets.extra/mortar.json`
      inside records the conversion without the archive's own figures.
    compressed: (off by default: it can take most of a conversion's time)
      measure each morphed variable's compressed bytes, original and morphed (mortar_tf.compression: zlib 9 of its float32 bytes alone,
      zstd where installed): the report's `compressed x`. Measured, not
      estimated; on a background thread while the checkpoint streams, one
      tensor at a time (memory: one tensor more); zlib 9 runs at 0.6-20 MB/s,
      slower the more a morph repeats, so it takes most of a conversion's
      time (HED's 59 MB: about a minute).

  Returns:
    A ConversionReport.

  Raises:
    SavedModelError: `src` is not a readable SavedModel (missing, not a
      SavedModel, truncated proto, corrupted or missing variables).
    OutputError: the output or the report cannot be written (read-only or
      full disk, permission denied, a missing directory); nothing is left.
    VerificationError: verify found outputs beyond the tolerance; nothing is
      written (the error carries the figures).
    ValueError: bad arguments, an existing `dst`, `dst == src`, another run
      writing `dst`, an unknown signature or variable, a selected variable
      that is not float32, or an already morphed model without `force`.
  """
  start = time.monotonic()
  if compensate is False:
    compensate = None
  _check_paths(src, dst, report_path, verify_inputs, compensate, archive_path)
  if report_path:
    files.check_output_file(report_path)
  # Checked before any reading: one MorphSpec or {pattern: MorphSpec}.
  spec_or_map, (group_size, width) = _morphing(method, precision, keep_bits, columns,
                                               group_size, width)
  for name, value in (("verify_max_rel", verify_max_rel), ("verify_max_abs", verify_max_abs)):
    if value is not None and not (isinstance(value, (int, float)) and value >= 0):
      raise ValueError(f"{name} must be a number >= 0, got {value!r}")
  if checkpoint not in _CHECKPOINT_ROUTES:
    raise ValueError(f"checkpoint must be one of {', '.join(_CHECKPOINT_ROUTES)}, got "
                     f"{checkpoint!r}")

  previous = read_record(src)
  if previous is not None and not force:
    raise ValueError(f"{src!r} was already morphed by mortar_tf ({previous.get('method')}, "
                     f"{previous.get('settings')}); pass force=True (mortar-morph --force) to "
                     "morph it again")
  graph = graph_lib.read_graph(src, input_shape=input_shape, signature=signature)
  targets, skipped = selection.select_targets(graph, spec_or_map, select)
  if not targets:
    raise ValueError(_nothing_to_morph(src, graph, select, skipped))
  reader, _ = variables_lib.open_checkpoint(src)
  targets = selection.twins(targets, graph.twins, reader, src, graph.variables)
  if isinstance(spec_or_map, morphing.MorphSpec):
    method, settings = spec_or_map.method, spec_or_map.settings()
  else:
    settings = {"precision_map": precision_map.to_json(precision)}
  compensated = None
  if compensate is not None:
    compensated = compensate_lib.compensate_targets(src, graph, targets, reader, compensate,
                                                    signature, verify_inputs if verify else None)
    if compensated.plain:
      warnings.warn(f"compensation: {len(compensated.plain)} of "
                    f"{len(compensated.plain) + len(compensated.kernels)} kernels morphed plain: "
                    + "; ".join(f"{k} ({v})" for k, v in compensated.plain.items()),
                    RuntimeWarning, stacklevel=2)

  with contextlib.ExitStack() as stack:
    destination = stack.enter_context(output_lib.Destination(dst)) if dst else None
    packing = (stack.enter_context(output_lib.Destination(archive_path, what="archive"))
               if archive_path else None)
    if destination is not None:
      tmp = destination.tmp
    else:  # the tree lives only until it is archived
      tmp = os.path.join(packing.tmp, "saved_model")
      with output_lib.writing(archive_path):
        os.mkdir(tmp)
    dst_or_archive = dst or archive_path
    # Compression holds one tensor at a time (the stream's own two beside it).
    largest = max((int(np.prod(t.var.shape, dtype=np.int64)) * 4 for t in targets), default=0)
    with output_lib.writing(dst_or_archive), (compression.Measurer(max_bytes=largest)
                                              if compressed else
                                              contextlib.nullcontext()) as measurer:
      _copy_tree(src, tmp)
      by_target = {t.var.key: t for t in targets}
      given = None if compensated is None else compensated.values
      plan = None
      if checkpoint != "tensorflow":
        try:
          plan = _patch_plan(src, by_target, given or {})
        except bundle.BundleError as e:
          if checkpoint == "patch":
            raise ValueError(f"checkpoint='patch': the variables of {src!r} cannot be patched "
                             f"in place: {e}") from None
      if plan is not None:
        records = _patch_checkpoint(src, plan, tmp, by_target, group_size, width, progress,
                                    given, measurer)
      else:
        records = _stream_checkpoint(src, reader, tmp, by_target, group_size, width,
                                     batch_bytes, progress, given, measurer)
    by_key = {r.key: r for r in records}
    morphed = tuple(by_key[t.var.key] for t in targets)
    with output_lib.writing(dst_or_archive):
      fingerprint = _regenerate_fingerprint(src, tmp)
    verification = None
    if verify:
      tolerance = (verify_max_rel if verify_max_rel is not None else
                   verify_lib.default_tolerance({t.spec for t in targets}))
      if verify_max_rel is None and tolerance >= 1:
        warnings.warn("verify: the default tolerance is max rel 1 because bitx can drop a weight "
                      "whole: outputs may move by their largest value and still pass; give "
                      "verify_max_rel (--verify_max_rel) for a check that means something",
                      RuntimeWarning, stacklevel=2)
      verification = verify_lib.verify_outputs(src, tmp, signature, verify_inputs, input_shape,
                                               max_rel=tolerance, max_abs=verify_max_abs)
      if not verification.passed:
        raise verify_lib.VerificationError(
            "verification failed, nothing was written: " + "; ".join(verification.failures())
            + f" ({verification.advice()})", verification)
    report = ConversionReport(os.path.abspath(src), dst and os.path.abspath(dst), method, settings,
                              morphed, tuple(skipped), fingerprint, verification,
                              time.monotonic() - start, group_size, width,
                              tuple(note for d in (destination, packing) if d is not None
                                    for note in d.stale_note()), compensated,
                              checkpoint="patch" if plan is not None else "tensorflow")
    record = report.to_dict()
    record["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    if previous is not None:
      record["previous"] = previous
    with output_lib.writing(dst_or_archive):
      os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    files.write_json(os.path.join(tmp, MORTAR_JSON), record)
    packed = None
    if packing is not None:
      packed = os.path.join(packing.tmp, "archive")
      report = dataclasses.replace(report, archive=_archive(src, tmp, packed, archive_path,
                                                            packing.tmp),
                                   seconds=time.monotonic() - start)
    with files.output_set():  # the report is renamed into place after the model
      if report_path:
        report.write_json(report_path)
      if destination is not None:
        destination.publish()
      if packing is not None:
        packing.publish_file(packed)
  return report


def _archive(src: str, tree: str, packed: str, archive_path: str,
             scratch: str) -> archive_lib.ArchiveReport:
  """Writes the archive of the morphed `tree` to `packed` (published later as
  `archive_path`) and measures `src` archived alike in `scratch`."""
  fmt = archive_lib.archive_format(archive_path)
  skip = (output_lib.OWNER_FILE,)
  with output_lib.writing(archive_path):
    start = time.monotonic()
    archive_lib.pack(tree, packed, fmt, skip)
    seconds = time.monotonic() - start
    input_bytes, input_raw = archive_lib.measure_archive(src, fmt, scratch)
    return archive_lib.ArchiveReport(
        os.path.abspath(archive_path), fmt, archive_lib.COMPRESSION[fmt],
        os.path.getsize(packed), archive_lib.raw_size(tree, skip), input_bytes, input_raw,
        seconds)
