"""Error-compensated morphing's numpy core (SPEC 6) against an independent
reference: OBQ's update written from its definition (the inverse of H over
the rows not yet morphed, recomputed every step, no Cholesky factor, no
blocks), and SPEC 2's methods through the numpy reference."""

import numpy as np
import pytest

from mortar_tf import compensation
from mortar_tf import morphing

SPECS = [morphing.MorphSpec("fewest_ones", 0.01), morphing.MorphSpec("fewest_ones", 0.1),
         morphing.MorphSpec("paper", 0.1), morphing.MorphSpec("paper", 0.3),
         morphing.MorphSpec("round", keep_bits=3)]


def _problem(d=24, n=7, samples=400, seed=0):
  """Correlated inputs (a random mixing plus an offset) and a kernel [d, n]."""
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  x = rng.normal(size=(2 * samples, d)) @ mix + 0.5 * rng.normal(size=(1, d))
  w = (rng.normal(size=(d, n)) * 0.1).astype(np.float32)
  return w, x[:samples], x[samples:]


def _stats(x):
  stats = compensation.Statistics(x.shape[1])
  stats.add(x[: len(x) // 2])
  stats.add(x[len(x) // 2:])  # two calls: the sums add
  return stats


def _obq_reference(w, x, spec, damping):
  """OBQ from its definition: H = XᵀX/n dampened; for each row i in order,
  q_i = method(u_i) and the rows F left move by -(u_i - q_i) H_F⁻¹[:, i] / H_F⁻¹[i, i]."""
  h = x.T @ x / len(x)
  h += damping * np.mean(np.diag(h)) * np.eye(len(h))
  u = w.astype(np.float64)
  final = np.empty_like(w)
  pre = np.empty_like(w)
  for i in range(len(u)):
    left = np.arange(i, len(u))
    inverse = np.linalg.inv(h[np.ix_(left, left)])
    pre[i] = u[i].astype(np.float32)
    final[i] = morphing.morph_numpy(pre[i], spec)
    err = u[i] - final[i]
    u[left] -= np.outer(inverse[:, 0] / inverse[0, 0], err)
  return final, pre


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("block", [1, 5, 128])
def test_matches_obq_reference(spec, block):
  w, x, _ = _problem()
  result = compensation.compensate(w, _stats(x), spec, block=block)
  final, pre = _obq_reference(w, x, spec, compensation.DEFAULT_DAMPING)
  np.testing.assert_allclose(result.premorph, pre, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(result.morphed.view(np.uint32), final.view(np.uint32))


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_final_values_are_the_methods_morph_of_the_premorph_values(spec):
  w, x, _ = _problem(d=40, n=16, seed=1)
  for projected in (False, True):
    result = compensation.compensate(w, _stats(x), spec, projected=projected)
    np.testing.assert_array_equal(
        result.morphed.view(np.uint32),
        morphing.morph_numpy(result.premorph, spec).view(np.uint32))


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_smaller_output_error_on_held_out_inputs(spec):
  w, x, held = _problem(d=64, n=32, samples=2000, seed=2)
  plain = morphing.morph_numpy(w, spec)
  for projected in (False, True):
    result = compensation.compensate(w, _stats(x), spec, projected=projected)
    assert (compensation.output_error(w, result.morphed, held)
            < compensation.output_error(w, plain, held))


def test_diagonal_hessian_gives_the_plain_morph():
  """Uncorrelated rows: H⁻¹'s factor is diagonal, so no error moves anywhere."""
  w, _, _ = _problem(d=16, n=9)
  rng = np.random.default_rng(3)
  x = np.diag(rng.uniform(0.5, 2.0, 16))  # H = diag(s²)/16, exactly diagonal
  for spec in SPECS:
    result = compensation.compensate(w, _stats(np.vstack([x, x])), spec)
    np.testing.assert_array_equal(result.premorph.view(np.uint32), w.view(np.uint32))
    np.testing.assert_array_equal(result.morphed.view(np.uint32),
                                  morphing.morph_numpy(w, spec).view(np.uint32))


def test_without_error_compensation_the_values_are_plain():
  w, x, _ = _problem()
  for spec in SPECS:
    result = compensation.compensate(w, _stats(x), spec, error=False)
    np.testing.assert_array_equal(result.morphed.view(np.uint32),
                                  morphing.morph_numpy(w, spec).view(np.uint32))
    assert result.outside == 0 and result.fallbacks == 0


@pytest.mark.parametrize("error", [False, True])
def test_bias_shift_is_the_mean_output_change(error):
  w, x, _ = _problem(d=32, n=12, seed=4)
  spec = morphing.MorphSpec("paper", 0.2)
  result = compensation.compensate(w, _stats(x), spec, error=error)
  change = x @ (result.morphed.astype(np.float64) - w.astype(np.float64))
  corrected = change - result.bias_shift  # the bias takes the shift away
  np.testing.assert_allclose(corrected.mean(axis=0), 0, atol=1e-12)
  assert np.abs(change.mean(axis=0)).max() > 1e-4  # there was a shift to take away


def _outside_count(final, original, bound):
  count = 0
  for a, b in zip(final.reshape(-1), original.reshape(-1)):
    if a.view(np.uint32) == b.view(np.uint32):
      continue
    if not abs(float(a) - float(b)) < bound * abs(float(b)):
      count += 1
  return count


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_distances_from_the_original_are_reported(spec):
  w, x, _ = _problem(d=48, n=10, seed=5)
  w[3, 2] = 0.0  # a zero the updates move
  bound = 2.0 ** -4 if spec.method == "round" else spec.precision
  free = compensation.compensate(w, _stats(x), spec)
  assert free.outside == _outside_count(free.morphed, w, bound) > 0
  rel = np.abs(free.morphed.astype(np.float64) - w)[w != 0] / np.abs(w[w != 0])
  assert free.max_rel == pytest.approx(rel.max()) and free.mean_rel == pytest.approx(rel.mean())
  projected = compensation.compensate(w, _stats(x), spec, projected=True)
  assert projected.outside == _outside_count(projected.morphed, w, bound) == 0
  assert projected.fallbacks > 0
  took_original = projected.premorph.view(np.uint32) == w.view(np.uint32)
  assert took_original.sum() >= projected.fallbacks


def test_depthwise_is_one_problem_per_channel():
  rng = np.random.default_rng(6)
  kernel = (rng.normal(size=(3, 3, 4, 2)) * 0.2).astype(np.float32)
  rows = rng.normal(size=(300, 4, 9)) + rng.normal(size=(1, 4, 9))
  stats = compensation.Statistics(9, groups=4)
  stats.add(rows)
  spec = morphing.MorphSpec("fewest_ones", 0.05)
  result = compensation.compensate(kernel, stats, spec, depthwise=True)
  shift = result.bias_shift.reshape(4, 2)
  for c in range(4):
    alone = compensation.compensate(np.ascontiguousarray(kernel[:, :, c, :]).reshape(9, 2),
                                    _stats(rows[:, c, :]), spec)
    np.testing.assert_array_equal(result.morphed[:, :, c, :].reshape(9, 2).view(np.uint32),
                                  alone.morphed.view(np.uint32))
    np.testing.assert_allclose(shift[c], alone.bias_shift, rtol=1e-12, atol=1e-15)


def test_rows_no_input_reaches_keep_their_plain_morph():
  w, x, _ = _problem(d=12, n=5, seed=7)
  x[:, 4] = 0.0  # input 4 is always zero
  spec = morphing.MorphSpec("fewest_ones", 0.1)
  result = compensation.compensate(w, _stats(x), spec)
  assert np.all(np.isfinite(result.morphed))
  # Row 4 is uncorrelated with the rest: nothing moves into it or out of it.
  np.testing.assert_array_equal(result.premorph[4].view(np.uint32), w[4].view(np.uint32))


def test_bad_input_is_refused():
  w, x, _ = _problem()
  stats = _stats(x)
  with pytest.raises(ValueError, match="per group"):
    compensation.compensate(w, stats, morphing.MorphSpec("bitx", columns=8))
  bad = w.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN or inf"):
    compensation.compensate(bad, stats, SPECS[0])
  with pytest.raises(ValueError, match="do not fit"):
    compensation.compensate(w[:10], stats, SPECS[0])
  with pytest.raises(TypeError, match="float32"):
    compensation.compensate(w.astype(np.float64), stats, SPECS[0])
  with pytest.raises(ValueError, match="damping"):
    compensation.compensate(w, stats, SPECS[0], damping=0.0)
  with pytest.raises(ValueError, match="not finite"):
    compensation.Statistics(3).add(np.float32([[1, np.inf, 0]]))


def test_one_statistics_object_serves_many_specs_as_fresh_ones_do():
  """The factor of H⁻¹ is kept between calls: every spec compensated through
  one Statistics equals the same through a fresh one, bit for bit, and rows
  added later are counted (the kept factor is dropped)."""
  w, x, _ = _problem(d=30, n=5, samples=300, seed=3)
  shared = _stats(x[:200])
  specs = [morphing.MorphSpec.create(m, p) for m in ("paper", "fewest_ones")
           for p in (0.01, 0.1, 0.3)]
  for spec in specs + specs[::-1]:
    kept = compensation.compensate(w, shared, spec)
    fresh = compensation.compensate(w, _stats(x[:200]), spec)
    assert kept.morphed.tobytes() == fresh.morphed.tobytes(), spec
    assert kept.bias_shift.tobytes() == fresh.bias_shift.tobytes()
  shared.add(x[200:])
  later = compensation.compensate(w, shared, specs[0])
  again = _stats(x[:200])
  again.add(x[200:])
  fresh = compensation.compensate(w, again, specs[0])
  assert later.morphed.tobytes() == fresh.morphed.tobytes()
  assert later.premorph.tobytes() != compensation.compensate(
      w, _stats(x[:200]), specs[0]).premorph.tobytes()
