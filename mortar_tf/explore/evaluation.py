"""The paper's evaluation on a list of models: one record per model.

For each model of a list (a JSON file of `ModelEntry`s: a Keras file or a
SavedModel, an .npz to score on, a built-in metric and a budget),
`evaluate_model` measures what the paper's tables and figures show, plus what
they leave out:

- the design-space table: the metric, the ones ratios in the three domains
  and SPEC 4's two headline speedups at every P of the grid, for `paper` and
  `fewest_ones` (`sweep`);
- BitX at the column counts that bracket Mortar's aligned sparsity (`paper`
  at the reference P), with its metric and speedups;
- the per-kernel search within the entry's budget, against the best global P;
- the estimator's cycle totals of every engine on the original and on the
  weights morphed at the reference P, with the engines' areas;
- what the figures need: ones per word bit position of every kernel before
  morphing, and the aligned column profile before and after morphing;
- morphing beside a float16 cast and TFLite's dynamic-range int8, each
  with its own score and measured compressed bytes (the "formats" section,
  mortar_tf.explore.formats);
- the wall time of each part.

A record is a JSON file, `work_dir/NAME.json`, written when the model is
done. `evaluate_all` skips a model whose record exists with the same settings
(resumable), unless asked to redo it; a record current but for a section added
since it was made (its version is in the section) gets that section alone.
`mortar_tf.explore.results_page` turns
the records into the results page.

Example:
  entries = load_entries("models.json")
  records = evaluate_all(entries, "out/results", Settings())
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import sys
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from mortar_tf import backends
from mortar_tf import files
from mortar_tf import morphing
from mortar_tf.estimator import engines as engines_lib
from mortar_tf.explore import metrics as metrics_lib

RECORD_VERSION = 3  # 2: estimates carry their coverage; 3: the compensation section
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
METRICS = ("accuracy", "agreement", "mse", "psnr")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One model of the evaluation.

  Attributes:
    name: a short identifier ([A-Za-z0-9_-]); the record's file name.
    model: a .keras/.h5 file or a SavedModel directory (relative paths are
      taken from the list file's directory).
    data: an .npz with the inputs under `x_key` (and labels under `y_key`
      for accuracy).
    metric: accuracy (labels), agreement (top-1 with the original), mse or
      psnr (against the original's outputs).
    budget: the largest metric drop the search may spend, in the metric's
      units (accuracy 0.005 is half a point; psnr 260 keeps PSNR >= 40 dB:
      identical outputs score the 300 dB cap). A list may give a psnr
      entry's budget as its floor instead, "psnr_floor": 40 (dB), which
      load_entries turns into budget 260.
    title, weights, data_source: what the page says the model, its weights
      and its data are and where they come from.
    output: the scored output of a multi-output SavedModel signature.
    samples: use the first N samples only.
  """
  name: str
  model: str
  data: str
  metric: str
  budget: float
  title: str = ""
  weights: str = ""
  data_source: str = ""
  output: str | None = None
  x_key: str = "x"
  y_key: str = "y"
  samples: int | None = None

  def check(self) -> None:
    """Raises ValueError naming the first bad field."""
    if not isinstance(self.name, str) or not self.name or not all(
        c.isalnum() or c in "_-" for c in self.name):
      raise ValueError(f"model name {self.name!r} must be letters, digits, '_' or '-'")
    if self.metric not in METRICS:
      raise ValueError(f"model {self.name}: unknown metric {self.metric!r}; expected one of "
                       f"{', '.join(METRICS)}")
    if (isinstance(self.budget, bool) or not isinstance(self.budget, (int, float))
        or not self.budget >= 0 or not math.isfinite(self.budget)):
      raise ValueError(f"model {self.name}: budget must be a number >= 0, got {self.budget!r}")
    if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 1):
      raise ValueError(f"model {self.name}: samples must be an integer >= 1, "
                       f"got {self.samples!r}")
    if not os.path.exists(self.model):
      raise ValueError(f"model {self.name}: no such model file or directory {self.model!r}")
    if not os.path.isfile(self.data):
      raise ValueError(f"model {self.name}: no such data file {self.data!r}")


