"""PNG plots of an Estimate: cycles by engine, speedups, bit density per column.

matplotlib runs headless (Agg); each file is written to a temp name and
renamed, so a failed plot leaves no partial PNG.
"""

from __future__ import annotations

import os

import numpy as np

from mortar_tf import files
from mortar_tf.estimator.estimation import Estimate


def pyplot():
  """matplotlib.pyplot on the headless Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_figure(fig, path: str) -> str:
  """Writes `fig` as a PNG atomically and closes it (also on failure)."""
  try:
    with files.replaced(path, ".tmp.png") as tmp:
      fig.savefig(tmp, dpi=120, bbox_inches="tight")
  finally:
    pyplot().close(fig)
  return path


def _labels(result: Estimate):
  return [f"#{layer.index} {layer.name.split('/')[-2] if '/' in layer.name else layer.name}"
          for layer in result.mapped]


def _grouped_bars(result: Estimate, names, value, fig_width: float):
  """(fig, ax): per mapped layer, one bar per engine in `names` of height
  value(layer, name), on a log scale, layers labelled along x."""
  layers = result.mapped
  fig, ax = pyplot().subplots(figsize=(fig_width, 4.5))
  x = np.arange(len(layers))
  step = 0.8 / max(1, len(names))
  for k, name in enumerate(names):
    ax.bar(x + (k - (len(names) - 1) / 2) * step, [value(layer, name) for layer in layers],
           step, label=name)
  ax.set_yscale("log")
  ax.set_xticks(x, _labels(result), rotation=70, ha="right", fontsize=7)
  return fig, ax


def plot_cycles(result: Estimate, path: str) -> str:
  """Per-layer cycles of every engine (grouped bars, log scale)."""
  names = [e.name for e in result.engines]
  fig, ax = _grouped_bars(result, names, lambda layer, name: layer.cycles[name],
                          max(6, 0.5 * len(result.mapped) * len(names) / 3 + 3))
  ax.set_ylabel("cycles")
  ax.set_title("Cycles per layer and engine")
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_speedup(result: Estimate, path: str) -> str:
  """Per-layer speedup of each engine over the baseline, total in the title."""
  names = [e.name for e in result.engines if e.name != result.baseline]
  fig, ax = _grouped_bars(result, names, lambda layer, name: result.speedup(layer)[name],
                          max(6, 0.35 * len(result.mapped) + 3))
  ax.axhline(1.0, color="black", linewidth=0.8)
  ax.set_ylabel(f"speedup over {result.baseline}")
  total = result.speedup()
  ax.set_title("Speedup per layer; total: " +
               ", ".join(f"{n} {total[n]:.2f}x" for n in names))
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_density(result: Estimate, path: str) -> str:
  """Per layer, the fraction of weights with a 1 in each aligned column
  (column 0 = the group's leading bit): the paper's "arched" profile, before
  and (where the mortar engine morphs) after morphing."""
  plt = pyplot()
  layers = result.mapped
  kinds = ["original"] + (["morphed"] if any("morphed" in l.columns for l in layers) else [])
  fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds) + 1,
                                                    max(3, 0.25 * len(layers) + 1.5)),
                           squeeze=False)
  for k, (ax, kind) in enumerate(zip(axes[0], kinds)):
    density = np.array([np.asarray(l.columns.get(kind, l.columns["original"]), float) /
                        max(1, l.weights) for l in layers])
    image = ax.imshow(density, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(np.arange(len(layers)), _labels(result) if k == 0 else [], fontsize=7)
    ax.set_xlabel("aligned column (0 = most significant)")
    ax.set_title(f"bit density, {kind} weights")
  fig.colorbar(image, ax=axes[0].tolist(), label="ones per weight")
  return save_figure(fig, path)


def write_plots(result: Estimate, out_dir: str) -> list[str]:
  """Writes cycles.png, speedup.png and density.png into out_dir."""
  if not result.mapped:
    raise ValueError("no estimated layers to plot")
  files.make_dirs(out_dir)
  return [plot_cycles(result, os.path.join(out_dir, "cycles.png")),
          plot_speedup(result, os.path.join(out_dir, "speedup.png")),
          plot_density(result, os.path.join(out_dir, "density.png"))]
