"""Tests of the C++ ops against the numpy reference, and of the fallback without them."""

import re
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import bits
from mortar_tf import native
from mortar_tf import ops
from mortar_tf.morphing import MorphSpec

import installed_tool
import spec_reference as ref


def from_bits(words):
  return np.asarray(words, np.uint32).view(np.float32)


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


def test_the_op_library_is_built_here():
  # CI installs with setup.py's build_ext; everything below depends on it.
  assert ops.is_built(), ops.why_not_built()


def _mixed(n, seed):
  """Random words of every kind plus the special values and largest binade."""
  rng = np.random.default_rng(seed)
  total = max(n, 64)
  words = rng.integers(0, 2**32, total, dtype=np.uint64).astype(np.uint32)
  specials = [0, 0x80000000, 1, 0x807FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001, 0xFFC12345,
              0x7F800001, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x6BFFFFFE, 0x3F800001]
  words[:len(specials)] = specials
  # many realistic weights: small normals with all mantissas
  normals = (rng.standard_normal(total // 2) * 0.05).astype(np.float32).view(np.uint32)
  words[len(specials):len(specials) + normals.size] = normals
  rng.shuffle(words)
  return from_bits(words[:n])


SHAPES = [(), (1,), (7,), (33, 5), (2, 3, 4, 5), (1000,), (0,), (4, 0)]
SETTINGS = [("paper", 0.1, None), ("paper", 1.0, None), ("paper", 1e-6, None),
            ("paper", np.float32(0.2), None), ("fewest_ones", 0.1, None),
            ("fewest_ones", 0.5, None), ("fewest_ones", 0.75, None), ("fewest_ones", 1.0, None),
            ("fewest_ones", 1e-9, None), ("round", None, 0), ("round", None, 7),
            ("round", None, 23)]


@pytest.mark.parametrize("method,precision,keep_bits", SETTINGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_op_morph_equals_numpy_bit_for_bit(method, precision, keep_bits, shape):
  x = _mixed(max(1, int(np.prod(shape))) * 4, seed=len(shape))[:int(np.prod(shape))]
  x = x.reshape(shape)
  args = dict(keep_bits=keep_bits) if method == "round" else dict(precision=precision)
  expected = mortar_tf.morph(x, method, **args, backend="numpy")
  got = mortar_tf.morph(x, method, **args, backend="op")
  assert isinstance(got, np.ndarray) and got.shape == shape
  np.testing.assert_array_equal(u32(got), u32(expected))


@pytest.mark.parametrize("method,precision,keep_bits", SETTINGS[::2])
def test_op_morph_large_random_tensor(method, precision, keep_bits):
  x = _mixed(300_000, seed=7)
  args = dict(keep_bits=keep_bits) if method == "round" else dict(precision=precision)
  np.testing.assert_array_equal(u32(mortar_tf.morph(x, method, **args, backend="op")),
                                u32(mortar_tf.morph(x, method, **args, backend="numpy")))


def test_op_reproduces_spec_examples():
  # SPEC 5 through the op alone, against the scalar reference.
  xs = np.float32([1.375, 1.0078125, 1.6, 1.75, 0.7, 1.1, 0.0999, -0.15625, 3.4028235e38,
                   1.0009765625, 2e-38, 1e-38])
  for p in (0.1, 0.3, 0.5, 0.001, 1.0):
    got = mortar_tf.morph(xs, "paper", p, backend="op")
    assert [ref.f32_bits(v) for v in got] == [ref.f32_bits(ref.paper(v, p)) for v in xs]
  got = mortar_tf.morph(xs[:8], "fewest_ones", 0.1, backend="op")
  np.testing.assert_array_equal(u32(got), u32([1.25, 1.0, 1.5, 1.75, 0.75, 1.0, 0.09375,
                                               -0.15625]))
  got = mortar_tf.morph(xs, "fewest_ones", 1e-4, backend="op")
  assert [ref.f32_bits(v) for v in got] == [ref.f32_bits(ref.fewest_ones_brute(v, 1e-4))
                                            for v in xs]
  got = mortar_tf.morph(np.float32([1.25, -1.75, 1.6]), "round", keep_bits=1, backend="op")
  np.testing.assert_array_equal(u32(got), u32([1.5, -2.0, 1.5]))
  for keep in (0, 1, 3):
    got = mortar_tf.morph(xs, "round", keep_bits=keep, backend="op")
    assert [ref.f32_bits(v) for v in got] == [ref.f32_bits(ref.round_keep_bits(v, keep))
                                              for v in xs]


def test_precision_reaches_the_kernel_as_float64():
  # 1.5 lies outside the ball of 1.25 for P = 0.2 but inside for float32(0.2).
  x = np.float32([1.25])
  assert mortar_tf.morph(x, "paper", 0.2, backend="op")[0] == np.float32(1.25)
  assert mortar_tf.morph(x, "paper", np.float32(0.2), backend="op")[0] == np.float32(1.5)


@pytest.mark.parametrize("mode", ["eager", "function", "graph"])
def test_op_in_eager_function_and_graph_mode(mode):
  x = _mixed(5000, seed=3).reshape(50, 100)
  expected = mortar_tf.morph(x, "fewest_ones", 0.3, backend="numpy")
  hist_expected = bits.bit_histogram(x, "word")
  if mode == "eager":
    y = ops.mantissa_morph(tf.constant(x), "fewest_ones", 0.3).numpy()
    hist = ops.bit_count(tf.constant(x), "word")[0].numpy()
  elif mode == "function":
    fn = tf.function(lambda t: (ops.mantissa_morph(t, "fewest_ones", 0.3),
                                ops.bit_count(t, "word")[0]))
    y, hist = (v.numpy() for v in fn(tf.constant(x)))
  else:
    with tf.Graph().as_default():
      placeholder = tf.compat.v1.placeholder(tf.float32, [None, 100])
      outputs = (ops.mantissa_morph(placeholder, "fewest_ones", 0.3),
                 ops.bit_count(placeholder, "word")[0])
      assert outputs[0].shape.as_list() == [None, 100] and outputs[1].shape.as_list() == [32]
      with tf.compat.v1.Session() as session:
        y, hist = session.run(outputs, {placeholder: x})
  np.testing.assert_array_equal(u32(y), u32(expected))
  np.testing.assert_array_equal(hist, hist_expected)


def test_numpy_input_runs_the_native_kernels_and_tf_input_stays_on_tf(monkeypatch):
  calls = []
  for name in ("morph", "bitx"):
    real = getattr(native, name)
    monkeypatch.setattr(native, name, lambda *a, _real=real, _name=name: calls.append(_name)
                        or _real(*a))
  op_calls = []
  real_op = ops.morph_spec
  monkeypatch.setattr(ops, "morph_spec", lambda *a: op_calls.append(1) or real_op(*a))
  x = _mixed(100, seed=1)
  mortar_tf.morph(x, "paper", 0.1)
  mortar_tf.morph(x.reshape(10, 10), "bitx", columns=4)
  assert calls == ["morph", "bitx"]
  mortar_tf.morph(tf.constant(x), "paper", 0.1)  # TF input stays on pure TF ops
  assert calls == ["morph", "bitx"] and not op_calls
  mortar_tf.morph(x, "paper", 0.1, backend="op")
  assert len(op_calls) == 1


@pytest.mark.parametrize("spec", [MorphSpec.create("paper", 0.3),
                                  MorphSpec.create("bitx", columns=3, group_size=4)])
def test_gradient_is_straight_through(spec):
  values = _mixed(64, seed=2)
  x = tf.Variable(values[np.isfinite(values)][:16].reshape(4, 4))
  with tf.GradientTape() as tape:
    y = ops.morph_spec(x, spec, reduction_axes=(0,))
    loss = tf.reduce_sum(y * tf.reshape(tf.range(16, dtype=tf.float32), (4, 4)))
  np.testing.assert_array_equal(tape.gradient(loss, x).numpy(),
                                np.arange(16, dtype=np.float32).reshape(4, 4))


@pytest.mark.parametrize("domain", ["word", "significand"])
@pytest.mark.parametrize("shape", [(0,), (1,), (9,), (1001,), (64, 33), (3, 3, 16, 8)])
def test_bit_count_equals_numpy(domain, shape):
  x = _mixed(max(1, int(np.prod(shape))), seed=5)[:int(np.prod(shape))].reshape(shape)
  histogram, total = ops.bit_count(x, domain)
  expected = bits.bit_histogram(x, domain)
  np.testing.assert_array_equal(histogram.numpy(), expected)
  assert int(total) == expected.sum() == bits.count_ones(x, domain)
  assert bits.count_ones(x, domain) == int(total)  # the default path uses the op


def test_bit_count_against_python_popcount():
  x = _mixed(3000, seed=6)
  words = [int(w) for w in u32(x)]
  histogram, _ = ops.bit_count(x, "word")
  np.testing.assert_array_equal(histogram.numpy(),
                                [sum((w >> (31 - i)) & 1 for w in words) for i in range(32)])


LAYOUTS = [("dense", (40, 7), None), ("conv", (3, 3, 5, 4), None),
           ("depthwise", (3, 3, 6, 2), None), ("conv_transpose", (2, 2, 3, 20), None),
           ("einsum", (5, 11, 3), "abc,dbe->adce")]


@pytest.mark.parametrize("layout,shape,equation", LAYOUTS)
@pytest.mark.parametrize("group_size,width,window", [(16, 24, 8), (4, 4, 2), (5, 40, 3),
                                                     (64, 64, 8), (1, 1, 1)])
def test_aligned_count_equals_loop_reference_and_numpy(layout, shape, equation, group_size,
                                                       width, window):
  rng = np.random.default_rng(group_size + width)
  w = (rng.standard_normal(shape) * np.exp2(rng.integers(-40, 4, shape))).astype(np.float32)
  w.reshape(-1)[::6] = 0.0
  w.reshape(-1)[1::13] = np.float32(1e-41)
  grouping = dict(layout=layout, equation=equation, group_size=group_size, width=width)
  columns, total, lane_max, bitlet = ops.aligned_count(w, window=window, **grouping)
  axes = bits.reduction_axes_for(layout, len(shape), equation)
  expected = ref.aligned_column_ones(w, axes, group_size, width)
  np.testing.assert_array_equal(columns.numpy(), expected)
  assert int(total) == sum(expected)
  np_lane_max, np_bitlet = bits.group_cycle_figures(w, window=window, **grouping)
  np.testing.assert_array_equal(lane_max.numpy(), np_lane_max)
  np.testing.assert_array_equal(bitlet.numpy(), np_bitlet)
  # per-group figures by a plain loop over the reference groups
  groups = ref.groups_of(w, axes, group_size)
  loop_lane_max, loop_bitlet = _loop_cycle_figures(groups, width, window)
  np.testing.assert_array_equal(lane_max.numpy().reshape(-1), loop_lane_max)
  np.testing.assert_array_equal(bitlet.numpy().reshape(-1), loop_bitlet)


def _loop_cycle_figures(groups, width, window):
  """SPEC 4 by loops: lane ones, and per column ones + all-zero windows."""
  lane_max, bitlet = [], []
  for group in groups:
    values = [v for _, v in group]
    exps = [(ref.f32_bits(v) >> 23) & 0xFF for v in values if ref.is_normal(ref.f32_bits(v))]
    emax = max(exps, default=0)
    cols = []  # cols[l][c]: lane l has a one in column c
    for v in values:
      u = ref.f32_bits(v)
      row = [0] * width
      if ref.is_normal(u):
        e, m = (u >> 23) & 0xFF, (u & 0x7FFFFF) | 0x800000
        for j in range(24):
          c = 23 - j + emax - e
          if (m >> j) & 1 and c < width:
            row[c] = 1
      cols.append(row)
    lane_max.append(max(sum(r) for r in cols))
    costs = []
    for c in range(width):
      ones = sum(r[c] for r in cols)
      zero = sum(1 for s in range(0, len(cols), window)
                 if not any(r[c] for r in cols[s:s + window]))
      costs.append(ones + zero)
    bitlet.append(max(1, max(costs)))
  return lane_max, bitlet


def test_a_window_past_the_group_is_one_window_over_it():
  # SPEC 5's group: a window of G = 4 lanes or more is one window (Bitlet 2);
  # an int64 window past 2^31 must not wrap to a small one in the kernel.
  w = np.float32([[1.5], [1.0], [0.75], [0.0]])
  for window in (4, 5, 2**31, 2**32 + 1, 2**62):
    _, _, lane_max, bitlet = ops.aligned_count(w, group_size=4, width=4, window=window)
    assert lane_max.numpy().tolist() == [[2]] and bitlet.numpy().tolist() == [[2]], window


def test_spec_engine_example_through_the_op():
  # SPEC 5: [1.5, 1, 0.75, 0], G=4, width 4, window 2 -> pragmatic 2, bitlet 3.
  columns, total, lane_max, bitlet = ops.aligned_count(
      np.float32([[1.5], [1.0], [0.75], [0.0]]), group_size=4, width=4, window=2)
  assert columns.numpy().tolist() == [2, 2, 1, 0] and int(total) == 5
  assert lane_max.numpy().tolist() == [[2]] and bitlet.numpy().tolist() == [[3]]


@pytest.mark.parametrize("call,error,match", [
    (lambda: ops.mantissa_morph(np.ones(3, np.float64), "paper", 0.1), TypeError, "float32"),
    (lambda: ops.bit_count(np.ones(3, np.int32)), TypeError, "float32"),
    (lambda: ops.bit_count(np.ones(3, np.float32), "aligned"), ValueError, "domain"),
    (lambda: ops.aligned_count(np.ones((3, 3), np.float32), width=65), ValueError, "width"),
    (lambda: ops.aligned_count(np.ones((3, 3), np.float32), window=0), ValueError, "window"),
    (lambda: ops.mantissa_morph(np.ones(3, np.float32), "bitx"), ValueError, "bitx"),
    (lambda: ops.mantissa_morph(np.ones(3, np.float32), "paper", 1.5), ValueError, "precision"),
])
def test_bad_arguments_through_the_wrappers(call, error, match):
  with pytest.raises(error, match=match):
    call()


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="paper", precision=1.5), "0 < P <= 1"),
    (dict(method="paper", precision=0.0), "0 < P <= 1"),
    (dict(method="fewest_ones", precision=float("nan")), "0 < P <= 1"),
    (dict(method="round", keep_bits=24), "keep_bits"),
    (dict(method="round", keep_bits=-1), "keep_bits"),
])
def test_raw_op_validates_its_inputs(kwargs, match):
  lib = ops._LIB  # pylint: disable=protected-access
  kwargs = dict(kwargs)
  precision = kwargs.pop("precision", 0.1)
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=match):
    lib.mortar_morph(x=tf.ones(3), precision=tf.constant(precision, tf.float64), **kwargs)