LIST_FIELDS = ("title", "intro", "models")  # of a list given as an object


def _read_list(path: str):
  """The JSON of a model list file (a list, or an object of LIST_FIELDS)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise ValueError(f"cannot read the model list {path!r}: {e.strerror or e}") from e
  except json.JSONDecodeError as e:
    raise ValueError(f"the model list {path!r} is not JSON: {e}") from e


def _psnr_floor_to_budget(item: dict, where: str) -> dict:
  """An entry with "psnr_floor" (dB) given instead of "budget": the same
  entry with budget = the 300 dB cap minus the floor (a psnr budget is the
  drop from the cap)."""
  if "psnr_floor" not in item:
    return item
  floor = item["psnr_floor"]
  if "budget" in item:
    raise ValueError(f"{where}: give budget or psnr_floor, not both")
  if item.get("metric") != "psnr":
    raise ValueError(f"{where}: psnr_floor is for the psnr metric, not {item.get('metric')!r} "
                     "(give budget: the drop allowed)")
  if (isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor)
      or not 0 <= floor <= metrics_lib.PSNR_CAP):
    raise ValueError(f"{where}: psnr_floor must be a number of dB from 0 to "
                     f"{metrics_lib.PSNR_CAP:g}, got {floor!r}")
  item = {k: v for k, v in item.items() if k != "psnr_floor"}
  item["budget"] = metrics_lib.PSNR_CAP - floor
  return item


def load_entries(path: str) -> list[ModelEntry]:
  """The entries of a JSON list file: [{"name": ..., "model": ..., ...}, ...],
  or {"title": "...", "intro": "...", "models": [...]} (title and intro
  optional; read_title and read_intro give them). A psnr entry may give
  "psnr_floor" (dB) instead of "budget".

  Raises:
    ValueError: an unreadable file, an unknown or missing field, a bad value,
      a missing model or data file, or a name used twice.
  """
  raw = _read_list(path)
  if isinstance(raw, dict) and set(raw) <= set(LIST_FIELDS) and "models" in raw:
    raw = raw["models"]
  if not isinstance(raw, list) or not raw:
    raise ValueError(f"the model list {path!r} must be a non-empty JSON list of objects, or "
                     "an object {\"title\": text, \"intro\": text, \"models\": list} (title "
                     "and intro optional)")
  fields = {f.name for f in dataclasses.fields(ModelEntry)}
  required = {f.name for f in dataclasses.fields(ModelEntry)
              if f.default is dataclasses.MISSING}
  base = os.path.dirname(os.path.abspath(path))
  entries = []
  for n, item in enumerate(raw):
    if not isinstance(item, dict):
      raise ValueError(f"entry {n} of {path!r} is not a JSON object")
    unknown = sorted(set(item) - fields - {"psnr_floor"})
    missing = sorted(required - set(item) - ({"budget"} if "psnr_floor" in item else set()))
    if unknown or missing:
      raise ValueError(f"entry {n} ({item.get('name', '?')}) of {path!r}: " +
                       "; ".join(([f"unknown fields {unknown}"] if unknown else []) +
                                 ([f"missing fields {missing}"] if missing else [])) +
                       f" (fields: {', '.join(sorted(fields | {'psnr_floor'}))})")
    item = _psnr_floor_to_budget(dict(item), f"entry {n} ({item.get('name', '?')}) of {path!r}")
    for key in ("model", "data"):
      if isinstance(item[key], str):
        item[key] = os.path.normpath(os.path.join(base, item[key]))
    entry = ModelEntry(**item)
    entry.check()
    entries.append(entry)
  names = [e.name for e in entries]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"model names used twice in {path!r}: {', '.join(twice)}")
  return entries


def _list_text(path: str, key: str) -> str:
  raw = _read_list(path)
  text = raw.get(key, "") if isinstance(raw, dict) else ""
  if not isinstance(text, str):
    raise ValueError(f"the {key} of {path!r} must be a string")
  return text


def read_intro(path: str) -> str:
  """The "intro" text of a model list file ({"intro": ..., "models": [...]}),
  or "" (call after load_entries, which checks the file)."""
  return _list_text(path, "intro")


def read_title(path: str) -> str:
  """The "title" of a model list file ({"title": ..., "models": [...]}), or
  "" (the page then has a neutral title of its own)."""
  return _list_text(path, "title")


PAPER_PRECISIONS = (1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.3, 0.5)
SEARCH_PRECISIONS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What is measured; a record made with other settings is redone.

  Attributes:
    precisions: the design-space grid of P (paper and fewest_ones).
    reference: the P of the paper's headline figures (0.1); must be in
      `precisions`.
    search_precisions: the P candidates per kernel of the search.
    search_method: the method whose P the search chooses.
    max_evaluations: the search's cap on full evaluations.
    bitx: evaluate BitX at the column counts bracketing Mortar's sparsity.
    search: run the per-kernel search.
    compensate: also measure error-compensated morphing (SPEC 6; the record's
      "compensation" section): the first samples calibrate, never scored.
    calibration_samples: at most this many calibrate, and at most a quarter
      of the model's samples (at least 1).
    held_out: the share of the other samples (the last ones) that the
      compensation section's searches keep out: the map each returns must
      meet the budget on them too.
    formats: also measure the float16 cast and TFLite's dynamic-range int8
      beside the morphed kernels (the record's "formats" section). A section
      of its own: turning it on adds it to current records without redoing
      the rest.
  """
  precisions: tuple[float, ...] = PAPER_PRECISIONS
  reference: float = 0.1
  search_precisions: tuple[float, ...] = SEARCH_PRECISIONS
  search_method: str = "fewest_ones"
  max_evaluations: int = 30
  bitx: bool = True
  search: bool = True
  compensate: bool = True
  calibration_samples: int = 256
  held_out: float = 0.5
  formats: bool = True

  def check(self) -> None:
    """Raises ValueError naming the bad setting."""
    for p in self.precisions + self.search_precisions:
      morphing.check_precision(p)
    if not self.precisions:
      raise ValueError("the P grid is empty")
    if self.reference not in self.precisions:
      raise ValueError(f"the reference P {self.reference:g} must be one of the grid's "
                       f"({', '.join(f'{p:g}' for p in self.precisions)})")
    if self.search_method not in ("paper", "fewest_ones"):
      raise ValueError(f"search_method must be 'paper' or 'fewest_ones', "
                       f"not {self.search_method!r}")
    if self.search and not self.search_precisions:
      raise ValueError("the search's P grid is empty")
    if not isinstance(self.max_evaluations, int) or self.max_evaluations < 4:
      raise ValueError(f"max_evaluations must be an integer >= 4, got {self.max_evaluations!r}")
    if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
      raise ValueError(f"calibration_samples must be an integer >= 1, "
                       f"got {self.calibration_samples!r}")
    if not 0 < self.held_out < 1:
      raise ValueError(f"held_out is a share of the samples, 0 < f < 1, got {self.held_out!r}")

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# --------------------------------------------------------------------------
# Progress with an ETA


