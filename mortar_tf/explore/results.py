"""What sweeps and searches return: SweepPoint, SweepResult, SearchResult.

Frozen records with their renderings: a SweepResult prints as the paper's
table (one row per setting: metric, drop, ones ratios per domain, the two
estimated speedups) and writes CSV rows; a SearchResult prints its summary
(the map, the best global P, what the evaluation cap cut short). Each has
to_dict() for JSON (the records mortar-sweep writes and mortar-results'
page reads).

Example:
  result = sweeps.sweep(model, metric, {"paper": [0.05, 0.1]})
  print(result.table())
  json.dumps(result.to_dict())
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping

from mortar_tf import bits
from mortar_tf import compression
from mortar_tf import files
from mortar_tf import morphing
from mortar_tf import table


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One setting: its metric, ones ratios (all kernels) and estimated speedup.

  Attributes:
    method, settings: the morphing; precisions: the {layer: P} map of a
      searched point (else None).
    metric: the score; drop: how much worse than the original.
    ratio: ones(original) / ones(morphed) per domain.
    speedup: estimated cycles(stripes, original weights) / cycles(mortar,
      morphed weights), or None.
    speedup_unmorphed: cycles(mortar, original) / cycles(mortar, morphed):
      what morphing alone buys, or None.
    compressed: the measured compressed bytes of all kernels, original
      against morphed (mortar_tf.compression: zlib 9, zstd where installed;
      `.ratio` is the `compressed x` column), or None where not measured.
  """
  method: str
  settings: Mapping[str, object]
  metric: float
  drop: float
  ratio: Mapping[str, float]
  speedup: float | None
  precisions: Mapping[str, float] | None = None
  speedup_unmorphed: float | None = None
  compressed: compression.CompressedSize | None = None

  def label(self) -> str:
    distilled = " + distilled" if "distilled" in self.settings else ""
    distilled += " + compensated" if self.settings.get("compensated") else ""
    if self.precisions is not None and "precision" not in self.settings:
      return f"{self.method} per-kernel search{distilled}"
    settings = {k: v for k, v in self.settings.items() if k not in ("distilled", "compensated")}
    return morphing.MorphSpec.create(self.method, **settings).label() + distilled

  def __repr__(self) -> str:
    speedup = "-" if self.speedup is None else table.ratio(self.speedup)
    return (f"SweepPoint({self.label()!r}, metric={self.metric:.4g}, drop={self.drop:+.4g}, "
            f"aligned={table.ratio(self.ratio['aligned'])}, speedup={speedup})")

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["label"] = self.label()
    out["ratio"] = {k: files.finite_or_none(v) for k, v in self.ratio.items()}
    out["compressed"] = None if self.compressed is None else self.compressed.to_dict()
    return out


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """The paper's table for one model and metric."""
  metric_name: str
  higher_is_better: bool
  original_metric: float
  points: tuple[SweepPoint, ...]
  group_size: int
  width: int
  original_speedup: float | None = None  # mortar over stripes, both on the original weights
  # What the estimated speedups cover (estimator.Coverage; one graph, so the
  # same for every point), or None without estimates.
  coverage: object = None

  def coverage_text(self) -> str:
    """"Estimated speedups cover ..." (one line), or "" without estimates."""
    return "" if self.coverage is None else (
        f"Estimated speedups cover {self.coverage.summary()}.")

  def table(self) -> str:
    """One row per setting (the original first): metric, drop, ones ratios in
    each domain (the aligned one at this result's G and width, named in its
    header), `compressed x` where measured (zlib 9 bytes of the original
    kernels / of the morphed ones, each kernel alone; "-" for a point not
    measured) and the two estimated speedups, over the same engine unmorphed
    first, then over stripes. What print() shows."""
    measured = any(p.compressed is not None for p in self.points)
    headers = ["method", "setting", self.metric_name, "drop", "significand x", "word x",
               f"aligned x ({bits.geometry_text(self.group_size, self.width)})"] + (
                   ["compressed x"] if measured else []) + ["est. x unmorphed", "est. x stripes"]
    rows = [["original", "", f"{self.original_metric:.4f}", "", "1.000x", "1.000x", "1.000x"]
            + (["1.000x"] if measured else []) +
            ["1.000x", table.ratio(self.original_speedup) if self.original_speedup else "-"]]
    for p in self.points:
      setting = (("search: global" if "precision" in p.settings else "search: per kernel") +
                 (" + distilled" if "distilled" in p.settings else "")
                 if p.precisions is not None else
                 ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in p.settings.items()
                           if k not in ("group_size", "width", "compensated")))
      if p.settings.get("compensated"):
        setting += " + compensated"
      rows.append([p.method, setting, f"{p.metric:.4f}", f"{p.drop:+.4f}",
                   table.ratio(p.ratio["significand"]), table.ratio(p.ratio["word"]),
                   table.ratio(p.ratio["aligned"])] +
                  ([table.ratio(p.compressed.ratio) if p.compressed is not None else "-"]
                   if measured else []) +
                  [table.ratio(p.speedup_unmorphed) if p.speedup_unmorphed is not None else "-",
                   table.ratio(p.speedup) if p.speedup is not None else "-"])
    return table.format_table(headers, rows)

  def __str__(self) -> str:
    return self.table()

  def __repr__(self) -> str:
    return (f"SweepResult(metric={self.metric_name!r}, original_metric={self.original_metric:.4g}, "
            f"points={len(self.points)}, group_size={self.group_size}, width={self.width})")

  def to_dict(self) -> dict:
    return {"metric": self.metric_name, "higher_is_better": self.higher_is_better,
            "original_metric": self.original_metric, "group_size": self.group_size,
            "width": self.width, "original_speedup": self.original_speedup,
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "points": [p.to_dict() for p in self.points]}

  def csv_rows(self) -> list[list]:
    """A header and one row per point. ratio_compressed is `compressed x`
    (zlib 9, measured); compressed_bytes and compressed_bytes_original are
    the morphed and original kernels' zlib 9 bytes, raw_bytes their float32
    bytes, and the _zstd columns the same with zstd; empty where not measured."""
    rows = [["method", "setting", "precisions", self.metric_name, "drop", "ratio_significand",
             "ratio_word", "ratio_aligned", "ratio_compressed", "speedup_over_stripes",
             "speedup_over_unmorphed", "compressed_bytes", "compressed_bytes_original",
             "raw_bytes", "ratio_compressed_zstd", "compressed_bytes_zstd"]]

    def blank(value):
      return "" if value is None else value

    for p in self.points:
      c = p.compressed
      rows.append([p.method, json.dumps(dict(p.settings)),
                   json.dumps(p.precisions) if p.precisions else "", p.metric, p.drop,
                   p.ratio["significand"], p.ratio["word"], p.ratio["aligned"],
                   "" if c is None else c.ratio,
                   "" if p.speedup is None else p.speedup,
                   "" if p.speedup_unmorphed is None else p.speedup_unmorphed] +
                  (["", "", "", "", ""] if c is None else
                   [c.morphed.zlib, c.original.zlib, c.raw_bytes, blank(c.zstd_ratio),
                    blank(c.morphed.zstd)]))
    return rows


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """A per-layer precision map and how it compares.

  Attributes:
    precisions: {layer name: P} (layers absent keep their weights); what
      morph_model, MortarCallback and the converter accept.
    point: its SweepPoint (metric re-evaluated with the whole map).
    best_global: the best single-P SweepPoint within the budget, or None.
    budget: the allowed drop; objective: "aligned", "speedup" or "size".
    sensitivity: {kernel key: {P: cost}} measured one kernel at a time
      (the proxy, or the metric's drop without calibration inputs), made
      monotone in P; the P in `bounded` were not measured (see there), and
      a P absent from a kernel's costs could not be chosen.
    evaluations: how many times the metric ran on the full data (the
      original's score, the global bisection, the sensitivity without
      calibration inputs and every verified map), at most max_evaluations.
    chose_global: True when no per-kernel map beat the best global P (the
      map is then {"*": P}).
    calibration_samples: samples predicted for the sensitivity (all kernels
      and P together); full_samples: samples in one full evaluation, if known.
    proxy: what the sensitivity measured.
    max_evaluations: the cap on `evaluations`.
    global_complete: False when the cap stopped the global bisection (a
      larger global P than best_global's may meet the budget).
    maps_tried: per-kernel maps verified by a full evaluation.
    cut_short: what the cap stopped, one sentence each ("" when nothing).
    bounded: {kernel key: P values whose cost was not measured but bounded
      by the next larger measured P} (the cap cut the sensitivity short).
    coverage: what the estimated speedups cover (estimator.Coverage), or None.
    group_size, width: the aligned domain of the points' ratios (and of the
      objective "aligned").
    compensation: None for plain morphing; else the Calibration's settings
      (its sample count among them) and the returned map's distances from
      the original weights (SPEC 6).
    held_out: None, or the scores on the held-out samples the search never
      chose on: {"samples", "original", "value", "drop", "global_value",
      "global_drop", "evaluations", "replaced"} ("replaced": maps that met the
      budget on the search's samples but not there, passed over).
  """
  method: str
  precisions: Mapping[str, float]
  point: SweepPoint
  best_global: SweepPoint | None
  budget: float
  objective: str
  sensitivity: Mapping[str, Mapping[float, float]]
  evaluations: int
  chose_global: bool
  calibration_samples: int = 0
  proxy: str = ""
  full_samples: int | None = None
  max_evaluations: int | None = None
  global_complete: bool = True
  maps_tried: int = 0
  cut_short: tuple[str, ...] = ()
  bounded: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
  coverage: object = None
  group_size: int = bits.DEFAULT_GROUP_SIZE
  width: int = bits.DEFAULT_WIDTH
  compensation: Mapping | None = None
  held_out: Mapping | None = None

  def cost_text(self) -> str:
    """Full evaluations, plus the calibration work in full evaluations' worth."""
    text = f"{self.evaluations} full evaluations"
    if self.calibration_samples and self.full_samples:
      text += (f" + calibration work worth {self.calibration_samples / self.full_samples:.1f} "
               f"more ({self.calibration_samples} samples)")
    return text

  def _cap_text(self) -> str:
    return (f"the cap of {self.max_evaluations} full evaluations"
            if self.max_evaluations is not None else "the evaluation cap")

  def summary(self) -> str:
    if not self.chose_global:
      kind = "per kernel"
    elif self.maps_tried or not self.cut_short:
      kind = "global P (no per-kernel map did better)"
    else:
      kind = f"global P (no per-kernel map was verified within {self._cap_text()})"
    lines = [f"Search ({self.method}, budget {self.budget:g}, objective {self.objective}, "
             f"aligned at {bits.geometry_text(self.group_size, self.width)}): "
             f"{kind}: {self.point.metric:.4f} (drop {self.point.drop:+.4f}), aligned "
             f"{table.ratio(self.point.ratio['aligned'])}{_compressed_text(self.point)}, est. "
             f"{_speedups_text(self.point)}; {self.cost_text()}; sensitivity: {self.proxy}"]
    if self.best_global is not None:
      g = self.best_global
      lines.append(f"Best global P within budget: {g.settings.get('precision')} -> "
                   f"{g.metric:.4f} (drop {g.drop:+.4f}), aligned {table.ratio(g.ratio['aligned'])}"
                   f"{_compressed_text(g)}, est. {_speedups_text(g)}" +
                   ("" if self.global_complete else
                    f" (the bisection was stopped by {self._cap_text()}: a larger P may fit)"))
    elif self.global_complete:
      lines.append("No global P of the grid meets the budget.")
    else:
      lines.append(f"No global P was found: {self._cap_text()} was reached before the "
                   "bisection over the grid finished.")
    if self.coverage is not None:
      lines.append(f"Estimated speedups cover {self.coverage.summary()}.")
    if self.chose_global:
      lines.append(f"Map: {{'*': {self.precisions['*']:g}}} (every kernel)")
    elif self.precisions:
      lines.append("Per kernel: " + ", ".join(f"{k}: P={v:g}" for k, v in self.precisions.items()))
      left = [k for k in self.sensitivity if k not in self.precisions]
      if left:
        lines.append("Left unmorphed: " + ", ".join(left))
    elif self.held_out is not None and self.held_out.get("replaced"):
      lines.append(f"Per kernel: nothing morphed: no map that met the budget on the search's "
                   f"samples met it on the held-out ones ({self.held_out['replaced']} tried)")
    elif self.maps_tried:
      lines.append(f"Per kernel: nothing morphed: none of the {self.maps_tried} maps tried meets "
                   "the budget" + (f" ({self._cap_text()} stopped the search)"
                                   if self.cut_short else ""))
    elif self.cut_short:
      lines.append(f"Per kernel: nothing morphed: {self._cap_text()} was reached before any "
                   "per-kernel map could be tried")
    else:
      lines.append("Per kernel: nothing morphed: no kernel gains anything at any P of the grid")
    for text in self.cut_short:
      lines.append(f"Cut short by {self._cap_text()}: {text}.")
    if self.compensation is not None and self.compensation.get("weights"):
      c = self.compensation
      lines.append(f"Compensated ({c['label']}): the map's final weights lie up to "
                   f"{c['max_rel']:.3g} (mean {c['mean_rel']:.3g}) from the originals, "
                   f"{c['outside']} of {c['weights']} farther than their P")
    if self.held_out is not None:
      h = self.held_out
      text = (f"Held out ({h['samples']} samples the search never chose on): "
              f"{h['value']:.4f} (drop {h['drop']:+.4f}, budget {self.budget:g}: "
              f"{'met' if h['drop'] <= self.budget + 1e-9 else 'NOT met'})")
      if h.get("global_value") is not None:
        text += f"; best global P: {h['global_value']:.4f} (drop {h['global_drop']:+.4f})"
      if h.get("replaced"):
        text += (f"; {h['replaced']} map(s) that met the budget on the search's samples but "
                 "not here were passed over")
      lines.append(text)
    return "\n".join(lines)

  def to_dict(self) -> dict:
    return {"method": self.method, "precisions": dict(self.precisions),
            "point": self.point.to_dict(),
            "best_global": self.best_global.to_dict() if self.best_global else None,
            "budget": self.budget, "objective": self.objective,
            "sensitivity": {k: {str(p): d for p, d in v.items()}
                            for k, v in self.sensitivity.items()},
            "evaluations": self.evaluations, "chose_global": self.chose_global,
            "calibration_samples": self.calibration_samples, "proxy": self.proxy,
            "full_samples": self.full_samples, "max_evaluations": self.max_evaluations,
            "global_complete": self.global_complete, "maps_tried": self.maps_tried,
            "cut_short": list(self.cut_short),
            "bounded": {k: list(v) for k, v in self.bounded.items()},
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "group_size": self.group_size, "width": self.width,
            "compensation": None if self.compensation is None else dict(self.compensation),
            "held_out": None if self.held_out is None else dict(self.held_out)}

  def __str__(self) -> str:
    return self.summary()

  def __repr__(self) -> str:
    kind = "global" if self.chose_global else f"{len(self.precisions)} kernels"
    return (f"SearchResult(method={self.method!r}, budget={self.budget:g}, "
            f"objective={self.objective!r}, map={kind}, metric={self.point.metric:.4g}, "
            f"aligned={table.ratio(self.point.ratio['aligned'])}, "
            f"evaluations={self.evaluations}, group_size={self.group_size}, width={self.width})")


def _compressed_text(point: SweepPoint) -> str:
  """", compressed 2.332x (zlib 9, measured: 23,464,018 bytes)", or ""."""
  c = point.compressed
  if c is None:
    return ""
  return (f", compressed {table.ratio(c.ratio)} (zlib {compression.ZLIB_LEVEL}, measured: "
          f"{c.morphed.zlib:,} bytes)")


def _speedups_text(point: SweepPoint) -> str:
  if point.speedup is None:
    return "speedup -"
  return (f"{table.ratio(point.speedup_unmorphed)} over unmorphed, "
          f"{table.ratio(point.speedup)} over stripes")
