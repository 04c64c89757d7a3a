"""Paths the other tests reach only indirectly: the converter's slicing of a
tensor above 2^20 elements, the numpy aligned-domain reference on its own (not
through the op), the `pragmatic` floor of one cycle for an all-zero group, and
the estimator without the C++ op.

References: spec_reference's plain loops, and SPEC 4 read by hand.
"""

import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mortar_tf import bits
from mortar_tf import estimator
from mortar_tf import savedmodel

import installed_tool
import spec_reference as ref


class Big(tf.Module):
  """One kernel of 1100 x 1000 = 1.1M elements: more than one 2^20 slice."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(0)
    self.w = tf.Variable((rng.standard_normal((1100, 1000)) * 0.05).astype(np.float32), name="w")

  @tf.function(input_signature=[tf.TensorSpec([None, 1100], tf.float32)])
  def __call__(self, x):
    return tf.matmul(x, self.w)


def test_the_converter_slices_a_large_tensor_without_changing_its_counts(tmp_path):
  module = Big()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  report = savedmodel.convert(str(tmp_path / "m"), str(tmp_path / "o"), "paper", 0.1)
  (record,) = report.morphed
  w = module.w.numpy()
  assert w.size > 1 << 20
  reader = tf.train.load_checkpoint(str(tmp_path / "o" / "variables" / "variables"))
  morphed = reader.get_tensor(record.key)
  for domain in bits.DOMAINS:
    assert record.ones_before[domain] == bits.count_ones(w, domain, reduction_axes=(0,)), domain
    assert record.ones_after[domain] == bits.count_ones(morphed, domain, reduction_axes=(0,)), domain


@pytest.mark.parametrize("axes,group_size,width", [((0,), 4, 24), ((0, 1), 16, 8),
                                                   ((1,), 3, 40), ((), 5, 64)])
def test_the_numpy_aligned_reference_on_its_own(axes, group_size, width):
  w = (np.random.default_rng(len(axes) + width).standard_normal((6, 5, 4)) * 4).astype(np.float32)
  w[0, 0, 0], w[1, 1, 1] = 0.0, np.float32(1e-40)  # a zero and a subnormal
  expected = ref.aligned_column_ones(w, axes, group_size, width)
  got = bits.bit_histogram(w, "aligned", reduction_axes=axes, group_size=group_size,
                           width=width)
  np.testing.assert_array_equal(got, expected)
  assert bits.count_ones(w, "aligned", reduction_axes=axes, group_size=group_size,
                         width=width) == sum(expected)


class Zeros(tf.Module):
  """A kernel whose columns are all zero: every group has no ones at all."""

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(tf.zeros([8, 3]), name="w")

  @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
  def __call__(self, x):
    return tf.matmul(x, self.w)


def test_an_all_zero_group_still_costs_one_cycle(tmp_path):
  module = Zeros()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  result = estimator.estimate(str(tmp_path / "m"), input_shape=(2, 8), precision=0.1)
  (layer,) = result.mapped
  # SPEC 4: pragmatic = max lane ones, at least 1: one cycle per all-zero group
  groups = layer.n_groups["pragmatic"]
  assert groups == 3  # three columns of 8 lanes, one group each at G=64
  for weights in ("original", "morphed"):
    assert layer.cycles["pragmatic"][weights] == layer.n_pos * groups
    assert layer.cycles["mortar"][weights] == layer.n_pos * groups  # the same rule
    assert layer.cycles["bitlet"][weights] >= layer.n_pos * groups  # at least 1 per group too


NUMPY_ESTIMATE = textwrap.dedent("""
    import json, sys
    from mortar_tf import estimator, ops
    assert not ops.is_built()
    result = estimator.estimate(sys.argv[1], input_shape=(2, 8), precision=0.2)
    print(json.dumps([[l.cycles, {e: {w: list(map(int, v)) for w, v in c.items()}
                                  for e, c in l.columns.items()}] for l in result.mapped]))
""")


def test_the_estimator_without_the_op_gives_the_same_figures(tmp_path):
  module = Big()  # reuses the module's structure at a small size
  small = tf.Module()
  small.w = tf.Variable(module.w.numpy()[:8, :40], name="w")
  small.__call__ = tf.function(lambda x: tf.matmul(x, small.w),
                               input_signature=[tf.TensorSpec([None, 8], tf.float32)])
  tf.saved_model.save(small, str(tmp_path / "m"), signatures=small.__call__)
  with_op = estimator.estimate(str(tmp_path / "m"), input_shape=(2, 8), precision=0.2)
  env = dict(installed_tool.ENV, MORTAR_TF_DISABLE_OPS="1")
  result = installed_tool.python("-c", NUMPY_ESTIMATE, str(tmp_path / "m"), env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  import json  # pylint: disable=import-outside-toplevel
  (cycles, columns), = json.loads(result.stdout.strip().splitlines()[-1])
  (layer,) = with_op.mapped
  assert cycles == {e: dict(c) for e, c in layer.cycles.items()}
  assert columns == {e: {w: list(map(int, v)) for w, v in c.items()}
                     for e, c in layer.columns.items()}
