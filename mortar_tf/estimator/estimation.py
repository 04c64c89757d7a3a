"""Per-layer cycles, speedups, time and energy of a SavedModel on each engine.

For every compute op the graph reader finds: its weight's groups along the
reduction axes (SPEC 3), `N_pos` (output elements of the op over the weight's
output elements; for Conv*Transpose, batch x input spatial size), MACs
(N_pos x weights) and cycles per engine (SPEC 4). The `mortar` model runs the
bitlet model on the weights morphed with the given method. The per-group
figures come from the C++ op (MortarAlignedCount) when it is built, else from
vectorised numpy; nothing loops per group or per weight in Python.

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

from mortar_tf import bits
from mortar_tf import files
from mortar_tf import morphing
from mortar_tf import precision_map
from mortar_tf import table
from mortar_tf.estimator import engines as engines_lib
from mortar_tf.estimator.engines import Engine
from mortar_tf.savedmodel import graph as graph_lib
from mortar_tf.savedmodel import selection
from mortar_tf.savedmodel import variables as variables_lib

DEFAULT_BASELINE = "bitlet"
_TRANSPOSED = ("Conv2DBackpropInput", "Conv3DBackpropInputV2")


@dataclasses.dataclass(frozen=True)
class LayerEstimate:
  """One compute op.

  Attributes:
    index: position in the graph's op list.
    name: the op's name; op: its type; weight: the weight's name.
    weight_shape, reduction_axes: the stored weight and its grouping.
    macs: N_pos x weights; weights: real weights (no padding).
    n_pos: positions (SPEC 4).
    n_groups: {engine: groups at that engine's G}.
    cycles: {engine: layer cycles}.
    columns: {"original": ones per aligned column, "morphed": ...} at the
      baseline's G and width (the "arched" profile).
    precision: the morphing settings the mortar engines used here, or None
      (weights left as they are).
    unmapped: why the layer has no estimate, or None.
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
  cycles: Mapping[str, int] = dataclasses.field(default_factory=dict)
  columns: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
  precision: Mapping[str, object] | None = None
  unmapped: str | None = None

  @property
  def mapped(self) -> bool:
    return self.unmapped is None


def _ratio(a: float, b: float) -> float:
  if b == 0:
    return math.inf if a else 1.0
  return a / b


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The estimate of one SavedModel: layers, engines and the baseline."""
  saved_model_dir: str
  signature: str
  engines: tuple[Engine, ...]
  baseline: str
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

  def total_cycles(self) -> dict[str, int]:
    return {e.name: sum(layer.cycles[e.name] for layer in self.mapped) for e in self.engines}

  def total_macs(self) -> int:
    return sum(layer.macs for layer in self.mapped)

  def speedup(self, layer: LayerEstimate | None = None) -> dict[str, float]:
    """cycles(baseline) / cycles(engine), for one layer or the total."""
    cycles = self.total_cycles() if layer is None else layer.cycles
    base = cycles[self.baseline]
    return {name: _ratio(base, value) for name, value in cycles.items()}

  def iso_area_speedup(self) -> dict[str, float | None]:
    """Speedup at equal area: speedup x area(baseline) / area(engine), or None."""
    base_area = self.engine(self.baseline).area_mm2
    out = {}
    for name, value in self.speedup().items():
      area = self.engine(name).area_mm2
      out[name] = None if base_area is None or area is None else value * base_area / area
    return out

  def seconds(self) -> dict[str, float | None]:
    return {e.name: e.seconds(c) for e, c in zip(self.engines, self.total_cycles().values())}

  def joules(self) -> dict[str, float | None]:
    return {e.name: e.joules(c) for e, c in zip(self.engines, self.total_cycles().values())}

  # ---------------------------------------------------------------- reports

  def table(self) -> str:
    """Per layer and total: MACs, cycles per engine, speedup of each engine."""
    names = [e.name for e in self.engines]
    others = [n for n in names if n != self.baseline]
    headers = (["#", "layer", "op", "MACs"] + [f"cycles {n}" for n in names] +
               [f"{n} x" for n in others])
    rows = []
    for layer in self.layers:
      if not layer.mapped:
        rows.append([layer.index, layer.name, layer.op, "-"] + ["-"] * (len(names) + len(others)))
        continue
      speed = self.speedup(layer)
      rows.append([layer.index, layer.name, layer.op, layer.macs] +
                  [layer.cycles[n] for n in names] + [table.ratio(speed[n]) for n in others])
    total, speed = self.total_cycles(), self.speedup()
    rows.append(["", "total", "", self.total_macs()] + [total[n] for n in names] +
                [table.ratio(speed[n]) for n in others])
    text = [f"Estimate of {self.saved_model_dir} ({self.signature}, shapes: "
            f"{self.shape_source}); speedup = cycles({self.baseline}) / cycles(engine); "
            f"mortar engines: {self.method} {_settings_text(self.settings)}",
            table.format_table(headers, rows, footer_rows=1)]
    iso = self.iso_area_speedup()
    seconds, joules = self.seconds(), self.joules()
    lines = []
    for e in self.engines:
      parts = [f"{e.name}: {e.model}, G={e.group_size}, width={e.width}, window={e.window}, "
               f"PEs={e.num_pes}"]
      parts.append("time " + (f"{seconds[e.name]:.4g} s" if seconds[e.name] is not None
                              else "unknown (no clock)"))
      parts.append("energy " + (f"{joules[e.name]:.4g} J" if joules[e.name] is not None
                                else "unknown (no clock or power)"))
      if e.name != self.baseline:
        parts.append("iso-area speedup " + (table.ratio(iso[e.name]) if iso[e.name] is not None
                                            else "unknown (no area)"))
      lines.append("; ".join(parts))
    text.append("\n".join(lines))
    if self.unmapped:
      text.append("\n".join(f"Not estimated: #{layer.index} {layer.name} ({layer.op}): "
                            f"{layer.unmapped}" for layer in self.unmapped))
    return "\n\n".join(text)

  def csv_rows(self) -> list[list]:
    """SCALE-Sim-like rows: LayerID, Layer name, Op, MACs, Weights, cycles..., speedups."""
    names = [e.name for e in self.engines]
    others = [n for n in names if n != self.baseline]
    header = (["LayerID", "Layer name", "Op", "Weight", "MACs", "Weights", "N_pos"] +
              [f"Total Cycles {n}" for n in names] + ["Speedup"] +
              [f"Speedup {n}" for n in others] + ["Note"])
    main = "mortar" if "mortar" in names else others[-1] if others else self.baseline
    rows = [header]
    for layer in self.layers:
      if not layer.mapped:
        rows.append([layer.index, layer.name, layer.op, layer.weight or "", "", "", ""] +
                    [""] * len(names) + [""] + [""] * len(others) + [layer.unmapped])
        continue
      speed = self.speedup(layer)
      rows.append([layer.index, layer.name, layer.op, layer.weight, layer.macs, layer.weights,
                   layer.n_pos] + [layer.cycles[n] for n in names] +
                  [f"{speed[main]:.6g}"] + [f"{speed[n]:.6g}" for n in others] + [""])
    return rows

  def write_csv(self, path: str) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(self.csv_rows())
    files.write_text(path, buffer.getvalue())

  def to_dict(self) -> dict:
    return {
        "saved_model": self.saved_model_dir, "signature": self.signature,
        "baseline": self.baseline, "method": self.method, "settings": dict(self.settings),
        "shape_source": self.shape_source,
        "engines": [e.to_dict() for e in self.engines],
        "total": {"macs": self.total_macs(), "cycles": self.total_cycles(),
                  "speedup": {k: files.finite_or_none(v) for k, v in self.speedup().items()},
                  "iso_area_speedup": {k: files.finite_or_none(v) for k, v in self.iso_area_speedup().items()},
                  "seconds": self.seconds(), "joules": self.joules()},
        "layers": [dict(dataclasses.asdict(layer),
                        speedup=({k: files.finite_or_none(v) for k, v in self.speedup(layer).items()}
                                 if layer.mapped else None))
                   for layer in self.layers],
    }

  def write_json(self, path: str) -> None:
    files.write_json(path, self.to_dict())


def _settings_text(settings: Mapping) -> str:
  return ", ".join(f"{k}={v}" for k, v in settings.items())


# --------------------------------------------------------------------------
# Per-layer figures


def group_figures(w: np.ndarray, axes, group_size: int, width: int, window: int):
  """(n_groups, lane_sum, bitlet_sum, columns) of a float32 weight (SPEC 3, 4).

  lane_sum is the sum over groups of max(most ones in one lane, 1), bitlet_sum
  the sum of Bitlet's column costs, columns the ones per aligned column.
  """
  from mortar_tf import ops  # pylint: disable=import-outside-toplevel
  if ops.is_built():
    columns, _, lane_max, bitlet = ops.aligned_count(w, reduction_axes=axes,
                                                     group_size=group_size, width=width,
                                                     window=window)
    lane_max, bitlet, columns = lane_max.numpy(), bitlet.numpy(), columns.numpy()
  else:
    lane_max, bitlet = bits.group_cycle_figures(w, reduction_axes=axes, group_size=group_size,
                                                width=width, window=window)
    columns = bits.bit_histogram(w, "aligned", reduction_axes=axes, group_size=group_size,
                                 width=width, backend="numpy")
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


def _morphed(w, spec, axes):
  if spec is None:
    return w
  grouping = {"reduction_axes": axes} if spec.method == "bitx" else {}
  return morphing.morph(w, spec.method, **spec.settings(), **grouping)


def estimate(saved_model_dir: str, input_shape=None,
             signature: str = graph_lib.DEFAULT_SIGNATURE,
             engines: Sequence[Engine] | None = None, baseline: str = DEFAULT_BASELINE,
             method: str = "paper", precision=None, *, keep_bits=None, columns=None,
             group_size=None, width=None) -> Estimate:
  """Estimates every compute op of a SavedModel on each engine.

  Args:
    saved_model_dir: the SavedModel.
    input_shape: full input shape, batch included (see read_graph); None:
      batch 1 and the declared shapes.
    signature: the signature whose graph is read.
    engines: Engine configs (default: default_engines()).
    baseline: the engine speedups are measured against (default "bitlet":
      the original weights on Bitlet; fp32 and stripes are reported too).
    method, precision, keep_bits, columns, group_size, width: how the mortar
      engines' weights are morphed (as for mortar_tf.morph), applied to exactly
      what mortar_tf.savedmodel.convert would morph (savedmodel.selection:
      variables, never graph constants). `precision` may be a {pattern: P} map,
      matched as mortar_tf.precision_map says (an entry matching nothing is an
      error, as in the converter); layers it does not cover keep their weights.

  Returns:
    An Estimate.

  Raises:
    SavedModelError: not a readable SavedModel, or an unknown signature.
    ValueError: bad engines, an unknown baseline, or bad morphing settings.
  """
  engines = engines_lib.check_engines(engines if engines is not None else
                                      engines_lib.default_engines())
  if baseline not in [e.name for e in engines]:
    raise ValueError(f"baseline {baseline!r} is not one of the engines: "
                     f"{', '.join(e.name for e in engines)}")
  spec_kwargs = {k: v for k, v in dict(keep_bits=keep_bits, columns=columns,
                                       group_size=group_size, width=width).items()
                 if v is not None}
  if isinstance(precision, Mapping):
    if spec_kwargs:
      raise ValueError("a precision map takes no other morphing arguments")
    precision_map.check(precision, method)
    settings = {"precision_map": dict(precision)}
  else:
    settings = morphing.MorphSpec.create(method, precision, **spec_kwargs).settings()

  graph = graph_lib.read_graph(saved_model_dir, input_shape=input_shape, signature=signature)
  # What the converter would morph, with the same settings: graph constants stay.
  targets, _ = selection.select_targets(graph, method, precision, spec_kwargs)
  specs = {t.var.key: t.spec for t in targets}
  display = graph.display_names()
  reader, _ = variables_lib.open_checkpoint(saved_model_dir)
  base = next(e for e in engines if e.name == baseline)
  geometries = sorted({(e.group_size, e.width, e.window) for e in engines})
  layers = []
  for index, op in enumerate(graph.ops):
    # An op in a conditional branch: both branches are estimated, so say which.
    common = dict(index=index, name=op.name if op.branch is None else f"{op.name} [{op.branch}]",
                  op=op.type,
                  weight=(display.get(op.weight.key, op.weight.name) if op.weight else None))
    if not op.mapped:
      layers.append(LayerEstimate(**common, unmapped=op.unmapped))
      continue
    if op.weight.dtype != "float32":
      layers.append(LayerEstimate(**common, unmapped=f"weight is {op.weight.dtype}, not float32"))
      continue
    axes = op.reduction_axes
    n_pos, why = _n_pos(op, op.weight.shape, axes)
    if why is None and op.repeats is None:
      why = "in a loop whose number of steps the graph does not fix (give input_shape)"
    if why is not None:
      layers.append(LayerEstimate(**common, unmapped=why))
      continue
    n_pos *= op.repeats  # a loop body runs once per step (an RNN: per time step)
    w = graph_lib.weight_value(saved_model_dir, op.weight, reader)
    spec = specs.get(op.weight.key) if op.weight.kind == "variable" else None
    morphed = _morphed(w, spec, axes) if any(e.morphs for e in engines) else w
    figures = {}
    for geometry in geometries:
      figures[("original",) + geometry] = group_figures(w, axes, *geometry)
      if any(e.morphs and (e.group_size, e.width, e.window) == geometry for e in engines):
        figures[("morphed",) + geometry] = group_figures(morphed, axes, *geometry)
    cycles, n_groups = {}, {}
    for e in engines:
      key = ("morphed" if e.morphs else "original", e.group_size, e.width, e.window)
      groups, lane_sum, bitlet_sum, _ = figures[key]
      n_groups[e.name] = groups
      cycles[e.name] = e.layer_cycles(n_pos, e.group_cycles(groups, lane_sum, bitlet_sum))
    geometry = (base.group_size, base.width, base.window)
    columns = {"original": figures[("original",) + geometry][3]}
    if spec is not None:
      found = figures.get(("morphed",) + geometry)
      columns["morphed"] = (found or group_figures(morphed, axes, *geometry))[3]
    layers.append(LayerEstimate(
        **common, weight_shape=tuple(op.weight.shape), reduction_axes=tuple(axes),
        macs=n_pos * int(w.size), weights=int(w.size), n_pos=n_pos, n_groups=n_groups,
        cycles=cycles, columns=columns,
        precision=None if spec is None else dict(spec.settings(), method=spec.method)))
  return Estimate(saved_model_dir, signature, engines, baseline, method, settings,
                  tuple(layers), graph.shape_source)
