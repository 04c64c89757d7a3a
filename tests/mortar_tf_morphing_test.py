"""Tests of mortar_tf.morph: SPEC examples, references, properties, backends, errors."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import mortar_tf
from mortar_tf import morphing
from mortar_tf import morph_tf

import spec_reference as ref

BACKENDS = ("numpy", "tf")  # every method, in Python
ELEMENTWISE_BACKENDS = ("numpy", "tf", "op", "native")
KERNEL_BACKENDS = ("native", "op")  # the C++ kernels (bitx included)
F32_MAX = float(np.finfo(np.float32).max)


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


def from_bits(words):
  return np.asarray(words, np.uint32).view(np.float32)


def assert_same_bits(actual, expected):
  np.testing.assert_array_equal(u32(actual), u32(expected))


# SPEC 5: x, P, paper, fewest_ones (the table lives with the naive references)
SPEC_EXAMPLES = ref.WORKED_EXAMPLES
_value = ref.example_value


@pytest.mark.parametrize("backend", ELEMENTWISE_BACKENDS)
@pytest.mark.parametrize("x,p,paper,fewest", SPEC_EXAMPLES)
def test_spec_examples(x, p, paper, fewest, backend):
  x = np.array([_value(x)], np.float32)
  assert_same_bits(mortar_tf.morph(x, "paper", p, backend=backend), [_value(paper)])
  assert_same_bits(mortar_tf.morph(x, "fewest_ones", p, backend=backend), [_value(fewest)])


@pytest.mark.parametrize("x,p,paper,fewest", SPEC_EXAMPLES)
def test_spec_examples_agree_with_references(x, p, paper, fewest):
  # The naive references must reproduce SPEC too, or they prove nothing.
  assert ref.f32_bits(ref.paper(_value(x), p)) == ref.f32_bits(_value(paper))
  if p <= 0.001:
    assert ref.f32_bits(ref.fewest_ones_brute(_value(x), p)) == ref.f32_bits(_value(fewest))


@pytest.mark.parametrize("backend", ELEMENTWISE_BACKENDS)
@pytest.mark.parametrize("x,keep,expected", ref.ROUND_EXAMPLES)
def test_round_spec_examples(x, keep, expected, backend):
  got = mortar_tf.morph(np.float32([x]), "round", keep_bits=keep, backend=backend)
  assert_same_bits(got, [expected])
  assert ref.f32_bits(ref.round_keep_bits(np.float32(x), keep)) == ref.f32_bits(expected)


@pytest.mark.parametrize("backend", BACKENDS + KERNEL_BACKENDS)
@pytest.mark.parametrize("columns,expected", ref.BITX_EXAMPLES)
def test_bitx_spec_example(columns, expected, backend):
  group = np.float32(ref.BITX_GROUP).reshape(4, 1)  # one output element, R = 4
  got = mortar_tf.morph(group, "bitx", columns=columns, group_size=4, width=24, backend=backend)
  assert_same_bits(got.ravel(), expected)  # +0.0, not -0.0, for the emptied negative element


SPECIAL_WORDS = [
    0x00000000, 0x80000000,  # +-0
    0x00000001, 0x007FFFFF, 0x80000001, 0x807FFFFF, 0x00400000,  # subnormals
    0x7F800000, 0xFF800000,  # +-inf
    0x7FC00000, 0x7FC00001, 0x7F800001, 0xFFC12345, 0x7FFFFFFF,  # NaNs with payloads
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("args", [
    dict(method="paper", precision=1.0), dict(method="paper", precision=0.1),
    dict(method="fewest_ones", precision=1.0), dict(method="fewest_ones", precision=1e-6),
    dict(method="round", keep_bits=0), dict(method="round", keep_bits=22),
    dict(method="bitx", columns=1, group_size=4)])
def test_special_values_unchanged_bit_for_bit(args, backend):
  x = from_bits(SPECIAL_WORDS + [0x3F800000, 0x7F7FFFFF])  # two normals share the groups
  got = mortar_tf.morph(x, **args, backend=backend)
  np.testing.assert_array_equal(u32(got)[:len(SPECIAL_WORDS)], SPECIAL_WORDS)


@pytest.mark.parametrize("backend", ELEMENTWISE_BACKENDS)
def test_carry_into_exponent_255_is_never_inf(backend):
  # Largest binade: the paper's b = 23 candidate and round's carry would be inf.
  x = from_bits([0x7F7FFFFF, 0xFF7FFFFF, 0x7F7FFFFE, 0x7F7F0000, 0x7F000001])
  for args in (dict(method="paper", precision=1.0), dict(method="fewest_ones", precision=1.0),
               dict(method="round", keep_bits=0), dict(method="round", keep_bits=10)):
    got = mortar_tf.morph(x, **args, backend=backend)
    assert np.all(np.isfinite(got)), args
  for i, v in enumerate(x):
    assert ref.f32_bits(mortar_tf.morph(x, "paper", 1.0, backend=backend)[i]) == ref.f32_bits(
        ref.paper(v, 1.0))
    assert ref.f32_bits(mortar_tf.morph(x, "round", keep_bits=0, backend=backend)[i]) == \
        ref.f32_bits(ref.round_keep_bits(v, 0))


def random_normals(n, seed, low_exp=1, high_exp=254):
  """Random normal float32 of both signs, with many just below and above powers of two."""
  rng = np.random.default_rng(seed)
  exps = rng.integers(low_exp, high_exp + 1, n, dtype=np.uint32)
  mant = rng.integers(0, 1 << 23, n, dtype=np.uint32)
  kind = rng.integers(0, 4, n)
  mant = np.where(kind == 1, (1 << 23) - 1 - rng.integers(0, 64, n, dtype=np.uint32), mant)
  mant = np.where(kind == 2, rng.integers(0, 64, n, dtype=np.uint32), mant)
  sign = rng.integers(0, 2, n, dtype=np.uint32) << 31
  return from_bits(sign | (exps << 23) | mant)


PRECISIONS = [1e-7, 1e-4, 0.001, 0.01, 0.1, np.float32(0.1), 0.25, 0.5, 0.9, 1.0, 1 - 2.0**-40]


@pytest.mark.parametrize("backend", ELEMENTWISE_BACKENDS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_paper_matches_scalar_reference(precision, backend):
  x = random_normals(1500, seed=11)
  got = mortar_tf.morph(x, "paper", precision, backend=backend)
  expected = [ref.paper(v, float(precision)) for v in x]
  assert_same_bits(got, expected)


@pytest.mark.parametrize("backend", ELEMENTWISE_BACKENDS)
@pytest.mark.parametrize("precision", [1e-5, 2.0**-14, 1e-4, 3e-4])
def test_fewest_ones_matches_brute_force(precision, backend):
  x = random_normals(1500, seed=int(precision * 1e6))
  got = mortar_tf.morph(x, "fewest_ones", precision, backend=backend)
  expected = [ref.fewest_ones_brute(v, precision) for v in x]
  assert_same_bits(got, expected)


def test_fewest_ones_brute_force_near_the_float_range_ends():
  x = from_bits([0x00800000, 0x00800001, 0x00FFFFFF, 0x7F7FFFFF, 0x7F000000, 0x7EFFFFFF,
                 0x807FFFFF + 1, 0xFF7FFFF0])
  for precision in (1e-4, 2.0**-13):
    got = mortar_tf.morph(x, "fewest_ones", precision)
    assert_same_bits(got, [ref.fewest_ones_brute(v, precision) for v in x])


def _sig_ones(a):
  return np.array([ref.sig_ones(int(w)) for w in u32(a)])


@pytest.mark.parametrize("precision", [0.001, 0.05, 0.1, 0.3, 0.5, 0.75, 1.0])
def test_fewest_ones_never_more_ones_than_paper_nor_x(precision):
  x = random_normals(4000, seed=5)
  few = mortar_tf.morph(x, "fewest_ones", precision)
  pap = mortar_tf.morph(x, "paper", precision)
  assert np.all(_sig_ones(few) <= _sig_ones(pap))
  assert np.all(_sig_ones(few) <= _sig_ones(x))
  assert all(ref.in_ball(f, v, precision) for f, v in zip(few, x))


def test_fewest_ones_lower_end_can_sit_half_a_unit_below_the_binade():
  # x = 0x6BFFFFFE, P = 0.5: m - D is exactly the binade start, and the top of
  # the binade below (distance D + 1/2 units) is still in the ball.
  x = from_bits([0x6BFFFFFE, 0x3FFFFFFE, 0xBFFFFFFE])
  for backend in BACKENDS:
    got = mortar_tf.morph(x, "fewest_ones", 0.5, backend=backend)
    assert_same_bits(got, mortar_tf.morph(x, "fewest_ones", 0.5, backend="tf"))
    assert all(ref.in_ball(g, v, 0.5) for g, v in zip(got, x))


def _tf_ball_ends(impl):
  """morph_tf's ball ends: eagerly, in a graph (its bisection a While op), under
  XLA, or the bisection alone for every element (the proof passes most)."""
  # pylint: disable=protected-access
  if impl == "tf_bisect":
    return lambda mag, x_abs, t: morph_tf._bisect(mag, x_abs, t)
  if impl == "tf":
    return morph_tf._ball_ends
  return tf.function(morph_tf._ball_ends, jit_compile=impl == "tf_xla", autograph=False)


@pytest.mark.parametrize("impl", ["numpy", "tf", "tf_graph", "tf_xla", "tf_bisect"])
@pytest.mark.parametrize("precision", [1.0, 1 - 2.0**-35, 0.999999, 0.5, 1e-3])
def test_ball_ends_are_proven_by_the_literal_predicate(impl, precision):
  # P = 1 makes fl(|x| - y) round for tiny y, so the guessed lower end is wrong
  # and the bisection must settle it; every implementation is checked.
  x = np.abs(random_normals(800, seed=3))
  mag = u32(x).astype(np.int64)
  x_abs = x.astype(np.float64)
  threshold = precision * x_abs
  if impl == "numpy":
    a, b = morphing._ball_ends(mag, x_abs, threshold)  # pylint: disable=protected-access
  else:
    a, b = (t.numpy() for t in _tf_ball_ends(impl)(
        tf.constant(mag), tf.constant(x_abs), tf.constant(threshold)))
  for ai, bi, v in zip(a, b, x):
    assert ref.in_ball(ref.bits_f32(int(ai)), v, precision)
    assert ai == 0x00800000 or not ref.in_ball(ref.bits_f32(int(ai) - 1), v, precision)
    assert ref.in_ball(ref.bits_f32(int(bi)), v, precision)
    assert bi == 0x7F7FFFFF or not ref.in_ball(ref.bits_f32(int(bi) + 1), v, precision)


@pytest.mark.parametrize("precision", [1e-9, 1e-3, 0.1, np.float32(0.3), 0.45, 0.5])
def test_exact_integer_ball_ends_for_small_p_are_proven_by_the_literal_predicate(precision):
  # numpy's fast path for P <= 0.5 finds both ends without the predicate; check
  # them with it, near binade edges and at both ends of the float range.
  x = np.abs(np.concatenate([random_normals(3000, seed=8),
                             from_bits([0x00800000, 0x00800001, 0x00FFFFFF, 0x01000000,
                                        0x7F7FFFFF, 0x7F000000, 0x7EFFFFFF, 0x3F800000])]))
  a, b = morphing._ball_ends_exact(  # pylint: disable=protected-access
      x.view(np.int32), float(precision))
  for ai, bi, v in zip(a, b, x):
    assert ref.in_ball(ref.bits_f32(int(ai)), v, float(precision))
    assert ai == 0x00800000 or not ref.in_ball(ref.bits_f32(int(ai) - 1), v, float(precision))
    assert ref.in_ball(ref.bits_f32(int(bi)), v, float(precision))
    assert bi == 0x7F7FFFFF or not ref.in_ball(ref.bits_f32(int(bi) + 1), v, float(precision))


@pytest.mark.parametrize("backend", ELEMENTWISE_BACKENDS)
@pytest.mark.parametrize("keep_bits", [0, 1, 5, 10, 22, 23])
def test_round_matches_exact_rational_reference(keep_bits, backend):
  x = random_normals(1500, seed=keep_bits)
  got = mortar_tf.morph(x, "round", keep_bits=keep_bits, backend=backend)
  assert_same_bits(got, [ref.round_keep_bits(v, keep_bits) for v in x])


def _structured(shape, seed):
  """Weights with wide exponent spread (so columns drop bits) plus specials."""
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal(shape) * np.exp2(rng.integers(-12, 4, shape))).astype(np.float32)
  flat = x.reshape(-1)
  flat[::7] = 0.0
  flat[3::11] = -0.0
  if flat.size > 5:
    flat[5] = from_bits([0x00000123])[0]  # subnormal
  return x


LAYOUT_CASES = [
    ("dense", (13, 5), {}),
    ("conv", (3, 3, 4, 5), {}),
    ("depthwise", (3, 3, 4, 2), {}),
    ("conv_transpose", (3, 3, 5, 6), {}),
    ("separable_depthwise", (3, 3, 6, 1), {}),
    ("separable_pointwise", (1, 1, 6, 7), {}),
    ("einsum", (4, 9, 3), {"equation": "ab,cbd->acd"}),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout,shape,extra", LAYOUT_CASES)
@pytest.mark.parametrize("group_size,columns", [(4, 1), (4, 5), (16, 9), (3, 24)])
def test_bitx_matches_loop_reference_for_every_layout(layout, shape, extra, group_size, columns,
                                                      backend):
  w = _structured(shape, seed=len(shape) * 7 + columns)
  axes = mortar_tf.bits.reduction_axes_for(layout, len(shape), extra.get("equation"))
  got = mortar_tf.morph(w, "bitx", columns=columns, group_size=group_size, layout=layout,
                        **extra, backend=backend)
  assert_same_bits(got, ref.bitx(w, axes, group_size, columns))


def test_layout_axes_match_spec_by_hand():
  # Independent of reduction_axes_for: SPEC 3 written out for each layout.
  expected = {"dense": (0,), "conv": (0, 1, 2), "depthwise": (0, 1), "conv_transpose": (3,),
              "separable_depthwise": (0, 1), "separable_pointwise": (0, 1, 2),
              "einsum": (1,)}
  for layout, shape, extra in LAYOUT_CASES:
    assert mortar_tf.bits.reduction_axes_for(layout, len(shape),
                                             extra.get("equation")) == expected[layout]


def test_precision_float32_is_not_its_float64_value():
  # 1.5 - 1.25 = 0.25 = 0.2 * 1.25 exactly: fl(0.2 * 1.25) == 0.25 keeps 1.5 out of
  # the ball, float(np.float32(0.2)) = 0.200000003 lets it in.
  x = np.float32([1.25])
  assert not ref.in_ball(1.5, 1.25, 0.2) and ref.in_ball(1.5, 1.25, float(np.float32(0.2)))
  for backend in BACKENDS + KERNEL_BACKENDS:  # the C++ kernels get P as a double too
    assert_same_bits(mortar_tf.morph(x, "paper", 0.2, backend=backend), [1.25])
    assert_same_bits(mortar_tf.morph(x, "paper", np.float32(0.2), backend=backend), [1.5])
    assert_same_bits(mortar_tf.morph(x, "fewest_ones", np.float32(0.2), backend=backend), [1.0])


@pytest.mark.parametrize("precision", [1, 1.0, np.float64(0.5), np.float32(0.25), np.int64(1)])
def test_precision_accepts_numbers(precision):
  x = random_normals(100, seed=1)
  assert_same_bits(mortar_tf.morph(x, "paper", precision),
                   [ref.paper(v, float(precision)) for v in x])


@pytest.mark.parametrize("precision", [True, False, np.bool_(True), 0, 0.0, -0.1, 1.0000001, 2,
                                       float("nan"), float("inf"), "0.1", [0.1], 1j])
def test_bad_precision_is_value_error_naming_it(precision):
  with pytest.raises(ValueError, match="precision") as info:
    mortar_tf.morph(np.float32([1.0]), "paper", precision)
  assert repr(precision) in str(info.value)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="round", keep_bits=24), "keep_bits"),
    (dict(method="round", keep_bits=-1), "keep_bits"),
    (dict(method="round", keep_bits=True), "keep_bits"),
    (dict(method="round", keep_bits=2.0), "keep_bits"),
    (dict(method="round"), "needs keep_bits"),
    (dict(method="round", keep_bits=3, precision=0.1), "does not use precision"),
    (dict(method="paper", keep_bits=3), "does not use keep_bits"),
    (dict(method="bitx"), "needs columns"),
    (dict(method="bitx", columns=0), "columns"),
    (dict(method="bitx", columns=25), "columns"),
    (dict(method="bitx", columns=30, width=24), "columns"),
    (dict(method="bitx", columns=4, width=65), "width"),
    (dict(method="bitx", columns=4, group_size=0), "group_size"),
    (dict(method="bitx", columns=4, layout="nope"), "unknown layout"),
    (dict(method="bitx", columns=4, reduction_axes=(5,)), "out of range"),
    (dict(method="bitx", columns=4, layout="einsum"), "equation"),
    (dict(method="paper", layout="dense"), "only apply to 'bitx'"),
    (dict(method="magic"), "unknown morphing method"),
    (dict(method="paper", backend="cuda"), "unknown backend"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mortar_tf.morph(np.ones((4, 4), np.float32), **kwargs)


@pytest.mark.parametrize("value", [
    np.ones(3, np.float64), np.ones(3, np.int32), np.ones(3, np.float16), [1.0, 2.0],
    tf.ones(3, tf.float64), tf.Variable(tf.ones(3, tf.bfloat16))])
def test_non_float32_is_type_error(value):
  with pytest.raises(TypeError, match="float32"):
    mortar_tf.morph(value, "paper", 0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)])
@pytest.mark.parametrize("args", [dict(method="paper"), dict(method="fewest_ones"),
                                  dict(method="round", keep_bits=3), dict(method="bitx", columns=2)])
def test_empty_tensors(shape, args, backend):
  got = mortar_tf.morph(np.zeros(shape, np.float32), **args, backend=backend)
  assert got.shape == shape and got.dtype == np.float32


def test_result_kind_follows_input_and_variables_are_not_assigned():
  x = random_normals(64, seed=9).reshape(8, 8)
  var = tf.Variable(x)
  for backend in (None,) + BACKENDS:
    got = mortar_tf.morph(var, "paper", 0.3, backend=backend)
    assert isinstance(got, tf.Tensor) and got.shape == (8, 8)
    assert_same_bits(var.numpy(), x)
    got_np = mortar_tf.morph(x, "paper", 0.3, backend=backend)
    assert isinstance(got_np, np.ndarray)
    assert_same_bits(got.numpy(), got_np)


def test_numpy_backend_inside_tf_function_is_a_clear_error():
  @tf.function
  def f(x):
    return mortar_tf.morph(x, "paper", 0.1, backend="numpy")
  with pytest.raises(ValueError, match="backend='tf'"):
    f(tf.ones(3))


# ---------------------------------------------------------------------------
# numpy == TF, eager, tf.function, XLA, SavedModel, Keras


def _mixed(seed, n=3000):
  x = random_normals(n, seed)
  x[::50] = from_bits(np.resize(SPECIAL_WORDS, x[::50].size))
  return x


TF_CASES = [
    dict(method="paper", precision=0.1), dict(method="paper", precision=1.0),
    dict(method="fewest_ones", precision=0.1), dict(method="fewest_ones", precision=1.0),
    dict(method="fewest_ones", precision=0.003), dict(method="fewest_ones", precision=0.5),
    dict(method="fewest_ones", precision=0.45), dict(method="round", keep_bits=4),
    dict(method="bitx", columns=6, group_size=8),
]


@pytest.mark.parametrize("args", TF_CASES)
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_tf_equals_numpy_bit_for_bit(args, mode):
  x = _mixed(seed=21).reshape(30, 100)
  expected = mortar_tf.morph(x, **args, backend="numpy")
  fn = lambda t: mortar_tf.morph(t, **args, backend="tf")  # pylint: disable=unnecessary-lambda-assignment
  if mode != "eager":
    fn = tf.function(fn, jit_compile=(mode == "xla"))
  assert_same_bits(fn(tf.constant(x)).numpy(), expected)


def test_morph_exports_in_a_saved_model_and_runs_without_python(tmp_path):
  class Morpher(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def paper(self, x):
      return mortar_tf.morph(x, "paper", 0.1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def fewest(self, x):
      return mortar_tf.morph(x, "fewest_ones", 1.0)

  tf.saved_model.save(Morpher(), str(tmp_path / "m"))
  loaded = tf.saved_model.load(str(tmp_path / "m"))
  x = _mixed(seed=4)
  assert_same_bits(loaded.paper(tf.constant(x)).numpy(), mortar_tf.morph(x, "paper", 0.1))
  assert_same_bits(loaded.fewest(tf.constant(x)).numpy(), mortar_tf.morph(x, "fewest_ones", 1.0))


def test_usable_inside_a_keras_call():
  from mortar_tf.keras.compat import keras  # pylint: disable=import-outside-toplevel

  class MorphedDense(keras.layers.Layer):

    def build(self, input_shape):
      self.w = self.add_weight(shape=(input_shape[-1], 3), initializer="glorot_uniform")

    def call(self, x):
      return tf.matmul(x, mortar_tf.morph(tf.convert_to_tensor(self.w), "fewest_ones", 0.2))

  layer = MorphedDense()
  x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
  y = layer(x)
  kernel = mortar_tf.morph(layer.w.numpy(), "fewest_ones", 0.2, backend="numpy")
  np.testing.assert_allclose(np.asarray(y), x @ kernel, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Properties (hypothesis)

float32_words = st.integers(0, 2**32 - 1)
precisions = st.one_of(st.floats(1e-9, 1.0, allow_nan=False), st.sampled_from([1.0, 0.5, 0.1]))


@settings(max_examples=300, deadline=None)
@given(st.lists(float32_words, min_size=1, max_size=40), precisions,
       st.sampled_from(["paper", "fewest_ones"]))
def test_property_ball_ones_sign_and_specials(words, precision, method):
  x = from_bits(words)
  y = mortar_tf.morph(x, method, precision)
  for xi, yi, w in zip(x, y, words):
    if not ref.is_normal(w):
      assert ref.f32_bits(yi) == w
      continue
    assert ref.is_normal(ref.f32_bits(yi))
    assert ref.in_ball(yi, xi, precision)
    assert ref.sig_ones(ref.f32_bits(yi)) <= ref.sig_ones(w)
    assert (ref.f32_bits(yi) >> 31) == (w >> 31)


@settings(max_examples=100, deadline=None)
@given(st.lists(float32_words, min_size=12, max_size=12), precisions,
       st.sampled_from(["paper", "fewest_ones"]), st.sampled_from([(12,), (3, 4), (2, 3, 2)]))
def test_property_shape_independent_and_deterministic(words, precision, method, shape):
  x = from_bits(words)
  flat = mortar_tf.morph(x, method, precision)
  shaped = mortar_tf.morph(x.reshape(shape), method, precision)
  assert_same_bits(shaped.reshape(-1), flat)
  assert_same_bits(mortar_tf.morph(x, method, precision), flat)


_XLA_FNS = {}


def _xla(method, precision):
  key = (method, precision)
  if key not in _XLA_FNS:
    _XLA_FNS[key] = tf.function(lambda t: mortar_tf.morph(t, method, precision), jit_compile=True)
  return _XLA_FNS[key]


@settings(max_examples=60, deadline=None)
@given(st.lists(float32_words, min_size=64, max_size=64),
       st.sampled_from([1e-6, 0.01, 0.1, 0.3, 0.5, 1.0]), st.sampled_from(["paper", "fewest_ones"]))
def test_property_numpy_equals_tf_under_xla(words, precision, method):
  x = from_bits(words)
  expected = mortar_tf.morph(x, method, precision, backend="numpy")
  assert_same_bits(_xla(method, precision)(tf.constant(x)).numpy(), expected)
  assert_same_bits(mortar_tf.morph(x, method, precision, backend="tf"), expected)
