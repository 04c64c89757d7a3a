"""The results page's generated sentences flip with the records.

Each record is written by hand with a known outcome (a per-kernel map that
beats the global P, the global P returned, nothing within budget; a drop that
does or does not grow with P; a score within or outside the budget; a tie
within the resolution; a speedup at the ceiling), and the sentence must say
exactly that, worked out by hand here, in English that reads right for one
model as for several.
"""

import copy
import math

import pytest

from mortar_tf.explore import results_page

GRID = [0.01, 0.1, 0.3]


def _point(p, drop, aligned=2.0, speedup=3.0):
  return {"settings": {"precision": p}, "metric": 1.0 - drop, "drop": drop,
          "ratio": {"aligned": aligned}, "speedup": speedup}


def _record(name, outcome, drops=(0.0, 0.0, 0.0), global_p=0.1):
  """outcome: "map" (a per-kernel map, 1.5x the global's ratio), "global"
  or "nothing"; drops: the design-space drop at each P of GRID."""
  best = _point(global_p, 0.0, aligned=2.0, speedup=3.0) if global_p else None
  point = {"map": _point(None, 0.0, aligned=3.0, speedup=4.5),
           "global": best, "nothing": _point(None, 0.0, aligned=1.0, speedup=1.5)}[outcome]
  return {
      "name": name,
      "metric": {"name": "agreement", "budget": 0.01, "higher_is_better": True},
      "settings": {"search_method": "fewest_ones", "search_precisions": GRID},
      "design_space": {"paper": [], "fewest_ones": [_point(p, d) for p, d in zip(GRID, drops)]},
      "search": {"point": point, "best_global": best, "chose_global": outcome == "global",
                 "precisions": {} if outcome == "nothing" else {"fc": 0.3}},
  }


def _per_layer(records):
  (line,) = [l for l in results_page._summary(records, 0.1) if "Per-layer P" in l]
  return line


def test_only_per_kernel_maps_count_as_per_kernel_gains():
  line = _per_layer([_record("a", "map"), _record("b", "global"), _record("c", "nothing")])
  assert "On 1 of the 3 models (a) the search found a per-kernel map" in line
  assert "aligned ratio (measured) is 1.50x that P's, its estimated speedup (modelled) 1.50x" \
      in line
  assert "on b no per-kernel map beat the best single P, and the search returned that P" in line
  assert "on c nothing could be morphed within the budget" in line
  line = _per_layer([_record("b", "global")])
  assert "On b no per-kernel map beat the best single P, and the search returned that P" in line
  assert "1.00x" not in line and " of " not in line.split("(scored")[0]
  line = _per_layer([_record("a", "map"), _record("b", "map")])
  assert "On both models the search found a per-kernel map" in line


def test_the_speedup_within_budget_names_what_each_result_is():
  text = results_page._within_budget_speedups([_record("a", "map"), _record("b", "global")])
  assert "(a per-kernel map on a; one P for the whole model on b)" in text
  assert "makes `mortar` 3.00x to 4.50x faster than `stripes`." in text
  assert "ceiling" not in text and "†" not in text
  top = _record("a", "map")
  top["search"]["point"]["speedup"] = 24.0
  text = results_page._within_budget_speedups([top])
  assert "Spending at most its budget, the search's result (a per-kernel map) makes `mortar` " \
         "24.00x† faster than `stripes`; † marks the estimate's ceiling (24.00x over " \
         "`stripes`)" in text


def test_the_global_p_check_flips_when_the_drop_does_not_grow_with_p():
  # Drops grow with P and 0.1 is the last within budget: the bisection's P is the largest.
  grows = _record("a", "global", drops=(0.0, 0.005, 0.05), global_p=0.1)
  assert results_page._global_p_check([grows]) == (
      " The design-space table, which evaluates every P, agrees: no larger P of both grids is "
      "within the budget.")
  assert "agrees on every model:" in results_page._global_p_check([grows, grows])
  # 0.3 is within budget although 0.1 was chosen (the drop fell again at 0.3).
  dips = _record("b", "global", drops=(0.0, 0.005, 0.008), global_p=0.1)
  text = results_page._global_p_check([grows, dips])
  assert "shows a larger P within the budget on b (P = 0.3 within the budget, the " \
         "bisection's P = 0.1) (it agrees on a)." in text
  none_chosen = _record("c", "nothing", drops=(0.0, 0.5, 0.5), global_p=None)
  assert "on c (P = 0.01 within the budget, the bisection's none)" in \
      results_page._global_p_check([none_chosen])


