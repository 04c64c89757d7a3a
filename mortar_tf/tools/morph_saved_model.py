"""Writes a copy of a SavedModel with its weight variables morphed.

  mortar-morph --input=model_dir --output=model_morphed --method=paper --precision=0.1
  mortar-morph --input=model_dir --output=out --precision_map=p.json --verify --report=r.json
  mortar-morph --input=model_dir --archive=model_morphed.tar.gz --method=fewest_ones --precision=0.01

--archive writes the morphed SavedModel as one compressed file (.tar.gz or
.tgz: gzip level 9; .tar.xz or .txz: xz; .zip: deflate level 9), its entries
at the archive's root (extract it into an empty directory and load that):
beside --output when both are given (the same files, byte for byte), instead
of it when --output is left out. Like --output it must not exist, and it is
published only when everything else succeeded. The report gives its size,
the bytes it holds, and the size of --input archived the same way (measured:
one more compression of the model), and the ratio of the two.

--precision_map is a JSON object {pattern: value}: fnmatch patterns over
variable names, their layer paths and layer names, checkpoint keys and op
names, as mortar_tf.precision_map matches them everywhere (first match wins);
a value is a number, P for --method, or an object such as {"method": "bitx",
"columns": 8} (a MorphSpec config: that method and its settings for the
variables the entry wins; bitx's group_size and width default to the
library's, not to --group_size/--width, which set the report's aligned
counts); variables it does not cover are left unchanged. --verify compares both models' outputs on random
inputs of --input_shape (or on --verify_inputs) and fails above
--verify_max_rel / --verify_max_abs. Exit status: 0 done, 1 failed, 2 verification
failed (nothing written in either case).

--compensate morphs with the errors compensated (SPEC 6) on the calibration
inputs of --calibration (an .npz keyed by the signature's input names, like
--verify_inputs; keep them apart from the samples that score the result):
each kernel's morph errors are spread over its later rows and the mean output
change goes into the bias or BatchNormalization mean right after it, with
statistics from the original model. Kernels that cannot be compensated are
morphed plain and named (a warning); none at all is an error.

  mortar-morph --input=m --output=out --method=fewest_ones --precision=0.05 \
      --compensate --calibration=calib.npz
"""

import sys

from absl import app
from absl import flags
from absl import logging

from mortar_tf import bits
from mortar_tf import files
from mortar_tf.tools import flag_parsing

VERIFY_FAILED = 2

_INPUT = flags.DEFINE_string("input", None, "The SavedModel directory to read.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "The directory to write (must not exist); may be "
                              "left out when --archive is given.")
_ARCHIVE = flags.DEFINE_string("archive", None, "Also write the morphed SavedModel as one "
                               "compressed archive here (.tar.gz, .tgz, .tar.xz, .txz or .zip; "
                               "must not exist); without --output, only the archive.")
_METHOD = flags.DEFINE_enum("method", "paper", ["paper", "fewest_ones", "round", "bitx"],
                            "Morphing method.")
_PRECISION = flags.DEFINE_float("precision", None, "P for paper and fewest_ones (default 0.1).")
_PRECISION_MAP = flags.DEFINE_string("precision_map", None, flag_parsing.MAP_HELP)
_KEEP_BITS = flags.DEFINE_integer("keep_bits", None, "Mantissa bits kept by round.")
_COLUMNS = flags.DEFINE_integer("columns", None, "Aligned columns kept by bitx.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", bits.DEFAULT_GROUP_SIZE,
                                   "Lanes per group (bitx, aligned counts); the default is the "
                                   "estimator's engines'.")
_WIDTH = flags.DEFINE_integer("width", bits.DEFAULT_WIDTH,
                              "Aligned window width (bitx, aligned counts).")
_SELECT = flags.DEFINE_list("select", ["kernels"],
                            "kernels, all, or a list of variable names or checkpoint keys.")
_SIGNATURE = flags.DEFINE_string("signature", "serving_default",
                                 "The signature whose graph names the kernels.")