def _duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
  """Progress lines on a stream: the model, its step, elapsed time and ETAs.

  A model's ETA comes from its units of work done so far (sweep points,
  search steps) and their pace; the run's ETA adds, for each model still to
  do, the time its last record took where one exists, else the mean of the
  models done in this run (or the current model's projection).
  """

  def __init__(self, names: Sequence[str], previous: Mapping[str, float] | None = None,
               stream=None, enabled: bool = True, interval: float = 5.0):
    self.names = list(names)
    self.previous = dict(previous or {})
    self.stream = sys.stderr if stream is None else stream
    self.enabled = enabled
    self.interval = interval
    self.start = time.perf_counter()
    self.done_seconds: list[float] = []
    self.current = None
    self.model_start = 0.0
    self.units = 1
    self.units_done = 0.0
    self.last = (None, -math.inf)  # (stage, time) of the last line

  def begin(self, name: str, units: float) -> None:
    self.current, self.model_start = name, time.perf_counter()
    self.units, self.units_done = max(units, 1), 0.0

  def add_units(self, units: float) -> None:
    """The model's work turned out larger (e.g. the search's own steps)."""
    self.units += units

  def step(self, units_done: float, label: str) -> None:
    """Reports progress; prints a line when the stage (the label before ':')
    changes or every `interval` seconds."""
    self.units_done = min(units_done, self.units)
    now = time.perf_counter()
    stage = label.split(":")[0]
    if not self.enabled or (stage == self.last[0] and now - self.last[1] < self.interval):
      return
    self.last = (stage, now)
    elapsed = time.perf_counter() - self.model_start
    model_eta = (elapsed / self.units_done * (self.units - self.units_done)
                 if self.units_done > 0 else None)
    index = self.names.index(self.current)
    rest = self.names[index + 1:]
    typical = (float(np.mean(self.done_seconds)) if self.done_seconds else
               (elapsed + model_eta if model_eta is not None else None))
    later = [self.previous.get(n, typical) for n in rest]
    total_eta = (None if model_eta is None or any(t is None for t in later)
                 else model_eta + sum(later))
    eta = ("ETA " + (f"{_duration(model_eta)} model, {_duration(total_eta)} all"
                     if total_eta is not None else "unknown"))
    self.stream.write(f"[{index + 1}/{len(self.names)} {self.current}] {label} | "
                      f"{_duration(elapsed)} on this model, "
                      f"{_duration(time.perf_counter() - self.start)} in all | {eta}\n")
    self.stream.flush()

  def end(self, seconds: float) -> None:
    self.done_seconds.append(seconds)

  def note(self, text: str) -> None:
    if self.enabled:
      self.stream.write(text + "\n")
      self.stream.flush()