def test_raw_op_rejects_wrong_shapes_and_dtypes():
  lib = ops._LIB  # pylint: disable=protected-access
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="scalar|rank"):
    lib.mortar_morph(x=tf.ones(3), precision=tf.ones(2, tf.float64), method="paper")
  with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)):
    lib.mortar_morph(x=tf.ones(3, tf.float64), precision=tf.constant(0.1, tf.float64),
                     method="paper")
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank|matrix"):
    lib.mortar_aligned_count(x=tf.ones([2, 2, 2]))
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="width"):
    lib.mortar_aligned_count(x=tf.ones([2, 2]), width=65)
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):
    lib.mortar_morph(x=tf.ones(3), precision=tf.constant(0.1, tf.float64), method="bitx")


def test_fallback_without_the_op_library_warns_once_and_gives_the_same_bits(tmp_path):
  x = _mixed(2000, seed=9)
  np.save(tmp_path / "x.npy", x)
  expected = {"paper": mortar_tf.morph(x, "paper", 0.1, backend="op"),
              "count": mortar_tf.count_ones(x, "word", backend="op")}
  script = textwrap.dedent(f"""
      import warnings
      import numpy as np
      import mortar_tf
      from mortar_tf import ops
      assert not ops.is_built() and "MORTAR_TF_DISABLE_OPS" in ops.why_not_built()
      x = np.load({str(tmp_path / "x.npy")!r})
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = mortar_tf.morph(x, "paper", 0.1)
        n = mortar_tf.count_ones(x, "word")
        mortar_tf.morph(x, "fewest_ones", 0.2)
      print(len([w for w in caught if "numpy implementation" in str(w.message)]))
      np.save({str(tmp_path / "y.npy")!r}, y)
      print(n)
      try:
        mortar_tf.morph(x, "paper", 0.1, backend="op")
      except RuntimeError as e:
        print("RuntimeError", e)
      """)
  env = dict(installed_tool.ENV, MORTAR_TF_DISABLE_OPS="1")
  result = installed_tool.python("-c", script, env=env)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0] == "1"  # one warning for three fallbacks
  assert int(lines[1]) == expected["count"]
  assert lines[2].startswith("RuntimeError") and "not available" in lines[2]
  np.testing.assert_array_equal(u32(np.load(tmp_path / "y.npy")), u32(expected["paper"]))


