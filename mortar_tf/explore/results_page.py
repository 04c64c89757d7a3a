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


def metric_text(value, name: str) -> str:
  """A score as the page and mortar-sweep's headline show it."""
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
    return metric_text(value, name)
  return f"{metric_text(value, name)} ({_drop(drop, name)})"


def _drop(value, name: str) -> str:
  if value is None:
    return "-"
  value = 0.0 - value  # a change of +0.00, not -0.00, for no drop
  if name == "psnr":
    return f"{value:+.1f} dB"
  if name == "accuracy":
    return f"{100 * value:+.2f} pt"
  if name == "mse":
    return f"{value:+.3g}"
  return f"{value:+.3f}"


def _number(value: float) -> str:
  """A bound as given: up to six significant digits, float noise dropped
  (0.9779 - 0.005 is 0.9729)."""
  return f"{value:.6g}"


def _limit(record) -> float:
  """The score the budget allows: the original's less the budget where
  higher is better (a floor), plus it where lower is (a ceiling)."""
  m = record["metric"]
  return m["original"] - m["budget"] if m["higher_is_better"] else m["original"] + m["budget"]


def _bound(record) -> str:
  """The budget as the bound it puts on the score: "PSNR ≥ 40 dB",
  "accuracy ≥ 97.29%", "agreement ≥ 0.99", "mse ≤ 0.001"."""
  name, limit = record["metric"]["name"], _limit(record)
  if name == "psnr":
    return f"PSNR ≥ {_number(limit)} dB"
  if name == "accuracy":
    return f"accuracy ≥ {_number(100 * limit)}%"
  return f"{name} {'≥' if record['metric']['higher_is_better'] else '≤'} {_number(limit)}"


def _budget(record) -> str:
  """The models table's budget cell: the bound, and the drop it allows where
  the original is not the metric's fixed best (accuracy)."""
  if record["metric"]["name"] == "accuracy":
    return f"{_bound(record)} (drop ≤ {_number(100 * record['metric']['budget'])} pt)"
  return _bound(record)


# Score differences up to these count as ties (stated on the page): half a dB of
# PSNR; one input of accuracy or agreement (1 / samples); an mse factor of
# 10 ** 0.05, the same 0.5 dB.
PSNR_RESOLUTION = 0.5
MSE_FACTOR = 10 ** (PSNR_RESOLUTION / 10)
RESOLUTION_TEXT = (f"differences of at most {PSNR_RESOLUTION:g} dB of PSNR, one input of "
                   "accuracy or agreement (1 / the model's samples) or a factor of "
                   f"{MSE_FACTOR:.2f} of mse (the same {PSNR_RESOLUTION:g} dB) count as ties")


def _compare(record, a: float, b: float) -> int:
  """1 if score `a` is better than `b` by more than the metric's resolution,
  -1 if worse, 0 for a tie (RESOLUTION_TEXT)."""
  name, higher = record["metric"]["name"], record["metric"]["higher_is_better"]
  if name == "mse" or (name not in ("psnr", "accuracy", "agreement") and not higher):
    low, high = sorted((abs(a), abs(b)))
    if high <= low * MSE_FACTOR * (1 + 1e-12):
      return 0
    return 1 if a < b else -1
  resolution = (PSNR_RESOLUTION if name == "psnr" else
                1.0 / max(1, record["model"]["samples"]) if name in ("accuracy", "agreement")
                else 0.0)
  if abs(a - b) <= resolution * (1 + 1e-9) + 1e-12:
    return 0
  return 1 if (a > b) == higher else -1


CEILING = "†"  # marks a speedup at the estimate's ceiling


def _stripes_width(record) -> int:
  """The width of the record's `stripes` engine (the default's without estimates)."""
  engines = (record.get("estimates") or {}).get("paper", {}).get("engines", {})
  return engines.get("stripes", {}).get("width", engines_lib.DEFAULT_WIDTH)


def _at_ceiling(record, over_stripes) -> bool:
  """Whether a speedup over `stripes` is the estimate's ceiling: `mortar`
  spends one cycle a group where `stripes` spends its width (24.00x as
  shown, or more where whole groups are zero)."""
  return over_stripes is not None and over_stripes >= _stripes_width(record) - 5e-3


def _xc(value, ceiling: bool) -> str:
  """A speedup, marked when at the ceiling."""
  return _x(value) + (CEILING if ceiling and value is not None else "")


def _ceiling_note(record) -> str:
  width = _stripes_width(record)
  return (f"{CEILING} marks the estimate's ceiling ({width:.2f}x over `stripes`): `mortar` "
          "spends one cycle a group, every lane keeping at most one 1 bit, as when every "
          "weight is a power of two (`fewest_ones` at P ≥ 1/3)")


def _plural(count: int, noun: str) -> str:
  return f"{count} {noun}{'' if count == 1 else 's'}"


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


def _span_marked(pairs) -> str:
  """_span of (speedup, at the ceiling) pairs, the ends marked CEILING where
  they are at it."""
  low, high = min(pairs), max(pairs)
  low_text, high_text = _xc(*low), _xc(*high)
  return low_text if low_text == high_text else f"{low_text} to {high_text}"


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