# --------------------------------------------------------------------------
# Whole pages from complete hand-made records


def _pt(p, metric, original, word, aligned, speedup, alone, samples_metric="accuracy"):
  del samples_metric
  return {"settings": {"precision": p}, "metric": metric, "drop": original - metric,
          "ratio": {"word": word, "aligned": aligned}, "speedup": speedup,
          "speedup_unmorphed": alone, "precisions": None}


def _full(name, metric="accuracy", original=0.9, budget=0.01, samples=1000, at_ref=0.8,
          few_at_ref=0.79, bitx=0.82, search="nothing"):
  """A complete record of one model: grid P = 0.01, 0.1 (the reference),
  `paper` at 0.1 scoring `at_ref` with word 2.00x, aligned 4.00x, 6.00x over
  stripes and 4.00x over unmorphed (cycles: stripes 2400, mortar 1600 -> 400);
  `fewest_ones` at 0.1 `few_at_ref`, aligned 5.00x; BitX (6 columns) `bitx`
  at aligned 4.20x; at P = 0.01 both score the original less 0.05 (outside
  a budget of 0.01). search: "nothing" (nothing within budget) or "map" (a
  per-kernel map at 9.00x / 6.00x, the best global P 0.01)."""
  higher = metric != "mse"
  off = -0.05 if higher else 0.05
  design = {
      "paper": [_pt(0.01, original + off, original, 1.5, 2.0, 3.0, 2.0),
                _pt(0.1, at_ref, original, 2.0, 4.0, 6.0, 4.0)],
      "fewest_ones": [_pt(0.01, original + off, original, 1.6, 2.2, 3.3, 2.2),
                      _pt(0.1, few_at_ref, original, 2.2, 5.0, 7.0, 4.5)]}
  if not higher:
    for points in design.values():
      for point in points:
        point["drop"] = -point["drop"]
  nothing = search == "nothing"
  found = {"precisions": {} if nothing else {"fc": 0.3}, "chose_global": False,
           "evaluations": 5,
           "point": _pt(None, original, original, 1.0 if nothing else 3.0,
                        1.0 if nothing else 6.0, 1.5 if nothing else 9.0,
                        1.0 if nothing else 6.0),
           "best_global": None if nothing else design["fewest_ones"][0] | {
               "metric": original, "drop": 0.0}}
  estimate = {
      "cycles": {"stripes": {"original": 2400, "morphed": 2400},
                 "bitlet": {"original": 2000, "morphed": 1600},
                 "mortar": {"original": 1600, "morphed": 400}},
      "headline": {"over_stripes": 6.0, "over_unmorphed": 4.0},
      "headline_iso_area": {"over_stripes": None, "over_unmorphed": 4.0},
      "engines": {"stripes": {"width": 24, "num_pes": 1, "area_mm2": None},
                  "mortar": {"width": 24, "num_pes": 1, "area_mm2": 0.031}},
      "coverage": {"complete": True, "short": "100% of the weight MACs", "missing": []}}
  return {
      "name": name, "entry": {"title": name.upper(), "weights": "w", "data_source": "d"},
      "settings": {"precisions": [0.01, 0.1], "reference": 0.1, "search_precisions": [0.01, 0.3],
                   "search_method": "fewest_ones"},
      "model": {"samples": samples, "kernels": 2, "weights": 100},
      "metric": {"name": metric, "higher_is_better": higher, "original": original,
                 "budget": budget},
      "design_space": design,
      "layers": [{"name": "fc", "size": 60, "word_bits": [1] * 32},
                 {"name": "out", "size": 40, "word_bits": [1] * 32}],
      "columns": {"original": [5] * 24},
      "bitx": {"points": [{"settings": {"columns": 6}, "metric": bitx,
                           "drop": original - bitx if higher else bitx - original,
                           "ratio": {"word": 2.1, "aligned": 4.2}, "speedup": 5.5}]},
      "estimates": {"paper": estimate, "fewest_ones": copy.deepcopy(estimate)},
      "search": found,
      "seconds": {"total": 12.0, "load": 1.0, "design_space": 5.0, "bitx": 1.0,
                  "estimates": 1.0, "search": 4.0},
      "machine": {"cpus": 2, "isa": "avx2"},
  }


