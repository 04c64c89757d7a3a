"""Output files written whole or not at all, numbers JSON can hold, .npz inputs.

Every report, record and plot is written to a temp name beside its path and
renamed into place, so a failure or a kill never leaves a partial file.

Example:
  >>> finite_or_none(float("inf")) is None
  True
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np


@contextlib.contextmanager
def replaced(path: str, suffix: str = ".tmp"):
  """Yields a temp path beside `path`; renames it to `path` if the block
  succeeds, removes it if the block raises. `suffix` keeps an extension
  that writers infer the format from (e.g. ".tmp.png")."""
  tmp = f"{path}{suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically; returns `path`."""
  with replaced(path) as tmp:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
  return path


def write_json(path: str, data) -> str:
  """Writes `data` as indented JSON atomically; NaN or inf is an error
  (strict JSON has neither: pass numbers through finite_or_none first)."""
  return write_text(path, json.dumps(data, indent=1, allow_nan=False))


def finite_or_none(x):
  """`x`, or None where it is None, inf or NaN (JSON has no inf)."""
  return None if x is None or not math.isfinite(x) else x


def read_npz(path: str, what: str = "data file") -> dict:
  """Every array of an .npz file, or a ValueError naming the problem (a
  missing path, a file numpy cannot read)."""
  if not os.path.isfile(path):
    raise ValueError(f"no such {what}: {path!r}")
  try:
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path!r} is not a readable .npz file: {e}") from e
