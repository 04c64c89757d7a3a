"""The results page: evaluation records as markdown tables and figures.

`write_page(records, page_path, figures_dir)` writes the page and three PNGs
(bit density per layer and word bit, the aligned column profile before and
after morphing, and the metric against sparsity per model), all or nothing.
Every number on the page is read from the records (mortar_tf.explore.
evaluation); the only constants are the paper's published figures, which are
labelled as such.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Mapping, Sequence

import numpy as np

from mortar_tf import files
from mortar_tf.estimator import engines as engines_lib

# How the page names the geometry its aligned figures and estimates use.
_GEOMETRY = f"G = {engines_lib.DEFAULT_GROUP_SIZE}, width {engines_lib.DEFAULT_WIDTH}"

# The paper's published figures (on its own ImageNet models; none of ours is
# among them). Word-domain ratios at P = 0.1 as SPEC 1 reads its table; the
# speedups are over the paper's baseline, which SPEC 4 reads as stripes.
PAPER_WORD_RATIO = (1.28, 2.51)
PAPER_SPEEDUPS = {"ResNet50": 4.467, "SqueezeNet1_1": 6.032}
BITX_AREA = engines_lib.BITX_FIGURES["area_mm2"]


def _x(value) -> str:
  return "-" if value is None else ("inf" if math.isinf(value) else f"{value:.2f}x")


def _metric(value, name: str) -> str:
  if value is None:
    return "-"
  if name == "psnr":
    return f"{value:.1f} dB"
  if name == "accuracy":
    return f"{100 * value:.2f}%"
  if name == "mse":
    return f"{value:.3g}"
  return f"{value:.3f}"


def _with_drop(value, drop, name: str) -> str:
  """A metric with its change; PSNR alone (its drop from the 300 dB cap of
  identical outputs says nothing more)."""
  if name == "psnr":
    return _metric(value, name)
  return f"{_metric(value, name)} ({_drop(drop, name)})"


def _drop(value, name: str) -> str:
  if value is None:
    return "-"
  if name == "psnr":
    return f"{-value:+.1f} dB"
  if name == "accuracy":
    return f"{-100 * value:+.2f} pt"
  if name == "mse":
    return f"{-value:+.3g}"
  return f"{-value:+.3f}"


def _budget(record) -> str:
  name, budget = record["metric"]["name"], record["metric"]["budget"]
  if name == "psnr":
    return f"PSNR >= {300 - budget:g} dB"
  if name == "accuracy":
    return f"{100 * budget:g} pt of accuracy"
  return f"{name} drop {budget:g}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return out + [""]


def _at(record, method: str, precision: float):
  return next((p for p in record["design_space"][method]
               if p["settings"]["precision"] == precision), None)


def _within(record, point) -> bool:
  return point["drop"] <= record["metric"]["budget"] + 1e-12


def _span(values, fmt="{:.2f}x") -> str:
  """'a to b', or one value when they are the same at the shown precision."""
  low, high = fmt.format(min(values)), fmt.format(max(values))
  return low if low == high else f"{low} to {high}"


def _minutes(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


# --------------------------------------------------------------------------
# BitX hardware model (the page's reading, stated on the page)


def bitx_cycles(record, columns: int) -> int:
  """Cycles of a BitX-like engine that spends one cycle per kept column of a
  group: SPEC 4's stripes rule over `columns` columns instead of `width`,
  i.e. stripes' cycles on the original weights x columns / width (exact:
  one PE, so no rounding per layer)."""
  est = record["estimates"]["paper"]
  stripes = est["engines"]["stripes"]
  if stripes["num_pes"] != 1:
    raise ValueError("the BitX model needs one PE per engine (exact cycle scaling)")
  return est["cycles"]["stripes"]["original"] * columns // stripes["width"]


# --------------------------------------------------------------------------
# Figures


def _pyplot():
  from mortar_tf.estimator.plots import pyplot  # pylint: disable=import-outside-toplevel
  return pyplot()


def _save(fig, path):
  from mortar_tf.estimator.plots import save_figure  # pylint: disable=import-outside-toplevel
  return save_figure(fig, path)


def _grid(n: int, width: float, height: float):
  plt = _pyplot()
  cols = min(3, n)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:n])


def _short_names(names: Sequence[str], limit: int = 30) -> list[str]:
  """Layer names without the prefix they all share, at most `limit` characters
  (the end kept)."""
  prefix = os.path.commonprefix(list(names)) if len(names) > 1 else ""
  prefix = prefix[:prefix.rfind("/") + 1]
  out = [n[len(prefix):] or n for n in names]
  return [n if len(n) <= limit else "..." + n[-(limit - 3):] for n in out]


def plot_bit_density(records: Sequence[dict], path: str) -> str:
  """Per model, layers x the 32 bits of the IEEE word: the fraction of the
  layer's weights with a 1 there, before morphing (the paper's motivation)."""
  fig, axes = _grid(len(records), 5.2, 3.6)
  fig.subplots_adjust(wspace=0.6, hspace=0.35)
  image = None
  for ax, r in zip(axes, records):
    density = np.array([np.asarray(layer["word_bits"]) / max(1, layer["size"])
                        for layer in r["layers"]])
    image = ax.imshow(density, aspect="auto", cmap="magma", vmin=0, vmax=1,
                      interpolation="nearest")
    names = _short_names([layer["name"] for layer in r["layers"]])
    step = max(1, -(-len(names) // 32))
    ax.set_yticks(np.arange(0, len(names), step), names[::step],
                  fontsize=6 if len(names) <= 16 else 4.5)
    ax.set_xticks([0, 4.5, 20], ["s", "exponent", "mantissa"], fontsize=7)
    for edge in (0.5, 8.5):
      ax.axvline(edge, color="white", linewidth=0.6)
    ax.set_title(r["entry"]["title"] or r["name"], fontsize=8)
  fig.suptitle("Bit density per layer and word bit before morphing (ones / weights)", fontsize=10)
  fig.colorbar(image, ax=axes, shrink=0.8, label="ones per weight")
  return _save(fig, path)


def plot_columns(records: Sequence[dict], path: str, reference: float) -> str:
  """Per model, ones per weight in each aligned column (the engines' G and width)
  before and after morphing at the reference P: the "arched" profile."""
  fig, axes = _grid(len(records), 4.6, 3.0)
  series = (("paper", f"paper P={reference:g}", "#1f77b4", "o"),
            ("fewest_ones", f"fewest_ones P={reference:g}", "#2ca02c", "s"),
            ("search", "searched map", "#d62728", "^"))
  for ax, r in zip(axes, records):
    weights = max(1, r["model"]["weights"])
    x = np.arange(len(r["columns"]["original"]))
    ax.bar(x, np.asarray(r["columns"]["original"]) / weights, 0.8, color="#bbbbbb",
           label="original")
    for key, label, color, marker in series:
      if key in r["columns"] and (key != "search" or _morphs(r)):
        ax.plot(x, np.asarray(r["columns"][key]) / weights, color=color, marker=marker,
                markersize=3, linewidth=1.2, label=label)
    ax.set_title(r["entry"]["title"] or r["name"], fontsize=8)
    ax.set_xlabel("aligned column (0 = the group's leading bit)", fontsize=7)
    ax.set_ylabel("ones per weight", fontsize=7)
    ax.tick_params(labelsize=7)
  axes[0].legend(fontsize=6)
  fig.suptitle("Aligned column profile before and after morphing", fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def plot_pareto(records: Sequence[dict], path: str) -> str:
  """Per model, the metric against the aligned ones ratio: paper and
  fewest_ones over the P grid, BitX, the search and the best global P."""
  fig, axes = _grid(len(records), 4.6, 3.4)
  for ax, r in zip(axes, records):
    name = r["metric"]["name"]
    for method, color in (("paper", "#1f77b4"), ("fewest_ones", "#2ca02c")):
      pts = sorted((p["ratio"]["aligned"] or math.inf, p["metric"])
                   for p in r["design_space"][method])
      ax.plot([a for a, _ in pts], [m for _, m in pts], marker="o", markersize=3, color=color,
              label=method)
    if r.get("bitx"):
      ax.scatter([p["ratio"]["aligned"] for p in r["bitx"]["points"]],
                 [p["metric"] for p in r["bitx"]["points"]], marker="^", color="#9467bd",
                 label="bitx", zorder=3)
    if name != "psnr":  # the original's 300 dB (identical outputs) would flatten the rest
      ax.scatter([1.0], [r["metric"]["original"]], marker="s", color="black", label="original",
                 zorder=3)
    search = r.get("search")
    if search and _morphs(r):
      ax.scatter([search["point"]["ratio"]["aligned"]], [search["point"]["metric"]], marker="*",
                 s=150, color="crimson", zorder=4,
                 label="global P search" if search["chose_global"] else "per-kernel search")
    if search and search["best_global"]:
      g = search["best_global"]
      ax.scatter([g["ratio"]["aligned"]], [g["metric"]], marker="D", s=30, color="orange",
                 zorder=4, label="best global P")
    if search:
      limit = r["metric"]["original"] - (r["metric"]["budget"] if r["metric"]["higher_is_better"]
                                         else -r["metric"]["budget"])
      ax.axhline(limit, color="crimson", linestyle=":", linewidth=1, label="budget")
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 3, 5, 10, 20) if t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks, [f"{t}x" for t in ticks])
    ax.minorticks_off()
    ax.set_title(r["entry"]["title"] or r["name"], fontsize=8)
    ax.set_xlabel("aligned ones ratio, original / morphed (log)", fontsize=7)
    ax.set_ylabel("PSNR against the original (dB)" if name == "psnr" else name, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  handles = {}
  for ax in axes:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, handle)
  fig.suptitle("Metric against bit sparsity (dotted: the search's budget)", fontsize=10)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles),
             fontsize=8, frameon=False)
  return _save(fig, path)


# --------------------------------------------------------------------------
# The page


def _coverage(record) -> dict:
  """The coverage of a record's estimates (the same graph for every setting)."""
  return record["estimates"]["paper"]["coverage"]


def _coverage_cell(record) -> str:
  coverage = _coverage(record)
  return "100%" if coverage["complete"] else f"**{coverage['short']}**"


def coverage_warnings(records) -> list[str]:
  """One line per model whose estimates miss part of its weight MACs."""
  lines = []
  for r in records:
    coverage = _coverage(r)
    if not coverage["complete"]:
      missing = "; ".join(f"{m['layer']}: {m['reason']}" for m in coverage["missing"][:3])
      more = len(coverage["missing"]) - 3
      lines.append(f"{r['name']}: its estimated speedups cover {coverage['summary']}; not "
                   f"estimated: {missing}" + (f"; and {more} more" if more > 0 else ""))
  return lines


def _morphs(record) -> bool:
  """Whether the record's search morphs any kernel."""
  s = record.get("search")
  return bool(s and s["precisions"])


def _search_outcomes(records) -> tuple[list, list, list]:
  """The searched records split by what the search returned: a per-kernel
  map, the best global P (no map beat it), nothing within the budget."""
  searched = [r for r in records if r.get("search")]
  return ([r for r in searched if _morphs(r) and not r["search"]["chose_global"]],
          [r for r in searched if _morphs(r) and r["search"]["chose_global"]],
          [r for r in searched if not _morphs(r)])


def _names(records) -> str:
  return ", ".join(r["name"] for r in records)


def _partial_estimates(records) -> str:
  """' The estimates of A, B cover only part of their weight MACs (...).', or ''."""
  partial = [f"{r['name']} ({_coverage_cell(r).strip('*')})" for r in records
             if r.get("estimates") and not _coverage(r)["complete"]]
  if not partial:
    return ""
  return (f" The estimates of {', '.join(partial)} cover only part of the model: their "
          "speedups are over the estimated layers (the Speedups table's coverage column).")


def _within_budget_speedups(records) -> str:
  """' Within each model's budget the search's result (...) gives a to b over
  stripes.', saying which results are per-kernel maps and which global P."""
  per_kernel, global_p, _ = _search_outcomes(records)
  values = [r["search"]["point"]["speedup"] for r in per_kernel + global_p
            if r["search"]["point"]["speedup"]]
  if not values:
    return ""
  kinds = "; ".join(part for part in (
      f"a per-kernel map on {_names(per_kernel)}" if per_kernel else "",
      f"one P for the whole model on {_names(global_p)}" if global_p else "") if part)
  ceiling = (" (24.00x is the estimate's ceiling: one 1 bit per lane)"
             if max(values) >= 24 - 5e-3 else "")
  return (f" Within each model's budget the search's result ({kinds}) gives "
          f"{_span(values)} over `stripes`{ceiling}.")


def _global_p_check(records) -> str:
  """Whether the bisection's best global P is the largest P within budget
  that the design-space table (every P evaluated) shows, on the P values both
  grids share: the bisection assumes the drop grows with P."""
  found, agree = [], []
  for r in records:
    s = r.get("search")
    if not s:
      continue
    method = r["settings"]["search_method"]
    chosen = s["best_global"]["settings"]["precision"] if s["best_global"] else 0.0
    shared = set(r["settings"]["search_precisions"])
    above = [p["settings"]["precision"] for p in r["design_space"].get(method, [])
             if p["settings"]["precision"] in shared and p["settings"]["precision"] > chosen
             and _within(r, p)]
    if above:
      found.append(f"{r['name']} (P = {max(above):g} within the budget, the bisection's "
                   f"{'P = ' + format(chosen, 'g') if chosen else 'none'})")
    else:
      agree.append(r["name"])
  if not found and not agree:
    return ""
  if not found:
    return (" The design-space table, which evaluates every P, agrees on every model: no "
            "larger P of both grids is within the budget.")
  return (" The bisection assumes the drop grows with P; the design-space table, which "
          f"evaluates every P, shows a larger P within the budget on {'; '.join(found)}"
          + (f" (it agrees on {', '.join(agree)})" if agree else "") + ".")


def _no_worse(record, a: float, b: float) -> bool:
  """Whether score `a` is at least as good as `b` for the record's metric."""
  return a >= b if record["metric"]["higher_is_better"] else a <= b


def _summary(records, reference) -> list[str]:
  """Facts the paper's claims can be checked against, from the records."""
  lines = []
  word = [(r, _at(r, "paper", reference)) for r in records]
  word = [(r, p) for r, p in word if p is not None]
  if word:
    ratios = [p["ratio"]["word"] for _, p in word]
    inside = [r["name"] for r, p in word
              if PAPER_WORD_RATIO[0] <= p["ratio"]["word"] <= PAPER_WORD_RATIO[1]]
    lines.append(f"- **Sparsity.** `paper` at P = {reference:g} cuts the word-domain ones "
                 f"{_span(ratios)} here (ones before / after); the paper reports "
                 f"{PAPER_WORD_RATIO[0]}x to {PAPER_WORD_RATIO[1]}x on its models "
                 f"({len(inside)} of {len(word)} of ours fall in that range).")
    kept = [r["name"] for r, p in word if _within(r, p)]
    lost = [f"{r['name']} at {_with_drop(p['metric'], p['drop'], r['metric']['name'])}"
            for r, p in word if not _within(r, p)]
    lines.append(f"- **Accuracy at P = {reference:g}.** {len(kept)} of {len(word)} models stay "
                 f"within their budget ({', '.join(kept) or 'none'})" +
                 (f"; {', '.join(lost)} do not" if lost else "") + ".")
  heads = [(r, r["estimates"]["paper"]["headline"]) for r in records if r.get("estimates")]
  if heads:
    over = [h["over_stripes"] for _, h in heads if h["over_stripes"]]
    alone = [h["over_unmorphed"] for _, h in heads if h["over_unmorphed"]]
    lines.append(f"- **Speedup.** Our reading of the accelerator (`mortar` on the weights "
                 f"morphed at P = {reference:g}) runs {_span(over)} "
                 f"faster than `stripes` on the original weights (the paper: "
                 f"{', '.join(f'{k} {v}x' for k, v in PAPER_SPEEDUPS.items())}); morphing "
                 f"alone buys {_span(alone)} on the same hardware." + _within_budget_speedups(
                     records) + _partial_estimates(records))
  per_kernel, global_p, nothing = _search_outcomes(records)
  gains, faster = [], []
  for r in per_kernel:
    s, g = r["search"], r["search"]["best_global"]
    if g and g["ratio"]["aligned"]:
      gains.append(s["point"]["ratio"]["aligned"] / g["ratio"]["aligned"])
      if s["point"]["speedup"] and g["speedup"]:
        faster.append(s["point"]["speedup"] / g["speedup"])
  if per_kernel or global_p or nothing:
    searched = len(per_kernel) + len(global_p) + len(nothing)
    parts = []
    if gains:
      parts.append(f"On {len(per_kernel)} of {searched} models ({_names(per_kernel)}) the search "
                   "found a per-kernel map within the budget that beats the best single P of "
                   f"the same grid: its aligned ratio is {_span(gains)} that P's" +
                   (f", its estimated speedup {_span(faster)}" if faster else ""))
    else:
      parts.append(f"On none of {searched} models did a per-kernel map beat the best single P")
    if global_p:
      parts.append(f"on {_names(global_p)} none did, and the search returned that P")
    if nothing:
      parts.append(f"on {_names(nothing)} nothing could be morphed within the budget")
    lines.append("- **Per-layer P** (beyond the paper, which uses one P). " + "; ".join(parts) +
                 " (scored on the samples it chose on: optimistic, see below).")
  bitx = []
  for r in records:
    if r.get("bitx") and r["bitx"]["points"]:
      mortar = _at(r, "paper", reference)
      b = r["bitx"]["points"][0]
      bitx.append((r, mortar, b))
  if bitx:
    better = [r["name"] for r, m, b in bitx if _no_worse(r, m["metric"], b["metric"])]
    pairs = ", ".join(f"{r['name']} {_metric(m['metric'], r['metric']['name'])} against "
                      f"{_metric(b['metric'], r['metric']['name'])}" for r, m, b in bitx)
    lines.append(f"- **Against BitX** at the column count that is at least as sparse as Mortar "
                 f"(P = {reference:g}; BitX slightly sparser by construction): Mortar scores as "
                 f"well or better on {len(better)} of {len(bitx)} models ({pairs}).")
    few = [(r, _at(r, "fewest_ones", reference), b) for r, _, b in bitx]
    sparser = [r["name"] for r, f, b in few if f["ratio"]["aligned"] >= b["ratio"]["aligned"]]
    both = [r["name"] for r, f, b in few if f["ratio"]["aligned"] >= b["ratio"]["aligned"] and
            _no_worse(r, f["metric"], b["metric"])]
    lines.append(f"- **`fewest_ones`** (beyond the paper) at P = {reference:g} is sparser than that "
                 f"BitX point on {len(sparser)} of {len(few)} models and, at the same time, scores "
                 f"as well or better on {len(both)} ({', '.join(both) or 'none'}).")
  return lines


def _zero_tails(records) -> str:
  """' NAME's weights have no 1 in their last K mantissa bits.' for models
  stored with fewer mantissa bits than float32 has (from the records)."""
  found = []
  for r in records:
    ones = np.sum([layer["word_bits"] for layer in r["layers"]], axis=0)
    k = 0
    while k < 23 and ones[31 - k] == 0:
      k += 1
    if k:
      found.append(f"{r['name']}'s weights have no 1 in their last {k} mantissa bits")
  return (" " + "; ".join(found) + " (stored at lower precision; morphing starts from fewer "
          "ones there).") if found else ""


def _models_table(records) -> list[str]:
  rows = []
  for r in records:
    e, m = r["entry"], r["model"]
    rows.append([f"**{r['name']}**", e["title"], e["weights"], e["data_source"],
                 f"{m['samples']}", f"{r['metric']['name']} = "
                 f"{_metric(r['metric']['original'], r['metric']['name'])}",
                 _budget(r), f"{m['kernels']} / {m['weights']:,}",
                 _minutes(r["seconds"]["total"])])
  return _table(["model", "what", "weights from", "data", "samples", "metric (original)",
                 "search budget", "kernels / weights", "time"], rows)


def _design_space(r) -> list[str]:
  name = r["metric"]["name"]
  rows = []
  for p in r["settings"]["precisions"]:
    row = [f"{p:g}"]
    for method in ("paper", "fewest_ones"):
      pt = _at(r, method, p)
      mark = "" if _within(r, pt) else " ✗"
      row += [f"{_metric(pt['metric'], name)}{mark}", _x(pt["ratio"]["word"]),
              _x(pt["ratio"]["aligned"]), _x(pt["speedup"])]
    rows.append(row)
  return _table(["P", "paper: " + name, "word x", "aligned x", "est. x stripes",
                 "fewest_ones: " + name, "word x", "aligned x", "est. x stripes"], rows)


def _at_reference(records, reference) -> list[str]:
  rows = [["paper (its ImageNet models)", "-", "accuracy kept (their claim)",
           f"{PAPER_WORD_RATIO[0]}x..{PAPER_WORD_RATIO[1]}x", "-", "-", "-", "-", "-"]]
  for r in records:
    name = r["metric"]["name"]
    cells = [f"**{r['name']}**", _metric(r["metric"]["original"], name)]
    for method in ("paper", "fewest_ones"):
      pt = _at(r, method, reference)
      cells += [_with_drop(pt['metric'], pt['drop'], name),
                _x(pt["ratio"]["word"]), _x(pt["ratio"]["aligned"])]
    if r.get("bitx") and r["bitx"]["points"]:
      b = r["bitx"]["points"][0]
      cells.append(f"{b['settings']['columns']} columns: "
                   f"{_with_drop(b['metric'], b['drop'], name)}, aligned "
                   f"{_x(b['ratio']['aligned'])}")
    else:
      cells.append("-")
    rows.append(cells)
  return _table(["model", "original", f"paper P={reference:g}", "word x", "aligned x",
                 f"fewest_ones P={reference:g}", "word x", "aligned x",
                 "BitX at Mortar's aligned sparsity"], rows)


def _bitx_table(records, reference) -> list[str]:
  rows = []
  for r in records:
    if not r.get("bitx"):
      continue
    name = r["metric"]["name"]
    mortar = _at(r, "paper", reference)
    est = r["estimates"]["paper"]
    mortar_cycles = est["cycles"]["mortar"]["morphed"]
    mortar_area = est["engines"]["mortar"]["area_mm2"]
    for b in r["bitx"]["points"]:
      c = b["settings"]["columns"]
      hw = bitx_cycles(r, c) / max(1, mortar_cycles)
      rows.append([f"**{r['name']}**", f"{_x(mortar['ratio']['aligned'])}, "
                   f"{_metric(mortar['metric'], name)}", f"{c}", _x(b["ratio"]["aligned"]),
                   _with_drop(b['metric'], b['drop'], name),
                   _x(b["speedup"]), _x(hw),
                   _x(hw * BITX_AREA / mortar_area) if mortar_area else "-"])
  return _table(["model", f"Mortar (paper P={reference:g}): aligned x, metric", "BitX columns",
                 "BitX aligned x", "BitX metric", "mortar engine on BitX weights, x stripes",
                 "Mortar over BitX hardware", "same, iso-area"], rows)


def _search_table(records) -> list[str]:
  rows = []
  for r in records:
    s = r.get("search")
    if not s:
      continue
    name = r["metric"]["name"]
    pt, g = s["point"], s["best_global"]
    kind = ("nothing within budget" if not _morphs(r) else
            "global P" if s["chose_global"] else "per kernel")
    morphed = len(s["precisions"]) if not s["chose_global"] else r["model"]["kernels"]
    gain = (pt["ratio"]["aligned"] / g["ratio"]["aligned"]
            if g and g["ratio"]["aligned"] and pt["ratio"]["aligned"] else None)
    rows.append([f"**{r['name']}**", _budget(r), kind,
                 _with_drop(pt['metric'], pt['drop'], name),
                 _x(pt["ratio"]["aligned"]), _x(pt["speedup"]), _x(pt["speedup_unmorphed"]),
                 f"{morphed} / {r['model']['kernels']}",
                 (f"P={g['settings']['precision']:g}: {_metric(g['metric'], name)}, "
                  f"{_x(g['ratio']['aligned'])}, {_x(g['speedup'])}") if g else "none in budget",
                 _x(gain), f"{s['evaluations']}", _minutes(r["seconds"]["search"])])
  return _table(["model", "budget", "result", "metric", "aligned x", "est. x stripes",
                 "est. x unmorphed", "kernels morphed", "best global P: metric, aligned x, "
                 "est. x stripes", "search / global (aligned)", "full evaluations", "time"], rows)


def _speedup_table(records, reference) -> list[str]:
  rows = [[f"paper: {', '.join(PAPER_SPEEDUPS)}",
           " / ".join(f"{v}x" for v in PAPER_SPEEDUPS.values()),
           "-", "-", "-", "-", "-", "-", "-"]]
  for r in records:
    est = r["estimates"]
    cells = [f"**{r['name']}**"]
    for method in ("paper", "fewest_ones"):
      h, iso = est[method]["headline"], est[method]["headline_iso_area"]
      cells += [_x(h["over_stripes"]), f"{_x(h['over_unmorphed'])} ({_x(iso['over_unmorphed'])})"]
    cyc = est["paper"]["cycles"]
    cells.append(_x(cyc["bitlet"]["original"] / max(1, cyc["bitlet"]["morphed"])))
    s = r.get("search")
    cells.append(f"{_x(s['point']['speedup'])} / {_x(s['point']['speedup_unmorphed'])}"
                 if s else "-")
    cells.append(_x(cyc["stripes"]["original"] / max(1, cyc["mortar"]["original"])))
    cells.append(_coverage_cell(r))
    rows.append(cells)
  return _table(["model", f"paper P={reference:g}: mortar x stripes",
                 "mortar x mortar unmorphed (iso-area)", f"fewest_ones P={reference:g}: "
                 "x stripes", "x unmorphed (iso-area)", "bitlet morphed x bitlet original",
                 "searched map: x stripes / x unmorphed", "mortar x stripes, nothing morphed",
                 "coverage (weight MACs estimated)"], rows)


def _timing(records) -> list[str]:
  rows = []
  parts = ("load", "design_space", "bitx", "estimates", "search")
  for r in records:
    sec = r["seconds"]
    rows.append([r["name"]] + [f"{sec[p]:.1f} s" if p in sec else "-" for p in parts] +
                [f"{sec['total']:.1f} s"])
  total = sum(r["seconds"]["total"] for r in records)
  rows.append(["**all**"] + [f"{sum(r['seconds'].get(p, 0) for r in records):.1f} s"
                             for p in parts] + [f"**{total:.1f} s** ({_minutes(total)})"])
  return _table(["model", "load", "design space", "BitX", "estimates", "search",
                 "total (with the figures' data)"], rows)


def page(records: Sequence[dict], figures: Mapping[str, str], failed: Mapping[str, str],
         command: str, page_dir: str, work_dir: str = "out/results", intro: str = "") -> str:
  """The markdown of the results page."""
  reference = records[0]["settings"]["reference"]
  total = sum(r["seconds"]["total"] for r in records)
  machine = records[0]["machine"]
  rel = {k: os.path.relpath(v, page_dir) for k, v in figures.items()}
  small = [r for r in records if r["model"]["samples"] < 50]
  lines = ["# Mortar's evaluation, reproduced on real models", "",
           f"Generated by `{command}` ({datetime.date.today().isoformat()}). Every number on "
           f"this page comes from that run's records (`{work_dir}/NAME.json`); the only others "
           "are the paper's published figures, marked \"paper\". The run took "
           f"**{_minutes(total)}** of compute on {machine['cpus']} CPU cores ({machine['isa']} "
           "kernels), not counting the setup and the models' export; it is resumable: a model "
           "whose record exists with the same settings is kept (`--redo=NAME` measures it "
           "again).", ""]
  if failed:
    lines += ["**Not evaluated:** " + "; ".join(f"{k}: {v}" for k, v in failed.items()), ""]
  lines += ["## What holds of the paper's claims", ""] + _summary(records, reference) + [""]
  labelled = [r["name"] for r in records if r["metric"]["name"] == "accuracy"]
  lines += ["## Models and data", ""] + ([intro, ""] if intro else []) + [
            (f"Scored on labels (accuracy): {', '.join(labelled)}. " if labelled else "") +
            "The other metrics compare the morphed model with the original on the same inputs: "
            "**agreement** is the share of inputs whose top-1 class is unchanged, **psnr** the "
            "peak signal-to-noise ratio of the outputs against the original's (300 dB means "
            "identical), **mse** their mean squared difference. The search's budget is stated "
            "per model.", ""]
  lines += _models_table(records)
  lines += ["## Design space (the paper's DSE table)", "",
            "The metric, the ones ratio (original / morphed) in the word and aligned domains "
            f"({_GEOMETRY}, the engines' geometry) and the estimated speedup of the `mortar` "
            "engine on the morphed weights over `stripes` on the original weights, at each P. "
            "✗ marks a drop beyond the model's search budget. 24.00x is the ceiling of that "
            "estimate: every lane of every group keeps at most one 1 bit, so `mortar` spends "
            "one cycle a group where `stripes` spends 24; 12.00x means at most two 1 bits a "
            "lane, and so on (the cycles of a group are its busiest lane's ones).", ""]
  for r in records:
    lines += [f"### {r['name']}: {r['entry']['title']}", ""] + _design_space(r)
  lines += [f"## Accuracy and sparsity at P = {reference:g}", "",
            "The paper reads its sparsity in what SPEC 1 takes to be the word domain (all 32 bits); "
            "the aligned domain is what a bit-serial engine pays for. BitX keeps the first "
            "`columns` columns of each exponent-matched group; the column count shown is the "
            "largest that is at least as sparse (aligned) as `paper` at this P.", ""]
  lines += _at_reference(records, reference)
  lines += ["## BitX at Mortar's sparsity", "",
            "Both column counts around Mortar's aligned ratio. *Mortar over BitX hardware* is "
            "our model, not the BitX paper's RTL: a BitX engine spends one cycle per kept column "
            f"of a group (SPEC 4's stripes rule over `columns` columns), with BitX's published "
            f"{BITX_AREA} mm² against Mortar's 0.031 mm² for the iso-area figure.", ""]
  lines += _bitx_table(records, reference)
  lines += ["## Per-layer search against the best global P", "",
            "`search_precisions` (`fewest_ones`, one P per kernel from "
            f"{', '.join(f'{p:g}' for p in records[0]['settings']['search_precisions'])}) "
            "within the model's budget, scored on all samples; the best global P is one P "
            "of that grid for every kernel, found by bisection over the grid (one full "
            "evaluation a step)." + _global_p_check(records), ""]
  lines += _search_table(records)
  lines += ["## Speedups (SPEC 4)", "",
            "Cycle totals of the estimator's engines over every layer the graph reader maps "
            f"(weight-serial models, {_GEOMETRY}; see the README's \"Reading the estimate\"); "
            "the coverage column says what share of the model's weight MACs those layers hold "
            "(the README's \"Coverage\"). "
            "Iso-area figures need an area for both engines: only `mortar` has one among the "
            "default engines, so the iso-area speedup over `mortar` unmorphed equals the "
            "plain one and there is none over `stripes`.", ""]
  lines += _speedup_table(records, reference)
  lines += ["## Figures", "",
            "Bit density per layer and bit of the IEEE word before morphing (the paper's "
            "motivation; columns: the sign, 8 exponent bits, 23 mantissa bits)." +
            _zero_tails(records), "", f"![bit density]({rel['bit_density']})", "",
            "The aligned column profile before and after morphing (the paper's \"arched\" "
            "profile: ones move into the leading columns of each group):", "",
            f"![aligned columns]({rel['columns']})", "",
            "The metric against aligned sparsity per model:", "", f"![pareto]({rel['pareto']})",
            ""]
  lines += ["## What these numbers cannot say", "",
            "- The paper's own models (ImageNet CNNs) cannot be had offline here, so no row of "
            "its tables is reproduced model for model; its figures are shown beside ours as "
            "published.",
            "- Agreement and PSNR measure how far the morphed model moves from the original, "
            "which is stricter than task accuracy (a changed output can still be right) but not "
            "the same thing." + (" Small data sets (" + ", ".join(
                f"{r['name']}: {r['model']['samples']}" for r in small) + " inputs) make those "
                "scores coarse." if small else ""),
            "- The search chooses and scores its map on the same samples (no held-out set), so "
            "its results sit at the edge of the budget and are optimistic for unseen inputs.",
            "- The speedups are the estimator's weight-side cycle counts (SPEC 4), not the "
            "paper's RTL; activations are not serialised, memory and exponent matching are not "
            "modelled. The BitX hardware figure is our model of it (above).", ""]
  lines += ["## Time", "", "Wall time per part on this machine (the design space includes one "
            "estimator run per point).", ""] + _timing(records)
  return "\n".join(lines)


FIGURES = ("bit_density.png", "columns.png", "pareto.png")  # what write_page puts in figures_dir


SUMMARY_HEADING = "## What holds of the paper's claims"
README_BEGIN, README_END = "<!-- results-summary: begin -->", "<!-- results-summary: end -->"


def summary_of(page_text: str) -> list[str]:
  """The lines of the page's "What holds" section (its bullets)."""
  lines = page_text.splitlines()
  start = lines.index(SUMMARY_HEADING) + 1
  end = next(i for i in range(start, len(lines)) if lines[i].startswith("## "))
  return [line for line in lines[start:end] if line.strip()]


def with_summary(readme_text: str, summary: Sequence[str]) -> str:
  """`readme_text` with the lines between its README_BEGIN and README_END
  markers replaced by `summary`.

  Raises:
    ValueError: the markers are missing or out of order.
  """
  begin, end = readme_text.find(README_BEGIN), readme_text.find(README_END)
  if begin < 0 or end < begin:
    raise ValueError(f"the README has no {README_BEGIN} ... {README_END} block to fill")
  head = readme_text[:begin + len(README_BEGIN)]
  return head + "\n" + "\n".join(summary) + "\n" + readme_text[end:]


def write_page(records: Sequence[dict], page_path: str, figures_dir: str, *,
               failed: Mapping[str, str] | None = None, command: str = "",
               work_dir: str = "out/results", intro: str = "",
               readme: str | None = None) -> list[str]:
  """Writes the page and its figures, all or none; returns the paths.

  With `readme`, the page's "What holds" bullets also replace the block
  between that file's README_BEGIN and README_END markers (written with the
  page, or not at all).

  Raises:
    ValueError: no records; records made with different settings; a
      `readme` without the markers.
    files.OutputError: a path that cannot be written.
  """
  if not records:
    raise ValueError("no model has a record: nothing to put on the page")
  settings = {str(r["settings"]) for r in records}
  if len(settings) > 1:
    raise ValueError("the records were made with different settings; redo them with one")
  page_dir = os.path.dirname(os.path.abspath(page_path))
  with files.output_set():
    files.make_dirs(page_dir)
    files.make_dirs(figures_dir)
    bit_density, columns, pareto = (os.path.join(figures_dir, name) for name in FIGURES)
    figures = {
        "bit_density": plot_bit_density(records, bit_density),
        "columns": plot_columns(records, columns, records[0]["settings"]["reference"]),
        "pareto": plot_pareto(records, pareto),
    }
    text = page(records, figures, failed or {}, command, page_dir, work_dir, intro)
    files.write_text(page_path, text + "\n")
    written = [page_path] + list(figures.values())
    if readme:
      with open(readme, encoding="utf-8") as f:
        current = f.read()
      files.write_text(readme, with_summary(current, summary_of(text)))
      written.append(readme)
  return written