def _page(records, **kwargs):
  return results_page.page(records, {k: f"/f/{k}.png" for k in ("bit_density", "columns",
                                                                 "pareto")},
                           {}, "mortar-results --models=mine.json", "/f", **kwargs)


def _bullet(text, head):
  (line,) = [l for l in text.splitlines() if l.startswith(f"- **{head}")]
  return line


def test_one_model_that_meets_no_budget_reads_right():
  """A user's list of one model where nothing fits the budget: every
  sentence is about that model by name, no '0 of 1', '1 models', '(none)',
  and nothing says the paper's claims hold."""
  text = _page([_full("m")])
  assert text.startswith("# Mortar evaluation of 1 model\n")
  for wrong in ("0 of 1", "1 of 1", "of the 1", "1 models", "(none)", "none of 1",
                "paper's claims", "reproduced on", "What holds"):
    assert wrong not in text, wrong
  summary = results_page.summary_of(text)
  assert summary[0] == (
      "- **Sparsity** (measured). `paper` at P = 0.1 cuts the word-domain ones 2.00x (ones "
      "before / after) and the aligned-domain ones, which a bit-serial engine pays for, 4.00x. "
      "The paper's published word-domain range on its own ImageNet models is 1.28x to 2.51x; "
      "m falls in it.")
  # The floor: 0.9 - 0.01 = 0.89, i.e. 89%; the score 0.8 is 10 points under the original.
  assert summary[1] == ("- **Scores at P = 0.1** (measured). m does not meet its budget "
                        "(accuracy ≥ 89%): it scores 80.00% (-10.00 pt).")
  # 1600 / 400 over unmorphed, 2400 / 400 over stripes, 2400 / 1600 with nothing morphed.
  assert ("`mortar` runs 4.00x faster than on the unmorphed weights, at the scores above; "
          "over `stripes` on the unmorphed weights that is 6.00x, which includes the 1.50x "
          "`mortar` gets over `stripes` with nothing morphed.") in summary[2]
  assert "Spending at most" not in summary[2]  # nothing was morphed within the budget
  assert summary[3].startswith("- **Per-layer P** (beyond the paper, which uses one P). On m "
                               "nothing could be morphed within the budget (scored")
  # 0.80 against 0.82 on 1000 inputs: 20 inputs apart, beyond the one-input resolution.
  assert summary[4].startswith(
      "- **Against BitX** (measured) at P = 0.1, BitX keeping the most columns that leave it "
      "at least as sparse (aligned) as `paper`: Mortar scores worse on m. Mortar against BitX, "
      "score at aligned ones ratio: m 80.00% at 4.00x against 82.00% at 4.20x. Here ")
  assert summary[5] == ("- **`fewest_ones`** (beyond the paper; measured) at P = 0.1 is sparser "
                        "(aligned) than that BitX point on m, and scores worse there.")
  assert len(summary) == 6
  assert ("The design-space table, which evaluates every P, agrees: no larger P of both grids "
          "is within the budget.") in text
  assert "| **m** | M | w | d | 1000 | accuracy = 90.00% | accuracy ≥ 89% (drop ≤ 1 pt) |" in text
  assert "| **m** | accuracy ≥ 89% | nothing within budget |" in text


def test_a_list_title_replaces_the_neutral_one():
  assert _page([_full("a"), _full("b")], title="My models").startswith("# My models\n")
  assert _page([_full("a"), _full("b")]).startswith("# Mortar evaluation of 2 models\n")


