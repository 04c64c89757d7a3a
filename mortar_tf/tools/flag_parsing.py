"""Flag values the tools share: number lists, an input shape, a precision map."""

import json
import os
import sys

from absl import app
from absl import flags


def run_tool(main, module_name: str) -> None:
  """app.run(main) for the tool defined in `module_name`.

  An installed command's __main__ is pip's wrapper script, which has no
  docstring and defines no flags, so absl's --help and --helpshort would
  describe nothing: the tool's docstring and flags are lent to it first.
  """
  module = sys.modules[module_name]
  main_module = sys.modules["__main__"]
  if main_module is not module:
    if not main_module.__doc__:
      main_module.__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


def numbers(name: str, values, kind) -> list:
  """The flag list `values` as `kind`s, or a UsageError naming --`name`."""
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise app.UsageError(f"--{name} must be a list of {kind.__name__}s, got {values}") from None


INPUT_SHAPE_HELP = ("Input shape, batch included: 1,224,224,3 for a signature with one input, "
                    "or name:shape per input separated by ';' "
                    "(token_ids:1,128;padding_mask:1,128).")


def input_shape(value):
  """--input_shape as a tuple of ints, or {input name: tuple} (None when not given).

  Accepts "1,224,224,3" or "token_ids:1,128;padding_mask:1,128".
  """
  if value is None or value == "":
    return None
  if isinstance(value, (list, tuple)):  # a DEFINE_list flag
    value = ",".join(value)

  def dims(text, where):
    try:
      out = tuple(int(d) for d in text.split(",") if d.strip() != "")
    except ValueError:
      out = ()
    if not out or any(d < 0 for d in out):
      raise app.UsageError(f"--input_shape: {where} {text!r} is not a list of sizes; the "
                           "syntax is 1,224,224,3 or name:1,128;name2:1,128")
    return out

  if ":" not in value:
    return dims(value, "shape")
  shapes = {}
  for part in value.split(";"):
    if not part.strip():
      continue
    name, sep, text = part.partition(":")
    if not sep or not name.strip():
      raise app.UsageError(f"--input_shape: {part!r} is not name:shape; the syntax is "
                           "name:1,128;name2:1,128")
    if name.strip() in shapes:
      raise app.UsageError(f"--input_shape names {name.strip()!r} twice")
    shapes[name.strip()] = dims(text, f"the shape of {name.strip()!r},")
  return shapes


def precision(value, map_path):
  """--precision, or the {pattern: P} object of the --precision_map JSON file."""
  if map_path is None:
    return value
  if value is not None:
    raise app.UsageError("give --precision or --precision_map, not both")
  if not os.path.isfile(map_path):
    raise app.UsageError(f"--precision_map: no such file {map_path!r}")
  try:
    with open(map_path, encoding="utf-8") as f:
      mapping = json.load(f)
  except ValueError as e:
    raise app.UsageError(f"--precision_map {map_path!r} is not valid JSON: {e}") from None
  if not isinstance(mapping, dict) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in mapping.values()):
    raise app.UsageError(f"--precision_map {map_path!r} must be a JSON object of numbers "
                         '{"pattern": P}')
  return mapping