def middle_ellipsis(text: str, limit: int) -> str:
  """`text` cut to at most `limit` characters by an ellipsis in the middle,
  keeping both ends (a layer's block and its index).

  >>> middle_ellipsis("separable_conv2d_12/depthwise", 20)
  'separable…/depthwise'
  """
  if len(text) <= limit:
    return text
  head = (limit - 1) // 2
  return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def _short_names(names: Sequence[str], limit: int = 30) -> list[str]:
  """Layer names without the prefix they all share and without a trailing
  "kernel" (every one is a kernel: "sep/depthwise_kernel" is "sep/depthwise"),
  at most `limit` characters (middle_ellipsis)."""
  prefix = os.path.commonprefix(list(names)) if len(names) > 1 else ""
  prefix = prefix[:prefix.rfind("/") + 1]
  out = []
  for name in names:
    short = name[len(prefix):] or name
    for suffix in ("/kernel", "_kernel"):
      if short.endswith(suffix) and len(short) > len(suffix):
        short = short[:-len(suffix)]
        break
    out.append(middle_ellipsis(short, limit))
  return out


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
    names = _short_names([layer.get("label", layer["name"]) for layer in r["layers"]])
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
    if search and search["best_global"]:
      g = search["best_global"]
      ax.scatter([g["ratio"]["aligned"]], [g["metric"]], marker="D", s=30, color="orange",
                 zorder=4, label="best global P")
    if search and _morphs(r):
      point = ([search["point"]["ratio"]["aligned"]], [search["point"]["metric"]])
      if search["chose_global"]:  # the same point as the diamond: a hollow star around it
        ax.scatter(*point, marker="*", s=260, facecolors="none", edgecolors="crimson",
                   linewidths=1.2, zorder=5, label="search result: the best global P")
      else:
        ax.scatter(*point, marker="*", s=150, color="crimson", zorder=4,
                   label="search result: a per-kernel map")
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
  order = ["paper", "fewest_ones", "bitx", "original", "best global P",
           "search result: a per-kernel map", "search result: the best global P", "budget"]
  handles = {k: handles[k] for k in sorted(handles, key=lambda k: order.index(k)
                                           if k in order else len(order))}
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


