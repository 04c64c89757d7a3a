"""Estimates per-layer cycles and speedups of a SavedModel on bit-serial engines.

Every engine runs on the original and on the morphed weights; the summary
gives SPEC 4's two headline figures (mortar on the morphed weights over
stripes, and over mortar, on the original weights) and every cell's speedup
over --baseline.

  mortar-estimate --saved_model=model_dir --input_shape=1,224,224,3
  mortar-estimate --saved_model=model_dir --engines=bitlet,mortar --precision=0.05 \
      --csv=layers.csv --json=estimate.json --plots_dir=plots

--precision_map is the JSON map mortar-morph takes ({"pattern": P or {"method":
..., settings}}); bitx, from --method or a map entry, prunes with each engine's
G and width.

--config is a JSON file with a list of engine objects ({"name", "model",
"group_size", "width", "window", "num_pes", "frequency_hz", "power_w",
"area_mm2", "sources"}); without it the five engines of SPEC 4 are used.
Every report states its coverage: the weight MACs of the layers it estimates
out of those of every weight op the graph holds (see docs/estimator.md, "Coverage").
Below full coverage a warning on stderr names what is missing and why;
--require_complete makes that an error (exit 1, nothing written).

The output files are written all or none (each renamed into place once all
are written). Exit status: 0 done, 1 failed.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from mortar_tf import backends
from mortar_tf.tools import flag_parsing

_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "The SavedModel directory.",
                                   required=True)
_INPUT_SHAPE = flags.DEFINE_string("input_shape", None, flag_parsing.INPUT_SHAPE_HELP)
_SIGNATURE = flags.DEFINE_string("signature", "serving_default", "The signature to read.")
_ENGINES = flags.DEFINE_list("engines", None,
                             "Engines to report (names from --config or the defaults "
                             "fp32,stripes,pragmatic,bitlet,mortar); default: all.")
_BASELINE = flags.DEFINE_string(
    "baseline", None, "The cell speedups are measured against, ENGINE[:original|morphed] "
    "(default: stripes:original, or the first engine's original weights without stripes).")
_CONFIG = flags.DEFINE_string("config", None, "A JSON file of engine configs.")
_METHOD = flags.DEFINE_enum("method", "paper", ["paper", "fewest_ones", "round", "bitx"],
                            "How the mortar engines' weights are morphed.")
_PRECISION = flags.DEFINE_float("precision", None, "P for paper and fewest_ones (default 0.1).")
_PRECISION_MAP = flags.DEFINE_string("precision_map", None, flag_parsing.MAP_HELP)
_KEEP_BITS = flags.DEFINE_integer("keep_bits", None, "Mantissa bits kept by round.")
_COLUMNS = flags.DEFINE_integer("columns", None, "Aligned columns kept by bitx.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", None,
                                   "Replace every engine's lanes per PE (G), "
                                   f"1..{backends.MAX_KERNEL_GROUP_SIZE}.")
_WIDTH = flags.DEFINE_integer("width", None, "Replace every engine's aligned width, 1..64.")
_CSV = flags.DEFINE_string("csv", None, "Write the per-layer table as CSV here.")
_JSON = flags.DEFINE_string("json", None, "Write the full estimate as JSON here.")
_PLOTS_DIR = flags.DEFINE_string("plots_dir", None,
                                 "Write cycles.png, speedup.png and density.png here.")
_REQUIRE_COMPLETE = flags.DEFINE_bool(
    "require_complete", False, "Fail (exit 1, nothing written) unless every weight op is "
    "estimated (coverage 100%).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  precision = flag_parsing.precision(_PRECISION.value, _PRECISION_MAP.value)
  input_shape = flag_parsing.input_shape(_INPUT_SHAPE.value)
  # TensorFlow loads after the flags are checked: usage errors stay fast.
  logging.set_verbosity(logging.WARNING)  # TF's loader logs each SavedModel at INFO
  from mortar_tf import estimator  # pylint: disable=import-outside-toplevel
  from mortar_tf import files  # pylint: disable=import-outside-toplevel
  from mortar_tf.estimator import plots  # pylint: disable=import-outside-toplevel
  try:
    plot_files = [(f"--plots_dir's {name}", os.path.join(_PLOTS_DIR.value, name), files.FILE)
                  for name in plots.FILES] if _PLOTS_DIR.value else []
    flag_parsing.check_paths([(_CSV, files.FILE), (_JSON, files.FILE),
                              (_PLOTS_DIR, files.FOLDER)] + plot_files,
                             [_SAVED_MODEL, _CONFIG, _PRECISION_MAP])
    for path in (_CSV.value, _JSON.value):  # before any work: all or nothing is written
      if path:
        files.check_output_file(path)
    if _PLOTS_DIR.value:
      files.check_creatable_dir(_PLOTS_DIR.value, "--plots_dir")
    engines = (estimator.load_engines(_CONFIG.value) if _CONFIG.value
               else estimator.default_engines())
    if _ENGINES.value:
      known = {e.name: e for e in engines}
      unknown = [n for n in _ENGINES.value if n not in known]
      if unknown:
        raise ValueError(f"unknown engines {unknown}; known: {', '.join(known)}")
      engines = [known[n] for n in _ENGINES.value]
    result = estimator.estimate(
        _SAVED_MODEL.value, input_shape=input_shape, signature=_SIGNATURE.value,
        engines=engines, baseline=_BASELINE.value, method=_METHOD.value, precision=precision,
        keep_bits=_KEEP_BITS.value, columns=_COLUMNS.value, group_size=_GROUP_SIZE.value,
        width=_WIDTH.value)
    if not result.mapped:
      reasons = sorted({layer.unmapped for layer in result.layers}) or ["no compute ops found"]
      raise ValueError(f"no compute op of {_SAVED_MODEL.value!r} could be estimated: "
                       + "; ".join(reasons) + " (nothing was written)")
    coverage = result.coverage()
    if not coverage.complete and _REQUIRE_COMPLETE.value:
      raise ValueError(f"--require_complete: the estimate covers {coverage.summary()}; not "
                       f"estimated: {coverage.missing_text(3)} (nothing was written)")
    print(result.table())
    if not coverage.complete:
      print(f"mortar-estimate: warning: {coverage.warning()}", file=sys.stderr)
    written = []
    with files.output_set():
      if _CSV.value:
        result.write_csv(_CSV.value)
        written.append(_CSV.value)
      if _JSON.value:
        result.write_json(_JSON.value)
        written.append(_JSON.value)
      if _PLOTS_DIR.value:
        written += plots.write_plots(result, _PLOTS_DIR.value)
    for path in written:
      print(f"Wrote {path}")
  except (ValueError, TypeError) as e:
    print(f"{flag_parsing.command('mortar-estimate')}: error: {e}", file=sys.stderr)
    return 1
  return 0


def run():
  flag_parsing.run_tool(main, __name__)


if __name__ == "__main__":
  run()
