"""Sweeps morphing settings over a Keras model, searches per-layer P, writes plots.

  mortar-sweep --model=model.keras --data=test.npz --metric=accuracy --out_dir=out
  mortar-sweep --model=model.keras --data=test.npz --search --budget=0.005 --out_dir=out

--data is an .npz with inputs (--x_key) and, for accuracy, labels (--y_key).
Writes sweep.csv, sweep.json, summary.md and PNGs to --out_dir, prints the
table and the search result. Exit status: 0 done, 1 failed.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from mortar_tf.tools import flag_parsing

_MODEL = flags.DEFINE_string("model", None, "A .keras/.h5 model file or a SavedModel directory.",
                             required=True)
_SIGNATURE = flags.DEFINE_string("signature", "serving_default",
                                 "The signature a SavedModel is called through (one input).")
_OUTPUT = flags.DEFINE_string("output", None,
                              "The output of a multi-output SavedModel signature to score "
                              "(default: the first by name; the summary says which).")
_DATA = flags.DEFINE_string("data", None, "An .npz of inputs (and labels).", required=True)
_X_KEY = flags.DEFINE_string("x_key", "x", "The inputs' array in --data.")
_Y_KEY = flags.DEFINE_string("y_key", "y", "The labels' array in --data (accuracy).")
_METRIC = flags.DEFINE_enum("metric", "accuracy", ["accuracy", "agreement", "mse", "psnr"],
                            "accuracy vs labels; agreement/mse/psnr vs the original model.")
_SAMPLES = flags.DEFINE_integer("samples", None, "Use the first N samples only.")
_METHODS = flags.DEFINE_list("methods", ["paper", "fewest_ones", "round", "bitx"],
                             "Methods to sweep.")
_PRECISIONS = flags.DEFINE_list("precisions", ["0.01", "0.05", "0.1", "0.2", "0.3"],
                                "P grid of paper and fewest_ones.")
_KEEP_BITS = flags.DEFINE_list("keep_bits", ["4", "7", "10"], "keep_bits grid of round.")
_COLUMNS = flags.DEFINE_list("columns", ["8", "12"], "columns grid of bitx.")
_SEARCH = flags.DEFINE_bool("search", True, "Also search a per-kernel P map.")
_BUDGET = flags.DEFINE_float("budget", 0.005, "Allowed metric drop for the search.")
_SEARCH_METHOD = flags.DEFINE_enum("search_method", "fewest_ones", ["paper", "fewest_ones"],
                                   "Method whose P the search chooses per kernel.")
_SEARCH_PRECISIONS = flags.DEFINE_list("search_precisions",
                                       ["0.01", "0.02", "0.05", "0.1", "0.2", "0.3", "0.5", "1.0"],
                                       "P candidates per kernel.")
_MAX_EVALUATIONS = flags.DEFINE_integer("max_evaluations", 30,
                                        "Cap on the search's full evaluations of the metric.")
_OBJECTIVE = flags.DEFINE_enum("objective", "aligned", ["aligned", "speedup", "size"],
                               "What the search maximises: aligned 1 bits removed, mortar "
                               "cycles saved (estimated), or compressed bytes saved (zlib 9 of "
                               "each kernel, measured).")
_COMPRESSED = flags.DEFINE_bool("compressed", True,
                                "Measure every row's compressed size (compressed x: zlib 9 of "
                                "each kernel alone, zstd where installed): the slow part on "
                                "large models, about a minute a row for 15M weights on one "
                                "core. --objective=size measures the search's anyway.")
_STRATEGY = flags.DEFINE_enum("strategy", "none", ["none", "mirrored", "multi_worker"],
                              "Evaluate the metric data parallel: mirrored (every local device) "
                              "or multi_worker (the machines in TF_CONFIG).")
_FINETUNE_EPOCHS = flags.DEFINE_integer(
    "finetune_epochs", 0, "Also search with label-free distillation of each candidate map, this "
    "many epochs (Keras models): the data is split, half to distil on, half to score on; "
    "writes finetuned.keras.")
_COMPENSATE = flags.DEFINE_bool(
    "compensate", False, "Also morph with errors compensated and biases corrected (SPEC 6; "
    "Keras models and SavedModels): a compensated row per paper/fewest_ones/round setting, and a compensated "
    "search. The first --calibration_samples samples calibrate (labels unused) and are never "
    "scored.")
_CALIBRATION_SAMPLES = flags.DEFINE_integer(
    "calibration_samples", 256, "Samples (the first ones) that calibrate --compensate.")
_HELD_OUT = flags.DEFINE_float(
    "held_out", 0.5, "Share of the scoring samples (the last ones) kept from the search: the map "
    "it returns must meet the budget on them too. 0 turns it off; the sweep's rows are scored "
    "on the rest.")
_OUT_DIR = flags.DEFINE_string("out_dir", "out/sweep", "Where the files go.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  settings = {"paper": flag_parsing.numbers("precisions", _PRECISIONS.value, float),
              "fewest_ones": flag_parsing.numbers("precisions", _PRECISIONS.value, float),
              "round": flag_parsing.numbers("keep_bits", _KEEP_BITS.value, int),
              "bitx": flag_parsing.numbers("columns", _COLUMNS.value, int)}
  unknown = [m for m in _METHODS.value if m not in settings]
  if unknown:
    raise app.UsageError(f"unknown methods {unknown}; expected some of {', '.join(settings)}")
  grid = {m: settings[m] for m in _METHODS.value}
  search_ps = flag_parsing.numbers("search_precisions", _SEARCH_PRECISIONS.value, float)
  if flags.FLAGS["calibration_samples"].present and not _COMPENSATE.value:
    raise app.UsageError("--calibration_samples sets how many samples calibrate --compensate; "
                         "give --compensate too")
  logging.set_verbosity(logging.WARNING)  # Keras' export logs each step at INFO
  from mortar_tf.explore import job  # pylint: disable=import-outside-toplevel  (imports TF)
  try:
    result = job.run_job(_MODEL.value, _DATA.value, _OUT_DIR.value, metric=_METRIC.value,
                         x_key=_X_KEY.value, y_key=_Y_KEY.value, samples=_SAMPLES.value,
                         grid=grid, search=_SEARCH.value, budget=_BUDGET.value,
                         search_method=_SEARCH_METHOD.value, search_precisions=search_ps,
                         objective=_OBJECTIVE.value, signature=_SIGNATURE.value,
                         max_evaluations=_MAX_EVALUATIONS.value, strategy=_STRATEGY.value,
                         finetune_epochs=_FINETUNE_EPOCHS.value,
                         compensate=_COMPENSATE.value,
                         calibration_samples=_CALIBRATION_SAMPLES.value,
                         held_out=_HELD_OUT.value if _SEARCH.value else 0.0,
                         output=_OUTPUT.value, compressed=_COMPRESSED.value,
                         progress=_PROGRESS.value and sys.stderr.isatty())
  except (ValueError, TypeError) as e:
    print(f"{flag_parsing.command('mortar-sweep')}: error: {e}", file=sys.stderr)
    return 1
  print(result.summary)
  print("Wrote " + ", ".join(result.files))
  for line in result.warnings():
    print(f"mortar-sweep: warning: {line}", file=sys.stderr)
  return 0


def run():
  flag_parsing.run_tool(main, __name__)


if __name__ == "__main__":
  run()