@pytest.mark.parametrize("scores,expected", [
    ((0.8, 0.8, 0.8), "None of the 3 models meets its budget: a 80.00% (budget: accuracy ≥ "
                      "89%), b 80.00% (budget: accuracy ≥ 89%), c 80.00% (budget: accuracy "
                      "≥ 89%)."),
    ((0.895, 0.8, 0.8), "1 of the 3 models meets its budget (a); below it: b 80.00% (budget: "
                        "accuracy ≥ 89%), c 80.00% (budget: accuracy ≥ 89%)."),
    ((0.895, 0.89, 0.8), "2 of the 3 models meet their budget (a, b); below it: c 80.00% "
                         "(budget: accuracy ≥ 89%)."),
    ((0.895, 0.89, 0.9), "All 3 models meet their budget."),
])
def test_the_score_sentence_counts_in_english(scores, expected):
  records = [_full(n, at_ref=v) for n, v in zip("abc", scores)]
  assert _bullet(_page(records), "Scores") == "- **Scores at P = 0.1** (measured). " + expected


def test_budgets_are_said_as_the_bound_on_the_score():
  # psnr: the drop from the 300 dB cap; accuracy in percent; agreement, mse as given.
  cases = [("psnr", 300.0, 260, "PSNR ≥ 40 dB"), ("psnr", 300.0, 261.7, "PSNR ≥ 38.3 dB"),
           ("accuracy", 0.9779, 0.005, "accuracy ≥ 97.29%"),
           ("agreement", 1.0, 0.01, "agreement ≥ 0.99"), ("mse", 0.0, 0.001, "mse ≤ 0.001")]
  for metric, original, budget, bound in cases:
    assert results_page._bound(_full("m", metric=metric, original=original,
                                     budget=budget)) == bound


def _bitx_records(metric, pairs, samples=1000):
  """One record per (mortar's score at P = 0.1, BitX's score), named a, b, c..."""
  original = {"psnr": 300.0, "mse": 0.0}.get(metric, 1.0)
  return [_full(chr(ord("a") + i), metric=metric, original=original, budget=0.01,
                samples=samples, at_ref=m, few_at_ref=f, bitx=b)
          for i, (m, f, b) in enumerate(pairs)]


def test_score_differences_within_the_resolution_are_ties():
  # PSNR: 0.1 dB apart is a tie, 3.6 and 0.6 dB are not (resolution 0.5 dB).
  records = _bitx_records("psnr", [(38.4, 33.8, 38.3), (42.1, 42.4, 38.5), (27.2, 30.1, 27.8)])
  line = _bullet(_page(records), "Against BitX")
  assert ("Mortar scores better on 1 of the 3 models (b), the same within the resolution on 1 "
          "(a) and worse on 1 (c).") in line
  assert "b 42.1 dB at 4.00x against 38.5 dB at 4.20x" in line  # the sparsities, not 'slightly'
  assert "slightly" not in line
  assert "differences of at most 0.5 dB of PSNR, one input of accuracy or agreement" in line
  line = _bullet(_page(records), "`fewest_ones`")
  # fewest_ones is sparser (5.00x >= 4.20x) on every model: 33.8 vs 38.3 worse, 42.4 vs 38.5
  # better, 30.1 vs 27.8 better.
  assert line.endswith("is sparser (aligned) than that BitX point on all 3 models; it scores "
                       "better on 2 (b, c) and worse on 1 (a).")
  # Agreement on 200 inputs: one input (0.005) apart is a tie, two (0.01) are not.
  records = _bitx_records("agreement", [(0.98, 0.98, 0.975), (0.98, 0.98, 0.97)], samples=200)
  line = _bullet(_page(records), "Against BitX")
  assert "Mortar scores better on 1 of the 2 models (b) and the same within the resolution " \
         "on 1 (a)." in line
  # mse: a factor of 1.1 is within the 0.5 dB factor (1.122), 1.2 is not.
  records = _bitx_records("mse", [(1.0e-3, 1e-3, 1.1e-3), (1.0e-3, 1e-3, 1.2e-3)])
  line = _bullet(_page(records), "Against BitX")
  assert "Mortar scores better on 1 of the 2 models (b) and the same within the resolution " \
         "on 1 (a)." in line
  assert results_page.MSE_FACTOR == pytest.approx(10 ** 0.05) and \
      10 * math.log10(results_page.MSE_FACTOR) == pytest.approx(0.5)
  records = _bitx_records("agreement", [(0.9, 0.9, 0.8), (0.9, 0.9, 0.8)])
  assert "Mortar scores better on both models." in _bullet(_page(records), "Against BitX")


