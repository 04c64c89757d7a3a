"""Prints per-layer ones and a sweep of sparsity ratios for a saved model.

  mortar-analyze --model=model.keras
  mortar-analyze --model=saved_model_dir --methods=paper,fewest_ones --precisions=0.05,0.1,0.3
"""

import sys

from absl import app
from absl import flags

from mortar_tf.tools import flag_parsing

from mortar_tf import analyze as analyze_lib
from mortar_tf import bits
from mortar_tf import files

_MODEL = flags.DEFINE_string("model", None, "A .keras/.h5/.tflite model file or a SavedModel directory.",
                             required=True)
_METHODS = flags.DEFINE_list("methods", ["paper", "fewest_ones", "round", "bitx"],
                             "Morphing methods to sweep.")
_PRECISIONS = flags.DEFINE_list("precisions", ["0.01", "0.05", "0.1", "0.2", "0.3"],
                                "P values for paper and fewest_ones.")
_KEEP_BITS = flags.DEFINE_list("keep_bits", ["4", "7"], "Mantissa bits kept by round.")
_COLUMNS = flags.DEFINE_list("columns", ["8", "12"], "Aligned columns kept by bitx.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", bits.DEFAULT_GROUP_SIZE,
                                   "Lanes per group (aligned domain, bitx); the default is the "
                                   "estimator's engines'.")
_WIDTH = flags.DEFINE_integer("width", bits.DEFAULT_WIDTH, "Aligned window width, 1..64.")
_SELECT = flags.DEFINE_enum("select", "kernels", ["kernels", "all"],
                            "Analyse the layers' kernels only, or every weight.")
_DOMAIN = flags.DEFINE_enum("domain", "word", list(analyze_lib.LAYER_DOMAINS),
                            "Domain of the per-layer ratio table (compressed: zlib 9 bytes "
                            "before / after, measured).")
_COMPRESSED = flags.DEFINE_bool("compressed", True,
                                "Measure compressed sizes (zlib 9 of each weight alone, zstd "
                                "where installed; gzip -9 of a .tflite file): the slow part, "
                                "about a minute a setting for 15M weights on one core.")
_PER_LAYER = flags.DEFINE_bool("per_layer", True, "Print the per-layer tables.")
_JSON = flags.DEFINE_string("json", None, "Also write the full report as JSON here.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    specs = analyze_lib.parse_settings(
        _METHODS.value, flag_parsing.numbers("precisions", _PRECISIONS.value, float),
        flag_parsing.numbers("keep_bits", _KEEP_BITS.value, int),
        flag_parsing.numbers("columns", _COLUMNS.value, int),
        group_size=_GROUP_SIZE.value, width=_WIDTH.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _DOMAIN.value == "compressed" and not _COMPRESSED.value:
    raise app.UsageError("--domain=compressed needs the compressed sizes: drop --nocompressed")
  try:
    flag_parsing.check_paths([(_JSON, files.FILE)], [_MODEL])
    if _JSON.value:
      files.check_output_file(_JSON.value)  # before the analysis, not after
    analysis = analyze_lib.analyze(_MODEL.value, specs, select=_SELECT.value,
                                   group_size=_GROUP_SIZE.value, width=_WIDTH.value,
                                   compressed=_COMPRESSED.value)
    print(analyze_lib.format_analysis(analysis, _DOMAIN.value, _PER_LAYER.value))
    if _JSON.value:
      analysis.write_json(_JSON.value)
      print(f"\nWrote {_JSON.value}")
  except (ValueError, TypeError) as e:
    print(f"{flag_parsing.command('mortar-analyze')}: error: {e}", file=sys.stderr)
    return 1
  return 0


def run():
  flag_parsing.run_tool(main, __name__)


if __name__ == "__main__":
  run()
