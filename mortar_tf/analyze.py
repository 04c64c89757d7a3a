"""Weight analysis of a saved model: ones per layer and a sweep of morphing settings.

This is the library behind `tools/analyze_weights.py`.

Example:
  >>> specs = parse_settings(["paper", "round"], precisions=[0.1], keep_bits=[7])
  >>> [s.label() for s in specs]
  ['paper P=0.1', 'round keep_bits=7']
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from mortar_tf import bits
from mortar_tf import compression
from mortar_tf import files
from mortar_tf import report as report_lib
from mortar_tf import table
from mortar_tf.morphing import MorphSpec
from mortar_tf.morphing import METHODS

_SHORT = {"paper": "pap", "fewest_ones": "few", "round": "rnd", "bitx": "btx"}


def parse_settings(methods: Sequence[str], precisions: Sequence[float] = (0.1,),
                   keep_bits: Sequence[int] = (7,), columns: Sequence[int] = (8,),
                   group_size: int = bits.DEFAULT_GROUP_SIZE,
                   width: int = bits.DEFAULT_WIDTH) -> list[MorphSpec]:
  """One MorphSpec per method and each of its own settings.

  paper and fewest_ones sweep `precisions`, round sweeps `keep_bits`, bitx
  sweeps `columns` (grouped with `group_size` and `width`).

  Raises:
    ValueError: an unknown method, a bad setting, or an empty grid.
  """
  if not methods:
    raise ValueError("no methods given")
  specs = []
  for method in methods:
    if method not in METHODS:
      raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    grid = {"paper": precisions, "fewest_ones": precisions, "round": keep_bits,
            "bitx": columns}[method]
    if not grid:
      raise ValueError(f"method {method!r} has an empty settings grid")
    for value in grid:
      if method in ("paper", "fewest_ones"):
        specs.append(MorphSpec.create(method, value))
      elif method == "round":
        specs.append(MorphSpec.create(method, keep_bits=value))
      else:
        specs.append(MorphSpec.create(method, columns=value, group_size=group_size, width=width))
  return specs


@dataclasses.dataclass(frozen=True)
class ModelWeights:
  """The weights of a model file, ready for sparsity_reports.

  Attributes:
    source: the path read.
    kind: "keras", "savedmodel" or "tflite".
    weights: {name: float32 array}.
    groupings: {name: grouping} (layouts known from the Keras layer classes).
    note: what the reader could not know, or "".
  """
  source: str
  kind: str
  weights: dict
  groupings: dict
  note: str = ""

  def __repr__(self) -> str:
    size = sum(int(getattr(w, "size", 0)) for w in self.weights.values())
    return (f"ModelWeights({self.source!r}, kind={self.kind!r}, tensors={len(self.weights)}, "
            f"values={size})")


def load_weights(path: str, select: str = "kernels") -> ModelWeights:
  """Reads the weights of a .keras/.h5/.tflite model file or a SavedModel directory.

  Args:
    path: the model.
    select: "kernels" (Keras: the kernels of known layers; SavedModel: model
      variables of rank >= 2; TFLite: always the float32 weights its
      multiply-accumulate ops read, in the layouts it ships) or "all".

  Raises:
    ValueError: a missing path, a file that is not a model, or a bad `select`.
  """
  if select not in ("kernels", "all"):
    raise ValueError(f"select must be 'kernels' or 'all', got {select!r}")
  if not os.path.exists(path):
    raise ValueError(f"no such model: {path!r}")
  if os.path.isdir(path):
    # pylint: disable-next=import-outside-toplevel
    from mortar_tf.savedmodel import graph, variables
    found = variables.read_variables(path, min_rank=2 if select == "kernels" else 0)
    try:
      axes = graph.read_graph(path).variable_weights()
      note = ""
    except ValueError as e:  # an unknown signature, ambiguous axes, ...
      axes, note = {}, f"graph not read ({e}): every weight uses the default grouping"
    groupings = {v.name: axes[v.key] for v in found if v.key in axes}
    if not note and len(groupings) < len(found):
      note = ("weights no compute op of the serving signature reads use the default "
              "grouping (all axes but the last)")
    return ModelWeights(path, "savedmodel", {v.name: v.value for v in found}, groupings, note)
  if path.endswith(".tflite"):
    from mortar_tf import tflite  # pylint: disable=import-outside-toplevel
    shipped, left = tflite.read_weights(path)
    note = "; ".join(f"{name}: {why}" for name, why in left)
    return ModelWeights(path, "tflite", {w.name: w.value for w in shipped},
                        {w.name: {"reduction_axes": w.reduction_axes} for w in shipped},
                        f"left out: {note}" if note else "")
  if not path.endswith((".keras", ".h5", ".hdf5")):
    raise ValueError(f"{path!r} is neither a .keras/.h5/.tflite model file nor a SavedModel "
                     "directory")
  # pylint: disable-next=import-outside-toplevel
  from mortar_tf.keras import registry, saving
  model = saving.load_model(path)
  found = registry.model_weights(model, select)
  note = ""
  if select == "kernels":
    skipped = registry.find_kernels(model).summary().splitlines()[1:]
    if skipped:
      note = "left alone (not kernels): " + "; ".join(line[len("skipped "):] for line in skipped)
  return ModelWeights(path, "keras", {w.name: w.numpy() for w in found},
                      {w.name: w.grouping() for w in found}, note)


LAYER_DOMAINS = bits.DOMAINS + ("compressed",)


@dataclasses.dataclass(frozen=True)
class Analysis:
  """The sweep over one model: one SparsityReport per setting.

  Attributes:
    model, reports, group_size, width: what was read and counted.
    file_bytes, file_gzip_bytes: for a .tflite model, the file's size and
      the measured size of `gzip -9` of it (the file as shipped); else None.
  """
  model: ModelWeights
  reports: tuple[report_lib.SparsityReport, ...]
  group_size: int
  width: int
  file_bytes: int | None = None
  file_gzip_bytes: int | None = None

  @property
  def measured_compression(self) -> bool:
    """True when the reports carry measured compressed sizes."""
    return bool(self.reports) and self.reports[0].compressed is not None

  def geometry_text(self) -> str:
    """The aligned domain's geometry, "G=64, width 24"."""
    return bits.geometry_text(self.group_size, self.width)

  def original_table(self) -> str:
    """Per layer: shape, grouping, weights, ones and bit density in each domain."""
    first = self.reports[0]
    zlib = self.measured_compression
    headers = ["weight", "shape", "grouping", "params", "ones sig", "ones word",
               f"ones aligned ({self.geometry_text()})", "density word"] + (
                   ["zlib 9 bytes", "of raw"] if zlib else [])

    def sizes(measured):
      if not zlib:
        return []
      raw, packed = measured.original.raw, measured.original.zlib
      return [packed, f"{packed / raw:.3f}" if raw else "-"]

    rows = [[t.name, "x".join(map(str, t.shape)), t.grouping, t.size, t.before["significand"],
             t.before["word"], t.before["aligned"],
             f"{t.before['word'] / (32 * t.size):.3f}" if t.size else "-"]
            + sizes(t.compressed) for t in first.tensors]
    total = first.total_before
    size = sum(t.size for t in first.tensors)
    rows.append(["total", "", "", size, total["significand"], total["word"], total["aligned"],
                 f"{total['word'] / (32 * size):.3f}" if size else "-"]
                + sizes(first.compressed))
    return table.format_table(headers, rows, footer_rows=1)

  def sweep_table(self) -> str:
    """Per setting: total sparsity ratio in each domain, the largest relative
    error and, where measured, `compressed x` (zlib 9 bytes of the original
    kernels / of the morphed ones, each alone), the morphed kernels' zlib 9
    bytes and zstd's ratio ("-" without the zstandard package)."""
    zlib = self.measured_compression
    headers = ["method", "setting", "significand x", "word x",
               f"aligned x ({self.geometry_text()})", "max rel err"] + (
                   ["compressed x", "zlib 9 bytes", "zstd x"] if zlib else [])
    rows = []
    for r in self.reports:
      setting = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r.spec.settings().items()
                          if k not in ("group_size", "width"))
      ratio = r.total_ratio
      measured = r.compressed
      rows.append([r.spec.method, setting, table.ratio(ratio["significand"]),
                   table.ratio(ratio["word"]), table.ratio(ratio["aligned"]),
                   f"{r.max_rel_error:.3g}"] + (
                       [table.ratio(measured.ratio), measured.morphed.zlib,
                        "-" if measured.zstd_ratio is None else table.ratio(measured.zstd_ratio)]
                       if zlib else []))
    return table.format_table(headers, rows)

  def layer_table(self, domain: str = "word") -> str:
    """Layers x settings: the sparsity ratio of each weight in one domain, or
    its `compressed x` (domain "compressed": zlib 9, measured)."""
    if domain not in LAYER_DOMAINS:
      raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(LAYER_DOMAINS)}")
    if domain == "compressed" and not self.measured_compression:
      raise ValueError("the compressed sizes were not measured (compressed=False)")

    def ratio(entry):
      return entry.compressed.ratio if domain == "compressed" else entry.ratio[domain]

    headers = ["weight"] + [_short_label(r.spec) for r in self.reports]
    rows = []
    for i, t in enumerate(self.reports[0].tensors):
      rows.append([t.name] + [table.ratio(ratio(r.tensors[i])) for r in self.reports])
    rows.append(["total"] + [table.ratio(r.compressed.ratio if domain == "compressed" else
                                         r.total_ratio[domain]) for r in self.reports])
    return table.format_table(headers, rows, footer_rows=1)

  def file_text(self) -> str:
    """"File: N bytes; gzip -9: M bytes (...)" for a .tflite model, else ""."""
    if self.file_bytes is None:
      return ""
    share = f"{self.file_gzip_bytes / self.file_bytes:.3f}" if self.file_bytes else "-"
    return (f"File: {self.file_bytes:,} bytes; gzip -9 of it: {self.file_gzip_bytes:,} bytes "
            f"({share} of the file, measured)")

  def to_dict(self) -> dict:
    out = {"model": self.model.source, "kind": self.model.kind, "note": self.model.note,
           "group_size": self.group_size, "width": self.width,
           "reports": [r.to_dict() for r in self.reports]}
    if self.file_bytes is not None:
      out["file"] = {"bytes": self.file_bytes, "gzip9_bytes": self.file_gzip_bytes}
    return out

  def __str__(self) -> str:
    return format_analysis(self)

  def __repr__(self) -> str:
    return (f"Analysis({self.model.source!r}, settings={len(self.reports)}, "
            f"tensors={len(self.reports[0].tensors) if self.reports else 0}, "
            f"group_size={self.group_size}, width={self.width})")

  def write_json(self, path: str) -> None:
    """Writes to_dict() to `path` atomically (a temp file renamed into place)."""
    files.write_json(path, self.to_dict())