def test_speedups_lead_over_unmorphed_and_mark_the_ceiling():
  records = [_full("a", search="map"), _full("b", search="map")]
  records[1]["search"]["point"].update(speedup=24.0, speedup_unmorphed=15.72)
  text = _page(records)
  line = _bullet(text, "Speedup")
  assert ("Spending at most each model's budget, the search's result (a per-kernel map on a, b) "
          "makes `mortar` 6.00x to 15.72x† faster than unmorphed (9.00x to 24.00x† over "
          "`stripes`); † marks the estimate's ceiling (24.00x over `stripes`)") in line
  assert "| **b** | accuracy ≥ 89% | per kernel | 90.00% (+0.00 pt) | 6.00x | 15.72x† | " \
         "24.00x† |" in text
  assert "| 15.72x† / 24.00x† |" in text and "| 6.00x / 9.00x |" in text
  records[1]["search"]["point"]["speedup"] = 23.99  # under the ceiling: no mark
  line = _bullet(_page(records), "Speedup")
  assert "(9.00x to 23.99x over `stripes`)." in line and "†" not in line


def test_the_iso_area_column_only_where_it_says_something():
  text = _page([_full("a")])
  header = next(l for l in text.splitlines() if "est. mortar x mortar unmorphed" in l)
  assert "iso" not in header and "No iso-area figures" in text
  assert "| **a** | 4.00x | 6.00x | 4.00x | 6.00x | 1.25x |" in text  # 2000 / 1600 for bitlet
  record = _full("a")
  record["estimates"]["paper"]["headline_iso_area"]["over_unmorphed"] = 5.0
  text = _page([record])
  assert "| **a** | 4.00x (iso-area 5.00x) | 6.00x |" in text
  assert "No iso-area figures" not in text


def test_layer_names_are_short_and_keep_both_ends():
  names = ["separable_conv2d_1/depthwise_kernel", "separable_conv2d_1/pointwise_kernel",
           "conv2d_1/kernel", "a" * 20 + "/block_with_a_long_name_12"]
  short = results_page._short_names(names, limit=30)
  assert short[:3] == ["separable_conv2d_1/depthwise", "separable_conv2d_1/pointwise",
                       "conv2d_1"]
  assert short[3] == "a" * 14 + "…" + "_a_long_name_12"  # 14 + 1 + 15 = 30 characters
  assert results_page.middle_ellipsis("abcdef", 6) == "abcdef"
  assert results_page.middle_ellipsis("abcdefgh", 5) == "ab…gh"


def _with_compensation(record, plain_drops, comp_drops, paper=(0.7, 0.8), searches=(3.0, 4.5),
                       scored=300):
  """The record with a compensation section: fewest_ones at P = 0.01 and 0.1
  dropping `plain_drops` plain and `comp_drops` compensated, paper at 0.1
  scoring `paper` (plain, compensated), the two searches' aligned ratios
  `searches` (plain, compensated; None: nothing within budget)."""
  record = copy.deepcopy(record)
  original = record["metric"]["original"]
  points = []
  for compensated, drops in ((False, plain_drops), (True, comp_drops)):
    for p, drop in zip((0.01, 0.1), drops):
      q = _pt(p, original - drop, original, 2.0, 3.0 + 10 * p, 4.0, 3.0)
      q["method"] = "fewest_ones"
      q["settings"] = {"precision": p, **({"compensated": True} if compensated else {})}
      points.append(q)
    q = _pt(0.1, paper[compensated], original, 2.0, 4.0, 6.0, 4.0)
    q["method"] = "paper"
    q["settings"] = {"precision": 0.1, **({"compensated": True} if compensated else {})}
    points.append(q)

  def search(aligned):
    if aligned is None:
      return {"precisions": {}, "chose_global": False, "point": None, "held_out": None}
    return {"precisions": {"fc": 0.3}, "chose_global": False,
            "point": _pt(None, original, original, 2.0, aligned, 5.0, 4.0),
            "held_out": {"samples": 150, "value": original, "drop": 0.0}}

  record["compensation"] = {"calibration_samples": 100, "scored_samples": scored,
                            "search_samples": 150, "held_out_samples": scored - 150,
                            "sweep": {"points": points, "original_metric": original},
                            "search_plain": search(searches[0]),
                            "search": search(searches[1])}
  return record