@pytest.mark.slow
def test_bit_count_indexes_past_two_to_the_31():
  # 2^31 + 17 elements (8 GiB): int64 indexing in the kernel and its shards.
  n = 2**31 + 17
  x = tf.fill([n], tf.constant(1.5, tf.float32))  # 1.5: hidden bit and bit 22
  histogram, total = ops.bit_count(x, "significand")
  expected = np.zeros(24, np.int64)
  expected[:2] = n
  np.testing.assert_array_equal(histogram.numpy(), expected)
  assert int(total) == 2 * n
  del x


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_aligned_count_of_empty_matrices(shape):
  columns, total, lane_max, bitlet = ops.aligned_count(np.zeros(shape, np.float32),
                                                       reduction_axes=(1,), group_size=4)
  assert columns.numpy().tolist() == [0] * 24 and int(total) == 0
  n_groups = -(-shape[1] // 4)
  assert lane_max.shape == bitlet.shape == (shape[0], n_groups)


def test_aligned_count_rejects_huge_groups_by_name():
  with pytest.raises(tf.errors.InvalidArgumentError, match="group_size must be in 1..16384"):
    ops.aligned_count(np.ones((2, 8), np.float32), group_size=16385)


@pytest.mark.parametrize("shape,axes,group_size", [((3, 3, 40, 1100), (0, 1, 2), 64),
                                                   ((2, 37, 1100), (1,), 16),
                                                   ((70, 2050), (0,), 64), ((300, 7), (0,), 8)])
def test_bitx_op_on_rows_of_many_bands_equals_numpy(shape, axes, group_size):
  """The op's bands (one group's rows over up to 1024 adjacent columns, sharded
  over TensorFlow's workers) against the numpy backend: rows longer than one
  band, bands short of a vector, last groups short of G, a > 1."""
  n = int(np.prod(shape))
  x = _mixed(n + n // 4, seed=len(shape))[:n].reshape(shape)
  for columns in (1, 6, 24):
    spec = MorphSpec.create("bitx", columns=columns, group_size=group_size)
    got = ops.morph_spec(tf.constant(x), spec, reduction_axes=axes).numpy()
    want = mortar_tf.morph(x, spec, reduction_axes=axes, backend="numpy")
    np.testing.assert_array_equal(u32(got), u32(want))


def test_bitx_op_takes_reduction_axes_as_morph_does():
  """Negative axes count from the end; an axis out of range or repeated is a
  ValueError naming it (mortar_tf.morph's words), never a silent per-element
  grouping or a TensorFlow shape error."""
  x = _mixed(24, seed=9).reshape(2, 3, 4)
  spec = MorphSpec.create("bitx", columns=2, group_size=3)
  for axes, same_as in (((-1,), (2,)), ((-3, -2), (0, 1)), ((1, -1), (1, 2))):
    np.testing.assert_array_equal(
        u32(ops.morph_spec(tf.constant(x), spec, reduction_axes=axes).numpy()),
        u32(mortar_tf.morph(x, spec, reduction_axes=same_as, backend="numpy")))
  for axes, match in (((3,), "reduction axis 3 is out of range for a rank-3 weight"),
                      ((0, 0), "repeat an axis"), ((0, -3), "repeat an axis"),
                      ((1.0,), "is not an integer")):
    with pytest.raises(ValueError, match=re.escape(match) if "(" not in match else match):
      ops.morph_spec(tf.constant(x), spec, reduction_axes=axes)