def _and(parts: Sequence[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  parts = list(parts)
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _tally(groups, total: int, models: bool = True) -> str:
  """Which models fall in which group, as one phrase: groups are
  (phrase, names) with the phrase naming what they share ("better"); empty
  groups are left out. 'better on all 7 models', 'better on 2 of the 7
  models (a, b), the same on 1 (c) and worse on 4 (d, e, f, g)'; with one
  model, 'better on a'. models=False counts within models already named:
  'better on all of them', 'better on 2 (a, b) and worse on 1 (c)'."""
  groups = [(phrase, names) for phrase, names in groups if names]
  if total == 1:
    ((phrase, (name,)),) = groups
    return f"{phrase} on {name}"
  parts = []
  for i, (phrase, names) in enumerate(groups):
    if len(names) == total:
      every = ("both" if total == 2 else f"all {total}") if models else (
          "both" if total == 2 else "all")
      parts.append(f"{phrase} on {every} {'models' if models else 'of them'}"
                   .replace("both of them", "both"))
    elif i == 0 and models:
      parts.append(f"{phrase} on {len(names)} of the {total} models ({', '.join(names)})")
    else:
      parts.append(f"{phrase} on {len(names)} ({', '.join(names)})")
  return _and(parts)


def _partial_estimates(records) -> str:
  """' The estimates of A, B cover only part of their model (...).', or ''."""
  partial = [f"{r['name']} ({_coverage_cell(r).strip('*')})" for r in records
             if r.get("estimates") and not _coverage(r)["complete"]]
  if not partial:
    return ""
  if len(partial) == 1:
    return (f" The estimates of {partial[0]} cover only part of the model: its speedups are "
            "over the estimated layers (the Speedups table's coverage column).")
  return (f" The estimates of {_and(partial)} cover only part of each model: their speedups "
          "are over the estimated layers (the Speedups table's coverage column).")


def _within_budget_speedups(records) -> str:
  """' Spending at most each model's budget, the search's result (...) makes
  `mortar` a to b faster than unmorphed (c to d over `stripes`).', saying
  which results are per-kernel maps and which one global P, ceilings marked."""
  per_kernel, global_p, _ = _search_outcomes(records)
  found = [r for r in per_kernel + global_p if r["search"]["point"]["speedup"]]
  if not found:
    return ""
  if len(records) == 1:
    kinds = "a per-kernel map" if per_kernel else "one P for the whole model"
  else:
    kinds = "; ".join(part for part in (
        f"a per-kernel map on {_names(per_kernel)}" if per_kernel else "",
        f"one P for the whole model on {_names(global_p)}" if global_p else "") if part)
  stripes = [(r["search"]["point"]["speedup"],
              _at_ceiling(r, r["search"]["point"]["speedup"])) for r in found]
  alone = [(r["search"]["point"]["speedup_unmorphed"],
            _at_ceiling(r, r["search"]["point"]["speedup"])) for r in found
           if r["search"]["point"].get("speedup_unmorphed")]
  lead = (f"`mortar` {_span_marked(alone)} faster than unmorphed ({_span_marked(stripes)} over "
          "`stripes`)" if alone else f"`mortar` {_span_marked(stripes)} faster than `stripes`")
  ceiling = next((r for r, (_, top) in zip(found, stripes) if top), None)
  return (" Spending at most " + ("its" if len(records) == 1 else "each model's") + " budget, the "
          f"search's result ({kinds}) makes {lead}" +
          (f"; {_ceiling_note(ceiling)}" if ceiling else "") + ".")


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
    return (" The design-space table, which evaluates every P, agrees" +
            (" on every model" if len(agree) > 1 else "") +
            ": no larger P of both grids is within the budget.")
  return (" The bisection assumes the drop grows with P; the design-space table, which "
          f"evaluates every P, shows a larger P within the budget on {'; '.join(found)}"
          + (f" (it agrees on {', '.join(agree)})" if agree else "") + ".")


def _fall_in(inside: Sequence[str], names: Sequence[str]) -> str:
  """'all 7 models here fall in it.', '2 of the 7 models here fall in it (a,
  b).', 'a falls in it.' for one model, and so on."""
  n, k = len(names), len(inside)
  if n == 1:
    return f"{names[0]} {'falls' if k else 'does not fall'} in it."
  if k == n:
    return f"{'both' if n == 2 else 'all ' + str(n)} models here fall in it."
  if k == 0:
    return f"none of the {n} models here falls in it."
  return (f"{k} of the {n} models here {'falls' if k == 1 else 'fall'} in it "
          f"({', '.join(inside)}).")


def _score_at(record, point) -> str:
  """'97.72% at 4.84x': a point's metric and aligned ones ratio."""
  return f"{metric_text(point['metric'], record['metric']['name'])} at {_x(point['ratio']['aligned'])}"


def _summary(records, reference) -> list[str]:
  """The page's summary bullets, every number from the records (tagged
  measured or modelled) but the paper's published figures (tagged so)."""
  lines = []
  n = len(records)
  word = [(r, _at(r, "paper", reference)) for r in records]
  word = [(r, p) for r, p in word if p is not None]
  if word:
    inside = [r["name"] for r, p in word
              if PAPER_WORD_RATIO[0] <= p["ratio"]["word"] <= PAPER_WORD_RATIO[1]]
    lines.append(
        f"- **Sparsity** (measured). `paper` at P = {reference:g} cuts the word-domain ones "
        f"{_span([p['ratio']['word'] for _, p in word])} (ones before / after) and the "
        f"aligned-domain ones, which a bit-serial engine pays for, "
        f"{_span([p['ratio']['aligned'] for _, p in word])}. The paper's published word-domain "
        f"range on its own ImageNet models is {PAPER_WORD_RATIO[0]}x to {PAPER_WORD_RATIO[1]}x; "
        + _fall_in(inside, [r["name"] for r, _ in word]))
    kept = [r["name"] for r, p in word if _within(r, p)]
    lost = [(r, p) for r, p in word if not _within(r, p)]
    misses = ", ".join(f"{r['name']} {metric_text(p['metric'], r['metric']['name'])} "
                       f"(budget: {_bound(r)})" for r, p in lost)
    if len(word) == 1:
      (r, p), = word
      text = (f"{r['name']} meets its budget ({_bound(r)}) at "
              f"{_with_drop(p['metric'], p['drop'], r['metric']['name'])}." if kept else
              f"{r['name']} does not meet its budget ({_bound(r)}): it scores "
              f"{_with_drop(p['metric'], p['drop'], r['metric']['name'])}.")
    elif not lost:
      text = f"All {len(word)} models meet their budget."
    elif not kept:
      text = f"None of the {len(word)} models meets its budget: {misses}."
    else:
      text = (f"{len(kept)} of the {len(word)} models {'meets its' if len(kept) == 1 else 'meet their'} "
              f"budget ({', '.join(kept)}); below it: {misses}.")
    lines.append(f"- **Scores at P = {reference:g}** (measured). " + text)
  heads = [r for r in records if r.get("estimates")]
  if heads:
    alone = [r["estimates"]["paper"]["headline"]["over_unmorphed"] for r in heads]
    over = [r["estimates"]["paper"]["headline"]["over_stripes"] for r in heads]
    base = [r["estimates"]["paper"]["cycles"]["stripes"]["original"] /
            max(1, r["estimates"]["paper"]["cycles"]["mortar"]["original"]) for r in heads]
    lines.append(
        f"- **Speedup** (modelled: the estimator's cycle counts, SPEC 4). On the weights "
        f"morphed at P = {reference:g}, `mortar` runs "
        f"{_span_marked([(v, _at_ceiling(r, o)) for r, v, o in zip(heads, alone, over) if v])} "
        f"faster than on the unmorphed weights, at the scores above; over `stripes` on the "
        f"unmorphed weights that is "
        f"{_span_marked([(o, _at_ceiling(r, o)) for r, o in zip(heads, over) if o])}, which "
        f"includes the {_span(base)} `mortar` gets over `stripes` with nothing morphed. The "
        "paper's published speedups, over its baseline (which SPEC 4 reads as `stripes`) on its "
        f"own ImageNet models: {', '.join(f'{k} {v}x' for k, v in PAPER_SPEEDUPS.items())}."
        + _within_budget_speedups(records) + _partial_estimates(records))
  per_kernel, global_p, nothing = _search_outcomes(records)
  beat = [r for r in per_kernel if r["search"]["best_global"]
          and r["search"]["best_global"]["ratio"]["aligned"]]
  alone_maps = [r for r in per_kernel if r not in beat]
  if per_kernel or global_p or nothing:
    searched = len(per_kernel) + len(global_p) + len(nothing)
    gains = [r["search"]["point"]["ratio"]["aligned"] / r["search"]["best_global"]["ratio"]["aligned"]
             for r in beat]
    faster = [r["search"]["point"]["speedup"] / r["search"]["best_global"]["speedup"]
              for r in beat if r["search"]["point"]["speedup"] and r["search"]["best_global"]["speedup"]]
    parts = []
    if beat:
      who = (beat[0]["name"] if searched == 1 else
             f"{'both' if searched == 2 else 'all ' + str(searched)} models"
             if len(beat) == searched else
             f"{len(beat)} of the {searched} models ({_names(beat)})")
      parts.append(f"on {who} the search found a per-kernel map within the budget that beats "
                   f"the best single P of the same grid: its aligned ratio (measured) is "
                   f"{_span(gains)} that P's" +
                   (f", its estimated speedup (modelled) {_span(faster)}" if faster else ""))
    if alone_maps:
      parts.append(f"on {_names(alone_maps)} it found a per-kernel map within the budget where "
                   "no single P of the grid is")
    if global_p:
      parts.append(f"on {_names(global_p)} no per-kernel map beat the best single P, and the "
                   "search returned that P")
    if nothing:
      parts.append(f"on {_names(nothing)} nothing could be morphed within the budget")
    text = "; ".join(parts)
    lines.append("- **Per-layer P** (beyond the paper, which uses one P). " + text[0].upper() +
                 text[1:] + " (scored on the samples it chose on: optimistic, see below).")
  bitx = []
  for r in records:
    if r.get("bitx") and r["bitx"]["points"]:
      bitx.append((r, _at(r, "paper", reference), r["bitx"]["points"][0]))
  if bitx:
    verdicts = [_compare(r, m["metric"], b["metric"]) for r, m, b in bitx]
    pairs = "; ".join(f"{r['name']} {_score_at(r, m)} against {_score_at(r, b)}"
                      for r, m, b in bitx)
    lines.append(
        f"- **Against BitX** (measured) at P = {reference:g}, BitX keeping the most columns "
        f"that leave it at least as sparse (aligned) as `paper`: Mortar scores " +
        _tally([(word_, [r["name"] for (r, _, _), v in zip(bitx, verdicts) if v == k])
                for k, word_ in ((1, "better"), (0, "the same within the resolution"),
                                 (-1, "worse"))], len(bitx)) +
        f". Mortar against BitX, score at aligned ones ratio: {pairs}. Here "
        f"{RESOLUTION_TEXT}.")
    few = [(r, _at(r, "fewest_ones", reference), b) for r, _, b in bitx]
    sparser = [(r, f, b) for r, f, b in few if f["ratio"]["aligned"] >= b["ratio"]["aligned"]]
    names = [r["name"] for r, _, _ in sparser]
    if not sparser:
      text = ("is not sparser (aligned) than that BitX point on " +
              (few[0][0]["name"] if len(few) == 1 else f"any of the {len(few)} models") + ".")
    else:
      where = (names[0] if len(few) == 1 else
               f"{'both' if len(few) == 2 else 'all ' + str(len(few))} models"
               if len(names) == len(few) else
               f"{len(names)} of the {len(few)} models ({', '.join(names)})")
      verdicts = [_compare(r, f["metric"], b["metric"]) for r, f, b in sparser]
      groups = [(word_, [r["name"] for (r, _, _), v in zip(sparser, verdicts) if v == k])
                for k, word_ in ((1, "better"), (0, "the same within the resolution"),
                                 (-1, "worse"))]
      if len(sparser) == 1:
        ((phrase, _),) = [(phrase, group) for phrase, group in groups if group]
        text = f"is sparser (aligned) than that BitX point on {where}, and scores {phrase} there."
      else:
        scores = _tally(groups, len(sparser), models=False)
        text = (f"is sparser (aligned) than that BitX point on {where}; " +
                ("it" if len(sparser) == len(few) else "of those, it") + f" scores {scores}.")
    lines.append(f"- **`fewest_ones`** (beyond the paper; measured) at P = {reference:g} " + text)
  compensated = _compensation_summary(records, reference)
  if compensated:
    lines.append(compensated)
  downloads = _formats_summary(records)
  if downloads:
    lines.append(downloads)
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
                 f"{metric_text(r['metric']['original'], r['metric']['name'])}",
                 _budget(r), f"{m['kernels']} / {m['weights']:,}",
                 _minutes(r["seconds"]["total"])])
  return _table(["model", "what", "weights from", "data", "samples", "metric (original)",
                 "budget", "kernels / weights", "time"], rows)


