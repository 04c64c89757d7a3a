"""PNG plots of an exploration: Pareto front, bit density, column profile.

Headless (Agg); each file is written to a temp name and renamed.
"""

from __future__ import annotations


import numpy as np

from mortar_tf import backends
from mortar_tf import bits
from mortar_tf.estimator.plots import pyplot
from mortar_tf.estimator.plots import save_figure
from mortar_tf.explore.results import SearchResult
from mortar_tf.explore.results import SweepResult


def _setting_text(point) -> str:
  if point.precisions is not None:
    return "search" if "precision" not in point.settings else f"P={point.settings['precision']:g}"
  value = next(iter(v for k, v in point.settings.items() if k not in ("group_size", "width")),
               None)
  return "" if value is None else f"{value:g}"


# Offsets (points) tried for a point's label, nearest first: beside, above and
# below the point, then further out (drawn with a leader line).
_NEAR = ((4, 3), (4, -10), (-4, 3), (-4, -10), (0, 7), (0, -14))
_FAR = tuple((dx * k, dy * k) for k in (2, 3, 4) for dx, dy in
             ((6, 6), (6, -9), (-6, 6), (-6, -9), (0, 9), (0, -12)))


def _overlap(a, b) -> float:
  """The area two (x0, y0, x1, y1) boxes share."""
  return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(ax, labels, avoid=(), fontsize: float = 7) -> list:
  """Annotates each (x, y, text) of `labels` beside its point where the text
  overlaps no label placed before it, no point of `labels` or `avoid`
  ((x, y, radius in points)) and stays inside the axes; a label that fits
  only further out gets a leader line, one that fits nowhere goes where it
  overlaps least. Call after everything that sets the axes' limits is drawn.
  Returns the annotations."""
  fig = ax.figure
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  scale = fig.dpi / 72.0  # pixels a point
  frame = ax.get_window_extent(renderer)
  obstacles = []
  for x, y, radius in [(x, y, 4.0) for x, y, _ in labels] + list(avoid):
    px, py = ax.transData.transform((x, y))
    r = radius * scale
    obstacles.append((px - r, py - r, px + r, py + r))
  placed, out = [], []
  for x, y, text in labels:
    probe = ax.text(0, 0, text, fontsize=fontsize)
    box = probe.get_window_extent(renderer)
    probe.remove()
    w, h = box.width, box.height
    px, py = ax.transData.transform((x, y))
    best = None
    for far, (dx, dy) in [(False, o) for o in _NEAR] + [(True, o) for o in _FAR]:
      x0 = px + dx * scale - (w if dx < 0 else w / 2 if dx == 0 else 0)
      y0 = py + dy * scale
      rect = (x0, y0, x0 + w, y0 + h)
      outside = (rect[0] < frame.x0 or rect[2] > frame.x1 or rect[1] < frame.y0
                 or rect[3] > frame.y1)
      cost = sum(_overlap(rect, o) for o in placed + obstacles) + (1e9 if outside else 0.0)
      if best is None or cost < best[0]:
        best = (cost, rect, far)
      if cost == 0:
        break
    _, rect, far = best
    placed.append(rect)
    # The text's lower-left corner, in points from the data point.
    offset = ((rect[0] - px) / scale, (rect[1] - py) / scale)
    out.append(ax.annotate(
        text, (x, y), xytext=offset, textcoords="offset points", fontsize=fontsize,
        ha="left", va="bottom",
        arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkA": 0,
                    "shrinkB": 3} if far else None))
  return out


def _budget_text(result: SweepResult, search: SearchResult) -> str:
  """The budget as the bound it puts on the metric ("accuracy ≥ 0.9769")."""
  if result.higher_is_better:
    limit, sign = result.original_metric - search.budget, "≥"
  else:
    limit, sign = result.original_metric + search.budget, "≤"
  unit = " dB" if result.metric_name == "psnr" else ""
  return f"budget: {result.metric_name} {sign} {limit:.6g}{unit}"


def plot_pareto(result: SweepResult, path: str, search: SearchResult | None = None) -> str:
  """The metric against the aligned-domain ones ratio: one line per method,
  each point labelled with its setting (P, keep_bits, columns) where no other
  label or point is, the original at 1x, the budget line and the search's
  point (a hollow star: the point it stands for stays visible)."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(8.5, 5))
  methods = []
  for p in result.points:
    if p.precisions is None and p.method not in methods:
      methods.append(p.method)
  labels = []
  for method in methods:
    pts = sorted(((p.ratio["aligned"], p.metric, _setting_text(p)) for p in result.points
                  if p.method == method and p.precisions is None))
    ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=method)
    labels += [(x, y, text) for x, y, text in pts if text]
  ax.scatter([1.0], [result.original_metric], color="black", marker="s", label="original",
             zorder=3)
  avoid = [(1.0, result.original_metric, 5.0)]
  if search is not None:
    kind = "global P" if search.chose_global else "per-kernel search"
    ax.scatter([search.point.ratio["aligned"]], [search.point.metric], marker="*", s=260,
               facecolors="none", edgecolors="crimson", linewidths=1.4, zorder=4,
               label=f"{kind} ({search.method})")
    avoid.append((search.point.ratio["aligned"], search.point.metric, 9.0))
    limit = (result.original_metric - search.budget if result.higher_is_better
             else result.original_metric + search.budget)
    ax.axhline(limit, color="crimson", linestyle=":", linewidth=1,
               label=_budget_text(result, search))
  ax.set_xscale("log")
  ticks = [t for t in (1, 2, 3, 5, 10, 20, 50) if t <= ax.get_xlim()[1]]
  ax.set_xticks(ticks, [f"{t}x" for t in ticks])
  ax.minorticks_off()
  ax.set_xlabel(f"aligned-domain ones ratio ({bits.geometry_text(result.group_size, result.width)})"
                ", original / morphed (log)")
  ax.set_ylabel(result.metric_name)
  ax.set_title(f"{result.metric_name} against bit sparsity "
               f"({'higher' if result.higher_is_better else 'lower'} is better)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  place_labels(ax, labels, avoid)
  return save_figure(fig, path)


def plot_bit_density(weights: dict, path: str) -> str:
  """Layers x significand bit positions (hidden bit first): the fraction of
  weights with a 1 there, as in the paper's bit-density figure."""
  plt = pyplot()
  names = list(weights)
  density = np.array([backends.bit_histogram(w, "significand") / max(1, w.size)
                      for w in weights.values()])
  fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(names) + 1.2)))
  image = ax.imshow(density, aspect="auto", cmap="magma", vmin=0, vmax=1)
  ax.set_yticks(np.arange(len(names)), names, fontsize=8)
  ax.set_xlabel("significand bit (0 = hidden bit)")
  ax.set_title("Bit density per layer")
  fig.colorbar(image, ax=ax, label="ones per weight")
  return save_figure(fig, path)


def plot_columns(before: np.ndarray, after: np.ndarray, path: str, label: str,
                 geometry: str = "") -> str:
  """Ones per aligned column over all kernels, before and after morphing
  (the paper's "arched" profile); `geometry` (e.g. "G=64, width 24") goes in
  the title."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  x = np.arange(len(before))
  ax.bar(x - 0.2, before, 0.4, label="original")
  ax.bar(x + 0.2, after, 0.4, label=label)
  ax.set_xlabel("aligned column (0 = the group's leading bit)")
  ax.set_ylabel("ones")
  ax.set_title("Aligned column profile" + (f" ({geometry})" if geometry else ""))
  ax.legend(fontsize=8)
  return save_figure(fig, path)