def _short_label(spec: MorphSpec) -> str:
  if spec.precision is not None:
    return f"{_SHORT[spec.method]} {spec.precision:g}"
  if spec.keep_bits is not None:
    return f"{_SHORT[spec.method]} k{spec.keep_bits}"
  return f"{_SHORT[spec.method]} c{spec.columns}"


def analyze(path: str, specs: Sequence[MorphSpec], select: str = "kernels",
            group_size: int = bits.DEFAULT_GROUP_SIZE,
            width: int = bits.DEFAULT_WIDTH, compressed: bool = True) -> Analysis:
  """Loads a model and reports every setting in `specs` over its weights.

  `compressed`: also measure each weight's compressed bytes, original and
  morphed (report.sparsity_report; zlib 9 is the slow part of an analysis:
  about a minute a setting for 15M weights on one core), and the gzip -9 size
  of a .tflite file itself.

  Raises:
    ValueError: an unreadable model, no float32 weights, or bad settings.
  """
  if not specs:
    raise ValueError("no morphing settings given")
  model = load_weights(path, select)
  reports = report_lib.sparsity_reports(model.weights, specs, groupings=model.groupings,
                                        group_size=group_size, width=width,
                                        compressed=compressed)
  if not reports[0].tensors:
    raise ValueError(f"{path!r} has no float32 weights to analyse (select={select!r})")
  file_bytes = file_gzip = None
  if compressed and model.kind == "tflite":
    file_bytes, file_gzip = os.path.getsize(path), compression.gzip_file_size(path)
  return Analysis(model, tuple(reports), group_size, width, file_bytes, file_gzip)