def _design_space(r) -> list[str]:
  name = r["metric"]["name"]
  rows = []
  for p in r["settings"]["precisions"]:
    row = [f"{p:g}"]
    for method in ("paper", "fewest_ones"):
      pt = _at(r, method, p)
      mark = "" if _within(r, pt) else " ✗"
      top = _at_ceiling(r, pt["speedup"])
      row += [f"{metric_text(pt['metric'], name)}{mark}", _x(pt["ratio"]["word"]),
              _x(pt["ratio"]["aligned"]), _xc(pt.get("speedup_unmorphed"), top),
              _xc(pt["speedup"], top)]
    rows.append(row)
  return _table(["P", "paper: " + name, "word x", "aligned x", "est. x unmorphed",
                 "est. x stripes", "fewest_ones: " + name, "word x", "aligned x",
                 "est. x unmorphed", "est. x stripes"], rows)


def _at_reference(records, reference) -> list[str]:
  rows = [["the paper's (its ImageNet models)", "-", "accuracy kept (its claim)",
           f"{PAPER_WORD_RATIO[0]}x..{PAPER_WORD_RATIO[1]}x", "-", "-", "-", "-", "-"]]
  for r in records:
    name = r["metric"]["name"]
    cells = [f"**{r['name']}**", metric_text(r["metric"]["original"], name)]
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
                   f"{metric_text(mortar['metric'], name)}", f"{c}", _x(b["ratio"]["aligned"]),
                   _with_drop(b['metric'], b['drop'], name),
                   _xc(b["speedup"], _at_ceiling(r, b["speedup"])), _x(hw),
                   _x(hw * BITX_AREA / mortar_area) if mortar_area else "-"])
  return _table(["model", f"Mortar (paper P={reference:g}): aligned x, metric", "BitX columns",
                 "BitX aligned x", "BitX metric", "est. mortar engine on BitX weights, x stripes",
                 "est. Mortar over BitX hardware", "est. same, iso-area"], rows)


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
    top = _at_ceiling(r, pt["speedup"])
    rows.append([f"**{r['name']}**", _bound(r), kind,
                 _with_drop(pt['metric'], pt['drop'], name),
                 _x(pt["ratio"]["aligned"]), _xc(pt.get("speedup_unmorphed"), top),
                 _xc(pt["speedup"], top),
                 f"{morphed} / {r['model']['kernels']}",
                 (f"P={g['settings']['precision']:g}: {metric_text(g['metric'], name)}, "
                  f"{_x(g['ratio']['aligned'])}, "
                  f"{_xc(g['speedup'], _at_ceiling(r, g['speedup']))}") if g else
                 "none in budget",
                 _x(gain), f"{s['evaluations']}", _minutes(r["seconds"]["search"])])
  return _table(["model", "budget", "result", "metric", "aligned x", "est. x unmorphed",
                 "est. x stripes", "kernels morphed", "best global P: metric, aligned x, "
                 "est. x stripes", "search / global (aligned)", "full evaluations", "time"], rows)


# --------------------------------------------------------------------------
# Smaller downloads: morphing beside float16 and int8 (the records' "formats")

FORMAT_COLUMNS = (("searched", "morphed: searched map"), ("global", "morphed: best global P"),
                  ("float16", "float16 cast"), ("int8", "TFLite dynamic-range int8"))


def _formatted(records) -> list:
  return [r for r in records if r.get("formats")]


def _format_rows(r) -> dict:
  return {row["name"]: row for row in r["formats"]["rows"]}


def format_within(r, row) -> bool:
  """Whether a formats row's score keeps the model's budget."""
  return "error" not in row and row["drop"] <= r["metric"]["budget"] + 1e-12


