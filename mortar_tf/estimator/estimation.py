"""Per-layer cycles, speedups, time and energy of a SavedModel on each engine.

For every compute op the graph reader finds: its weight's groups along the
reduction axes (SPEC 3), `N_pos` (output elements of the op over the weight's
output elements; for Conv*Transpose, batch x input spatial size), MACs
(N_pos x weights) and cycles per engine (SPEC 4 v3), each engine on the
original and on the morphed weights. The headline figures are the `mortar`
engine on the morphed weights over `stripes` and over `mortar` on the
original weights; every cell is also a speedup over a chosen baseline cell
(default stripes, original). Every estimate states its coverage (Coverage:
the weight MACs of the estimated layers out of those of every weight op the
reader found; ops that multiply two activations are not weight ops). The
per-group figures come from backends.aligned_statistics on the weights' numpy
buffers: the C++ kernels through the native library (mortar_tf.native) when
it is built, else vectorised numpy; nothing loops per group or per weight in
Python.

Example:
  result = estimate("model_dir", input_shape=(1, 224, 224, 3))
  print(result.table())
  result.write_csv("layers.csv")
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Mapping, Sequence

import numpy as np

from mortar_tf import backends
from mortar_tf import files
from mortar_tf import morphing
from mortar_tf import precision_map
from mortar_tf import table
from mortar_tf.estimator import engines as engines_lib
from mortar_tf.estimator.engines import Engine
from mortar_tf.savedmodel import graph as graph_lib
from mortar_tf.savedmodel import selection
from mortar_tf.savedmodel import variables as variables_lib

WEIGHTS = ("original", "morphed")
DEFAULT_BASELINE = ("stripes", "original")
_TRANSPOSED = ("Conv2DBackpropInput", "Conv3DBackpropInputV2")
# The two headline figures of SPEC 4: mortar on the morphed weights against
# stripes on the original (the paper's baseline, in our reading) and against
# mortar on the original (what morphing alone buys on the same hardware).
HEADLINES = (("over_stripes", "stripes", "original"), ("over_unmorphed", "mortar", "original"))
_HEADLINE_TEXT = {"over_stripes": "over stripes on the original weights (the paper's baseline, "
                                  "our reading)",
                  "over_unmorphed": "over mortar on the original weights (what morphing "
                                    "alone buys)"}


@dataclasses.dataclass(frozen=True)
class LayerEstimate:
  """One compute op.

  Attributes:
    index: position in the graph's op list.
    name: the op's name; op: its type; weight: the weight's name (the one
      precision maps match).
    weight_shape, reduction_axes: the stored weight and its grouping.
    macs: N_pos x weights; weights: real weights (no padding).
    n_pos: positions (SPEC 4).
    n_groups: {engine: groups at that engine's G}.
    cycles: {engine: {"original": layer cycles, "morphed": layer cycles}}.
    columns: {engine: {"original": ones per aligned column, "morphed": ...}}
      at that engine's G and width (the "arched" profile; their sum is the
      aligned ones shown next to the engine).
    precision: the morphing settings of this layer's weight, or None (left
      as it is: its morphed cells equal the original ones).
    unmapped: why the layer has no estimate, or None.
    weight_op: False for an op that multiplies two activations (attention
      scores): it reads no stored weight, so its MACs are not weight MACs and
      coverage leaves it out.
    shape_macs: the op's MACs from its shapes alone (output elements x the
      size of the reduction, times its loop steps), estimated or not; None
      where a shape or the steps are unknown. Equals `macs` for an estimated
      layer.
    weight_size: how many weights the op reads (its stored weight's size),
      estimated or not; None where no stored weight was found.
  """
  index: int
  name: str
  op: str
  weight: str | None = None
  weight_shape: tuple[int, ...] | None = None
  reduction_axes: tuple[int, ...] | None = None
  macs: int = 0
  weights: int = 0
  n_pos: int = 0
  n_groups: Mapping[str, int] = dataclasses.field(default_factory=dict)
  cycles: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
  columns: Mapping[str, Mapping[str, tuple[int, ...]]] = dataclasses.field(default_factory=dict)
  precision: Mapping[str, object] | None = None
  unmapped: str | None = None
  weight_op: bool = True
  shape_macs: int | None = None
  weight_size: int | None = None

  @property
  def mapped(self) -> bool:
    return self.unmapped is None

  def aligned_ones(self, engine: str, weights: str) -> int:
    """Aligned ones of the weight at `engine`'s G and width."""
    return sum(self.columns[engine][weights])

  def __repr__(self) -> str:
    state = f"macs={self.macs}" if self.mapped else f"unmapped={self.unmapped!r}"
    return (f"LayerEstimate(#{self.index} {self.name!r}, op={self.op!r}, "
            f"weight={self.weight!r}, {state})")


def _ratio(a: float, b: float) -> float:
  if b == 0:
    return math.inf if a else 1.0
  return a / b


def _percent(part: int, whole: int) -> str:
  """part/whole as a percentage that never reads 100% short of it."""
  if whole == 0 or part == whole:
    return "100%"
  text = f"{100 * part / whole:.1f}%"
  return ">99.9%" if text == "100.0%" else text


@dataclasses.dataclass(frozen=True)
class Coverage:
  """What an estimate covers: the weight MACs its estimated layers hold out
  of the weight MACs of every weight op the graph reader found.

  A weight op is a compute op with a stored weight operand (or one computed
  from stored tensors), and every op the reader does not model; an op that
  multiplies two activations (attention scores) is not one, and is left out
  of both sides (counted in `activation_ops`). Where a layer that is not
  estimated has unknown MACs (unknown shapes), the MAC fraction cannot be
  known: coverage then counts the weights the weight ops read, and where a
  weight is unknown too, the weight ops.

  Attributes:
    ops, estimated_ops: weight ops found; estimated.
    macs, estimated_macs: weight MACs of all weight ops (None where one is
      unknown); of the estimated ones.
    weights, estimated_weights: weights read by the weight ops (per op; None
      where one is unknown); by the estimated ones.
    missing: (layer label, reason) of each weight op not estimated.
    activation_ops: ops that multiply two activations (not counted).
  """
  ops: int
  estimated_ops: int
  macs: int | None
  estimated_macs: int
  weights: int | None
  estimated_weights: int
  missing: tuple[tuple[str, str], ...] = ()
  activation_ops: int = 0

  @classmethod
  def of(cls, layers: Sequence[LayerEstimate]) -> "Coverage":
    weight_ops = [layer for layer in layers if layer.weight_op]
    done = [layer for layer in weight_ops if layer.mapped]
    rest = [layer for layer in weight_ops if not layer.mapped]
    estimated_macs = sum(layer.macs for layer in done)
    estimated_weights = sum(layer.weights for layer in done)
    rest_macs = [layer.shape_macs for layer in rest]
    rest_weights = [layer.weight_size for layer in rest]
    return cls(
        ops=len(weight_ops), estimated_ops=len(done),
        macs=None if None in rest_macs else estimated_macs + sum(rest_macs),
        estimated_macs=estimated_macs,
        weights=None if None in rest_weights else estimated_weights + sum(rest_weights),
        estimated_weights=estimated_weights,
        missing=tuple((f"#{layer.index} {layer.name} ({layer.op})", layer.unmapped)
                      for layer in rest),
        activation_ops=len(layers) - len(weight_ops))

  @property
  def complete(self) -> bool:
    """Every weight op is estimated."""
    return self.estimated_ops == self.ops

  @property
  def basis(self) -> str:
    """What the fraction counts: "MACs", else "weights", else "ops"."""
    if self.macs is not None:
      return "MACs"
    return "weights" if self.weights is not None else "ops"

  @property
  def fraction(self) -> float:
    """Estimated / all, on `basis` (1.0 when there is nothing to estimate)."""
    part, whole = {"MACs": (self.estimated_macs, self.macs),
                   "weights": (self.estimated_weights, self.weights),
                   "ops": (self.estimated_ops, self.ops)}[self.basis]
    return 1.0 if whole == 0 else part / whole

  def short(self) -> str:
    """The fraction and its basis, e.g. "66.7% of the weight MACs"."""
    part, whole = {"MACs": (self.estimated_macs, self.macs),
                   "weights": (self.estimated_weights, self.weights),
                   "ops": (self.estimated_ops, self.ops)}[self.basis]
    what = {"MACs": "the weight MACs", "weights": "the weights of the weight ops",
            "ops": "the weight ops"}[self.basis]
    return f"{_percent(part, whole)} of {what}"

  def summary(self) -> str:
    """One line: the fraction, on what, and how many weight ops."""
    ops = f"{self.estimated_ops} of {self.ops} weight ops estimated"
    if self.basis == "MACs":
      text = (f"{_percent(self.estimated_macs, self.macs)} of the weight MACs "
              f"({self.estimated_macs:,} of {self.macs:,}; {ops})")
    elif self.basis == "weights":
      text = (f"{_percent(self.estimated_weights, self.weights)} of the weights the weight ops "
              f"read ({self.estimated_weights:,} of {self.weights:,}; {ops}); the MACs of "
              "the others are unknown")
    else:
      text = (f"{_percent(self.estimated_ops, self.ops)} of the weight ops ({ops}); the MACs "
              "and weights of the others are unknown")
    if self.activation_ops:
      text += (f"; {self.activation_ops} op{'s' if self.activation_ops > 1 else ''} multiplying "
               "two activations not counted (no stored weight)")
    return text

  def missing_text(self, limit: int | None = None) -> str:
    """The weight ops not estimated, each with its reason ("" if none)."""
    items = [f"{name}: {why}" for name, why in self.missing]
    if limit is not None and len(items) > limit:
      items = items[:limit] + [f"and {len(items) - limit} more (listed in the report)"]
    return "; ".join(items)

  def warning(self) -> str | None:
    """One line for stderr when the estimate is incomplete, else None."""
    if self.complete:
      return None
    return (f"the estimate covers {self.summary()}; not estimated: {self.missing_text(3)}")

  def __str__(self) -> str:
    return self.summary()

  def __repr__(self) -> str:
    return (f"Coverage({self.short()}, {self.estimated_ops} of {self.ops} weight ops "
            "estimated)")

  def to_dict(self) -> dict:
    return {"fraction": self.fraction, "basis": self.basis, "complete": self.complete,
            "ops": self.ops, "estimated_ops": self.estimated_ops,
            "macs": self.macs, "estimated_macs": self.estimated_macs,
            "weights": self.weights, "estimated_weights": self.estimated_weights,
            "activation_ops": self.activation_ops,
            "missing": [{"layer": name, "reason": why} for name, why in self.missing],
            "short": self.short(), "summary": self.summary()}


def parse_baseline(baseline) -> tuple[str, str]:
  """("engine", "original" | "morphed") from "engine", "engine:weights" or a pair."""
  if isinstance(baseline, str):
    engine, _, weights = baseline.partition(":")
    weights = weights or "original"
  elif isinstance(baseline, (tuple, list)) and len(baseline) == 2:
    engine, weights = baseline
  else:
    raise ValueError(f"baseline must be 'ENGINE' or 'ENGINE:original|morphed', got {baseline!r}")
  if weights not in WEIGHTS:
    raise ValueError(f"baseline weights must be 'original' or 'morphed', got {weights!r} "
                     f"(in {baseline!r})")
  return str(engine), weights


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The estimate of one SavedModel: layers x engines x {original, morphed}.

  `baseline` is the cell every speedup is measured against ((engine, weights);
  default stripes on the original weights); `headline()` gives SPEC 4's two
  figures whatever the baseline.
  """
  saved_model_dir: str
  signature: str
  engines: tuple[Engine, ...]
  baseline: tuple[str, str]
  method: str
  settings: Mapping[str, object]
  layers: tuple[LayerEstimate, ...]
  shape_source: str

  @property
  def mapped(self) -> tuple[LayerEstimate, ...]:
    return tuple(layer for layer in self.layers if layer.mapped)

  @property
  def unmapped(self) -> tuple[LayerEstimate, ...]:
    return tuple(layer for layer in self.layers if not layer.mapped)

  def engine(self, name: str) -> Engine:
    return next(e for e in self.engines if e.name == name)

  def _engine_of_model(self, model: str) -> str | None:
    """The first engine with this cycle model (headlines name models, not names)."""
    return next((e.name for e in self.engines if e.model == model), None)

  def total_cycles(self) -> dict[str, dict[str, int]]:
    """{engine: {weights: cycles}} summed over the estimated layers."""
    return {e.name: {w: sum(layer.cycles[e.name][w] for layer in self.mapped) for w in WEIGHTS}
            for e in self.engines}

  def total_macs(self) -> int:
    """MACs of the estimated layers (coverage() says of how many)."""
    return sum(layer.macs for layer in self.mapped)

  def coverage(self) -> Coverage:
    """What this estimate covers of the model's weight MACs (Coverage)."""
    return Coverage.of(self.layers)

  def speedup(self, layer: LayerEstimate | None = None,
              baseline=None) -> dict[str, dict[str, float]]:
    """{engine: {weights: cycles(baseline cell) / cycles(cell)}}, for one layer
    or the total; `baseline` defaults to this estimate's."""
    engine, weights = parse_baseline(baseline) if baseline is not None else self.baseline
    cycles = self.total_cycles() if layer is None else layer.cycles
    base = cycles[engine][weights]
    return {name: {w: _ratio(base, value) for w, value in cells.items()}
            for name, cells in cycles.items()}

  def headline(self, layer: LayerEstimate | None = None) -> dict[str, float | None]:
    """SPEC 4's two figures: {"over_stripes": x, "over_unmorphed": x}, the
    mortar engine on the morphed weights over stripes / mortar on the
    original; None where the engines lack one of the models."""
    mortar = self._engine_of_model("mortar")
    cycles = self.total_cycles() if layer is None else layer.cycles
    out = {}
    for key, model, weights in HEADLINES:
      base = self._engine_of_model(model)
      out[key] = (None if mortar is None or base is None else
                  _ratio(cycles[base][weights], cycles[mortar]["morphed"]))
    return out

  def iso_area_speedup(self) -> dict[str, dict[str, float | None]]:
    """Speedup at equal area, speedup x area(baseline) / area(engine): None
    where either engine has no area."""
    base_area = self.engine(self.baseline[0]).area_mm2
    out = {}
    for name, cells in self.speedup().items():
      area = self.engine(name).area_mm2
      out[name] = {w: None if base_area is None or area is None else v * base_area / area
                   for w, v in cells.items()}
    return out

  def baseline_headline(self, layer: LayerEstimate | None = None) -> float | None:
    """The mortar engine on the morphed weights over the chosen baseline cell
    (equal to a SPEC 4 headline when the baseline is that headline's cell);
    None without an engine of the mortar model."""
    mortar = self._engine_of_model("mortar")
    return None if mortar is None else self.speedup(layer)[mortar]["morphed"]

  def baseline_is_headline(self) -> bool:
    """True when the baseline is the first SPEC 4 headline's cell (stripes on
    the original weights): the speedups and the headline share their base."""
    return self.baseline == (self._engine_of_model("stripes"), "original")

  def headline_iso_area(self) -> dict[str, float | None]:
    """The headline figures at equal area, None where an engine has no area."""
    mortar = self._engine_of_model("mortar")
    head = self.headline()
    out = {}
    for key, model, _ in HEADLINES:
      base = self._engine_of_model(model)
      areas = [self.engine(n).area_mm2 for n in (mortar, base) if n is not None]
      out[key] = (None if head[key] is None or len(areas) < 2 or None in areas else
                  head[key] * areas[1] / areas[0])
    return out

  def seconds(self) -> dict[str, dict[str, float | None]]:
    return {name: {w: self.engine(name).seconds(c) for w, c in cells.items()}
            for name, cells in self.total_cycles().items()}

  def joules(self) -> dict[str, dict[str, float | None]]:
    return {name: {w: self.engine(name).joules(c) for w, c in cells.items()}
            for name, cells in self.total_cycles().items()}

  def aligned_ones(self) -> dict[str, dict[str, int]]:
    """{engine: {weights: aligned ones}} at each engine's own G and width."""
    return {e.name: {w: sum(layer.aligned_ones(e.name, w) for layer in self.mapped)
                     for w in WEIGHTS} for e in self.engines}

  # ---------------------------------------------------------------- reports

  def baseline_text(self) -> str:
    return f"{self.baseline[0]} on the {self.baseline[1]} weights"

  def headline_text(self) -> str:
    """One line per headline figure (with iso-area where both have an area),
    each naming the cell it is over. With another baseline than stripes on
    the original weights, the first line is mortar on the morphed weights
    over that baseline, and the SPEC 4 lines that follow say that they keep
    their own cells."""
    iso = self.headline_iso_area()
    lines = []
    if not self.baseline_is_headline():
      value = self.baseline_headline()
      figure = ("unknown (no engine of the mortar model)" if value is None else
                table.ratio(value))
      lines.append(f"mortar on the morphed weights: {figure} over {self.baseline_text()} "
                   "(the chosen baseline)")
      lines.append("SPEC 4's two headlines, over their own cells whatever the baseline:")
    for key, value in self.headline().items():
      if value is None:
        lines.append(f"mortar on the morphed weights {_HEADLINE_TEXT[key]}: unknown "
                     "(no engine of that model)")
        continue
      extra = f" (iso-area {table.ratio(iso[key])})" if iso[key] is not None else ""
      lines.append(f"mortar on the morphed weights: {table.ratio(value)}{extra} "
                   f"{_HEADLINE_TEXT[key]}")
    return "\n".join(lines)

  def table(self) -> str:
    """Per layer: MACs, cycles of every engine on both weights, the headlines;
    then the totals as a matrix (engines x weights) and the headline lines."""
    names = [e.name for e in self.engines]
    # With another baseline, a first speedup column: mortar morphed over it.
    chosen = not self.baseline_is_headline()
    chosen_header = [f"x {self.baseline[0]} {self.baseline[1][:4]}"] if chosen else []
    headers = (["#", "layer", "op", "weight (map name)", "MACs"] +
               [f"{n} {w[:4]}" for n in names for w in WEIGHTS] + chosen_header +
               ["x stripes", "x unmorphed"])

    def speedups(layer):
      head = self.headline(layer)
      cells = [self.baseline_headline(layer)] if chosen else []
      cells += [head[k] for k, _, _ in HEADLINES]
      return [table.ratio(v) if v is not None else "-" for v in cells]

    rows = []
    for layer in self.layers:
      if not layer.mapped:
        rows.append([layer.index, layer.name, layer.op, layer.weight or "-", "-"] +
                    ["-"] * (2 * len(names) + len(chosen_header) + 2))
        continue
      rows.append([layer.index, layer.name, layer.op, layer.weight, layer.macs] +
                  [layer.cycles[n][w] for n in names for w in WEIGHTS] + speedups(layer))
    total = self.total_cycles()
    rows.append(["", "total", "", "", self.total_macs()] +
                [total[n][w] for n in names for w in WEIGHTS] + speedups(None))
    columns = ("x stripes: mortar on the morphed weights over stripes on the original weights, "
               "x unmorphed: over mortar on the original weights (SPEC 4)")
    if chosen:
      columns = (f"{chosen_header[0]}: mortar on the morphed weights over the chosen baseline, "
                 f"{self.baseline_text()}; " + columns)
    text = [f"Estimate of {self.saved_model_dir} ({self.signature}, shapes: {self.shape_source}); "
            f"cycles per engine on the original (orig) and morphed (morp) weights; morphed: "
            f"{self.method} {_settings_text(self.settings)}",
            table.format_table(headers, rows, footer_rows=1) + "\n" + columns,
            "Totals (speedup = cycles of the baseline, " + self.baseline_text() +
            ", over the cell's; aligned ones at each engine's own G and width):\n" +
            self.matrix_table(),
            self.headline_text(),
            "Coverage: " + self.coverage().summary()]
    unmapped = [f"Not estimated: #{layer.index} {layer.name} ({layer.op}): {layer.unmapped}"
                for layer in self.unmapped if layer.weight_op]
    unmapped += [f"Not a weight op (not counted): #{layer.index} {layer.name} ({layer.op}): "
                 f"{layer.unmapped}" for layer in self.unmapped if not layer.weight_op]
    if unmapped:
      text.append("\n".join(unmapped))
    return "\n\n".join(text)

  def matrix_table(self) -> str:
    """The totals: one row per engine x weights."""
    total, speed, iso = self.total_cycles(), self.speedup(), self.iso_area_speedup()
    seconds, joules, ones = self.seconds(), self.joules(), self.aligned_ones()
    rows = []
    for e in self.engines:
      for w in WEIGHTS:
        rows.append([e.name, w, f"G={e.group_size} width={e.width}", ones[e.name][w],
                     total[e.name][w], table.ratio(speed[e.name][w]),
                     table.ratio(iso[e.name][w]) if iso[e.name][w] is not None else "-",
                     f"{seconds[e.name][w]:.4g}" if seconds[e.name][w] is not None else "-",
                     f"{joules[e.name][w]:.4g}" if joules[e.name][w] is not None else "-"])
    notes = []
    if any(e.frequency_hz is None for e in self.engines):
      notes.append("time and energy: '-' where an engine has no clock (or no power) with a source")
    if any(e.area_mm2 is None for e in self.engines):
      notes.append("iso-area: '-' where an engine or the baseline has no area with a source")
    over = f"{self.baseline[0]} {self.baseline[1][:4]}"
    return (table.format_table(["engine", "weights", "geometry", "aligned ones", "cycles",
                                f"x {over}", f"iso-area x {over}", "seconds", "joules"], rows) +
            ("\n" + "; ".join(notes) if notes else ""))

  def csv_rows(self) -> list[list]:
    """SCALE-Sim-like rows: LayerID, Layer name, Op, MACs, Weights, then the
    cycles of every engine on both weights, the two headlines, a note."""
    names = [e.name for e in self.engines]
    cells = [(n, w) for n in names for w in WEIGHTS]
    header = (["LayerID", "Layer name", "Op", "Weight", "MACs", "Weights", "N_pos"] +
              [f"Total Cycles {n} {w}" for n, w in cells] +
              [f"Speedup {n} {w}" for n, w in cells] +
              ["Speedup mortar over stripes", "Speedup mortar over unmorphed", "Op MACs",
               "Note"])
    rows = [header]
    for layer in self.layers:
      op_macs = "unknown" if layer.shape_macs is None else layer.shape_macs
      if not layer.mapped:
        rows.append([layer.index, layer.name, layer.op, layer.weight or "", "", "", ""] +
                    [""] * (2 * len(cells) + 2) + [op_macs, layer.unmapped])
        continue
      speed, head = self.speedup(layer), self.headline(layer)
      rows.append([layer.index, layer.name, layer.op, layer.weight, layer.macs, layer.weights,
                   layer.n_pos] + [layer.cycles[n][w] for n, w in cells] +
                  [f"{speed[n][w]:.6g}" for n, w in cells] +
                  ["" if head[k] is None else f"{head[k]:.6g}" for k, _, _ in HEADLINES] +
                  [layer.macs, ""])
    # The last row states the coverage: the MACs and weights columns hold the
    # estimated layers' totals, "Op MACs" all weight MACs (or "unknown").
    coverage = self.coverage()
    rows.append(["coverage", coverage.summary(), "", "", coverage.estimated_macs,
                 coverage.estimated_weights, ""] + [""] * (2 * len(cells) + 2) +
                ["unknown" if coverage.macs is None else coverage.macs,
                 coverage.missing_text()])
    return rows

  def write_csv(self, path: str) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(self.csv_rows())
    files.write_text(path, buffer.getvalue())

  def to_dict(self) -> dict:
    finite = files.finite_tree
    return {
        "saved_model": self.saved_model_dir, "signature": self.signature,
        "baseline": {"engine": self.baseline[0], "weights": self.baseline[1]},
        "method": self.method, "settings": dict(self.settings),
        "shape_source": self.shape_source,
        "engines": [e.to_dict() for e in self.engines],
        "headline": finite(self.headline()),
        "headline_over_baseline": finite(self.baseline_headline()),
        "headline_iso_area": finite(self.headline_iso_area()),
        "coverage": self.coverage().to_dict(),
        "total": {"macs": self.total_macs(), "cycles": self.total_cycles(),
                  "aligned_ones": self.aligned_ones(),
                  "speedup": finite(self.speedup()),
                  "iso_area_speedup": finite(self.iso_area_speedup()),
                  "seconds": self.seconds(), "joules": self.joules()},
        "layers": [dict(dataclasses.asdict(layer),
                        speedup=finite(self.speedup(layer)) if layer.mapped else None,
                        headline=finite(self.headline(layer)) if layer.mapped else None)
                   for layer in self.layers],
    }

  def write_json(self, path: str) -> None:
    files.write_json(path, self.to_dict())

  def __str__(self) -> str:
    return self.table()

  def __repr__(self) -> str:
    return (f"Estimate({self.saved_model_dir!r}, engines={[e.name for e in self.engines]}, "
            f"baseline={':'.join(self.baseline)!r}, method={self.method!r}, "
            f"settings={table.shorten(_settings_text(self.settings), 60)!r}, "
            f"layers={len(self.layers)}, "
            f"estimated={len(self.mapped)})")


def _settings_text(settings: Mapping) -> str:
  return ", ".join(f"{k}={v}" for k, v in settings.items())


# --------------------------------------------------------------------------
# Per-layer figures


def group_figures(w: np.ndarray, axes, group_size: int, width: int, window: int):
  """(n_groups, lane_sum, bitlet_sum, columns) of a float32 weight (SPEC 3, 4).

  lane_sum is the sum over groups of max(most ones in one lane, 1), bitlet_sum
  the sum of Bitlet's column costs, columns the ones per aligned column.
  """
  columns, lane_max, bitlet = backends.aligned_statistics(
      w, reduction_axes=axes, group_size=group_size, width=width, window=window)
  lane_sum = int(np.maximum(lane_max, 1).sum(dtype=np.int64))
  return int(lane_max.size), lane_sum, int(bitlet.sum(dtype=np.int64)), tuple(
      int(c) for c in columns)


def _n_pos(op: graph_lib.ComputeOp, weight_shape, axes) -> tuple[int | None, str | None]:
  n_out = int(np.prod([d for a, d in enumerate(weight_shape) if a not in axes]))
  if op.type in _TRANSPOSED:
    act = op.activation_shape
    if act is None or -1 in act:
      return None, "input shape unknown (give input_shape)"
    channel = 1 if str(op.attrs.get("data_format", "NHWC")).startswith("NC") else len(act) - 1
    return int(np.prod(act)) // act[channel], None
  out = op.output_shape
  if out is None or -1 in out:
    return None, "output shape unknown (give input_shape)"
  total = int(np.prod(out))
  if n_out == 0 or total % n_out:
    return None, (f"output {out} is not a whole number of the weight's {n_out} output "
                  "elements")
  return total // n_out, None


def _known(*shapes) -> bool:
  return all(shape is not None and -1 not in shape for shape in shapes)


def shape_macs(op: graph_lib.ComputeOp) -> int | None:
  """An op's MACs from its shapes alone, whatever its weight: output elements
  times the size of the reduction (a transposed conv: input elements times
  the filter's spatial size times its output channels), times the loop
  steps it runs. None where a shape it needs or the steps are unknown, and
  for ops the reader does not model."""
  shapes, out = op.input_shapes, op.output_shape
  if op.repeats is None or len(shapes) < 2:
    return None
  if op.type in ("Conv2D", "Conv3D"):
    filt = shapes[1]
    per_output = int(np.prod(filt[:-1])) if _known(filt) else None
  elif op.type == "DepthwiseConv2dNative":
    filt = shapes[1]
    per_output = int(np.prod(filt[:-2])) if _known(filt) else None
  elif op.type in _TRANSPOSED:
    data, filt = shapes[2] if len(shapes) > 2 else None, shapes[1]
    if not _known(data, filt):
      return None
    return int(np.prod(data)) * int(np.prod(filt[:-1])) * op.repeats
  elif op.type == "MatMul":
    a, b = shapes[0], shapes[1]
    if _known(a):
      per_output = a[0] if op.attrs.get("transpose_a") else a[1]
    else:
      per_output = (b[1] if op.attrs.get("transpose_b") else b[0]) if _known(b) else None
  elif op.type.startswith("BatchMatMul"):
    x, y = shapes[0], shapes[1]
    if _known(x):
      per_output = x[-2] if op.attrs.get("adj_x") else x[-1]
    else:
      per_output = (y[-1] if op.attrs.get("adj_y") else y[-2]) if _known(y) else None
  elif op.type == "Einsum":
    per_output = _einsum_reduction(op.attrs.get("equation", ""), shapes)
  else:
    return None
  if per_output is None or not _known(out):
    return None
  return int(np.prod(out)) * int(per_output) * op.repeats


def _einsum_reduction(equation: str, shapes) -> int | None:
  """The product of the sizes of the labels an einsum sums over (absent from
  its output), read from the operands' shapes."""
  if "->" not in equation:
    return None
  lhs, out = equation.replace(" ", "").split("->", 1)
  sizes = {}
  for labels, shape in zip(lhs.split(","), shapes):
    if not _known(shape):
      continue
    if "..." in labels:
      before, after = labels.split("...")
      labels = before + "." * (len(shape) - len(before) - len(after)) + after
    if len(labels) != len(shape):
      return None
    for label, size in zip(labels, shape):
      if label != ".":
        sizes[label] = size
  summed = {label for label in lhs.replace(",", "").replace(".", "") if label not in out}
  if not summed <= set(sizes):
    return None
  return int(np.prod([sizes[label] for label in summed]))


def _morphed(w, spec, axes, group_size, width):
  """The weight as the converter would write it; bitx prunes with the
  geometry of the engine it is estimated on (whatever the spec's own)."""
  if spec is None:
    return w
  if spec.method == "bitx":
    spec = dataclasses.replace(spec, group_size=group_size, width=width)
    return backends.morph(w, spec, reduction_axes=axes)
  return backends.morph(w, spec)


def _layer_settings(spec) -> dict:
  """A layer's morphing as the estimate records it: bitx without group_size
  and width (the engines' geometry applies)."""
  return {"method": spec.method, **{k: v for k, v in spec.settings().items()
                                    if spec.method != "bitx" or k not in ("group_size", "width")}}


def estimate(saved_model_dir: str, input_shape=None,
             signature: str = graph_lib.DEFAULT_SIGNATURE,
             engines: Sequence[Engine] | None = None, baseline=None,
             method="paper", precision=None, *, keep_bits=None, columns=None,
             group_size=None, width=None) -> Estimate:
  """Estimates every compute op of a SavedModel on each engine, on the
  original and on the morphed weights.

  Args:
    saved_model_dir: the SavedModel.
    input_shape: full input shape, batch included (see read_graph); None:
      batch 1 and the declared shapes.
    signature: the signature whose graph is read.
    engines: Engine configs (default: default_engines()).
    baseline: the cell speedups are measured against: "engine" (its original
      weights), "engine:morphed", or a pair (default: stripes on the original
      weights, or the first engine's original weights where none is "stripes").
    method, precision, keep_bits, columns: how the weights are morphed (as for
      mortar_tf.morph: a MorphSpec, or a method name with its flat settings),
      applied to exactly what mortar_tf.savedmodel.convert would morph
      (savedmodel.selection: variables, never graph constants). `precision`
      may be a {pattern: P or MorphSpec} map, matched as
      mortar_tf.precision_map says (an entry matching nothing is an error, as
      in the converter): a number is P for `method`, a MorphSpec morphs the
      weights its entry wins with its own method; layers it does not cover
      keep their weights. bitx (one spec or a map entry) prunes with the G
      and width of each engine it is estimated on, never the spec's own.
    group_size, width: replace every engine's lanes per PE / aligned width
      (not morphing settings: they may go with a MorphSpec).

  Returns:
    An Estimate.

  Raises:
    SavedModelError: not a readable SavedModel, or an unknown signature.
    ValueError: bad engines, an unknown baseline, or bad morphing settings.
  """
  engines = engines_lib.check_engines(engines if engines is not None else
                                      engines_lib.default_engines())
  engines = engines_lib.with_geometry(engines, group_size, width)
  if baseline is None:
    names = [e.name for e in engines]
    baseline = DEFAULT_BASELINE if DEFAULT_BASELINE[0] in names else (names[0], "original")
  baseline = parse_baseline(baseline)
  if baseline[0] not in [e.name for e in engines]:
    raise ValueError(f"baseline {baseline[0]!r} is not one of the engines: "
                     f"{', '.join(e.name for e in engines)}")
  # group_size and width are the engines' (bitx prunes with each engine's).
  spec_or_map = precision_map.check_morphing(method, precision, keep_bits=keep_bits,
                                             columns=columns)
  if isinstance(spec_or_map, morphing.MorphSpec):
    settings = _layer_settings(spec_or_map)
    method = settings.pop("method")
  else:
    settings = {"precision_map": precision_map.to_json(precision)}

  graph = graph_lib.read_graph(saved_model_dir, input_shape=input_shape, signature=signature)
  # What the converter would morph, with the same settings: graph constants stay.
  targets, _ = selection.select_targets(graph, spec_or_map)
  specs = {t.var.key: t.spec for t in targets}
  display = graph.display_names()
  reader, _ = variables_lib.open_checkpoint(saved_model_dir)
  geometries = sorted({e.geometry for e in engines})
  layers = []
  for index, op in enumerate(graph.ops):
    # An op in a conditional branch: both branches are estimated, so say which.
    common = dict(index=index, name=op.name if op.branch is None else f"{op.name} [{op.branch}]",
                  op=op.type,
                  weight=(display.get(op.weight.key, op.weight.name) if op.weight else None),
                  weight_op=not op.activation_op, shape_macs=shape_macs(op),
                  weight_size=int(np.prod(op.weight.shape)) if op.weight else None)
    if not op.mapped:
      layers.append(LayerEstimate(**common, unmapped=op.unmapped))
      continue
    if op.weight.dtype != "float32":
      layers.append(LayerEstimate(**common, unmapped=f"weight is {op.weight.dtype}, not float32"))
      continue
    axes = op.reduction_axes
    n_pos, why = _n_pos(op, op.weight.shape, axes)
    if why is not None and graph.trace_error and "unknown" in why:
      why = f"{why}; shape inference failed: {graph.trace_error}"
    if why is None and op.repeats is None:
      why = "in a loop whose number of steps the graph does not fix (give input_shape)"
    if why is not None:
      layers.append(LayerEstimate(**common, unmapped=why))
      continue
    n_pos *= op.repeats  # a loop body runs once per step (an RNN: per time step)
    w = graph_lib.weight_value(saved_model_dir, op.weight, reader)
    spec = specs.get(op.weight.key) if op.weight.kind == "variable" else None
    figures = {}
    morphed_once = _morphed(w, spec, axes, None, None) if spec and spec.method != "bitx" else None
    for geometry in geometries:
      original = group_figures(w, axes, *geometry)
      if spec is None:
        morphed = original
      else:
        value = (morphed_once if morphed_once is not None else
                 _morphed(w, spec, axes, geometry[0], geometry[1]))
        morphed = group_figures(value, axes, *geometry)
      figures[geometry] = {"original": original, "morphed": morphed}
    cycles, n_groups, column_ones = {}, {}, {}
    for e in engines:
      cells = figures[e.geometry]
      n_groups[e.name] = cells["original"][0]
      cycles[e.name] = {w_: e.layer_cycles(n_pos, e.group_cycles(*cells[w_][:3]))
                        for w_ in WEIGHTS}
      column_ones[e.name] = {w_: cells[w_][3] for w_ in WEIGHTS}
    layers.append(LayerEstimate(
        **common, weight_shape=tuple(op.weight.shape), reduction_axes=tuple(axes),
        macs=n_pos * int(w.size), weights=int(w.size), n_pos=n_pos, n_groups=n_groups,
        cycles=cycles, columns=column_ones,
        precision=None if spec is None else _layer_settings(spec)))
  return Estimate(saved_model_dir, signature, engines, baseline, method, settings,
                  tuple(layers), graph.shape_source)