_INPUT_SHAPE = flags.DEFINE_string("input_shape", None, flag_parsing.INPUT_SHAPE_HELP)
_VERIFY = flags.DEFINE_bool("verify", False, "Compare both models' outputs before finishing.")
_VERIFY_INPUTS = flags.DEFINE_string("verify_inputs", None,
                                     "An .npz of the signature's inputs for --verify.")
_VERIFY_MAX_REL = flags.DEFINE_float(
    "verify_max_rel", None, "--verify fails above this max |a - b| / max |a| per output "
    "(default: twice the method's per-weight error bound, e.g. 0.2 for P=0.1).")
_VERIFY_MAX_ABS = flags.DEFINE_float("verify_max_abs", None,
                                     "--verify fails above this max |a - b| (default: no limit).")
_REPORT = flags.DEFINE_string("report", None, "Also write the report as JSON here.")
_COMPRESSED = flags.DEFINE_bool("compressed", False,
                                "Measure each morphed variable's compressed size before and after "
                                "(compressed x: zlib 9 of each alone, zstd where installed): "
                                "about a minute for 15M weights on one core.")
_CHECKPOINT = flags.DEFINE_enum(
    "checkpoint", "auto", ["auto", "patch", "tensorflow"],
    "How the variables are written: patch (the data files copied but for the morphed entries, "
    "the index given their new checksums; no TensorFlow restore/save), tensorflow (every entry "
    "restored and saved again), auto (patch where the checkpoint allows it).")
