"""Evaluates Mortar's morphing on a list of models and writes one results page.

  mortar-results --models=models.json                     # page: out/results/results.md
  mortar-results --models=models.json --page=docs/results.md
  mortar-results --models=models.json --redo=hed          # measure one model again
  mortar-results --models=models.json --page_only         # rebuild the page from the records

--models is a JSON list of {"name", "model", "data", "metric", "budget", "title",
"weights", "data_source"} (optional: "output", "x_key", "y_key", "samples"; paths
relative to the list's directory), or {"title": heading, "intro": markdown,
"models": list} (title and intro optional). A budget is the drop in the metric
the search may spend; a psnr budget is the drop from the 300 dB of identical
outputs (260 keeps PSNR >= 40 dB), or give "psnr_floor": 40 instead. For each
model: the design-space sweep of `paper` and `fewest_ones` over --precisions
(the paper's table), BitX at Mortar's sparsity, the estimator's matrix at
--reference, the per-kernel search within the model's budget, and (--formats)
the morphed kernels' compressed bytes beside a float16 cast's and TFLite's
dynamic-range int8's, each with its own score. Each model's
record goes to --work_dir/NAME.json when it is done; a model whose record
exists with the same settings is kept. The page (--page, by default
--work_dir/results.md) and its figures (--figures_dir) are written from the
records, all or none. Exit status: 0 done, 1 a model failed (the page lists
it) or bad input.
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging

from mortar_tf.tools import flag_parsing

_MODELS = flags.DEFINE_string("models", None, "The model list (JSON).", required=True)
_WORK_DIR = flags.DEFINE_string("work_dir", "out/results", "Where the per-model records go.")
_PAGE = flags.DEFINE_string("page", None, "The results page (markdown; default: "
                            "WORK_DIR/results.md).")
_FIGURES_DIR = flags.DEFINE_string("figures_dir", None,
                                   "Where the page's PNGs go (default: PAGE's directory/results).")
_PRECISIONS = flags.DEFINE_list("precisions", ["1e-4", "5e-4", "1e-3", "5e-3", "0.01", "0.05",
                                               "0.1", "0.3", "0.5"],
                                "The design-space P grid (paper and fewest_ones).")
_REFERENCE = flags.DEFINE_float("reference", 0.1, "The P of the headline figures (in the grid).")
_SEARCH_PRECISIONS = flags.DEFINE_list(
    "search_precisions", ["0.001", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.3", "0.5",
                          "1.0"], "P candidates per kernel of the search.")
_SEARCH_METHOD = flags.DEFINE_enum("search_method", "fewest_ones", ["paper", "fewest_ones"],
                                   "Method whose P the search chooses per kernel.")
_MAX_EVALUATIONS = flags.DEFINE_integer("max_evaluations", 30,
                                        "Cap on the search's full evaluations per model.")
_SEARCH = flags.DEFINE_bool("search", True, "Run the per-kernel search.")
_BITX = flags.DEFINE_bool("bitx", True, "Evaluate BitX at Mortar's sparsity.")
_COMPENSATE = flags.DEFINE_bool(
    "compensate", True, "Also measure error-compensated morphing (SPEC 6): the search method's "
    "grid plain and compensated, and the per-kernel search plain and compensated, on samples "
    "apart from the calibration ones, held out as --held_out says.")
_CALIBRATION_SAMPLES = flags.DEFINE_integer(
    "calibration_samples", 256, "Samples (the first ones; at most a quarter of a model's) "
    "that calibrate --compensate; never scored.")
_HELD_OUT = flags.DEFINE_float(
    "held_out", 0.5, "Share of the other samples (the last ones) that --compensate's searches "
    "keep out: the map each returns must meet the budget on them too.")
_FORMATS = flags.DEFINE_bool(
    "formats", True, "Also measure the compressed bytes (zlib 9) of the morphed kernels beside "
    "those of a float16 cast and of TFLite's dynamic-range int8, each with its own score. "
    "Records made without it get this part alone.")
_REDO = flags.DEFINE_list("redo", [], "Models to measure again even if their record is "
                          "current ('all' for every one).")
_ONLY = flags.DEFINE_list("only", [], "Evaluate only these models of the list (the page "
                          "still shows every model that has a current record).")
_PAGE_ONLY = flags.DEFINE_bool("page_only", False,
                               "Measure nothing: rebuild the page from the current records.")
_PARTIAL = flags.DEFINE_bool("partial", False,
                             "Write the page even when some models of the list have no current "
                             "record (they are named on it); without it such a run stops "
                             "before any work, so a quick --only run cannot replace a full page.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Print progress and ETA lines on stderr.")
_README = flags.DEFINE_string(
    "readme", None, "Also copy the page's summary bullets into this markdown file, "
    "between its <!-- results-summary: begin --> and <!-- results-summary: end --> lines.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # Keras' export logs each step at INFO
  from mortar_tf.explore import evaluation  # pylint: disable=import-outside-toplevel
  settings = evaluation.Settings(
      precisions=tuple(flag_parsing.numbers("precisions", _PRECISIONS.value, float)),
      reference=_REFERENCE.value,
      search_precisions=tuple(flag_parsing.numbers("search_precisions",
                                                   _SEARCH_PRECISIONS.value, float)),
      search_method=_SEARCH_METHOD.value, max_evaluations=_MAX_EVALUATIONS.value,
      bitx=_BITX.value, search=_SEARCH.value, compensate=_COMPENSATE.value,
      calibration_samples=_CALIBRATION_SAMPLES.value, held_out=_HELD_OUT.value,
      formats=_FORMATS.value)
  page = _PAGE.value or os.path.join(_WORK_DIR.value, "results.md")
  figures_dir = _FIGURES_DIR.value or os.path.join(os.path.dirname(page) or ".", "results")
  try:
    settings.check()
    entries = evaluation.load_entries(_MODELS.value)
    names = [e.name for e in entries]
    unknown = sorted(set(_ONLY.value) - set(names))
    if unknown:
      raise ValueError(f"--only names models not in the list: {', '.join(unknown)} "
                       f"(the list has {', '.join(names)})")
    _check_outputs(entries, page, figures_dir)
    for entry in entries:
      if entry.metric == "psnr" and entry.budget < 150:
        print(f"mortar-results: warning: {entry.name}: a psnr budget is the drop allowed from "
              f"the 300 dB of identical outputs: {entry.budget:g} keeps PSNR >= "
              f"{300 - entry.budget:g} dB (for PSNR >= 40 dB write \"budget\": 260 or "
              "\"psnr_floor\": 40)", file=sys.stderr)
    measured = [] if _PAGE_ONLY.value else [
        e.name for e in entries if not _ONLY.value or e.name in _ONLY.value]
    left_out = [e.name for e in entries if e.name not in measured and not evaluation.is_current(
        evaluation.read_record(_WORK_DIR.value, e.name), e, settings)]
    if left_out and not _PARTIAL.value:
      raise ValueError(f"the page would lack {', '.join(left_out)}: no record of "
                       f"{'it' if len(left_out) == 1 else 'them'} with these settings, and this "
                       "run does not measure them; measure them (drop --only/--page_only), "
                       "or pass --partial (perhaps with another --page)")
    failed = {}
    if not _PAGE_ONLY.value:
      chosen = [e for e in entries if not _ONLY.value or e.name in _ONLY.value]
      outcomes = evaluation.evaluate_all(chosen, _WORK_DIR.value, settings, redo=_REDO.value,
                                         progress=_PROGRESS.value)
      failed = {o.name: o.error for o in outcomes if o.status == "failed"}
    records, missing = [], []
    for entry in entries:
      record = evaluation.read_record(_WORK_DIR.value, entry.name)
      if evaluation.is_current(record, entry, settings):
        records.append(record)
      elif entry.name not in failed:
        missing.append(entry.name)
    not_yet = {name: "no current record yet (run without --page_only/--only to measure it)"
               for name in missing}
    from mortar_tf.explore import results_page  # pylint: disable=import-outside-toplevel
    command = "mortar-results " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    written = results_page.write_page(records, page, figures_dir,
                                      failed={**failed, **not_yet}, work_dir=_WORK_DIR.value,
                                      intro=evaluation.read_intro(_MODELS.value),
                                      title=evaluation.read_title(_MODELS.value),
                                      command=os.environ.get("MORTAR_RESULTS_COMMAND", command),
                                      readme=_README.value)
  except (ValueError, TypeError) as e:
    print(f"{flag_parsing.command('mortar-results')}: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("mortar-results: interrupted; the records of finished models are kept, run again "
          "to go on", file=sys.stderr)
    return 130
  print("Wrote " + ", ".join(written))
  for line in results_page.coverage_warnings(records):
    print(f"mortar-results: warning: {line}", file=sys.stderr)
  for name, why in {**failed, **not_yet}.items():
    print(f"mortar-results: {name}: {why}", file=sys.stderr)
  return 1 if failed else 0


def _check_outputs(entries, page: str, figures_dir: str) -> None:
  """Before any work: no output lies inside, equals or aliases an input (the
  list, a model, its data) or another output, and the page and figures can be
  written (the directory, or its nearest existing ancestor, is probed with a
  file: files.check_writable_dir)."""
  from mortar_tf import files  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import evaluation  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import results_page  # pylint: disable=import-outside-toplevel
  flag_parsing.check_paths(
      [("--page", page, files.FILE), ("--figures_dir", figures_dir, files.FOLDER),
       (_WORK_DIR, files.FOLDER), (_README, files.FILE)]
      + [(f"--figures_dir's {name}", os.path.join(figures_dir, name), files.FILE)
         for name in results_page.FIGURES]
      + [(f"--work_dir's record of {e.name}", evaluation.record_path(_WORK_DIR.value, e.name),
          files.FILE) for e in entries],
      [_MODELS] + [(f"--models entry {e.name}'s {what}", path) for e in entries
                   for what, path in (("model", e.model), ("data", e.data))])
  page_dir = os.path.dirname(os.path.abspath(page))
  if os.path.isdir(page):
    raise ValueError(f"--page {page!r} is a directory, not a file")
  if _README.value:
    if not os.path.isfile(_README.value):
      raise ValueError(f"--readme {_README.value!r} is not a file")
    with open(_README.value, encoding="utf-8") as f:
      results_page.with_summary(f.read(), [])  # the markers are there, before any work
    files.check_output_file(_README.value)
  for directory, what in ((page_dir, "page's directory"), (figures_dir, "figures directory")):
    files.check_creatable_dir(directory, what)


def run():
  flag_parsing.run_tool(main, __name__)


if __name__ == "__main__":
  run()