def _format_cell(r, row) -> str:
  if row is None:
    return "-"
  if "error" in row:
    return row["error"]
  name = r["metric"]["name"]
  mark = "" if format_within(r, row) else " ✗"
  cell = f"**{_x(row['compressed_x'])}**, {_with_drop(row['metric'], row['drop'], name)}{mark}"
  if row["name"] == "searched" and not row.get("morphed_kernels"):
    cell += " (nothing morphed)"
  if row["name"] == "global":
    cell = row["label"].split(": ", 1)[1].replace(" everywhere", "") + ": " + cell
  if row["name"] == "float16" and row.get("overflow"):
    cell += f", {row['overflow']:,} weights beyond float16's range"
  if row["name"] == "int8":
    if row["float32_weights"]:
      share = 100 * row["float32_weights"] / max(1, row["weights"])
      cell += (f"; {'under 0.1' if share < 0.1 else f'{share:.1f}'}% of the kernel weights "
               "left float32")
    cell += (f"; the .tflite file {row['file_bytes'] / 1e6:.2f} MB, gzip "
             f"{row['file_gzip_bytes'] / 1e6:.2f} MB")
    if row.get("other_weights"):
      cell += f" (it also holds {row['other_weights']:,} values of other constants, not counted)"
  return cell


def _formats_table(records) -> list[str]:
  rows = []
  for r in _formatted(records):
    by = _format_rows(r)
    original = by["float32"]
    rows.append([f"**{r['name']}**", _bound(r),
                 f"{original['zlib_bytes'] / 1e6:.2f} MB of {original['raw_bytes'] / 1e6:.2f} MB"]
                + [_format_cell(r, by.get(key)) for key, _ in FORMAT_COLUMNS])
  return _table(["model", "budget", "float32 kernels: zlib 9 of raw"]
                + [f"{label}: compressed x, score" for _, label in FORMAT_COLUMNS], rows)


def _formats_summary(records) -> str:
  """The summary's sentence on downloads, from the records' formats rows."""
  done = _formatted(records)
  if not done:
    return ""
  morph, half, int8 = [], [], []
  loses_int8, loses_half = [], []
  for r in done:
    by = _format_rows(r)
    best = max((by[k] for k in ("searched", "global") if k in by and format_within(r, by[k])),
               key=lambda row: row["compressed_x"], default=None)
    if best is not None:
      morph.append(best["compressed_x"])
    for key, values, loses in (("float16", half, loses_half), ("int8", int8, loses_int8)):
      row = by.get(key)
      if row is not None and format_within(r, row):
        values.append(row["compressed_x"])
        if best is None or row["compressed_x"] > best["compressed_x"]:
          loses.append(r["name"])
  n = len(done)
  parts = [f"**Smaller downloads, measured:** within each model's budget, morphing shrinks "
           f"the kernels' zlib 9 bytes " + (f"{_span(morph)} ({len(morph)} of {n} models)"
                                            if morph else "on none of the models")]
  parts.append("a float16 cast " + (f"{_span(half)} within budget on {len(half)} of {n}"
                                     if half else "stays within budget on none"))
  parts.append("TFLite's dynamic-range int8 " + (
      f"{_span(int8)} within budget on {len(int8)} of {n}" if int8 else
      "stays within budget on none"))
  text = "; ".join(parts) + "."
  losses = []
  if loses_int8:
    losses.append(f"int8 ships fewer bytes within budget on {_and(loses_int8)}")
  if loses_half:
    losses.append(f"float16 on {_and(loses_half)}")
  formats = " and ".join(f for f, names in (("int8", loses_int8), ("float16", loses_half))
                         if names)
  text += (" Morphing loses where " + "; ".join(losses) + f" ({formats} change"
           f"{'s' if formats in ('int8', 'float16') else ''} the number format the runtime "
           "reads; morphed kernels stay float32)." if losses else
           " No other format within budget ships fewer bytes on any model.")
  return "- " + text


# --------------------------------------------------------------------------
# Error-compensated morphing (SPEC 6; the records' "compensation" section)


def _compensated(records) -> list:
  return [r for r in records if r.get("compensation")]


def _scored_as(r) -> dict:
  """The record as its compensation section scores (its scored samples set
  the resolution of _compare)."""
  return dict(r, model=dict(r["model"], samples=r["compensation"]["scored_samples"]))


def _c_points(r, method: str, compensated: bool) -> list:
  return [p for p in r["compensation"]["sweep"]["points"]
          if p["method"] == method and bool(p["settings"].get("compensated")) == compensated]


def _c_at(r, method: str, precision: float, compensated: bool):
  return next((p for p in _c_points(r, method, compensated)
               if p["settings"]["precision"] == precision), None)


def largest_within(r, compensated: bool):
  """The compensation sweep's point of the largest P of the search method's
  grid whose score is within the budget (every P is evaluated; smaller P
  need not be), or None."""
  inside = [p for p in _c_points(r, r["settings"]["search_method"], compensated)
            if _within(r, p)]
  return max(inside, key=lambda p: p["settings"]["precision"]) if inside else None


def _p_cell(r, point) -> str:
  if point is None:
    return "none of the grid"
  top = _at_ceiling(r, point["speedup"])
  return (f"P={point['settings']['precision']:g}: "
          f"{metric_text(point['metric'], r['metric']['name'])}, "
          f"{_x(point['ratio']['aligned'])}, {_xc(point['speedup'], top)}")


def _c_search_cell(r, key: str) -> str:
  s = r["compensation"].get(key)
  if not s or not s["precisions"]:
    return "nothing within budget"
  pt, held, name = s["point"], s.get("held_out") or {}, r["metric"]["name"]
  kind = "global P" if s["chose_global"] else "per kernel"
  top = _at_ceiling(r, pt["speedup"])
  # Each split has its own original score (accuracy): the drops say what the budget bounds.
  return (f"{kind}: {_x(pt['ratio']['aligned'])}, {_xc(pt['speedup'], top)}; "
          f"{_with_drop(pt['metric'], pt['drop'], name)} / "
          f"{_with_drop(held['value'], held['drop'], name) if 'value' in held else '-'}")


