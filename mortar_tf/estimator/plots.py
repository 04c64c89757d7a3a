"""PNG plots of an Estimate: cycles of every engine on the original and the
morphed weights, speedups over the baseline, bit density per aligned column.

matplotlib runs headless (Agg); each file is written to a temp name and
renamed, so a failed plot leaves no partial PNG.
"""

from __future__ import annotations

import os

import numpy as np

from mortar_tf import bits
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
  """Each layer as precision maps name it: its weight's name (the op's name
  where several ops read one weight)."""
  weights = [layer.weight for layer in result.mapped]
  return [f"#{layer.index} {layer.weight}" if layer.weight and weights.count(layer.weight) == 1
          else f"#{layer.index} {layer.name}" for layer in result.mapped]


def _grouped_bars(result: Estimate, series, fig_width: float):
  """(fig, ax): per mapped layer, one bar per (label, value(layer), style) in
  `series`, on a log scale, layers labelled along x."""
  layers = result.mapped
  fig, ax = pyplot().subplots(figsize=(fig_width, 4.8))
  x = np.arange(len(layers))
  step = 0.8 / max(1, len(series))
  for k, (label, value, style) in enumerate(series):
    ax.bar(x + (k - (len(series) - 1) / 2) * step, [value(layer) for layer in layers], step,
           label=label, **style)
  ax.set_yscale("log")
  ax.set_xticks(x, _labels(result), rotation=70, ha="right", fontsize=7)
  return fig, ax


def _engine_groups(result: Estimate) -> list[list[str]]:
  """The engines in order, those with the same cycles on every layer for both
  weights (pragmatic and mortar at one group size) grouped: one bar shows them."""
  groups, seen = [], {}
  for engine in result.engines:
    cycles = tuple((layer.cycles[engine.name]["original"], layer.cycles[engine.name]["morphed"])
                   for layer in result.mapped)
    if cycles in seen:
      seen[cycles].append(engine.name)
    else:
      seen[cycles] = [engine.name]
      groups.append(seen[cycles])
  return groups


def _engine_series(result: Estimate, value):
  """Bars for every engine on both weights, `value(layer, engine, weights)`
  each: one colour an engine, the original weights hatched and pale, the
  morphed solid; engines with the same cycles everywhere share one bar
  labelled with every name ("pragmatic = mortar")."""
  colours = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
  series = []
  for k, names in enumerate(_engine_groups(result)):
    colour = colours[k % len(colours)]
    for weights in ("original", "morphed"):
      style = ({"color": colour, "alpha": 0.35, "hatch": "//", "edgecolor": colour}
               if weights == "original" else {"color": colour})
      series.append((f"{' = '.join(names)} {weights}",
                     lambda layer, n=names[-1], w=weights: value(layer, n, w), style))
  return series


def _totals_text(result: Estimate) -> str:
  """The headline speedups; the iso-area one only where it differs from the
  plain one (over mortar unmorphed it never does: one engine, one area)."""
  head, iso = result.headline(), result.headline_iso_area()
  lines = []
  chosen = result.baseline_headline()
  if not result.baseline_is_headline() and chosen is not None:
    lines.append(f"mortar (morphed) over {result.baseline[0]} ({result.baseline[1]}), the "
                 f"baseline: {chosen:.2f}x")
  for key, text in (("over_stripes", "over stripes (original)"),
                    ("over_unmorphed", "over mortar (original)")):
    if head[key] is not None:
      extra = (f", iso-area {iso[key]:.2f}x"
               if iso[key] is not None and f"{iso[key]:.2f}" != f"{head[key]:.2f}" else "")
      lines.append(f"mortar (morphed) {text}: {head[key]:.2f}x{extra}")
  coverage = result.coverage()
  if lines and not coverage.complete:  # the figures hold only the estimated layers
    lines.append(f"coverage: {coverage.short()}")
  return "\n".join(lines)


