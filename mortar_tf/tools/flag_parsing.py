"""Flag values the tools share: number lists, an input shape, a precision map."""

import json
import os
import sys

from absl import app
from absl import flags

from mortar_tf import files


_STARTED_AS = {}


def command(tool: str) -> str:
  """How the running tool was started, for its messages: "mortar-morph",
  "python tools/mortar_morph.py" or "python -m ..." (`tool` when it was not
  started through run_tool, e.g. main called from a test)."""
  return _STARTED_AS.get("command", tool)


def run_tool(main, module_name: str) -> None:
  """app.run(main) for the tool defined in `module_name`.

  An installed command's __main__ is pip's wrapper script, and a checkout's
  is its launcher in tools/ (tools/mortar_morph.py, ...); neither defines
  flags, so absl's --help and --helpshort would describe nothing: the tool's
  docstring and flags are lent to it first. Errors name the command as it was
  started: mortar-morph, python tools/mortar_morph.py, or python -m ....
  """
  module = sys.modules[module_name]
  main_module = sys.modules["__main__"]
  if main_module is not module:
    main_module.__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  started = os.path.basename(sys.argv[0])
  if started.startswith("mortar_") and started.endswith(".py"):
    started = f"python {sys.argv[0]}"
  elif not started.startswith("mortar-"):
    started = f"python -m {module_name}"
  _STARTED_AS["command"] = started
  app.run(_short_usage_errors(main, started), flags_parser=_flags_parser(started))


def _flags_parser(command: str):
  """absl's flag parsing with its errors (a missing required flag, an unknown
  flag, a value of the wrong type) in the tools' one-line form, exit status 1."""
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f"{command}: error: {e}\nsee {command} --helpshort", file=sys.stderr)
      sys.exit(1)
  return parse


def _short_usage_errors(main, command: str):
  """`main` with a UsageError printed as its cause and where help is (absl
  would print the whole help before the one line that matters); exit status 1."""
  def wrapped(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      print(f"{command}: error: {e}\nsee {command} --helpshort", file=sys.stderr)
      return e.exitcode
  return wrapped


def check_paths(outputs, inputs) -> None:
  """files.check_apart over flags: `outputs` are (flag holder, kind) pairs or
  (label, path, kind) triples, `inputs` flag holders or (label, path) pairs;
  flags left unset are skipped.

  Raises:
    files.OutputError: an output inside, equal to or aliasing an input or
      another output (one line naming both).
  """
  def labelled(item):
    return (f"--{item.name}", item.value) if isinstance(item, flags.FlagHolder) else item
  files.check_apart([(*labelled(o[0]), o[1]) if len(o) == 2 else o for o in outputs],
                    [labelled(i) for i in inputs])


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


MAP_HELP = ('A JSON file {"pattern": P or {"method": ..., settings}}, instead of --precision: '
            'a number is P for --method, an object a method of its own, e.g. '
            '{"conv1": {"method": "bitx", "columns": 8}, "*": 0.1}.')


def precision(value, map_path):
  """--precision, or the {pattern: P or spec config} object of the --precision_map
  JSON file (its values are checked, entry by entry, where the map is used)."""
  if map_path is None:
    return value
  if value is not None:
    raise app.UsageError("give --precision or --precision_map, not both")
  if not os.path.isfile(map_path):
    raise app.UsageError(f"--precision_map: no such file {map_path!r}")
  def unique(pairs):
    seen = [k for i, (k, _) in enumerate(pairs) if k in (p for p, _ in pairs[:i])]
    if seen:  # json.load would keep the last silently
      raise app.UsageError(f"--precision_map {map_path!r} gives {seen[0]!r} twice")
    return dict(pairs)

  try:
    with open(map_path, encoding="utf-8") as f:
      mapping = json.load(f, object_pairs_hook=unique)
  except ValueError as e:
    raise app.UsageError(f"--precision_map {map_path!r} is not valid JSON: {e}") from None
  if not isinstance(mapping, dict):
    raise app.UsageError(f"--precision_map {map_path!r} must be a JSON object "
                         '{"pattern": P or {"method": ..., settings}}, got a JSON '
                         f"{type(mapping).__name__}")
  for pattern, entry in mapping.items():
    if not (isinstance(entry, dict) or
            (isinstance(entry, (int, float)) and not isinstance(entry, bool))):
      raise app.UsageError(
          f"--precision_map {map_path!r}: entry {pattern!r} is {json.dumps(entry)}; a value "
          'is a number (P for --method) or an object {"method": ..., settings} such as '
          '{"method": "bitx", "columns": 8}')
  return mapping