def _c_aligned(r, key: str):
  s = r["compensation"].get(key)
  return s["point"]["ratio"]["aligned"] if s and s["precisions"] else None


def _compensation_table(records, reference) -> list[str]:
  rows = []
  for r in _compensated(records):
    c, name = r["compensation"], r["metric"]["name"]
    paper = [_c_at(r, "paper", reference, flag) for flag in (False, True)]
    plain, comp = _c_aligned(r, "search_plain"), _c_aligned(r, "search")
    scored = dict(r, metric=dict(r["metric"], original=c["sweep"]["original_metric"]))
    rows.append([f"**{r['name']}**", f"{c['calibration_samples']} / {c['search_samples']} + "
                 f"{c['held_out_samples']}", _budget(scored),
                 _p_cell(r, largest_within(r, False)), _p_cell(r, largest_within(r, True)),
                 " / ".join(metric_text(p["metric"], name) if p else "-" for p in paper),
                 _c_search_cell(r, "search_plain"), _c_search_cell(r, "search"),
                 _x(comp / plain) if comp and plain else "-"])
  method = records[0]["settings"]["search_method"]
  return _table(["model", "samples: calibration / searched + held out",
                 "budget on the scored samples",
                 f"largest {method} P within budget, plain: metric, aligned x, est. x stripes",
                 "the same, compensated",
                 f"paper P={reference:g}: plain / compensated metric",
                 "search, plain: aligned x, est. x stripes; metric (drop from the original "
                 "on the same samples) searched / held out",
                 "search, compensated: the same",
                 "compensated / plain search (aligned)"], rows)


def _compensation_summary(records, reference) -> str:
  """The summary bullet on compensated morphing, every claim from the records."""
  found = _compensated(records)
  if not found:
    return ""
  method = records[0]["settings"]["search_method"]
  raised, same, lowered = [], [], []
  for r in found:
    a, b = largest_within(r, False), largest_within(r, True)
    pa = a["settings"]["precision"] if a else 0.0
    pb = b["settings"]["precision"] if b else 0.0
    text = f"{r['name']} {format(pa, 'g') if a else 'none'} → {format(pb, 'g') if b else 'none'}"
    (raised if pb > pa else lowered if pb < pa else same).append(text)
  moved = _tally([("rises", raised), ("stays", same), ("falls", lowered)], len(found))
  verdicts = []
  for r in found:
    plain, comp = _c_at(r, "paper", reference, False), _c_at(r, "paper", reference, True)
    if plain and comp:
      verdicts.append((r["name"], _compare(_scored_as(r), comp["metric"], plain["metric"])))
  paper_text = ""
  if verdicts:
    paper_text = (f" At `paper` P = {reference:g} the compensated morph scores " + _tally(
        [(w, [n for n, v in verdicts if v == k])
         for k, w in ((1, "better"), (0, "the same within the resolution"), (-1, "worse"))],
        len(verdicts)) + " than the plain one.")
  both = [(r, _c_aligned(r, "search"), _c_aligned(r, "search_plain")) for r in found]
  ratios = [(r, comp / plain) for r, comp, plain in both if comp and plain]
  search_text = ""
  if ratios:
    sparser = _tally([(w, [r["name"] for r, x in ratios if k(x)]) for w, k in (
        ("sparser", lambda x: x > 1 + 5e-3), ("as sparse within 0.5%", lambda x: abs(x - 1) <= 5e-3),
        ("less sparse", lambda x: x < 1 - 5e-3))], len(ratios))
    search_text = (
        " With compensation in its loop, the per-kernel search (plain and compensated both "
        "held out: the map each returns met the budget on samples it did not choose on) "
        f"reaches {_span([x for _, x in ratios])} the aligned ratio of the plain search's: "
        f"{sparser}.")
  plain_only = [r["name"] for r, comp, plain in both if plain and not comp]
  comp_only = [(r["name"], _x(comp)) for r, comp, plain in both if comp and not plain]
  neither = [r["name"] for r, comp, plain in both if not comp and not plain]
  if len(comp_only) == 1:
    search_text += (" The plain search returned no map that met the budget held out on "
                    f"{comp_only[0][0]}, where the compensated one reached {comp_only[0][1]} "
                    "aligned.")
  elif comp_only:
    search_text += (" The plain search returned no map that met the budget held out on " +
                    _and([f"{n} ({x})" for n, x in comp_only]) + ", where the compensated one "
                    "reached the aligned ratios in brackets.")
  if plain_only:
    search_text += (f" The compensated search returned no map that met the budget held out on "
                    f"{_and(plain_only)}, where the plain one found a map.")
  if neither:
    search_text += (f" Neither search returned a map that met the budget held out on "
                    f"{_and(neither)}.")
  return ("- **Error-compensated morphing** (beyond the paper, SPEC 6; measured on samples apart "
          "from the calibration samples, counts in its table). With compensation, the largest "
          f"`{method}` P within the budget (plain → compensated) {moved}." +
          paper_text + search_text)


def _iso_area_differs(records) -> bool:
  """Whether any iso-area headline says something the plain one does not:
  it exists over `stripes`, or differs over `mortar` unmorphed."""
  for r in records:
    for method in ("paper", "fewest_ones"):
      h, iso = r["estimates"][method]["headline"], r["estimates"][method]["headline_iso_area"]
      if iso["over_stripes"] is not None or _x(iso["over_unmorphed"]) != _x(h["over_unmorphed"]):
        return True
  return False