# --------------------------------------------------------------------------
# One model


def _load(entry: ModelEntry):
  """(model, data, metric) of an entry."""
  from mortar_tf.explore import models  # pylint: disable=import-outside-toplevel
  data = metrics_lib.load_npz(entry.data, entry.x_key,
                              entry.y_key if entry.metric == "accuracy" else None)
  if entry.samples is not None:
    data = {k: v[:entry.samples] for k, v in data.items()}
  input_shape = (1,) + tuple(data["x"].shape[1:])
  model = models.load(entry.model, output=entry.output, input_shape=input_shape)
  metric = metrics_lib.builtin_metric(entry.metric, model, data)
  return model, data, metric, input_shape


def _columns(kernels, method: str | None = None,
             precisions: Mapping[int, float] | None = None) -> list[int]:
  """models.column_profile at the engines' G and width, as a JSON list."""
  from mortar_tf.explore import models  # pylint: disable=import-outside-toplevel
  return [int(v) for v in models.column_profile(
      kernels, method, precisions, group_size=engines_lib.DEFAULT_GROUP_SIZE,
      width=engines_lib.DEFAULT_WIDTH)]


def _estimate_record(result) -> dict:
  """Cycle totals, headlines and areas of an Estimate."""
  return {"cycles": result.total_cycles(),
          "headline": result.headline(),
          "headline_iso_area": result.headline_iso_area(),
          "engines": {e.name: {"model": e.model, "group_size": e.group_size, "width": e.width,
                               "num_pes": e.num_pes, "area_mm2": e.area_mm2,
                               "power_w": e.power_w} for e in result.engines},
          "layers": len(result.mapped), "unmapped": len(result.unmapped),
          "coverage": result.coverage().to_dict()}