def _compensation_bullet(records):
  return _bullet("\n".join(results_page._summary(records, 0.1)), "Error-compensated")


def test_the_compensation_sentence_flips_with_its_records():
  # a: compensation lifts the largest P within budget 0.01 -> 0.1; b: it keeps
  # it at 0.01; c: nothing within budget plain, 0.01 compensated.
  a = _with_compensation(_full("a"), (0.0, 0.05), (0.0, 0.005))
  b = _with_compensation(_full("b"), (0.0, 0.05), (0.005, 0.05), paper=(0.8, 0.7),
                         searches=(3.0, 3.0))
  c = _with_compensation(_full("c"), (0.05, 0.05), (0.0, 0.05), paper=(0.8, 0.801),
                         searches=(None, 3.0))
  line = _compensation_bullet([a, b, c])
  assert ("largest `fewest_ones` P within the budget (plain → compensated) rises on 2 of the 3 "
          "models (a 0.01 → 0.1, c none → 0.01) and stays on 1 (b 0.01 → 0.01)") in line
  # paper at 0.1: a better (0.8 against 0.7), b worse, c a tie (within 1/300).
  assert ("scores better on 1 of the 3 models (a), the same within the resolution on 1 (c) "
          "and worse on 1 (b) than the plain one") in line
  assert "reaches 1.00x to 1.50x the aligned ratio of the plain search's" in line
  assert "sparser on 1 of the 2 models (a) and as sparse within 0.5% on 1 (b)" in line
  assert ("The plain search returned no map that met the budget held out on c, where the "
          "compensated one reached 3.00x aligned.") in line
  d = _with_compensation(_full("d"), (0.0, 0.05), (0.0, 0.05), searches=(3.0, None))
  e = _with_compensation(_full("e"), (0.0, 0.05), (0.0, 0.05), searches=(None, None))
  f = _with_compensation(_full("f"), (0.0, 0.05), (0.0, 0.05), searches=(None, 2.5))
  line = _compensation_bullet([a, c, d, e, f])
  assert ("The plain search returned no map that met the budget held out on c (3.00x) and f "
          "(2.50x), where the compensated one reached the aligned ratios in brackets.") in line
  assert "The compensated search returned no map that met the budget held out on d, where" in line
  assert "Neither search returned a map that met the budget held out on e." in line
  # One model, and the rule turns the other way.
  line = _compensation_bullet([_with_compensation(_full("a"), (0.0, 0.0), (0.0, 0.05),
                                                  searches=(4.5, 3.0))])
  assert "(plain → compensated) falls on a 0.1 → 0.01." in line
  assert "reaches 0.67x the aligned ratio of the plain search's: less sparse on a." in line
  assert "of the 1" not in line and "1 models" not in line


def test_records_without_compensation_leave_the_section_out():
  text = _page([_full("a")])
  assert "Error-compensated" not in text and "compensation table" not in text
  text = _page([_with_compensation(_full("a"), (0.0, 0.05), (0.0, 0.0))])
  assert "## Error-compensated morphing (beyond the paper)" in text
  row = next(l for l in text.splitlines() if l.startswith("| **a** | 100 / 150 + 150"))
  assert "| P=0.01: 90.00%, 3.10x, 4.00x | P=0.1: 90.00%, 4.00x, 4.00x |" in row
  assert "the compensation table's searches (plain and compensated) are held out" in text


