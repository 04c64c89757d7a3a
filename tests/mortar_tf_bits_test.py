"""Tests of mortar_tf.bits: fields, ones per domain, histograms, groups (SPEC 1 and 3)."""

import numpy as np
import pytest
import tensorflow as tf

from mortar_tf import bits

import spec_reference as ref


def from_bits(words):
  return np.asarray(words, np.uint32).view(np.float32)


def random_words(n, seed):
  """Random float32 words of every kind: normals, specials, subnormals."""
  rng = np.random.default_rng(seed)
  words = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
  words[::13] = 0
  words[1::17] = 0x80000000
  words[2::19] = 0x7FC00001
  words[3::23] = 0x00000ABC
  words[4::29] = 0xFF800000
  return from_bits(words)


def test_fields_split_the_word():
  x = from_bits([0xBFC00000, 0x00000001, 0x7F800000])
  sign, exponent, mantissa = bits.fields(x)
  np.testing.assert_array_equal(sign, [1, 0, 0])
  np.testing.assert_array_equal(exponent, [127, 0, 255])
  np.testing.assert_array_equal(mantissa, [0x400000, 1, 0])


def test_counts_in_word_and_significand_domains_match_python_popcount():
  x = random_words(20000, seed=1)
  words = [int(w) for w in x.view(np.uint32)]
  assert bits.count_ones(x, "word") == sum(bin(w).count("1") for w in words)
  assert bits.count_ones(x, "significand") == sum(ref.sig_ones(w) for w in words)


def test_histograms_match_per_bit_loops():
  x = random_words(5000, seed=2).reshape(50, 100)
  words = [int(w) for w in x.reshape(-1).view(np.uint32)]
  word_hist = [sum((w >> (31 - i)) & 1 for w in words) for i in range(32)]
  np.testing.assert_array_equal(bits.bit_histogram(x, "word"), word_hist)
  sig = [((w & 0x7FFFFF) | 0x800000) if ref.is_normal(w) else 0 for w in words]
  sig_hist = [sum((m >> (23 - i)) & 1 for m in sig) for i in range(24)]
  np.testing.assert_array_equal(bits.bit_histogram(x, "significand"), sig_hist)


def test_histograms_span_several_chunks():
  # More elements than one streaming chunk, so chunk boundaries are exercised.
  x = np.full(bits._BINCOUNT_CHUNK * 2 + 5, 1.5, np.float32)  # pylint: disable=protected-access
  hist = bits.bit_histogram(x, "significand")
  assert hist[0] == hist[1] == x.size and hist[2:].sum() == 0
  assert bits.count_ones(x, "word") == x.size * bin(0x3FC00000).count("1")


def test_spec_engine_example_aligned_windows():
  # SPEC 5: one group [1.5, 1, 0.75, 0], G=4, width 4 -> windows 1100, 1000, 0110, 0000.
  w = np.float32([[1.5], [1.0], [0.75], [0.0]])
  np.testing.assert_array_equal(
      bits.bit_histogram(w, "aligned", group_size=4, width=4), [2, 2, 1, 0])
  assert bits.count_ones(w, "aligned", group_size=4, width=4) == 5
  words = bits.aligned_words(bits.to_groups(w, (0,), 4), 4)
  np.testing.assert_array_equal(words.reshape(-1), [0b1100, 0b1000, 0b0110, 0b0000])


LAYOUTS = [
    ("dense", (21, 3), None),
    ("conv", (3, 3, 5, 4), None),
    ("depthwise", (3, 3, 4, 2), None),  # R = 9: not a multiple of G
    ("conv_transpose", (2, 3, 4, 5), None),
    ("separable_depthwise", (5, 5, 3, 1), None),
    ("separable_pointwise", (1, 1, 7, 6), None),
    ("einsum", (5, 2, 7), "abc,dbe->adce"),
    ("default", (6,), None),
]


def _weights(shape, seed):
  rng = np.random.default_rng(seed)
  w = (rng.standard_normal(shape) * np.exp2(rng.integers(-30, 6, shape))).astype(np.float32)
  flat = w.reshape(-1)
  flat[::5] = 0.0
  flat[1::9] = np.float32(1e-40)  # subnormal
  return w


@pytest.mark.parametrize("layout,shape,equation", LAYOUTS)
@pytest.mark.parametrize("group_size,width", [(4, 24), (16, 8), (3, 40), (16, 64), (1, 1)])
def test_aligned_domain_matches_loop_reference_for_every_layout(layout, shape, equation,
                                                               group_size, width):
  w = _weights(shape, seed=len(shape) + group_size)
  axes = {"dense": (0,), "conv": (0, 1, 2), "depthwise": (0, 1), "conv_transpose": (3,),
          "separable_depthwise": (0, 1), "separable_pointwise": (0, 1, 2), "einsum": (1,),
          "default": ()}[layout]  # SPEC 3 by hand
  expected = ref.aligned_column_ones(w, axes, group_size, width)
  got = bits.bit_histogram(w, "aligned", layout=layout, equation=equation,
                           group_size=group_size, width=width)
  np.testing.assert_array_equal(got, expected)
  assert bits.count_ones(w, "aligned", layout=layout, equation=equation,
                         group_size=group_size, width=width) == sum(expected)
  # the same grouping given as explicit axes
  got_axes = bits.bit_histogram(w, "aligned", reduction_axes=axes, group_size=group_size,
                                width=width)
  np.testing.assert_array_equal(got_axes, expected)