def bitx_bracket(columns: Sequence[int], target: float) -> tuple[int, int | None]:
  """The BitX column counts around a target aligned ratio.

  Keeping the first c columns of the aligned window leaves exactly the ones
  of those columns (SPEC 2.4: a kept bit stays where it was, and a group's
  leading element keeps its leading bit, so the group's exponent is
  unchanged), so the ratio at c is total / sum(columns[:c]). Returns (c, c +
  1): c the largest count whose ratio is at least `target` (at least as
  sparse as the target; 1 if none is), and the next count (less sparse), or
  None past the window.
  """
  total = float(sum(columns))
  kept = np.cumsum(np.asarray(columns, np.float64))
  ratios = [total / k if k else math.inf for k in kept]
  sparse = [c for c in range(1, len(columns) + 1) if ratios[c - 1] >= target]
  c = max(sparse) if sparse else 1
  return c, (c + 1 if c < len(columns) else None)


def evaluate_model(entry: ModelEntry, settings: Settings, progress: Progress | None = None) -> dict:
  """Measures one model (see the module docstring); returns its record.

  Raises:
    ValueError: a model or data file that cannot be used (the message says
      why), a metric returning NaN.
  """
  from mortar_tf.explore import estimates  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import models  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import search as search_lib  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import sweeps  # pylint: disable=import-outside-toplevel
  settings.check()
  started = time.perf_counter()
  seconds = {}
  n_dse = 2 * len(settings.precisions)
  units = n_dse + (2 if settings.bitx else 0) + (settings.max_evaluations if settings.search
                                                 else 0) + 3 + (
      _compensation_units(settings) if settings.compensate else 0) + (
      _FORMATS_UNITS if settings.formats else 0)
  if progress is not None:
    progress.begin(entry.name, units)

  def step(done, label):
    if progress is not None:
      progress.step(done, label)

  step(0, "loading the model and data")
  model, data, metric, input_shape = _load(entry)
  kernels = models.model_kernels(model)
  seconds["load"] = time.perf_counter() - started
  t = time.perf_counter()
  grid = {"paper": list(settings.precisions), "fewest_ones": list(settings.precisions)}
  # compressed=False: the page shows no compressed figure yet, and zlib 9 of
  # every row's kernels would double HED's time.
  swept = sweeps.sweep(model, metric, grid, input_shape=input_shape, compressed=False,
                       progress=lambda d, n, label: step(1 + d, f"design space: {label}"))
  seconds["design_space"] = time.perf_counter() - t
  done = 1 + n_dse

  record = {
      "version": RECORD_VERSION, "name": entry.name, "entry": dataclasses.asdict(entry),
      "settings": settings.to_dict(),
      "model": {"kernels": len(kernels), "weights": int(sum(k.original.size for k in kernels)),
                "input_shape": list(input_shape), "samples": int(len(data["x"])),
                "scored": model.scored() if hasattr(model, "scored") else "the model's output"},
      "metric": {"name": swept.metric_name, "higher_is_better": swept.higher_is_better,
                 "original": swept.original_metric, "budget": entry.budget},
      "original_speedup": swept.original_speedup,
      "design_space": {m: [p.to_dict() for p in swept.points if p.method == m] for m in grid},
  }

  # Figures: word bits per kernel before morphing; aligned columns before/after.
  everywhere = dict.fromkeys(range(len(kernels)), settings.reference)
  record["layers"] = [{"name": k.key, "label": k.label or k.key, "size": int(k.original.size),
                       "word_bits": [int(v) for v in backends.bit_histogram(k.original, "word")]}
                      for k in kernels]
  record["columns"] = {"original": _columns(kernels),
                       **{m: _columns(kernels, m, everywhere) for m in grid}}

  # BitX at Mortar's aligned sparsity (paper at the reference P).
  paper_ref = next(p for p in swept.points
                   if p.method == "paper" and p.settings["precision"] == settings.reference)
  if settings.bitx:
    t = time.perf_counter()
    target = paper_ref.ratio["aligned"]
    low, high = bitx_bracket(record["columns"]["original"], target)
    counts = [c for c in (low, high) if c is not None]
    bitx = sweeps.sweep(model, metric, {"bitx": counts}, input_shape=input_shape,
                        compressed=False,
                        progress=lambda d, n, label: step(done + d, f"bitx: {label}"))
    record["bitx"] = {"target": {"method": "paper", "precision": settings.reference,
                                 "aligned": target},
                      "points": [p.to_dict() for p in bitx.points]}
    seconds["bitx"] = time.perf_counter() - t
    done += 2

  # The estimator's matrix at the reference P.
  t = time.perf_counter()
  estimator = estimates.ModelEstimator(model, input_shape)
  try:
    record["estimates"] = {}
    for m in grid:
      step(done, f"estimator: {m} P={settings.reference:g}")
      record["estimates"][m] = _estimate_record(estimator(m, settings.reference))
      done += 1
  finally:
    estimator.close()
  seconds["estimates"] = time.perf_counter() - t

  if settings.search:
    t = time.perf_counter()
    base = done

    half = settings.max_evaluations / 2  # units: the sensitivity, then full evaluations

    def search_progress(d, n, label):
      later = half if label.startswith("full evaluation") else 0.0
      step(base + later + half * d / max(n, 1), f"search: {label}")

    step(done, "search: sensitivity")
    found = search_lib.search_precisions(
        model, metric, entry.budget, compressed=False, method=settings.search_method,
        precisions=list(settings.search_precisions), max_evaluations=settings.max_evaluations,
        input_shape=input_shape, progress=search_progress)
    record["search"] = found.to_dict()
    chosen = (search_lib.resolve_map(found.precisions, kernels, found.method)
              if found.precisions else {})  # an empty map: nothing fits the budget
    record["columns"]["search"] = _columns(kernels, found.method, chosen)
    seconds["search"] = time.perf_counter() - t
    done = base + settings.max_evaluations

  if settings.formats:
    base = done
    seconds["formats"] = _add_formats(record, model, metric, kernels,
                                      lambda d, label: step(base + d, label))
    done += _FORMATS_UNITS

  if settings.compensate:
    t = time.perf_counter()
    record["compensation"] = _compensation(
        entry, settings, model, data, input_shape,
        lambda d, label: step(done + d, f"compensation: {label}"))
    seconds["compensation"] = time.perf_counter() - t
  seconds["total"] = time.perf_counter() - started
  record["seconds"] = seconds
  record["machine"] = machine()
  step(units, "done")
  return record


