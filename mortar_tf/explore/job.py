"""The exploration job behind `mortar-sweep`: sweep, search, files and summary.

Writes into `out_dir`: sweep.csv, sweep.json (sweep and search), summary.md
(the table and the search result), pareto.png, bit_density.png, columns.png
and, with a search, cycles.png (the estimator's per-kernel cycles of every
engine on the original and the morphed weights for the chosen map, with the
headline speedups).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Mapping, Sequence

from mortar_tf import bits
from mortar_tf import files as files_lib
from mortar_tf.explore import estimates
from mortar_tf.explore import metrics as metrics_lib
from mortar_tf.explore import models
from mortar_tf.explore import plots
from mortar_tf.explore import results
from mortar_tf.explore import results_page
from mortar_tf.explore import search as search_lib
from mortar_tf.explore import sweeps


# Every file run_job may write into out_dir.
FILES = ("sweep.csv", "sweep.json", "summary.md", "pareto.png", "bit_density.png", "columns.png",
         "cycles.png", "finetuned.keras")


def check_paths(model_path: str, data_path: str, out_dir: str) -> None:
  """Refuses an out_dir (or a file it would write) inside, equal to or aliasing
  the model or the data (files.check_apart)."""
  files_lib.check_apart(
      [("--out_dir", out_dir, files_lib.FOLDER)]
      + [(f"--out_dir's {name}", os.path.join(out_dir, name), files_lib.FILE) for name in FILES],
      [("--model", model_path), ("--data", data_path)])


@dataclasses.dataclass(frozen=True)
class JobResult:
  sweep: results.SweepResult
  search: results.SearchResult | None
  files: tuple[str, ...]
  summary: str

  def __str__(self) -> str:
    return self.summary

  def __repr__(self) -> str:
    return f"JobResult(sweep={self.sweep!r}, search={self.search!r}, files={len(self.files)})"

  def warnings(self) -> list[str]:
    """Lines for stderr: the estimated speedups miss part of the model."""
    coverage = self.sweep.coverage
    if coverage is None or coverage.complete:
      return []
    return [f"the estimated speedups (est. x columns) miss part of the model: "
            f"{coverage.warning()}"]


def run_job(model_path: str, data_path: str, out_dir: str, *, metric: str = "accuracy",
            x_key: str = "x", y_key: str = "y", samples: int | None = None,
            grid: Mapping[str, Sequence] | None = None, search: bool = True,
            budget: float = 0.005, search_method: str = "fewest_ones",
            search_precisions: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
            objective: str = "aligned", signature: str = "serving_default",
            output: str | None = None, progress: bool = False,
            max_evaluations: int = 30, strategy: str | None = None,
            finetune_epochs: int = 0, compensate: bool = False,
            calibration_samples: int = 256, held_out: float = 0.0,
            compressed: bool = True) -> JobResult:
  """Loads a model and labelled data, sweeps, searches, writes the files.

  `model_path` is a .keras/.h5 file or a SavedModel directory (called through
  `signature`, which must take one input; `output` picks the scored output
  of a multi-output signature, and the summary says which one was scored).
  `strategy` ("mirrored", "multi_worker" or None) runs the metric's
  predictions data parallel (metrics.predict); the search's calibration
  subset is predicted on one device. With `finetune_epochs` (a Keras model
  and a search), the data is split: the first half, unlabelled, to distil
  on, the second half to score everything on; a second search distils each
  candidate map (finetune.search_with_finetune), its row and summary follow
  the plain search's, and the distilled model is written as finetuned.keras.
  With `compensate` (a Keras model or a SavedModel), the first `calibration_samples` samples
  (labels unused) calibrate compensated morphing (SPEC 6) and everything is
  scored on the rest: the sweep gets a compensated row per per-weight
  setting, and the search compensates every candidate. With `held_out` (a
  fraction, 0 < f < 1), that share of the scoring samples (the last ones) is
  kept from the search, which must meet the budget on them too; the sweep's
  rows are scored on the search's share. The summary counts each split.
  With `compressed` (the default), every row and search point carries its
  measured compressed size (`compressed x`, zlib 9 of each kernel alone;
  sweeps.sweep says what it costs); objective "size" measures it anyway.

  Raises:
    ValueError: an unreadable model or data file, missing arrays, a bad
      metric, grid or budget; an out_dir inside, equal to or aliasing the
      model or the data (files.OutputError, before any work).
  """
  if search and (not isinstance(budget, (int, float)) or not budget >= 0):
    raise ValueError(f"budget must be a number >= 0, got {budget!r}")
  check_paths(model_path, data_path, out_dir)
  needs_labels = metric == "accuracy"
  data = metrics_lib.load_npz(data_path, x_key, y_key if needs_labels else None)
  if samples is not None:
    if samples < 1:
      raise ValueError(f"samples must be >= 1, got {samples}")
    data = {k: v[:samples] for k, v in data.items()}
  if not 0 <= held_out < 1:
    raise ValueError(f"held_out is a fraction of the samples, 0 <= f < 1, got {held_out!r}")
  if held_out and not search:
    raise ValueError("held_out keeps samples from the search: it needs the search")
  calibration_x = None
  if compensate:
    if calibration_samples < 1:
      raise ValueError(f"calibration_samples must be >= 1, got {calibration_samples}")
    if len(data["x"]) <= calibration_samples:
      raise ValueError(f"compensation calibrates on the first {calibration_samples} samples and "
                       f"scores on the rest, but the data has only {len(data['x'])}")
    calibration_x = data["x"][:calibration_samples]
    data = {k: v[calibration_samples:] for k, v in data.items()}
  held_data = None
  if held_out:
    keep = len(data["x"]) - int(round(held_out * len(data["x"])))
    if keep < 1 or keep == len(data["x"]):
      raise ValueError(f"held_out={held_out:g} of {len(data['x'])} samples leaves one side "
                       "empty")
    held_data = {k: v[keep:] for k, v in data.items()}
    data = {k: v[:keep] for k, v in data.items()}
  tune_x = None
  if finetune_epochs:
    if not search:
      raise ValueError("finetune_epochs distils the searched map: it needs the search")
    if len(data["x"]) < 4:
      raise ValueError("fine-tuning splits the data in half: give at least 4 samples")
    half = len(data["x"]) // 2
    tune_x = data["x"][:half]
    data = {k: v[half:] for k, v in data.items()}
  # The estimator reads the graph at one sample of the data's own shape: a
  # model with free dims (a fully convolutional net) has no other shape to use.
  input_shape = (1,) + tuple(data["x"].shape[1:])
  model = models.load(model_path, signature=signature, output=output,
                      input_shape=input_shape)
  score = metrics_lib.builtin_metric(metric, model, data, strategy=_strategy(strategy))
  held_score = (None if held_data is None else
                metrics_lib.builtin_metric(metric, model, held_data, strategy=_strategy(strategy)))
  files_lib.check_creatable_dir(out_dir)  # before the sweep's work, not after

  swept = sweeps.sweep(model, score, grid, progress=progress, input_shape=input_shape,
                       compensate=calibration_x, compressed=compressed)
  found = None
  if search:
    found = search_lib.search_precisions(model, score, budget, method=search_method,
                                         precisions=search_precisions, objective=objective,
                                         max_evaluations=max_evaluations,
                                         progress=progress, input_shape=input_shape,
                                         compensate=calibration_x, held_out=held_score,
                                         compressed=compressed)
    swept = dataclasses.replace(swept, points=swept.points + (found.point,))
  tuned = tuned_model = tuned_result = None
  if tune_x is not None:
    from mortar_tf.explore import finetune  # pylint: disable=import-outside-toplevel
    tuned, tuned_result = finetune.search_with_finetune(
        model, score, budget, tune_x, epochs=finetune_epochs, method=search_method,
        precisions=search_precisions, objective=objective, max_evaluations=max_evaluations,
        progress=progress, input_shape=input_shape, compressed=compressed)
    tuned_model = tuned_result.model if tuned_result is not None else None
    swept = dataclasses.replace(swept, points=swept.points + (dataclasses.replace(
        tuned.point, settings=dict(tuned.point.settings, distilled=finetune_epochs)),))

  with files_lib.output_set():  # every file, or none
    files_lib.make_dirs(out_dir)
    written = []
    buffer = io.StringIO()
    csv.writer(buffer).writerows(swept.csv_rows())
    written.append(files_lib.write_text(os.path.join(out_dir, "sweep.csv"), buffer.getvalue()))
    record = {"model": model_path, "data": data_path, "samples": len(data["x"]),
              "sweep": swept.to_dict(), "search": found.to_dict() if found else None,
              "search_distilled": tuned.to_dict() if tuned else None,
              "distilled_on": len(tune_x) if tune_x is not None else 0,
              "calibration_samples": 0 if calibration_x is None else len(calibration_x),
              "held_out_samples": 0 if held_data is None else len(held_data["x"])}
    written.append(files_lib.write_json(os.path.join(out_dir, "sweep.json"), record))

    kernel_list = models.model_kernels(model, swept.group_size, swept.width)
    kernels = {k.key: k for k in kernel_list}  # every kernel (a SeparableConv's two)
    written.append(plots.plot_pareto(swept, os.path.join(out_dir, "pareto.png"), found))
    written.append(plots.plot_bit_density({name: k.original for name, k in kernels.items()},
                                        os.path.join(out_dir, "bit_density.png")))

    geometry = dict(group_size=swept.group_size, width=swept.width)
    before = models.column_profile(kernel_list, **geometry)
    if found is not None and found.precisions:
      applied = search_lib.resolve_map(found.precisions, kernel_list, found.method)
      after = models.column_profile(kernel_list, found.method, applied, **geometry)
      label = "global P search" if found.chose_global else "per-kernel search"
    else:
      after = models.column_profile(kernel_list, "paper",
                                    dict.fromkeys(range(len(kernel_list)), 0.1), **geometry)
      label = "paper P=0.1"
    written.append(plots.plot_columns(before, after, os.path.join(out_dir, "columns.png"),
                                      label, bits.geometry_text(**geometry)))
    if found is not None and found.precisions:
      written.append(_speedup_plot(model, found, os.path.join(out_dir, "cycles.png"),
                                   input_shape))

    if tuned_model is not None and tuned_result.improved:
      path = os.path.join(out_dir, "finetuned.keras")
      with files_lib.replaced(path, ".tmp.keras") as temp:
        tuned_model.save(temp)  # a .keras file, renamed with the other outputs
      written.append(path)
    summary = _summary(model_path, data_path, len(data["x"]), swept, found, model, tuned,
                       len(tune_x) if tune_x is not None else 0, tuned_result,
                       headline(record) if found is not None else None, _splits(record))
    written.append(files_lib.write_text(os.path.join(out_dir, "summary.md"), summary))
  return JobResult(swept, found, tuple(written), summary)


STRATEGIES = ("none", "mirrored", "multi_worker")


def _strategy(name):
  """A tf.distribute strategy by name: "mirrored" (every local device),
  "multi_worker" (the machines TF_CONFIG names), or None."""
  if name in (None, "none"):
    return None
  if name not in STRATEGIES:
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  return tf.distribute.MultiWorkerMirroredStrategy()


def _speedup_plot(model, found, path: str, input_shape) -> str:
  from mortar_tf.estimator import plots as estimator_plots  # pylint: disable=import-outside-toplevel
  estimator = estimates.ModelEstimator(model, input_shape)
  try:
    if found.chose_global:
      result = estimator(found.method, found.precisions["*"])
    else:
      kernels = models.model_kernels(model)
      chosen = search_lib.resolve_map(found.precisions, kernels, found.method)
      result = estimator(found.method,
                         estimates.estimator_map(estimator, found.precisions, kernels, chosen))
    return estimator_plots.plot_matrix(result, path)
  finally:
    estimator.close()


def _summary(model_path, data_path, samples, swept, found, model, tuned=None,
             distilled_on=0, tuned_result=None, head=None, splits="") -> str:
  lines = [f"# mortar-sweep: {os.path.basename(model_path)}", "",
           f"Model `{model_path}`, data `{data_path}` ({samples} samples), metric "
           f"{swept.metric_name} ({'higher' if swept.higher_is_better else 'lower'} is better). "
           "Ratios are ones(original) / ones(morphed) over all kernels (aligned: "
           f"{bits.geometry_text(swept.group_size, swept.width)}, the engines' geometry); "
           + ("compressed x is measured: zlib level 9 bytes of the original kernels over "
              "those of the morphed ones, each kernel compressed alone; "
              if any(p.compressed is not None for p in swept.points) else "") +
           "est. x stripes is the mortar engine on the morphed weights "
           "over stripes on the original weights, est. x unmorphed over mortar on the original "
           "weights (SPEC 4; mortar_tf.estimator, default engines)."
           + (f" Scored: {model.scored()}." if hasattr(model, "scored") else "")
           + (f" {splits}" if splits else ""), ""]
  if head is not None:
    lines += [head, ""]
  lines += ["```", swept.table(), "```", ""]
  if swept.coverage is not None:
    lines += [swept.coverage_text() + ("" if swept.coverage.complete else
                                       f" Not estimated: {swept.coverage.missing_text()}."), ""]
  if found is not None:
    lines += ["```", found.summary(), "```", ""]
  if tuned is not None:
    lines += [f"With label-free distillation (each candidate map fine-tuned to the original's "
              f"outputs on the first {distilled_on} samples, scored on the other {samples}):",
              "", "```", tuned.summary(), "```", ""]
    if tuned_result is None:
      lines += ["No kernel could be morphed within the budget: nothing to distil.", ""]
    elif tuned_result.improved:
      lines += [f"Distillation kept: {tuned_result.after:.4f} "
                f"against {tuned_result.before:.4f} for the plain morph of the same map; the "
                "distilled model is finetuned.keras.", ""]
    else:
      lines += [f"Distillation did not improve the chosen map ({tuned_result.after:.4f} against "
                f"{tuned_result.before:.4f} for the plain morph): the plain morph is the answer, "
                "and no finetuned.keras was written.", ""]
  return "\n".join(lines)


def _splits(record: dict) -> str:
  """The sentence on how the data was split, or ""."""
  parts = []
  if record.get("calibration_samples"):
    parts.append(f"{record['calibration_samples']} samples before them calibrate the "
                 "compensated rows and search (labels unused; never scored)")
  if record.get("held_out_samples"):
    parts.append(f"{record['held_out_samples']} samples after them are held out from the "
                 "search, which must meet the budget on them too")
  if not parts:
    return ""
  return "Samples apart from the scored ones: " + "; ".join(parts) + "."


def headline(record: dict) -> str:
  """The gain against the metric, as a markdown table, from a sweep.json
  record (`run_job`'s): the original, the best single P within the budget and
  the per-kernel search. Each column says whether it is measured (ones counted,
  the metric scored) or modelled (the cycle estimator), the speedup over the
  same engine unmorphed comes before the one over stripes (which includes what
  the engine gains with nothing morphed), and a speedup at the estimate's
  ceiling (stripes' width: one 1 bit per lane) is marked. Where the search's
  points carry their compressed sizes, a `compressed x` column (measured)
  follows the aligned one."""
  sweep, found = record["sweep"], record.get("search")
  if found is None:
    raise ValueError("the record holds no search: run mortar-sweep with --budget")
  sized = all(p.get("compressed") for p in (found["point"], found.get("best_global")) if p)

  def compressed(point):
    return f" {point['compressed']['zlib']['ratio']:.3f}x |" if sized else ""
  name, width = sweep["metric"], sweep["width"]
  drop_unit = " points" if name in ("accuracy", "agreement") else ""

  def speedup_over_stripes(value):
    if value is None:
      return "-"
    mark = f" (the ceiling: one 1 bit per lane, {width}x)" if value >= 0.995 * width else ""
    return f"{value:.3f}x{mark}"

  def row(label, point):
    return (f"| {label} | {results_page.metric_text(point['metric'], name)} | {point['ratio']['aligned']:.3f}x "
            f"|{compressed(point)} {point['speedup_unmorphed']:.3f}x "
            f"| {speedup_over_stripes(point['speedup'])} |")

  budget = found["budget"]
  budget_text = (f"{budget * 100:g}{drop_unit}" if drop_unit else f"{budget:g}")
  lines = [f"| kernels morphed by | {name} (measured) | aligned 1 bits removed (measured) "
           + ("| compressed x, zlib 9 bytes before / after (measured) " if sized else "")
           + "| cycles, x over the same engine unmorphed (modelled) "
           "| x over a dense bit-serial engine, stripes (modelled) |",
           "|---|---|---|---|---|" + ("---|" if sized else ""),
           f"| nothing | {results_page.metric_text(sweep['original_metric'], name)} | 1.000x | "
           + ("1.000x | " if sized else "") +
           f"1.000x | {speedup_over_stripes(sweep['original_speedup'])} |"]
  method = f"`{found['method']}`" + (" compensated" if found.get("compensation") else "")
  best = found.get("best_global")
  if best is not None:
    lines.append(row(f"{method}, one P = {best['settings']['precision']:g} for every kernel "
                     "(the best single P within the budget)", best))
  point = found["point"]
  chosen = point.get("precisions") or {}
  distinct = {p for p in chosen.values()}
  held = found.get("held_out")
  checked = f", held out on {held['samples']} more" if held and held.get("samples") else ""
  if not chosen:
    what = "nothing morphed: no map of the search's grid met the budget"
  elif "*" in chosen or (len(distinct) == 1 and found.get("chose_global")):
    what = f"the search's answer: one P = {next(iter(distinct)):g} for every kernel"
  elif len(distinct) == 1:
    what = f"the search's answer: P = {next(iter(distinct)):g} for each kernel it names"
  else:
    what = "one P per kernel"
  lines.append(row(f"{method}, {what} (the search, budget {budget_text}{checked})", point))
  splits = _splits(record)
  if splits or record.get("samples"):
    lines += ["", f"Scored on {record['samples']:,} samples. " + splits.replace(
        "Samples apart from the scored ones: ", "Apart from them: ")]
  return "\n".join(lines)