_FORCE = flags.DEFINE_bool("force", False, "Morph a model that mortar_tf already morphed.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
_COMPENSATE = flags.DEFINE_bool("compensate", False,
                                "Compensate the morph errors on --calibration inputs (SPEC 6).")
_CALIBRATION = flags.DEFINE_string(
    "calibration", None, "An .npz of the signature's inputs for --compensate (keep them apart "
    "from the samples that score the result).")
_COMPENSATE_ERROR = flags.DEFINE_bool("compensate_error", True,
                                      "--compensate: spread each row's morph error over the "
                                      "later rows (GPTQ-style).")
_COMPENSATE_BIAS = flags.DEFINE_bool("compensate_bias", True,
                                     "--compensate: correct the bias or BatchNormalization mean "
                                     "after each kernel.")
_COMPENSATE_PROJECTED = flags.DEFINE_bool("compensate_projected", False,
                                          "--compensate: keep every final value within P of "
                                          "its original.")
_COMPENSATE_DAMPING = flags.DEFINE_float("compensate_damping", None,
                                         "--compensate: damping relative to the mean diagonal "
                                         "of H, in (0, 1] (default 0.01).")


class _Bar:
  """A one-line progress bar over checkpoint entries (stderr, only on a terminal)."""

  def __init__(self, enabled: bool):
    self.enabled = enabled and sys.stderr.isatty()

  def __call__(self, done: int, total: int, key: str) -> None:
    if self.enabled and total:
      from mortar_tf import table  # pylint: disable=import-outside-toplevel
      table.progress(done, total, key)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _OUTPUT.value and not _ARCHIVE.value:
    raise app.UsageError("give --output=<a directory to write>, --archive=<model.tar.gz>, or "
                         "both")
  precision = flag_parsing.precision(_PRECISION.value, _PRECISION_MAP.value)
  for flag in (_VERIFY_INPUTS, _VERIFY_MAX_REL, _VERIFY_MAX_ABS):
    if flag.value is not None and not _VERIFY.value:
      raise app.UsageError(f"--{flag.name} is for --verify: add --verify (or drop it)")
  if _CALIBRATION.value is not None and not _COMPENSATE.value:
    raise app.UsageError("--calibration is for --compensate: add --compensate (or drop it)")
  if _COMPENSATE.value and not _CALIBRATION.value:
    raise app.UsageError("--compensate needs --calibration=<an .npz of the signature's inputs>")
  for flag, default in ((_COMPENSATE_ERROR, True), (_COMPENSATE_BIAS, True),
                        (_COMPENSATE_PROJECTED, False), (_COMPENSATE_DAMPING, None)):
    if flag.value != default and not _COMPENSATE.value:
      raise app.UsageError(f"--{flag.name} is for --compensate: add --compensate (or drop it)")
  if _COMPENSATE.value and not (_COMPENSATE_ERROR.value or _COMPENSATE_BIAS.value):
    raise app.UsageError("--nocompensate_error and --nocompensate_bias together compensate "
                         "nothing: drop --compensate instead")
  damping = _COMPENSATE_DAMPING.value
  if damping is not None and not 0 < damping <= 1:
    raise app.UsageError(f"--compensate_damping must be in (0, 1], got {damping}")
  select = _SELECT.value
  select = select[0] if select in (["kernels"], ["all"]) else select
  # TensorFlow loads after the flags are checked: usage errors stay fast.
  logging.set_verbosity(logging.WARNING)  # TF's loader logs each SavedModel at INFO
  from mortar_tf import savedmodel  # pylint: disable=import-outside-toplevel
  from mortar_tf.savedmodel import output  # pylint: disable=import-outside-toplevel
  try:
    # Every path it writes (the lock beside --output too), apart from every path it reads.
    flag_parsing.check_paths([(_OUTPUT, files.TREE), (_REPORT, files.FILE),
                              ("--output's lock file",
                               _OUTPUT.value and output.lock_path(_OUTPUT.value), files.FILE),
                              (_ARCHIVE, files.FILE),
                              ("--archive's lock file",
                               _ARCHIVE.value and output.lock_path(_ARCHIVE.value), files.FILE)],
                             [_INPUT, _VERIFY_INPUTS, _PRECISION_MAP, _CALIBRATION])
    if _ARCHIVE.value:  # after the paths: an alias of an input is named as one
      from mortar_tf import archive  # pylint: disable=import-outside-toplevel
      try:
        archive.archive_format(_ARCHIVE.value)
      except ValueError as e:
        raise app.UsageError(f"--archive: {e}") from None
    compensate = None
    if _COMPENSATE.value:
      compensate = savedmodel.CompensationSettings(
          _CALIBRATION.value, error=_COMPENSATE_ERROR.value, bias=_COMPENSATE_BIAS.value,
          projected=_COMPENSATE_PROJECTED.value,
          damping=damping if damping is not None else savedmodel.DEFAULT_DAMPING)
    report = savedmodel.convert(
        _INPUT.value, _OUTPUT.value, _METHOD.value, precision, keep_bits=_KEEP_BITS.value,
        columns=_COLUMNS.value, group_size=_GROUP_SIZE.value, width=_WIDTH.value,
        select=select, signature=_SIGNATURE.value,
        input_shape=flag_parsing.input_shape(_INPUT_SHAPE.value),
        force=_FORCE.value, verify=_VERIFY.value, verify_inputs=_VERIFY_INPUTS.value,
        verify_max_rel=_VERIFY_MAX_REL.value, verify_max_abs=_VERIFY_MAX_ABS.value,
        report_path=_REPORT.value, progress=_Bar(_PROGRESS.value), compensate=compensate,
        archive_path=_ARCHIVE.value, compressed=_COMPRESSED.value,
        checkpoint=_CHECKPOINT.value)
  except savedmodel.VerificationError as e:
    print("\n".join(e.verification.lines()), file=sys.stderr)
    print(f"mortar-morph: {e}", file=sys.stderr)
    return VERIFY_FAILED
  except (ValueError, TypeError) as e:
    return _failed(e)
  print(report.summary())
  if _REPORT.value:
    print(f"Wrote {_REPORT.value}")
  return 0


def _failed(error: Exception) -> int:
  print(f"{flag_parsing.command('mortar-morph')}: error: {error}", file=sys.stderr)
  print("Nothing was written.", file=sys.stderr)
  return 1


def run():
  flag_parsing.run_tool(main, __name__)


if __name__ == "__main__":
  run()
