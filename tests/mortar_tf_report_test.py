"""Tests of mortar_tf.sparsity_report and sparsity_reports."""

import json
import math

import numpy as np
import pytest

import mortar_tf
from mortar_tf import backends
from mortar_tf import report

import spec_reference as ref


def _popcount_sig(a):
  return sum(ref.sig_ones(int(w)) for w in np.asarray(a, np.float32).reshape(-1).view(np.uint32))


def _popcount_word(a):
  return sum(bin(int(w)).count("1") for w in np.asarray(a, np.float32).reshape(-1).view(np.uint32))


def _weights():
  rng = np.random.default_rng(0)
  return {
      "dense/kernel": rng.standard_normal((12, 5)).astype(np.float32),
      "conv/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
      "dw/kernel": rng.standard_normal((3, 3, 4, 1)).astype(np.float32),
      "step": np.int64(7),
  }


def test_counts_and_ratios_against_independent_popcounts():
  weights = _weights()
  r = mortar_tf.sparsity_report(weights, "paper", precision=0.1,
                                groupings={"dw/kernel": "depthwise"}, group_size=4, width=12)
  assert [t.name for t in r.tensors] == ["dense/kernel", "conv/kernel", "dw/kernel"]
  assert r.skipped == (("step", "dtype int64 is not float32"),)
  for t in r.tensors:
    original = weights[t.name]
    morphed = np.array([ref.paper(v, 0.1) for v in original.reshape(-1)],
                       np.float32).reshape(original.shape)
    assert t.before["significand"] == _popcount_sig(original)
    assert t.after["significand"] == _popcount_sig(morphed)
    assert t.before["word"] == _popcount_word(original)
    assert t.after["word"] == _popcount_word(morphed)
    axes = (0, 1) if t.name == "dw/kernel" else tuple(range(original.ndim - 1))
    assert t.before["aligned"] == sum(ref.aligned_column_ones(original, axes, 4, 12))
    assert t.after["aligned"] == sum(ref.aligned_column_ones(morphed, axes, 4, 12))
    assert t.ratio["word"] == t.before["word"] / t.after["word"]
    rel = np.max(np.abs(morphed.astype(np.float64) - original) / np.abs(original))
    assert t.max_rel_error == rel < 0.1
  for domain in ("significand", "word", "aligned"):
    assert r.total_before[domain] == sum(t.before[domain] for t in r.tensors)
    assert r.total_ratio[domain] == r.total_before[domain] / r.total_after[domain]
  assert r.tensors[2].grouping == "depthwise" and r.tensors[0].grouping == "default"


def test_reports_share_the_original_counts_and_match_single_reports():
  weights = _weights()
  specs = [mortar_tf.MorphSpec.create("fewest_ones", 0.2),
           mortar_tf.MorphSpec.create("round", keep_bits=3),
           mortar_tf.MorphSpec.create("bitx", columns=5, group_size=16, width=24)]
  # The bitx spec's geometry is the reports' (16, 24: not the default).
  many = report.sparsity_reports(weights, specs, group_size=16, width=24)
  for spec, r in zip(specs, many):
    single = mortar_tf.sparsity_report(weights, spec, group_size=16, width=24)
    assert single.to_dict() == r.to_dict()


def test_ratio_conventions_zero_over_zero_and_n_over_zero():
  weights = {"zeros": np.zeros(4, np.float32), "ones": np.ones(4, np.float32)}
  r = mortar_tf.sparsity_report(weights, "paper", morphed_by_name={
      "zeros": np.zeros(4, np.float32), "ones": np.zeros(4, np.float32)})
  assert r.tensors[0].ratio == {"significand": 1.0, "word": 1.0, "aligned": 1.0}
  assert all(math.isinf(v) for v in r.tensors[1].ratio.values())
  data = json.loads(json.dumps(r.to_dict(), allow_nan=False))
  assert data["tensors"][1]["ratio"]["word"] == "inf"


def test_format_table_lists_every_tensor_and_the_total():
  text = mortar_tf.sparsity_report(_weights(), "paper").format_table()
  for name in ("dense/kernel", "conv/kernel", "dw/kernel", "total", "skipped step"):
    assert name in text


@pytest.mark.parametrize("kwargs,match", [
    (dict(groupings={"missing": "dense"}), "not in the weights"),
    (dict(groupings={"dense/kernel": {"axis": 0}}), "unknown grouping keys"),
    (dict(morphed_by_name={}), "has no tensor"),
    (dict(morphed_by_name={"dense/kernel": np.zeros(3, np.float32)}), "shape"),
    (dict(precision=2.0), "precision"),
])
def test_bad_report_arguments(kwargs, match):
  weights = {"dense/kernel": np.ones((3, 2), np.float32)}
  with pytest.raises(ValueError, match=match):
    mortar_tf.sparsity_report(weights, "paper", **kwargs)


def test_spec_and_arguments_together_is_an_error():
  with pytest.raises(ValueError, match="not both"):
    mortar_tf.sparsity_report({}, mortar_tf.MorphSpec.create("paper"), precision=0.1)


def _max_rel_reference(x, y):
  """max |y - x| / |x| in float64 over finite nonzero x, element by element."""
  worst = 0.0
  for a, b in zip(np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)):
    if math.isfinite(a) and a != 0:
      r = abs(b - a) / abs(a)
      if math.isnan(r):
        return math.nan
      worst = max(worst, r)
  return worst


@pytest.mark.parametrize("n", [0, 1, 7, 5000, 300_001])
def test_max_relative_error_equals_an_element_by_element_reference(n):
  """The C++ kernel (used for float32 arrays) and the numpy fallback give the
  reference's value bit for bit, specials included (inf/NaN/zero x are not
  counted; a NaN y where x counts makes the answer NaN)."""
  from mortar_tf import native  # pylint: disable=import-outside-toplevel
  assert native.is_built(), native.why_not_built()
  rng = np.random.default_rng(n)
  x = (rng.standard_normal(n) * rng.choice([1e-38, 1e-3, 1.0, 1e38], n)).astype(np.float32)
  specials = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3.4e38])
  x[rng.integers(0, max(n, 1), min(n, 40))] = rng.choice(specials, min(n, 40))
  with np.errstate(over="ignore"):
    y = (x * (1 + rng.standard_normal(n) * 0.1)).astype(np.float32)
  reference = _max_rel_reference(x, y) if n <= 5000 else None
  got = report.max_relative_error(x, y)
  fallback = backends._max_relative_error_numpy(x, y)  # pylint: disable=protected-access
  assert got == fallback
  if reference is not None:
    assert got == reference
  if n:
    counted = np.flatnonzero(np.isfinite(x) & (x != 0))
    y[counted[len(counted) // 2]] = np.nan
    assert math.isnan(report.max_relative_error(x, y))
    assert math.isnan(_max_rel_reference(x, y)) or n > 5000