_FORMATS_UNITS = 3
_SECTIONS = ("formats",)  # added to a record without redoing the rest


def _add_formats(record: dict, model, metric, kernels, step=None) -> float:
  """Sets record["formats"]; returns its seconds. `step(units done of
  _FORMATS_UNITS, label)`."""
  from mortar_tf.explore import formats  # pylint: disable=import-outside-toplevel
  t = time.perf_counter()
  record["formats"] = formats.formats_section(
      model, metric, kernels, record.get("search"),
      progress=None if step is None else
      lambda d, n, label: step(_FORMATS_UNITS * d / n, f"formats: {label}"))
  return time.perf_counter() - t


def missing_sections(record: dict, settings: Settings) -> list[str]:
  """The sections `settings` asks for that `record` lacks or holds in an
  older version."""
  from mortar_tf.explore import formats  # pylint: disable=import-outside-toplevel
  missing = []
  if settings.formats and (record.get("formats") or {}).get("version") != formats.FORMATS_VERSION:
    missing.append("formats")
  return missing


def add_sections(entry: ModelEntry, settings: Settings, record: dict,
                 progress: Progress | None = None) -> dict:
  """A copy of a current `record` with its missing sections measured (the
  model loaded again); every other part is kept as it was."""
  from mortar_tf.explore import models  # pylint: disable=import-outside-toplevel
  missing = missing_sections(record, settings)
  started = time.perf_counter()
  if progress is not None:
    progress.begin(entry.name, _FORMATS_UNITS * len(missing) + 1)
    progress.step(0, "loading the model and data")
  model, _, metric, _ = _load(entry)
  kernels = models.model_kernels(model)
  out = json.loads(json.dumps(record))
  out["seconds"] = dict(out.get("seconds") or {})
  if "formats" in missing:
    out["seconds"]["formats"] = _add_formats(out, model, metric, kernels,
                                             None if progress is None else
                                             lambda d, label: progress.step(1 + d, label))
  out["settings"] = settings.to_dict()
  out["seconds"]["total"] = out["seconds"].get("total", 0.0) + (time.perf_counter() - started)
  out["machine"] = machine()
  return out


