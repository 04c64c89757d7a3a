"""PNG plots of an exploration: Pareto front, bit density, column profile.

Headless (Agg); each file is written to a temp name and renamed.
"""

from __future__ import annotations


import numpy as np

from mortar_tf import backends
from mortar_tf import bits
from mortar_tf.estimator.plots import pyplot
from mortar_tf.estimator.plots import save_figure
from mortar_tf.explore.search import SearchResult
from mortar_tf.explore.search import SweepResult


def _setting_text(point) -> str:
  if point.precisions is not None:
    return "search" if "precision" not in point.settings else f"P={point.settings['precision']:g}"
  value = next(iter(v for k, v in point.settings.items() if k not in ("group_size", "width")),
               None)
  return "" if value is None else f"{value:g}"


def plot_pareto(result: SweepResult, path: str, search: SearchResult | None = None) -> str:
  """The metric against the aligned-domain ones ratio: one line per method,
  each point labelled with its setting (P, keep_bits, columns), the original
  at 1x, the budget line and the search's point in the legend."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 5))
  methods = []
  for p in result.points:
    if p.precisions is None and p.method not in methods:
      methods.append(p.method)
  for method in methods:
    pts = sorted(((p.ratio["aligned"], p.metric, _setting_text(p)) for p in result.points
                  if p.method == method and p.precisions is None))
    ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=method)
    for x, y, text in pts:
      ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
  ax.scatter([1.0], [result.original_metric], color="black", marker="s", label="original",
             zorder=3)
  if search is not None:
    kind = "global P" if search.chose_global else "per-kernel search"
    ax.scatter([search.point.ratio["aligned"]], [search.point.metric], marker="*", s=260,
               color="crimson", zorder=4, label=f"{kind} ({search.method})")
    limit = (result.original_metric - search.budget if result.higher_is_better
             else result.original_metric + search.budget)
    ax.axhline(limit, color="crimson", linestyle=":", linewidth=1,
               label=f"budget: {result.metric_name} drop {search.budget:g}")
  ax.set_xscale("log")
  ax.set_xlabel(f"aligned-domain ones ratio ({bits.geometry_text(result.group_size, result.width)})"
                ", original / morphed (log)")
  ax.set_ylabel(result.metric_name)
  ax.set_title(f"{result.metric_name} against bit sparsity "
               f"({'higher' if result.higher_is_better else 'lower'} is better)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
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
