"""Plain text for terminals: tables (aligned columns, numbers right-aligned), ratios,
a progress bar.

Example:
  >>> print(format_table(["name", "ones"], [["a", 3], ["b", 12]]))
  name  ones
  ----  ----
  a        3
  b       12
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Sequence


def ratio(value: float) -> str:
  """A sparsity ratio as '1.23x' ('inf' when the morphed side has no ones)."""
  return "inf" if math.isinf(value) else f"{value:.3f}x"


def shorten(text: str, limit: int) -> str:
  """`text` cut to at most `limit` characters at a word boundary, with " ..."
  where it was cut (never in the middle of a word, unless one word is longer
  than `limit`).

  >>> shorten("the input is too small for the kernel", 20)
  'the input is too ...'
  """
  if len(text) <= limit:
    return text
  cut = text[:max(limit - 4, 1)]
  if not text[len(cut)].isspace() and " " in cut:
    cut = cut[:cut.rindex(" ")]
  return cut.rstrip() + " ..."


def _cell(value) -> str:
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, numbers.Integral):
    return f"{value:,}"
  if isinstance(value, numbers.Real):
    return f"{value:.4g}"
  return str(value)


def _numeric(text: str) -> bool:
  stripped = text.replace(",", "").rstrip("x%")
  try:
    float(stripped)
  except ValueError:
    return text == "inf"
  return True


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                 footer_rows: int = 0) -> str:
  """Formats rows under headers; the last `footer_rows` rows sit below a rule."""
  cells = [[_cell(v) for v in row] for row in rows]
  widths = [len(h) for h in headers]
  for row in cells:
    widths = [max(w, len(c)) for w, c in zip(widths, row)]

  numeric = [all(_numeric(row[i]) for row in cells if row[i]) and any(row[i] for row in cells)
             for i in range(len(headers))]

  def line(row):
    parts = [c.rjust(w) if right else c.ljust(w) for c, w, right in zip(row, widths, numeric)]
    return "  ".join(parts).rstrip()

  rule = "  ".join("-" * w for w in widths)
  body = [line(r) for r in cells]
  out = [line(list(headers)), rule]
  if footer_rows:
    out += body[:-footer_rows] + [rule] + body[-footer_rows:]
  else:
    out += body
  return "\n".join(out)


def progress(done: int, total: int, label: str = "", width: int = 30, label_width: int = 40,
             stream=None) -> None:
  """Redraws a one-line progress bar ("[####....] 3/8 label") on `stream`
  (stderr by default), ending the line when done == total; long labels keep
  their end."""
  stream = sys.stderr if stream is None else stream
  filled = width * done // max(total, 1)
  if len(label) > label_width:
    label = "..." + label[-(label_width - 3):]
  stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<{label_width}}")
  if done == total:
    stream.write("\n")
  stream.flush()