def test_wide_exponent_spread_does_not_wrap_shifts():
  # 2^100 and 2^-100 in one group: a shift of 200 columns must drop, not wrap.
  w = np.float32([[2.0**100], [2.0**-100], [3.0 * 2.0**99]])
  for width in (2, 24, 63, 64):  # 2^100: column 0; 3*2^99: columns 0 and 1; 2^-100: column 200
    assert bits.count_ones(w, "aligned", group_size=4, width=width) == 3
  np.testing.assert_array_equal(
      bits.bit_histogram(w, "aligned", group_size=4, width=64),
      ref.aligned_column_ones(w, (0,), 4, 64))


def test_groups_round_trip_and_pad_with_positive_zero():
  w = _weights((3, 3, 4, 5), seed=0)
  for axes in [(0, 1, 2), (3,), (0, 1), (1, 3), ()]:
    groups = bits.to_groups(w, axes, 4)
    back = bits.from_groups(groups, w.shape, axes)
    np.testing.assert_array_equal(back.view(np.uint32), w.view(np.uint32))
  groups = bits.to_groups(w, (0, 1), 4)  # R = 9 -> 3 groups, 3 padding zeros each
  assert groups.shape == (20, 3, 4)
  np.testing.assert_array_equal(groups[:, -1, 1:].view(np.uint32), 0)


def test_group_order_is_row_major_over_reduction_axes():
  w = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  groups = bits.to_groups(w, (0, 2), 8)  # output axis 1; reduction (0, 2)
  np.testing.assert_array_equal(groups[1, 0], [w[0, 1, 0], w[0, 1, 1], w[0, 1, 2], w[0, 1, 3],
                                               w[1, 1, 0], w[1, 1, 1], w[1, 1, 2], w[1, 1, 3]])


def test_einsum_reduction_axes():
  assert bits.einsum_reduction_axes("ab,bc->ac") == (0,)
  assert bits.einsum_reduction_axes("abc,cde->abde") == (0,)
  assert bits.einsum_reduction_axes("...b,bc->...c") == (0,)
  assert bits.einsum_reduction_axes("abcd,cde->abe") == (0, 1)
  assert bits.einsum_reduction_axes("bc,ab->ac", operand=0) == (0,)


@pytest.mark.parametrize("call,match", [
    (lambda: bits.einsum_reduction_axes("ab,bc"), "explicit output"),
    (lambda: bits.einsum_reduction_axes("ab,...c->ac"), "ellipsis"),
    (lambda: bits.einsum_reduction_axes("ab,bc->ac", operand=2), "operand 2"),
    (lambda: bits.reduction_axes_for("dense", 3), "rank 2"),
    (lambda: bits.reduction_axes_for("conv", 2), "rank >= 3"),
    (lambda: bits.reduction_axes_for("einsum", 2), "equation"),
    (lambda: bits.reduction_axes_for("einsum", 2, "ab,bcd->acd"), "3 axes"),
    (lambda: bits.reduction_axes_for("sparse", 2), "unknown layout"),
    (lambda: bits.resolve_reduction_axes((2, 3), (0, 0)), "repeat"),
    (lambda: bits.resolve_reduction_axes((2, 3), (2,)), "out of range"),
    (lambda: bits.resolve_reduction_axes((2, 3), "01"), "sequence of integers"),
    (lambda: bits.resolve_reduction_axes((2, 3), [].copy), "a method: call it"),
    (lambda: bits.count_ones(np.ones((3, 3), np.float32), "aligned", reduction_axes=1.5),
     "sequence of integers"),
    (lambda: bits.resolve_reduction_axes((2, 3), (0,), layout="dense"), "either"),
    (lambda: bits.count_ones(np.ones(3, np.float32), "bits"), "unknown domain"),
    (lambda: bits.count_ones(np.ones((3, 3), np.float32), "aligned", width=0), "width"),
    (lambda: bits.count_ones(np.ones((3, 3), np.float32), "aligned", group_size=True),
     "group_size"),
])
def test_bad_grouping_arguments_are_value_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("value", [np.ones(3), np.ones(3, np.int8), tf.ones(3, tf.float16)])
def test_non_float32_is_type_error(value):
  with pytest.raises(TypeError, match="float32"):
    bits.count_ones(value)


@pytest.mark.parametrize("domain", bits.DOMAINS)
@pytest.mark.parametrize("shape", [(0,), (0, 4), (4, 0)])
def test_empty_tensors_count_zero(domain, shape):
  w = np.zeros(shape, np.float32)
  assert bits.count_ones(w, domain) == 0
  assert bits.bit_histogram(w, domain).sum() == 0


def test_tf_tensors_and_variables_are_read():
  x = random_words(300, seed=4)
  expected = bits.count_ones(x, "word")
  assert bits.count_ones(tf.constant(x), "word") == expected
  assert bits.count_ones(tf.Variable(x), "word") == expected


def test_sparsity_ratio_conventions():
  assert bits.sparsity_ratio(0, 0) == 1.0
  assert bits.sparsity_ratio(5, 0) == float("inf")
  assert bits.sparsity_ratio(6, 4) == 1.5