def _speedup_table(records, reference) -> list[str]:
  iso = _iso_area_differs(records)
  rows = [[f"the paper's: {', '.join(PAPER_SPEEDUPS)}", "-",
           " / ".join(f"{v}x" for v in PAPER_SPEEDUPS.values()),
           "-", "-", "-", "-", "-", "-"]]
  for r in records:
    est = r["estimates"]
    cells = [f"**{r['name']}**"]
    for method in ("paper", "fewest_ones"):
      h = est[method]["headline"]
      top = _at_ceiling(r, h["over_stripes"])
      alone = _xc(h["over_unmorphed"], top)
      if iso:
        alone += f" (iso-area {_x(est[method]['headline_iso_area']['over_unmorphed'])})"
      cells += [alone, _xc(h["over_stripes"], top)]
    cyc = est["paper"]["cycles"]
    cells.append(_x(cyc["bitlet"]["original"] / max(1, cyc["bitlet"]["morphed"])))
    s = r.get("search")
    top = bool(s) and _at_ceiling(r, s["point"]["speedup"])
    cells.append(f"{_xc(s['point'].get('speedup_unmorphed'), top)} / "
                 f"{_xc(s['point']['speedup'], top)}" if s else "-")
    cells.append(_x(cyc["stripes"]["original"] / max(1, cyc["mortar"]["original"])))
    cells.append(_coverage_cell(r))
    rows.append(cells)
  return _table(["model", f"paper P={reference:g}: est. mortar x mortar unmorphed",
                 "est. mortar x stripes", f"fewest_ones P={reference:g}: est. x unmorphed",
                 "est. x stripes", "est. bitlet morphed x bitlet original",
                 "searched map: est. x unmorphed / x stripes",
                 "est. mortar x stripes, nothing morphed", "coverage (weight MACs estimated)"],
                rows)


def _timing(records) -> list[str]:
  rows = []
  parts = ("load", "design_space", "bitx", "estimates", "search", "compensation", "formats")
  for r in records:
    sec = r["seconds"]
    rows.append([r["name"]] + [f"{sec[p]:.1f} s" if p in sec else "-" for p in parts] +
                [f"{sec['total']:.1f} s"])
  total = sum(r["seconds"]["total"] for r in records)
  rows.append(["**all**"] + [f"{sum(r['seconds'].get(p, 0) for r in records):.1f} s"
                             for p in parts] + [f"**{total:.1f} s** ({_minutes(total)})"])
  return _table(["model", "load", "design space", "BitX", "estimates", "search",
                 "compensation", "formats", "total (with the figures' data)"], rows)


def _ceiling_seen(records) -> bool:
  """Whether any speedup on the page is at the estimate's ceiling."""
  for r in records:
    points = [p for m in ("paper", "fewest_ones") for p in r["design_space"][m]]
    points += (r.get("bitx") or {}).get("points", [])
    search = r.get("search") or {}
    points += [p for p in (search.get("point"), search.get("best_global")) if p]
    comp = r.get("compensation") or {}
    points += (comp.get("sweep") or {}).get("points", [])
    points += [(comp.get(k) or {}).get("point") for k in ("search", "search_plain")
               if (comp.get(k) or {}).get("point")]
    if any(_at_ceiling(r, p["speedup"]) for p in points):
      return True
  return False


