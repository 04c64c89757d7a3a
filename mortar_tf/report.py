"""Sparsity reports: ones before and after morphing, per tensor and in total.

Example:
  >>> import numpy as np
  >>> r = sparsity_report({"w": np.float32([1.375])}, "paper", precision=0.1)
  >>> r.total_ratio["significand"]
  1.5
  >>> r.compressed.ratio  # zlib 9 bytes before / after (mortar_tf.compression)
  1.0
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from mortar_tf import backends
from mortar_tf import bits
from mortar_tf import compression
from mortar_tf import morphing as morph_lib
from mortar_tf import table


@dataclasses.dataclass(frozen=True)
class TensorSparsity:
  """Ones of one tensor before and after morphing.

  Attributes:
    name: the tensor's name.
    shape: its shape.
    grouping: how the aligned domain grouped it, e.g. "dense" or "axes (0, 1)".
    before, after: ones per domain (significand, word, aligned).
    max_rel_error: the largest |x' - x| / |x| over nonzero finite elements.
    compressed: its measured compressed bytes before and after
      (mortar_tf.compression: zlib level 9, zstd where installed), or None
      where the report was made with compressed=False.
  """
  name: str
  shape: tuple[int, ...]
  grouping: str
  before: dict[str, int]
  after: dict[str, int]
  max_rel_error: float
  compressed: compression.CompressedSize | None = None

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def ratio(self) -> dict[str, float]:
    return {d: bits.sparsity_ratio(self.before[d], self.after[d]) for d in bits.DOMAINS}


@dataclasses.dataclass(frozen=True)
class SparsityReport:
  """Per-tensor and total ones for one morphing setting.

  Attributes:
    spec: the morphing method and settings.
    group_size, width: the grouping of the aligned domain.
    tensors: one TensorSparsity per float32 tensor.
    skipped: (name, reason) for tensors that were not morphed.
  """
  spec: morph_lib.MorphSpec
  group_size: int
  width: int
  tensors: tuple[TensorSparsity, ...]
  skipped: tuple[tuple[str, str], ...] = ()

  @property
  def total_before(self) -> dict[str, int]:
    return {d: sum(t.before[d] for t in self.tensors) for d in bits.DOMAINS}

  @property
  def total_after(self) -> dict[str, int]:
    return {d: sum(t.after[d] for t in self.tensors) for d in bits.DOMAINS}

  @property
  def total_ratio(self) -> dict[str, float]:
    before, after = self.total_before, self.total_after
    return {d: bits.sparsity_ratio(before[d], after[d]) for d in bits.DOMAINS}

  @property
  def max_rel_error(self) -> float:
    return max((t.max_rel_error for t in self.tensors), default=0.0)

  @property
  def compressed(self) -> compression.CompressedSize | None:
    """The measured compressed bytes of all tensors, each compressed alone
    (`.ratio` is the `compressed x` figure), or None where not measured."""
    if any(t.compressed is None for t in self.tensors):
      return None
    return compression.CompressedSize.total(t.compressed for t in self.tensors)

  def to_dict(self) -> dict:
    """A JSON-ready dict (inf ratios become the string "inf")."""
    def clean(ratios):
      return {d: (r if math.isfinite(r) else "inf") for d, r in ratios.items()}

    def sizes(measured):
      return None if measured is None else measured.to_dict()
    return {
        "method": self.spec.method,
        "settings": self.spec.settings(),
        "group_size": self.group_size,
        "width": self.width,
        "tensors": [{
            "name": t.name, "shape": list(t.shape), "grouping": t.grouping,
            "ones_before": t.before, "ones_after": t.after, "ratio": clean(t.ratio),
            "max_rel_error": t.max_rel_error, "compressed": sizes(t.compressed)}
                    for t in self.tensors],
        "total": {"ones_before": self.total_before, "ones_after": self.total_after,
                  "ratio": clean(self.total_ratio), "max_rel_error": self.max_rel_error,
                  "compressed": sizes(self.compressed)},
        "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
    }

  def __str__(self) -> str:
    return self.format_table()

  def __repr__(self) -> str:
    ratio = self.total_ratio["aligned"]
    return (f"SparsityReport({self.spec.label()!r}, tensors={len(self.tensors)}, "
            f"skipped={len(self.skipped)}, aligned={table.ratio(ratio)}, "
            f"group_size={self.group_size}, width={self.width})")

  def format_table(self) -> str:
    """A per-tensor table with a total row, ratios in every domain (the
    aligned one at the report's G and width, named on the first line) and,
    where measured, `compressed x` (zlib 9 bytes before / after, each tensor
    alone; the totals in bytes on the last line). What print() shows."""
    total_compressed = self.compressed
    measured = total_compressed is not None
    headers = ["tensor", "shape", "grouping", "ones(sig)", "sig x", "word x", "aligned x",
               "max rel err"] + (["compressed x"] if measured else [])
    rows = [[t.name, "x".join(map(str, t.shape)) or "scalar", t.grouping, t.before["significand"],
             table.ratio(t.ratio["significand"]), table.ratio(t.ratio["word"]),
             table.ratio(t.ratio["aligned"]), f"{t.max_rel_error:.3g}"]
            + ([table.ratio(t.compressed.ratio)] if measured else []) for t in self.tensors]
    total = self.total_ratio
    rows.append(["total", "", "", self.total_before["significand"],
                 table.ratio(total["significand"]), table.ratio(total["word"]),
                 table.ratio(total["aligned"]), f"{self.max_rel_error:.3g}"]
                + ([table.ratio(total_compressed.ratio)] if measured else []))
    text = f"{self.spec.label()}  (aligned: {bits.geometry_text(self.group_size, self.width)})\n"
    text += table.format_table(headers, rows, footer_rows=1)
    if measured:
      text += f"\ncompressed, measured (each tensor alone): {total_compressed.text()}"
    for name, reason in self.skipped:
      text += f"\nskipped {name}: {reason}"
    return text


def max_relative_error(original: np.ndarray, morphed: np.ndarray) -> float:
  """max |x' - x| / |x| over nonzero finite elements of x (0.0 if none; NaN
  when such an x' is NaN), in float64: see backends.max_relative_error."""
  return backends.max_relative_error(original, morphed)


def grouping_kwargs(grouping) -> dict:
  """Turns a per-tensor grouping entry into count_ones keyword arguments.

  Accepts a layout name ("depthwise"), a tuple of reduction axes, or a dict of
  {"layout": ..., "equation": ...} / {"reduction_axes": ...}.
  """
  if grouping is None:
    return {}
  if isinstance(grouping, str):
    return {"layout": grouping}
  if isinstance(grouping, Mapping):
    unknown = set(grouping) - {"layout", "equation", "reduction_axes"}
    if unknown:
      raise ValueError(f"unknown grouping keys {sorted(unknown)}; use layout, equation or "
                       "reduction_axes")
    return dict(grouping)
  return {"reduction_axes": tuple(grouping)}


def _describe(kwargs: dict, shape) -> str:
  if "layout" in kwargs:
    return kwargs["layout"]
  if "reduction_axes" in kwargs:
    return f"axes {tuple(kwargs['reduction_axes'])}"
  del shape  # the default rule is the same for every rank
  return "default"


def _resolve_spec(method, precision, keep_bits, columns, group_size, width):
  if isinstance(method, morph_lib.MorphSpec):
    if (precision, keep_bits, columns) != (None, None, None):
      raise ValueError("give the method either as a MorphSpec or with its arguments, not both")
    if method.method == "bitx" and (method.group_size, method.width) != (group_size, width):
      raise ValueError(f"bitx spec groups with G={method.group_size}, width={method.width} "
                       f"but the report counts with G={group_size}, width={width}")
    return method
  bitx = method == "bitx"
  return morph_lib.MorphSpec.create(
      method, precision, keep_bits=keep_bits, columns=columns,
      group_size=group_size if bitx else None, width=width if bitx else None)


@dataclasses.dataclass(frozen=True)
class _Tensor:
  name: str
  value: np.ndarray
  grouping: dict
  count_args: dict

  def row(self, before: dict[str, int], after: np.ndarray) -> TensorSparsity:
    return TensorSparsity(
        name=self.name, shape=tuple(self.value.shape),
        grouping=_describe(self.grouping, self.value.shape), before=before,
        after=backends.ones_by_domain(after, **self.count_args),
        max_rel_error=max_relative_error(self.value, after))


class _Compressed:
  """The rows' compressed sizes, measured on background threads while the
  next tensors are morphed (compression.Measurer); the originals once."""

  def __init__(self, enabled: bool, tensors):
    self.measurer = compression.Measurer() if enabled else None
    self.originals = ([self.measurer.submit(t.value) for t in tensors] if enabled else None)

  def submit(self, after: np.ndarray):
    return None if self.measurer is None else self.measurer.submit(after)

  def rows(self, rows, futures) -> tuple[TensorSparsity, ...]:
    if self.measurer is None:
      return tuple(rows)
    return tuple(dataclasses.replace(row, compressed=compression.CompressedSize.of(
        original.result(), future.result())) for row, original, future in
                 zip(rows, self.originals, futures))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.measurer is not None:
      self.measurer.close()
    return False


def _tensors(weights_by_name, groupings, group_size, width):
  """The float32 tensors with their grouping, and (name, reason) for the rest."""
  groupings = dict(groupings or {})
  unknown = set(groupings) - set(weights_by_name)
  if unknown:
    raise ValueError(f"groupings name tensors that are not in the weights: {sorted(unknown)}")
  tensors, skipped = [], []
  for name, value in weights_by_name.items():
    arr = np.asarray(value)
    if arr.dtype != np.float32:
      skipped.append((name, f"dtype {arr.dtype} is not float32"))
      continue
    grouping = grouping_kwargs(groupings.get(name))
    tensors.append(_Tensor(name, arr, grouping, dict(grouping, group_size=group_size,
                                                      width=width)))
  return tensors, tuple(skipped)


def sparsity_reports(weights_by_name: Mapping[str, object], specs, *,
                     groupings: Mapping[str, object] | None = None,
                     group_size: int = bits.DEFAULT_GROUP_SIZE, width: int = bits.DEFAULT_WIDTH,
                     backend: str | None = None, compressed: bool = True) -> list[SparsityReport]:
  """One SparsityReport per MorphSpec, counting the original ones (and
  measuring the originals' compressed bytes) only once.

  Args and Raises: as sparsity_report, with `specs` a sequence of MorphSpecs.
  """
  group_size, width = bits.check_group_args(group_size, width)
  specs = [_resolve_spec(s, None, None, None, group_size, width) for s in specs]
  tensors, skipped = _tensors(weights_by_name, groupings, group_size, width)
  befores = [backends.ones_by_domain(t.value, **t.count_args) for t in tensors]
  reports = []
  with _Compressed(compressed, tensors) as sizes:
    for spec in specs:
      rows, futures = [], []
      for tensor, before in zip(tensors, befores):
        bitx_grouping = tensor.grouping if spec.method == "bitx" else {}
        after = backends.morph(tensor.value, spec.method, **spec.settings(), **bitx_grouping,
                                backend=backend)
        rows.append(tensor.row(before, after))
        futures.append(sizes.submit(after))
      reports.append((spec, rows, futures))
    return [SparsityReport(spec, group_size, width, sizes.rows(rows, futures), skipped)
            for spec, rows, futures in reports]


def sparsity_report(weights_by_name: Mapping[str, object], method="paper",
                    precision=None, *, keep_bits=None, columns=None,
                    groupings: Mapping[str, object] | None = None,
                    group_size: int = bits.DEFAULT_GROUP_SIZE, width: int = bits.DEFAULT_WIDTH,
                    morphed_by_name: Mapping[str, object] | None = None,
                    backend: str | None = None, compressed: bool = True) -> SparsityReport:
  """Ones of each tensor in every domain before and after morphing, with ratios.

  Args:
    weights_by_name: {name: float32 array/tensor}. Non-float32 tensors are not
      morphed; they are listed in `skipped` with their dtype.
    method: a method name (with precision/keep_bits/columns as in
      mortar_tf.morph) or a MorphSpec. bitx groups with the report's
      group_size and width.
    groupings: {name: layout | reduction axes | dict} for the aligned domain
      (and bitx); a missing name uses the default (all axes but the last).
    group_size, width: the aligned domain's grouping (SPEC 3).
    morphed_by_name: already morphed tensors to compare instead of morphing
      (the spec then only labels the report).
    backend: passed to morph.
    compressed: also measure each tensor's compressed bytes before and after
      (mortar_tf.compression: zlib level 9 of its float32 bytes, each tensor
      alone; zstd where the zstandard package is installed). Measured, not
      estimated, and the slow part of a report: zlib 9 runs at about 0.6-20
      MB/s a core (slower the more a morph repeats), on parallel threads.

  Returns:
    A SparsityReport; `format_table()` prints it, `to_dict()` serialises it;
    `.compressed.ratio` is the `compressed x` figure (None without
    `compressed`).

  Raises:
    ValueError: bad method arguments or grouping, or a morphed tensor missing or
      of another shape.
  """
  group_size, width = bits.check_group_args(group_size, width)
  spec = _resolve_spec(method, precision, keep_bits, columns, group_size, width)
  if morphed_by_name is None:
    return sparsity_reports(weights_by_name, [spec], groupings=groupings,
                            group_size=group_size, width=width, backend=backend,
                            compressed=compressed)[0]
  tensors, skipped = _tensors(weights_by_name, groupings, group_size, width)
  afters = []
  for tensor in tensors:  # all checked before any work
    if tensor.name not in morphed_by_name:
      raise ValueError(f"morphed_by_name has no tensor {tensor.name!r}")
    after = bits.as_float32(morphed_by_name[tensor.name], f"morphed tensor {tensor.name!r}")
    if after.shape != tensor.value.shape:
      raise ValueError(f"morphed tensor {tensor.name!r} has shape {after.shape}, "
                       f"the original {tensor.value.shape}")
    afters.append(after)
  with _Compressed(compressed, tensors) as sizes:
    rows = [tensor.row(backends.ones_by_domain(tensor.value, **tensor.count_args), after)
            for tensor, after in zip(tensors, afters)]
    futures = [sizes.submit(after) for after in afters]
    return SparsityReport(spec, group_size, width, sizes.rows(rows, futures), skipped)
