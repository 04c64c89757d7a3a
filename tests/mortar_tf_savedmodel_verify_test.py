"""Verification of a morphed SavedModel when the outputs hold NaN or inf.

Non-finite positions must match exactly (NaN with NaN, +inf with +inf), finite
ones are compared by value. The expected figures are worked out by hand from
the arrays in each case.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import installed_tool
from mortar_tf.savedmodel import verify

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("original,morphed,max_abs,max_rel,alike,mismatches", [
    ([1.0, 2.0], [1.0, 2.5], 0.5, 0.25, 0, 0),
    ([1.0, NAN, -4.0], [1.5, NAN, -4.0], 0.5, 0.125, 1, 0),       # NaN alike: finite compared
    ([INF, -INF, 2.0], [INF, -INF, 2.0], 0.0, 0.0, 2, 0),
    ([1.0, NAN], [1.0, 3.0], 0.0, 0.0, 0, 1),                      # NaN became finite
    ([1.0, 3.0], [1.0, NAN], 0.0, 0.0, 0, 1),                      # finite became NaN
    ([INF, 1.0], [-INF, 1.0], 0.0, 0.0, 0, 1),                     # the sign of inf changed
    ([NAN, 1.0], [INF, 1.0], 0.0, 0.0, 0, 1),                      # NaN became inf
    ([NAN, NAN], [NAN, NAN], 0.0, 0.0, 2, 0),                      # nothing finite to compare
    ([0.0, NAN], [0.5, NAN], 0.5, INF, 1, 0),                      # only zeros were expected
])
def test_compare(original, morphed, max_abs, max_rel, alike, mismatches):
  got = verify.compare(np.float32(original), np.float32(morphed))
  assert got["max_abs"] == max_abs
  assert got["max_rel"] == max_rel
  assert got["non_finite"] == alike and got["non_finite_mismatches"] == mismatches


def _verification(outputs, max_rel=0.3):
  return verify.Verification({"x": (1, 4)}, "random", outputs, max_rel, None)


def test_a_non_finite_mismatch_fails_and_is_named():
  ok = _verification({"y": verify.compare(np.float32([1, NAN]), np.float32([1.1, NAN]))})
  assert ok.passed
  assert "1 NaN/inf in both alike" in "\n".join(ok.lines())
  bad = _verification({"y": verify.compare(np.float32([1, NAN]), np.float32([1, 1]))})
  assert not bad.passed
  assert bad.failures() == ["y: 1 position(s) where one output is NaN or inf and the other is "
                            "not the same"]
  assert bad.to_dict()["outputs"]["y"]["non_finite_mismatches"] == 1
  assert "no tolerance allows" in bad.advice() and "raise the tolerance" in _verification(
      {"y": verify.compare(np.float32([1.0]), np.float32([2.0]))}).advice()


class _NonFinite(tf.Module):
  """y = x W + c, where c holds NaN, +inf and -inf: those positions are
  non-finite whatever W is, the others are finite."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(2)
    self.w = tf.Variable(rng.standard_normal((4, 5)).astype(np.float32), name="w")
    self.c = tf.constant(np.float32([0, NAN, INF, -INF, 1]))

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def __call__(self, x):
    return {"y": tf.matmul(x, self.w) + self.c}


def test_mortar_morph_verifies_a_model_whose_outputs_are_not_finite(tmp_path):
  module = _NonFinite()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  result = installed_tool.run("mortar-morph", f"--input={tmp_path / 'm'}",
                              f"--output={tmp_path / 'out'}", "--precision=0.01", "--verify",
                              "--input_shape=8,4")
  assert result.returncode == 0, result.stderr
  assert "passed" in result.stdout
  assert "24 NaN/inf in both alike, 0 not alike" in result.stdout  # 3 columns x 8 rows
  # The finite positions were compared: their difference is the morph's.
  x = np.random.default_rng(0).standard_normal((8, 4))
  morphed = tf.saved_model.load(str(tmp_path / "out"))
  a = module(tf.constant(x, tf.float32))["y"].numpy()
  b = morphed.signatures["serving_default"](tf.constant(x, tf.float32))["y"].numpy()
  finite = np.isfinite(a)
  assert finite.sum() == 16 and np.array_equal(finite, np.isfinite(b))
  assert 0 < np.max(np.abs(a[finite] - b[finite])) / np.max(np.abs(a[finite])) < 0.02
  assert not math.isnan(float(np.max(np.abs(a[finite] - b[finite]))))