def format_analysis(analysis: Analysis, domain: str = "word", per_layer: bool = True) -> str:
  """The text the tool prints: header, original ones, sweep, per-layer ratios."""
  n = len(analysis.reports[0].tensors)
  size = sum(t.size for t in analysis.reports[0].tensors)
  parts = [f"Model {analysis.model.source} ({analysis.model.kind}): {n} weight tensors, "
           f"{size:,} float32 values; aligned domain {analysis.geometry_text()}"]
  if analysis.file_bytes is not None:
    parts.append(analysis.file_text())
  if analysis.model.note:
    parts.append(f"Note: {analysis.model.note}")
  for name, reason in analysis.reports[0].skipped:
    parts.append(f"Skipped {name}: {reason}")
  if per_layer:
    parts += ["", "Original weights", analysis.original_table()]
  parts += ["", "Sweep: sparsity ratio = ones(original) / ones(morphed), all weights"
            + ("; compressed x = zlib 9 bytes of the original weights / of the morphed ones, "
               "each weight compressed alone (measured)" if analysis.measured_compression
               else ""),
            analysis.sweep_table()]
  if per_layer:
    where = f" ({analysis.geometry_text()})" if domain == "aligned" else ""
    title = ("Per layer, compressed x (zlib 9, measured)" if domain == "compressed" else
             f"Per layer, {domain} domain{where}")
    parts += ["", title, analysis.layer_table(domain)]
  return "\n".join(parts)