def plot_matrix(result: Estimate, path: str) -> str:
  """Per layer, the cycles of every engine on the original (hatched) and the
  morphed (solid) weights, log scale (engines with the same cycles everywhere
  share a bar); the headline speedups in a box."""
  series = _engine_series(result, lambda layer, name, weights: layer.cycles[name][weights])
  fig, ax = _grouped_bars(result, series, max(7, 0.22 * len(result.mapped) * len(series) / 2 + 4))
  ax.set_ylabel("cycles (log)")
  ax.set_title(f"Cycles per layer: each engine on the original and the morphed weights "
               f"({result.method} {_settings_label(result.settings)})", fontsize=10)
  text = _totals_text(result)
  if text:
    ax.text(1.005, 0.0, text.replace(": ", ":\n  "), transform=ax.transAxes, va="bottom",
            ha="left", fontsize=8,
            family="monospace", bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
  return save_figure(fig, path)


def _settings_label(settings) -> str:
  if "precision_map" in settings:
    return "per-kernel map"
  return ", ".join(f"{k}={v}" for k, v in settings.items())


def plot_cycles(result: Estimate, path: str) -> str:
  """The matrix plot (plot_matrix), as cycles.png."""
  return plot_matrix(result, path)


def plot_speedup(result: Estimate, path: str) -> str:
  """Per layer, every cell's speedup over the baseline cell (log scale), the
  headline speedups in the title."""
  series = _engine_series(result,
                          lambda layer, name, weights: result.speedup(layer)[name][weights])
  fig, ax = _grouped_bars(result, series, max(7, 0.22 * len(result.mapped) * len(series) / 2 + 4))
  ax.axhline(1.0, color="black", linewidth=0.8)
  ax.set_ylabel(f"speedup over {result.baseline_text()}")
  ax.set_title(_totals_text(result).replace("\n", "; ") or "Speedup per layer", fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
  return save_figure(fig, path)


def plot_density(result: Estimate, path: str) -> str:
  """Per layer, the fraction of weights with a 1 in each aligned column
  (column 0 = the group's leading bit): the paper's "arched" profile, before
  and (where the mortar engine morphs) after morphing."""
  plt = pyplot()
  layers = result.mapped
  # At the headline engine's G and width (mortar's, else the baseline's).
  engine = next((e.name for e in result.engines if e.model == "mortar"), result.baseline[0])
  kinds = ["original"] + (["morphed"] if any(l.precision is not None for l in layers) else [])
  fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds) + 1,
                                                    max(3, 0.25 * len(layers) + 1.5)),
                           squeeze=False)
  for k, (ax, kind) in enumerate(zip(axes[0], kinds)):
    density = np.array([np.asarray(l.columns[engine][kind], float) / max(1, l.weights)
                        for l in layers])
    image = ax.imshow(density, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(np.arange(len(layers)), _labels(result) if k == 0 else [], fontsize=7)
    ax.set_xlabel("aligned column (0 = most significant)")
    geometry = bits.geometry_text(result.engine(engine).group_size, result.engine(engine).width)
    ax.set_title(f"{kind} weights\n({engine}, {geometry})", fontsize=9)
  fig.suptitle("Bit density per aligned column", fontsize=10)
  fig.colorbar(image, ax=axes[0].tolist(), label="ones per weight")
  return save_figure(fig, path)


FILES = ("cycles.png", "speedup.png", "density.png")  # what write_plots writes


def write_plots(result: Estimate, out_dir: str) -> list[str]:
  """Writes FILES (cycles.png, speedup.png and density.png) into out_dir."""
  if not result.mapped:
    raise ValueError("no estimated layers to plot")
  files.make_dirs(out_dir)
  cycles, speedup, density = (os.path.join(out_dir, name) for name in FILES)
  return [plot_cycles(result, cycles), plot_speedup(result, speedup),
          plot_density(result, density)]