def _with_formats(record, searched, half, int8, int8_error=None):
  """Formats rows: (compressed x, drop) for the searched map, float16 and
  int8 (None: no such row); int8_error makes the int8 row an error."""
  record = copy.deepcopy(record)
  original = record["metric"]["original"]

  def row(name, pair, **extra):
    x, drop = pair
    return {"name": name, "label": name, "metric": original - drop, "drop": drop,
            "weights": 100, "raw_bytes": 400, "zlib_bytes": int(370 / x),
            "compressed_x": x, **extra}
  rows = [row("float32", (1.0, 0.0))]
  if searched is not None:
    rows.append(row("searched", searched, morphed_kernels=1))
  rows.append(row("float16", half, overflow=0, flushed_to_zero=0))
  if int8_error:
    rows.append({"name": "int8", "label": "int8", "error": int8_error})
  else:
    rows.append(row("int8", int8, int8_weights=90, float32_weights=10, other_weights=0,
                    file_bytes=2_000_000, file_gzip_bytes=1_500_000))
  record["formats"] = {"version": 2, "rows": rows, "seconds": 1.0}
  return record


def _downloads(records):
  return _bullet("\n".join(results_page._summary(records, 0.1)), "Smaller downloads")


def test_the_downloads_sentence_says_where_morphing_loses():
  # a: morphing 4x beats float16 2x and int8 3.5x; b: int8 4.5x in budget beats
  # morphing 2.5x; c: int8 out of budget, float16 2x beats morphing 1.5x.
  a = _with_formats(_full("a"), (4.0, 0.005), (2.0, 0.0), (3.5, 0.0))
  b = _with_formats(_full("b"), (2.5, 0.01), (2.0, 0.0), (4.5, 0.002))
  c = _with_formats(_full("c"), (1.5, 0.0), (2.0, 0.0), (3.0, 0.02))
  line = _downloads([a, b, c])
  assert "morphing shrinks the kernels' zlib 9 bytes 1.50x to 4.00x (3 of 3 models)" in line
  assert "a float16 cast 2.00x within budget on 3 of 3" in line
  assert "TFLite's dynamic-range int8 3.50x to 4.50x within budget on 2 of 3" in line
  assert ("Morphing loses where int8 ships fewer bytes within budget on b; float16 on c (int8 and "
          "float16 change the number format the runtime reads; morphed kernels stay float32)."
          ) in line
  line = _downloads([a])
  assert "No other format within budget ships fewer bytes on any model." in line
  # A searched map over budget does not count for morphing.
  line = _downloads([_with_formats(_full("d"), (6.0, 0.05), (2.0, 0.0), (3.0, 0.0))])
  assert "morphing shrinks the kernels' zlib 9 bytes on none of the models" in line
  assert "int8 ships fewer bytes within budget on d; float16 on d" in line
  line = _downloads([b, _with_formats(_full("e"), (2.0, 0.0), (1.5, 0.0), (4.0, 0.0))])
  assert ("int8 ships fewer bytes within budget on b and e (int8 changes the number format the "
          "runtime reads") in line


def test_the_formats_table_shows_each_cell_and_errors_say_so():
  a = _with_formats(_full("a"), (4.0, 0.005), (2.0, 0.0), (3.5, 0.02))
  b = _with_formats(_full("b"), None, (2.0, 0.0), None, int8_error="TFLite could not convert it: x")
  text = _page([a, b])
  assert "## Smaller downloads: morphing beside float16 and int8 (measured)" in text
  row_a = next(l for l in text.splitlines() if l.startswith("| **a** | accuracy ≥ 89% | 0.00 MB"))
  assert "| **4.00x**, 89.50% (-0.50 pt) |" in row_a
  assert "**3.50x**, 88.00% (-2.00 pt) ✗" in row_a  # over the budget of 1 pt
  assert "10.0% of the kernel weights left float32" in row_a
  row_b = next(l for l in text.splitlines() if l.startswith("| **b** | accuracy ≥ 89% | 0.00 MB"))
  assert "| TFLite could not convert it: x |" in row_b
  assert "Without this section" not in text
  text = _page([a, _full("c")])
  assert "Without this section: c (records made before it" in text
  assert "## Smaller downloads" not in _page([_full("c")])