def compensation_split(samples: int, settings: Settings) -> tuple[int, int, int]:
  """(calibration, searched, held out) sample counts of the compensation
  section: the first min(calibration_samples, samples // 4) samples (at
  least 1) calibrate; of the rest, the last `held_out` share is held out.

  Raises:
    ValueError: fewer than 3 samples (a side would be empty).
  """
  calibration = max(1, min(settings.calibration_samples, samples // 4))
  rest = samples - calibration
  held = int(round(settings.held_out * rest))
  if rest < 2 or held < 1 or held >= rest:
    raise ValueError(f"compensation needs calibration, searched and held-out samples apart: "
                     f"{samples} samples cannot be split so")
  return calibration, rest - held, held


def _compensation_units(settings: Settings) -> float:
  return 2 * len(settings.precisions) + 4 + 2 * settings.max_evaluations


def _compensation(entry: ModelEntry, settings: Settings, model, data, input_shape,
                  step) -> dict:
  """The record's compensation section (SPEC 6): calibration, scoring and
  held-out samples apart; the search method's grid plain and compensated and
  `paper` at the reference P, scored on every sample that does not calibrate;
  the per-kernel search plain and compensated, each on the same searched
  samples with the same held-out check."""
  from mortar_tf.explore import search as search_lib  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import sweeps  # pylint: disable=import-outside-toplevel
  n_cal, n_search, n_held = compensation_split(len(data["x"]), settings)
  calibration_x = data["x"][:n_cal]
  rest = {k: v[n_cal:] for k, v in data.items()}
  searched = {k: v[:n_search] for k, v in rest.items()}
  held = {k: v[n_search:] for k, v in rest.items()}
  scored = metrics_lib.builtin_metric(entry.metric, model, rest)
  grid = {settings.search_method: list(settings.precisions)}
  if settings.search_method != "paper":
    grid["paper"] = [settings.reference]
  rows = sum(len(v) for v in grid.values())
  swept = sweeps.sweep(model, scored, grid, input_shape=input_shape, compensate=calibration_x,
                       compressed=False,
                       progress=lambda d, n, label: step(2 * d, f"sweep: {label}"))
  section = {"calibration_samples": n_cal, "scored_samples": n_search + n_held,
             "search_samples": n_search, "held_out_samples": n_held,
             "sweep": swept.to_dict()}
  base = 2 * rows
  # One metric per split for both searches (each builds the original's outputs once).
  search_metric = metrics_lib.builtin_metric(entry.metric, model, searched)
  held_metric = metrics_lib.builtin_metric(entry.metric, model, held)
  for key, compensate in (("search_plain", None), ("search", calibration_x)):
    found = search_lib.search_precisions(
        model, search_metric, entry.budget, compressed=False, method=settings.search_method,
        precisions=list(settings.search_precisions), max_evaluations=settings.max_evaluations,
        input_shape=input_shape, compensate=compensate, held_out=held_metric,
        progress=lambda d, n, label, b=base, k=key: step(
            b + settings.max_evaluations * d / max(n, 1), f"{k}: {label}"))
    section[key] = found.to_dict()
    base += settings.max_evaluations
  return section


def machine() -> dict:
  """What the record was measured on."""
  return {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
          else os.cpu_count(), "machine": platform.machine(), "isa": backends.native_isa(),
          "python": platform.python_version()}


# --------------------------------------------------------------------------
# Every model, resumably


def record_path(work_dir: str, name: str) -> str:
  return os.path.join(work_dir, name + ".json")


def read_record(work_dir: str, name: str) -> dict | None:
  """The record of a model, or None if there is none or it cannot be read."""
  try:
    with open(record_path(work_dir, name), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def core_settings(settings: dict) -> dict:
  """A record's settings but the switches of sections added to records on
  their own (records that differ only in those belong on one page)."""
  return {k: v for k, v in settings.items() if k not in _SECTIONS}


def is_current(record: dict | None, entry: ModelEntry, settings: Settings) -> bool:
  """Whether a record was made of this entry with these settings (the
  switches of added sections aside: see missing_sections)."""
  return (record is not None and record.get("version") == RECORD_VERSION
          and record.get("entry") == json.loads(json.dumps(dataclasses.asdict(entry)))
          and isinstance(record.get("settings"), dict)
          and core_settings(record["settings"]) == core_settings(
              json.loads(json.dumps(settings.to_dict()))))


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What evaluate_all did with one model: "done", "kept" (a current record
  was reused), "extended" (a current record got the sections it lacked) or
  "failed" (error holds the message)."""
  name: str
  status: str
  record: dict | None
  error: str | None = None


def evaluate_all(entries: Sequence[ModelEntry], work_dir: str, settings: Settings, *,
                 redo: Sequence[str] = (), progress: bool = True, stream=None,
                 evaluate: Callable[..., dict] = evaluate_model) -> list[Outcome]:
  """Evaluates each entry unless a current record exists (resumable).

  `redo` names models to evaluate again ("all" for every one). A model that
  fails is reported (its old record, if any, is left as it was) and the
  others go on. Each record is written when its model is done, atomically.

  Raises:
    ValueError: bad settings, a name in `redo` that is not an entry.
    files.OutputError: `work_dir` cannot be made or written.
  """
  settings.check()
  names = [e.name for e in entries]
  unknown = sorted(set(redo) - set(names) - {"all"})
  if unknown:
    raise ValueError(f"cannot redo {', '.join(unknown)}: not in the model list "
                     f"({', '.join(names)})")
  files.check_creatable_dir(work_dir, "work directory")
  files.make_dirs(work_dir)
  old = {e.name: read_record(work_dir, e.name) for e in entries}
  previous = {n: r["seconds"]["total"] for n, r in old.items()
              if r and isinstance(r.get("seconds"), dict) and "total" in r["seconds"]}
  todo = [e for e in entries
          if "all" in redo or e.name in redo or not is_current(old[e.name], e, settings)]
  extend = [e for e in entries if e not in todo and missing_sections(old[e.name], settings)]
  extended = {e.name for e in extend}
  # A model whose record only lacks sections takes far less than its last run.
  reporter = Progress([e.name for e in entries if e in todo or e in extend],
                      {n: t for n, t in previous.items() if n not in extended}, stream, progress)
  outcomes = []
  for entry in entries:
    if entry not in todo and entry not in extend:
      reporter.note(f"{entry.name}: kept its record from an earlier run "
                    f"({_duration(previous.get(entry.name, 0))}; redo it with --redo={entry.name})")
      outcomes.append(Outcome(entry.name, "kept", old[entry.name]))
      continue
    if entry in extend:
      reporter.note(f"{entry.name}: kept its record and measures what it lacks "
                    f"({', '.join(missing_sections(old[entry.name], settings))})")
    elif old[entry.name] is not None and entry.name not in redo and "all" not in redo:
      reporter.note(f"{entry.name}: its record was made with other settings; evaluating again")
    started = time.perf_counter()
    try:
      if entry in extend:
        record = files.finite_tree(add_sections(entry, settings, old[entry.name], reporter))
      else:
        record = files.finite_tree(evaluate(entry, settings, reporter))
    except (ValueError, TypeError, OSError) as e:
      message = _ANSI.sub("", str(e)).strip()  # Keras colours some of its messages
      reporter.note(f"{entry.name}: failed: {message}")
      outcomes.append(Outcome(entry.name, "failed", None, f"{type(e).__name__}: {message}"))
      continue
    reporter.end(time.perf_counter() - started)
    files.write_json(record_path(work_dir, entry.name), record)
    outcomes.append(Outcome(entry.name, "extended" if entry in extend else "done", record))
  return outcomes