def page(records: Sequence[dict], figures: Mapping[str, str], failed: Mapping[str, str],
         command: str, page_dir: str, work_dir: str = "out/results", intro: str = "",
         title: str = "") -> str:
  """The markdown of the results page (`title`: its heading; a neutral one
  naming the number of models when empty)."""
  reference = records[0]["settings"]["reference"]
  total = sum(r["seconds"]["total"] for r in records)
  machine = records[0]["machine"]
  rel = {k: os.path.relpath(v, page_dir) for k, v in figures.items()}
  small = [r for r in records if r["model"]["samples"] < 50]
  ceiling = (" " + _ceiling_note(records[0]) + "." if _ceiling_seen(records) else "")
  lines = [f"# {title or 'Mortar evaluation of ' + _plural(len(records), 'model')}", "",
           f"Generated by `{command}` ({datetime.date.today().isoformat()}). Every number on "
           f"this page comes from that run's records (`{work_dir}/NAME.json`) but the paper's "
           "published figures, marked \"the paper's\". The others are **measured** (the "
           "metric, and the ones counts of the weights) or **modelled** (speedups: the "
           "estimator's cycle counts of its engine models, SPEC 4; their columns say \"est.\"). "
           f"The run took **{_minutes(total)}** of compute on {machine['cpus']} CPU cores "
           f"({machine['isa']} kernels), not counting the setup and the models' export; it is "
           "resumable: a model whose record exists with the same settings is kept "
           "(`--redo=NAME` measures it again).", ""]
  if failed:
    lines += ["**Not evaluated:** " + "; ".join(f"{k}: {v}" for k, v in failed.items()), ""]
  lines += [SUMMARY_HEADING, ""] + _summary(records, reference) + [""]
  labelled = [r["name"] for r in records if r["metric"]["name"] == "accuracy"]
  lines += ["## Models and data", ""] + ([intro, ""] if intro else []) + [
            (f"Scored on labels (accuracy): {', '.join(labelled)}. " if labelled else "") +
            "The other metrics compare the morphed model with the original on the same inputs: "
            "**agreement** is the share of inputs whose top-1 class is unchanged, **psnr** the "
            "peak signal-to-noise ratio of the outputs against the original's (300 dB means "
            "identical), **mse** their mean squared difference. Each model's budget is the "
            "bound its score must keep (a floor; for mse a ceiling), up to which the search "
            "spends.", ""]
  lines += _models_table(records)
  lines += ["## Design space (the paper's DSE table)", "",
            "The metric and the ones ratio (original / morphed) in the word and aligned domains "
            f"({_GEOMETRY}, the engines' geometry), measured, and the estimated speedup "
            "(modelled) of the `mortar` engine on the morphed weights over `mortar` on the "
            "unmorphed weights and over `stripes` on them, at each P. ✗ marks a score outside "
            "the model's budget. The cycles of a group are its busiest lane's ones, so 12.00x "
            "over `stripes` means at most two 1 bits a lane." + ceiling, ""]
  for r in records:
    lines += [f"### {r['name']}: {r['entry']['title']}", ""] + _design_space(r)
  lines += [f"## Scores and sparsity at P = {reference:g} (measured)", "",
            "The paper reads its sparsity in what SPEC 1 takes to be the word domain (all 32 bits); "
            "the aligned domain is what a bit-serial engine pays for. BitX keeps the first "
            "`columns` columns of each exponent-matched group; the column count shown is the "
            "largest that is at least as sparse (aligned) as `paper` at this P.", ""]
  lines += _at_reference(records, reference)
  lines += ["## BitX at Mortar's sparsity", "",
            "Both column counts around Mortar's aligned ratio; scores and ratios measured, "
            "speedups modelled. *Mortar over BitX hardware* is "
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
  if _compensated(records):
    lines += ["## Error-compensated morphing (beyond the paper)", "",
              "SPEC 6: each kernel's rows are morphed in order and each row's error is spread "
              "over the rows not yet morphed (GPTQ/OBQ-style, from the statistics of the "
              "layer's inputs on calibration samples), and the mean output change is "
              "subtracted through the bias or the following BatchNormalization's mean. Final "
              "weights may lie farther than P from their originals. The first samples of each "
              "model calibrate and are never scored; the rest score the rows (plain and "
              "compensated alike, so the two columns compare on the same samples), and the "
              "searches choose on the first part of them and must also meet the budget on the "
              "last part, held out (the map a search returns is the best that met it on both). "
              "Largest P within budget: the largest P of the grid whose score is within the "
              "budget (every P evaluated). Speedups are modelled on the compensated values "
              "themselves.", ""]
    lines += _compensation_table(records, reference)
  if _formatted(records):
    lacking = [r["name"] for r in records if not r.get("formats")]
    lines += ["## Smaller downloads: morphing beside float16 and int8 (measured)", "",
              "The benefit a user gets today without a bit-serial accelerator: morphed weights "
              "compress. Each cell is one way to ship the model's kernels, with its measured "
              "`compressed x` (zlib level 9 bytes of the original float32 kernels over the "
              "cell's, each kernel compressed alone as stored: 4 bytes a value for float32, 2 "
              "for float16, 1 for int8 plus its float32 scales) and its own score on every "
              "sample (✗: outside the budget). The morphed cells are the per-layer search's "
              "map and best global P above (the search chose for aligned sparsity, not bytes: "
              "`objective=\"size\"` chooses for bytes). float16 is each kernel cast to half and "
              "scored widened back, which is what a float16 file loads to. The int8 cell is "
              "TFLite's converter with `Optimize.DEFAULT`, run by TFLite's interpreter against "
              "the same reference outputs; its bytes count the int8 constants the file ships "
              "and the kernels TFLite leaves float32 (it skips small ones), and the whole "
              ".tflite file is given beside them. Morphed and float16 kernels run on any float32 "
              "runtime unchanged (float16 after widening at load); int8 needs a runtime with "
              "its kernels." + (f" Without this section: {', '.join(lacking)} (records made "
                                "before it; any run of mortar-results without `--page_only` adds it)."
                                if lacking else ""), ""]
    lines += _formats_table(records)
  iso = _iso_area_differs(records)
  lines += ["## Speedups (modelled, SPEC 4)", "",
            "Cycle totals of the estimator's engines over every layer the graph reader maps "
            f"(weight-serial models, {_GEOMETRY}; see docs/estimator.md, \"Reading the estimate\"); "
            "the coverage column says what share of the model's weight MACs those layers hold "
            "(docs/estimator.md, \"Coverage\"). Over `stripes` includes what `mortar` gains with "
            "nothing morphed (its own column). " +
            ("Iso-area figures need an area for both engines." if iso else
             "No iso-area figures: they need an area for both engines, and only `mortar` has "
             "one among the default engines, so over `mortar` unmorphed the iso-area speedup "
             "is the plain one (the same engine on both sides) and over `stripes` there is "
             "none.") + (ceiling if ceiling else ""), ""]
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
            "- The paper's own models (ImageNet CNNs) are not among these, so no row of "
            "its tables is reproduced model for model; its figures are shown beside these as "
            "published.",
            "- Agreement and PSNR measure how far the morphed model moves from the original, "
            "which is stricter than task accuracy (a changed output can still be right) but not "
            "the same thing." + (" Small data sets (" + ", ".join(
                f"{r['name']}: {r['model']['samples']}" for r in small) + " inputs) make those "
                "scores coarse." if small else ""),
            "- The per-layer search table's search chooses and scores its map on the same "
            "samples (no held-out set), so its results sit at the edge of the budget and are "
            "optimistic for unseen inputs" + (
                "; the compensation table's searches (plain and compensated) are held out."
                if _compensated(records) else "."),
            "- The speedups are the estimator's weight-side cycle counts (SPEC 4), not the "
            "paper's RTL; activations are not serialised, memory and exponent matching are not "
            "modelled. The BitX hardware figure is our model of it (above).", ""]
  lines += ["## Time", "", "Wall time per part on this machine (the design space includes one "
            "estimator run per point).", ""] + _timing(records)
  return "\n".join(lines)


FIGURES = ("bit_density.png", "columns.png", "pareto.png")  # what write_page puts in figures_dir


SUMMARY_HEADING = "## Summary"
README_BEGIN, README_END = "<!-- results-summary: begin -->", "<!-- results-summary: end -->"


def summary_of(page_text: str) -> list[str]:
  """The lines of the page's summary section (its bullets)."""
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
               work_dir: str = "out/results", intro: str = "", title: str = "",
               readme: str | None = None) -> list[str]:
  """Writes the page and its figures, all or none; returns the paths.

  With `readme`, the page's summary bullets also replace the block
  between that file's README_BEGIN and README_END markers (written with the
  page, or not at all).

  Raises:
    ValueError: no records; records made with different settings; a
      `readme` without the markers.
    files.OutputError: a path that cannot be written.
  """
  if not records:
    raise ValueError("no model has a record: nothing to put on the page")
  from mortar_tf.explore import evaluation  # pylint: disable=import-outside-toplevel
  settings = {str(evaluation.core_settings(r["settings"])) for r in records}
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
    text = page(records, figures, failed or {}, command, page_dir, work_dir, intro, title)
    files.write_text(page_path, text + "\n")
    written = [page_path] + list(figures.values())
    if readme:
      with open(readme, encoding="utf-8") as f:
        current = f.read()
      files.write_text(readme, with_summary(current, summary_of(text)))
      written.append(readme)
  return written
