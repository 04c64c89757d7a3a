"""Flag values the tools share: number lists, an input shape, a precision map."""

import json
import os

from absl import app


def numbers(name: str, values, kind) -> list:
  """The flag list `values` as `kind`s, or a UsageError naming --`name`."""
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise app.UsageError(f"--{name} must be a list of {kind.__name__}s, got {values}") from None


def input_shape(values):
  """--input_shape as a tuple of ints (None when not given)."""
  if values is None:
    return None
  return tuple(numbers("input_shape", values, int))


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
