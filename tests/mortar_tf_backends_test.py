"""The native kernels (C++ over numpy buffers) against the numpy reference, the
TensorFlow op, pure TF and SPEC's loops, bit for bit; and what the numpy entry
points promise: no copies, any memory layout, no TensorFlow import."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

import mortar_tf
from mortar_tf import backends
from mortar_tf import bits
from mortar_tf import native

import spec_reference as ref

SPECIALS = [0, 0x80000000, 1, 0x807FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001, 0xFFC12345,
            0x7F800001, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x6BFFFFFE, 0x3F800001, 0x00800001,
            0x7F000000]


def u32(a):
  return np.ascontiguousarray(a, np.float32).view(np.uint32)


def weights(n, seed, spread=8):
  """Weight-like values over 2*spread binades, with every special value mixed in."""
  rng = np.random.default_rng(seed)
  w = (rng.standard_normal(n) * np.exp2(rng.integers(-spread, spread + 1, n))).astype(np.float32)
  words = w.view(np.uint32)
  idx = rng.choice(n, size=min(n, len(SPECIALS) * 2), replace=False)
  words[idx] = np.resize(np.array(SPECIALS, np.uint32), idx.size)
  return w


def test_the_native_library_is_built_here():
  # CI builds it with setup.py; everything below depends on it.
  assert native.is_built(), native.why_not_built()
  assert native.isa() in ("avx512", "avx2", "baseline")


word_lists = st.lists(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(SPECIALS)),
                      min_size=1, max_size=300)
precisions = st.one_of(st.floats(1e-9, 1.0, allow_nan=False),
                       st.sampled_from([1.0, 0.75, 0.5, 0.3, 0.1, 1e-3]))
# a layout the kernels must read: contiguous, reversed, strided, transposed,
# unaligned (a float32 view at an odd byte offset) or read-only
layouts = st.sampled_from(["plain", "reversed", "strided", "fortran", "unaligned", "readonly"])


def laid_out(x: np.ndarray, layout: str) -> np.ndarray:
  """`x`'s values (row-major order kept; "fortran" makes it 2-D) held in memory the way
  `layout` says."""
  if layout == "reversed":
    return np.ascontiguousarray(x[::-1])[::-1]
  if layout == "strided":
    holder = np.zeros(2 * x.size, np.float32)
    holder[::2] = x
    return holder[::2]
  if layout == "fortran" and x.size % 2 == 0:  # 2-D, column-major in memory
    return np.asfortranarray(x.reshape(2, -1))
  if layout == "unaligned":
    raw = np.zeros(x.nbytes + 1, np.uint8)
    view = np.frombuffer(raw.data, np.float32, count=x.size, offset=1)
    raw[1:] = x.view(np.uint8)
    assert not view.flags.aligned
    return view
  if layout == "readonly":
    y = x.copy()
    y.flags.writeable = False
    return y
  return x


@settings(max_examples=200, deadline=None)
@given(word_lists, precisions, st.sampled_from(["paper", "fewest_ones"]), layouts)
def test_property_native_morph_is_the_numpy_reference(words, precision, method, layout):
  x = np.array(words, np.uint32).view(np.float32)
  expected = mortar_tf.morph(x, method, precision, backend="numpy")
  got = mortar_tf.morph(laid_out(x, layout), method, precision, backend="native")
  np.testing.assert_array_equal(u32(got).reshape(-1), u32(expected))


@settings(max_examples=60, deadline=None)
@given(word_lists, st.integers(0, 23), layouts)
def test_property_native_round_is_the_numpy_reference(words, keep_bits, layout):
  x = np.array(words, np.uint32).view(np.float32)
  expected = mortar_tf.morph(x, "round", keep_bits=keep_bits, backend="numpy")
  got = mortar_tf.morph(laid_out(x, layout), "round", keep_bits=keep_bits, backend="native")
  np.testing.assert_array_equal(u32(got).reshape(-1), u32(expected))


@settings(max_examples=100, deadline=None)
@given(word_lists, st.sampled_from(["word", "significand"]), layouts)
def test_property_native_counts_are_the_numpy_reference(words, domain, layout):
  x = np.array(words, np.uint32).view(np.float32)
  y = laid_out(x, layout)
  np.testing.assert_array_equal(mortar_tf.bit_histogram(y, domain, backend="native"),
                                bits.bit_histogram(x, domain))
  assert mortar_tf.count_ones(y, domain, backend="native") == bits.count_ones(x, domain)


# Shapes with their reduction axes: adjacent ones are read in place as [a, r, b],
# the others ((0, 2) and (1, 3)) in slices of the first output axis.
GROUPINGS = [((7,), (0,)), ((5, 6), (0,)), ((5, 6), (1,)), ((3, 4, 5), (0, 1)),
             ((3, 4, 5), (1,)), ((3, 4, 5), (0, 2)), ((2, 3, 2, 5), (1, 3)),
             ((2, 3, 4, 6), (0, 1, 2)), ((4, 3, 2), ()), ((33, 3), (0,)), ((3, 40), (1,))]


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(GROUPINGS), st.integers(1, 20), st.integers(1, 64), st.integers(1, 9),
       st.integers(0, 2**31), st.integers(0, 12))
def test_property_native_aligned_statistics_are_spec_loops(grouping, group_size, width, window,
                                                           seed, spread):
  shape, axes = grouping
  w = weights(int(np.prod(shape)), seed, spread).reshape(shape)
  columns, lane_max, bitlet = mortar_tf.aligned_statistics(
      w, reduction_axes=axes, group_size=group_size, width=width, window=window,
      backend="native")
  assert columns.tolist() == ref.aligned_column_ones(w, axes, group_size, width)
  figures = ref.engine_group_figures(w, axes, group_size, width, window)
  assert list(zip(lane_max.reshape(-1).tolist(), bitlet.reshape(-1).tolist())) == figures
  assert mortar_tf.count_ones(w, "aligned", reduction_axes=axes, group_size=group_size,
                              width=width, backend="native") == sum(columns)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(GROUPINGS), st.integers(1, 20), st.integers(1, 24), st.integers(0, 2**31),
       st.integers(0, 12), layouts)
def test_property_native_bitx_is_spec_loops(grouping, group_size, columns, seed, spread, layout):
  shape, axes = grouping
  w = weights(int(np.prod(shape)), seed, spread).reshape(shape)
  expected = ref.bitx(w, axes, group_size, columns)
  held = laid_out(w.reshape(-1), layout).reshape(shape)
  got = mortar_tf.morph(held, "bitx", columns=columns, group_size=group_size,
                        reduction_axes=axes, backend="native")
  np.testing.assert_array_equal(u32(got), u32(expected))
  np.testing.assert_array_equal(
      u32(mortar_tf.morph(w, "bitx", columns=columns, group_size=group_size,
                          reduction_axes=axes, backend="numpy")), u32(expected))


@pytest.mark.parametrize("shape,axes", GROUPINGS)
def test_every_backend_agrees_on_every_method(shape, axes):
  tf = pytest.importorskip("tensorflow")
  w = weights(int(np.prod(shape)) * 50, seed=len(shape), spread=10)[:int(np.prod(shape))]
  w = w.reshape(shape)
  cases = [("paper", dict(precision=0.1)), ("fewest_ones", dict(precision=0.3)),
           ("fewest_ones", dict(precision=0.9)), ("round", dict(keep_bits=5)),
           ("bitx", dict(columns=5, group_size=3, reduction_axes=axes))]
  for method, kwargs in cases:
    expected = u32(mortar_tf.morph(w, method, **kwargs, backend="numpy"))
    for backend in ("native", "op", "tf"):
      got = mortar_tf.morph(w, method, **kwargs, backend=backend)
      np.testing.assert_array_equal(u32(got), expected, err_msg=f"{method} {backend}")
    on_tensor = mortar_tf.morph(tf.constant(w), method, **kwargs, backend="native")
    assert tf.is_tensor(on_tensor)
    np.testing.assert_array_equal(u32(on_tensor.numpy()), expected)
  for backend in ("native", "op"):
    got = mortar_tf.aligned_statistics(w, reduction_axes=axes, group_size=4, width=30,
                                       window=3, backend=backend)
    want = mortar_tf.aligned_statistics(w, reduction_axes=axes, group_size=4, width=30,
                                        window=3, backend="numpy")
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b, err_msg=backend)


# Every instruction-set variant of the kernels must give the same bits: each
# runs in a subprocess (the variant is chosen at load time) and hashes its
# results on the same inputs.
VARIANT_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    import mortar_tf
    from mortar_tf import native
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((3, 3, 37, 70)) * np.exp2(rng.integers(-9, 9, (3, 3, 37, 70))))
    w = w.astype(np.float32)
    w.reshape(-1)[::97] = np.float32(np.inf)
    w.reshape(-1)[::89] = np.float32(1e-40)
    out = {"isa": native.isa()}
    def digest(a):
      return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    for method, kw in [("paper", {"precision": 0.1}), ("fewest_ones", {"precision": 0.2}),
                       ("fewest_ones", {"precision": 0.8}), ("round", {"keep_bits": 6}),
                       ("bitx", {"columns": 7, "group_size": 16}),
                       ("bitx", {"columns": 3, "group_size": 5, "reduction_axes": (3,)})]:
      out[method + json.dumps(kw, sort_keys=True)] = digest(
          mortar_tf.morph(w, method, backend=sys.argv[1], **kw))
    for domain in ("word", "significand"):
      out[domain] = mortar_tf.bit_histogram(w, domain, backend=sys.argv[1]).tolist()
    for g, width, axes in [(16, 24, (0, 1, 2)), (64, 40, (0, 1, 2)), (7, 24, (3,)),
                           (16, 32, (0, 2))]:
      stats = mortar_tf.aligned_statistics(w, group_size=g, width=width, reduction_axes=axes,
                                           backend=sys.argv[1])
      out[f"aligned {g} {width} {axes}"] = [digest(s) for s in stats]
    # pair totals (the converter's one pass): the word and significand ones of
    # x and y and the error, against bit_histogram and the numpy error. The
    # last pair puts two ratios 1 / (m1 * m2) apart (Farey neighbours, about
    # 2^-48) in different blocks: the native screen must not skip the larger.
    m1, k1 = 2**24 - 1, 5033176
    m2 = -pow(k1, -1, m1) % m1
    k2 = (1 + k1 * m2) // m1
    assert m2 >= 2**23 and k2 * m1 - k1 * m2 == 1 and k2 / m2 > k1 / m1
    fx, fy = np.ones(3 * 2048, np.float32), np.ones(3 * 2048, np.float32)
    fx[5], fy[5], fx[4100], fy[4100] = m1, m1 - k1, m2, m2 - k2
    y = mortar_tf.morph(w, "paper", precision=0.1, backend="numpy")
    for number, (a, b) in enumerate([(w, y), (y, w), (fx, fy)]):
      a, b = a.reshape(-1), b.reshape(-1)
      if sys.argv[1] == "numpy":
        from mortar_tf import backends
        totals = [int(mortar_tf.bit_histogram(v, d, backend="numpy").sum())
                  for v in (a, b) for d in ("word", "significand")]
        totals = [totals[0], totals[1], totals[2], totals[3],
                  backends._max_relative_error_numpy(a, b)]
      else:
        ((wx, sx, _, wy, sy, _), error), = native.pair_records([(a, b, (1, a.size, 1))], 16, 24)
        totals = [wx, sx, wy, sy, error]
      out[f"pair totals {number}"] = [repr(v) for v in totals]
    print(json.dumps(out))
""")


def _variant(isa, cwd, backend="native"):
  env = dict(os.environ, MORTAR_TF_ISA=isa)
  result = subprocess.run([sys.executable, "-c", VARIANT_SCRIPT, backend], capture_output=True,
                          text=True, env=env, timeout=600, check=False, cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_instruction_set_variant_gives_the_reference_bits(tmp_path):
  reference = _variant("", tmp_path, backend="numpy")
  seen = set()
  for isa in ("", "avx2", "baseline"):
    got = _variant(isa, tmp_path)
    seen.add(got.pop("isa"))
    reference.pop("isa", None)
    assert got == reference, isa
  assert "baseline" in seen  # the forced variant really ran


# ---------------------------------------------------------------------------
# Memory: what the numpy entry points allocate (numpy's buffers are traced by
# tracemalloc), for an array large enough that a copy would show.


def _peak_bytes(fn):
  tracemalloc.start()
  try:
    tracemalloc.reset_peak()
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_counts_copy_nothing_and_morph_allocates_only_its_result():
  w = weights(1 << 22, seed=3).reshape(4096, 1024)  # 16 MiB
  slack = 1 << 20
  assert _peak_bytes(lambda: mortar_tf.count_ones(w, "word")) < slack
  assert _peak_bytes(lambda: mortar_tf.bit_histogram(w, "significand")) < slack
  assert _peak_bytes(lambda: mortar_tf.count_ones(w, "aligned", layout="dense")) < slack
  assert _peak_bytes(lambda: mortar_tf.aligned_statistics(w, group_size=64)) < (
      w.size // 64 * 8 + slack)  # the two int32 figure arrays
  for method, kwargs in [("paper", dict(precision=0.1)), ("fewest_ones", dict(precision=0.1)),
                         ("round", dict(keep_bits=7)), ("bitx", dict(columns=8))]:
    result = []
    peak = _peak_bytes(lambda m=method, k=kwargs: result.append(mortar_tf.morph(w, m, **k)))
    assert w.nbytes <= peak < w.nbytes + slack, method
    assert not np.shares_memory(result[0], w)
  # a layout C cannot read in place is copied once, and only then
  strided = np.lib.stride_tricks.as_strided(w, shape=(4096, 512), strides=(4096, 8))
  assert strided.nbytes <= _peak_bytes(lambda: mortar_tf.count_ones(strided, "word")) < (
      strided.nbytes + slack)


def test_non_adjacent_reduction_axes_are_transposed_one_slice_at_a_time():
  w = weights(128 * 256 * 256, seed=4).reshape(128, 256, 256)  # 32 MiB, reduce axes 0 and 2
  peak = _peak_bytes(lambda: mortar_tf.count_ones(w, "aligned", reduction_axes=(0, 2)))
  assert peak < 10 << 20  # slices of about 2^20 elements (4 MiB), never the whole tensor
  peak = _peak_bytes(lambda: mortar_tf.morph(w, "bitx", columns=5, reduction_axes=(0, 2)))
  assert peak < w.nbytes + (16 << 20)  # the result and a slice or two, with their results


def test_edge_cases_the_first_user_found():
  # an empty first output axis with non-adjacent reduction axes
  empty = np.zeros((4, 0, 6), np.float32)
  for backend in ("native", "numpy"):
    # 4 x 6 = 24 reduced weights: two groups of 16
    columns, lane_max, bitlet = mortar_tf.aligned_statistics(empty, reduction_axes=(0, 2),
                                                             group_size=16, backend=backend)
    assert columns.tolist() == [0] * 24 and lane_max.shape == bitlet.shape == (0, 2)
  # a window of G lanes or more is one window: the same figures, no huge allocation
  w = weights(256 * 4, seed=2).reshape(256, 4)
  one_window = mortar_tf.aligned_statistics(w, group_size=16, window=16)
  for window in (17, 2**32 + 8, 2**62):
    for backend in ("native", "numpy"):
      got = mortar_tf.aligned_statistics(w, group_size=16, window=window, backend=backend)
      for a, b in zip(got, one_window):
        np.testing.assert_array_equal(a, b)
  # bitx keeps a 0-d shape on every backend
  scalar = np.array(1.375, np.float32)
  for backend in ("native", "numpy"):
    assert mortar_tf.morph(scalar, "bitx", columns=1, backend=backend).shape == ()
  # "" is not a layout
  with pytest.raises(ValueError, match="unknown layout ''"):
    mortar_tf.count_ones(w, "aligned", layout="")
  # unaligned input is copied to an aligned buffer before C reads it
  raw = np.zeros(4 * 12 + 1, np.uint8)
  unaligned = np.frombuffer(raw.data, np.float32, count=12, offset=1)
  assert native._words(unaligned).ctypes.data % 4 == 0  # pylint: disable=protected-access
  # the raw entry points check what they are given
  with pytest.raises(TypeError, match="float32"):
    native.morph(np.ones(10, np.float64), "paper", 0.1, 0)
  with pytest.raises(ValueError, match="does not cover"):
    native.aligned(np.ones(10, np.float32), (1, 11, 1), 4, 24, 8, True)
  with pytest.raises(ValueError, match="does not cover"):
    native.bitx(np.ones(10, np.float32), (2, 5, 2), 4, 3)
  with pytest.raises(ValueError, match="window must be in 1..2147483647"):
    native.aligned(np.ones(10, np.float32), (1, 10, 1), 4, 24, 2**32 + 8, True)
  with pytest.raises(ValueError, match="group_size 1..16384"):
    native.bitx(np.ones(10, np.float32), (1, 10, 1), 16385, 3)
  with pytest.raises(ValueError, match="keep_bits must be in 0..23"):
    native.morph(np.ones(10, np.float32), "round", 1.0, 2**32 + 3)


def test_counting_inside_tf_function_says_to_call_it_eagerly():
  tf = pytest.importorskip("tensorflow")

  @tf.function
  def count(t):
    return mortar_tf.count_ones(t, "word")

  with pytest.raises(ValueError, match="call it eagerly"):
    count(tf.ones(3))


def test_an_unknown_isa_is_named_and_ignored(tmp_path):
  result = subprocess.run(
      [sys.executable, "-W", "always", "-c",
       "import mortar_tf; from mortar_tf import native; print(native.isa())"],
      capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
      env=dict(os.environ, MORTAR_TF_ISA="avx3"))
  assert result.returncode == 0, result.stderr
  assert "MORTAR_TF_ISA='avx3' is not one of avx512, avx2, baseline; ignored" in result.stderr


# ---------------------------------------------------------------------------
# TensorFlow stays out


def test_numpy_paths_never_import_tensorflow(tmp_path):
  script = textwrap.dedent("""
      import sys
      import numpy as np
      import mortar_tf
      from mortar_tf import analyze, bits, morphing, native, precision_map, report, table
      w = np.random.default_rng(0).standard_normal((3, 3, 8, 4)).astype(np.float32)
      for method, kw in [("paper", {"precision": 0.1}), ("fewest_ones", {"precision": 0.1}),
                         ("round", {"keep_bits": 4}), ("bitx", {"columns": 4})]:
        mortar_tf.morph(w, method, **kw)
        mortar_tf.morph(w, method, backend="numpy", **kw)
      mortar_tf.count_ones(w, "aligned", layout="conv")
      mortar_tf.bit_histogram(w, "word")
      mortar_tf.aligned_statistics(w, layout="conv")
      print(mortar_tf.sparsity_report({"conv": w}, "paper", 0.1).format_table()[:20])
      assert native.is_built()
      assert "tensorflow" not in sys.modules, "imported tensorflow"
      import mortar_tf.ops
      assert "tensorflow" in sys.modules  # the op path does import it
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]


def test_dispatch_and_its_errors():
  w = np.float32([1.375, 1.6])
  assert backends.resolve(None, "x") == "native"
  with pytest.raises(ValueError, match="unknown backend 'tf' for count_ones"):
    mortar_tf.count_ones(w, backend="tf")
  with pytest.raises(ValueError, match="unknown backend 'gpu'"):
    mortar_tf.morph(w, backend="gpu")
  with pytest.raises(TypeError, match="float32"):
    mortar_tf.count_ones(w.astype(np.float64))
  with pytest.raises(ValueError, match="window"):
    mortar_tf.aligned_statistics(w, window=0)
  # group sizes past the kernels' counters fall back to numpy, same bits; the
  # largest the kernels take runs on them
  big = weights(20000, seed=6).reshape(20000, 1)
  for g in (native.MAX_GROUP_SIZE, native.MAX_GROUP_SIZE + 1):
    np.testing.assert_array_equal(
        u32(mortar_tf.morph(big, "bitx", columns=9, group_size=g)),
        u32(mortar_tf.morph(big, "bitx", columns=9, group_size=g, backend="numpy")))
    for a, b in zip(mortar_tf.aligned_statistics(big, group_size=g, window=3),
                    mortar_tf.aligned_statistics(big, group_size=g, window=3, backend="numpy")):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="backend='op' takes group_size up to 16384"):
    mortar_tf.count_ones(big, "aligned", group_size=16385, backend="op")


def test_the_native_library_refuses_bad_arguments_instead_of_crashing():
  lib = native._library()  # pylint: disable=protected-access
  x = np.ones(8, np.float32)
  out = np.empty_like(x)
  assert lib.mortar_morph(x.ctypes.data, out.ctypes.data, 8, 7, 0.1, 0, 1) != 0
  assert lib.mortar_morph(x.ctypes.data, out.ctypes.data, 8, 0, 1.5, 0, 1) != 0
  assert lib.mortar_morph(x.ctypes.data, out.ctypes.data, 8, 2, 0.1, 24, 1) != 0
  columns = np.zeros(64, np.int64)
  assert lib.mortar_aligned(x.ctypes.data, 1, 8, 1, 0, 24, 8, columns.ctypes.data, None, None,
                            1) != 0
  assert lib.mortar_aligned(x.ctypes.data, 1, 8, 1, 4, 65, 8, columns.ctypes.data, None, None,
                            1) != 0
  assert lib.mortar_bitx(x.ctypes.data, x.ctypes.data, 1, 8, 1, 4, 3, 1) != 0  # in place
  with pytest.raises(ValueError, match="MORTAR_TF_THREADS"):
    os.environ[native.THREADS_VARIABLE] = "zero"
    try:
      native.threads()
    finally:
      del os.environ[native.THREADS_VARIABLE]


def test_threads_give_the_same_bits(monkeypatch):
  w = weights(3 << 20, seed=8).reshape(-1, 96)
  results = []
  for threads in ("1", "2", "5"):
    monkeypatch.setenv(native.THREADS_VARIABLE, threads)
    results.append([hashlib.sha256(u32(mortar_tf.morph(w, "fewest_ones", 0.2))).hexdigest(),
                    mortar_tf.bit_histogram(w, "aligned", group_size=16).tolist(),
                    [hashlib.sha256(a.tobytes()).hexdigest()
                     for a in mortar_tf.aligned_statistics(w, group_size=64)],
                    hashlib.sha256(u32(mortar_tf.morph(w, "bitx", columns=6))).hexdigest()])
  assert results[0] == results[1] == results[2]


def test_the_references_and_kernels_sit_below_the_one_module_that_chooses():
  # bits and morphing are the numpy references, native the kernels: none of them
  # imports backends, ops or TensorFlow (the old bits <-> ops circle), and only
  # backends imports native.
  import ast  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  package = pathlib.Path(mortar_tf.__file__).parent
  allowed = {"bits": {"numpy"}, "morphing": {"numpy", "mortar_tf.bits"}, "native": {"numpy"}}
  for name, others in allowed.items():
    tree = ast.parse((package / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        imported.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        imported.update(f"{node.module}.{alias.name}" if node.module == "mortar_tf"
                        else node.module for alias in node.names)
    ours = {m for m in imported if m.startswith(("mortar_tf", "tensorflow", "keras"))}
    assert ours <= others, (name, ours - others)
  users = [p.name for p in package.rglob("*.py")
           if "from mortar_tf import native" in p.read_text() and p.name != "backends.py"]
  assert users == [], users


# ---------------------------------------------------------------------------
# The edges of the aligned window (SPEC 3: a bit lands in column
# c = (23 - j) + (emax - e), kept iff c < width), SPEC 5's worked examples and
# the ball ends, on every backend and every instruction-set variant. The
# kernels shift by the exponent gap d = emax - e, which C forbids at >= 32 for
# a 32-bit word (widths up to 32) and at >= 64 for a 64-bit one (widths 33..64):
# each guard is met at its boundary here. Expected columns are counted by hand
# from SPEC 3 (and checked against the naive loop of spec_reference too).

MIN_NORMAL = float(np.finfo(np.float32).tiny)
F32_MAX = float(np.finfo(np.float32).max)
ALL_24 = (2**24 - 1) * 2.0**-23  # 1.11...1b: a 1 in each of the 24 significand bits

# (one group's values, width, {column: ones}); the group is the whole vector.
ALIGNED_EDGES = [
    ([1.0, 2.0**-31], 32, {0: 1, 31: 1}),  # d = 31: the hidden bit in the last column
    ([1.0, 2.0**-32], 32, {0: 1}),  # d = 32: past the 32-bit word
    ([1.0, 2.0**-31], 31, {0: 1}),  # d = 31 at width 31: outside
    ([1.5, 1.5 * 2.0**-31], 32, {0: 1, 1: 1, 31: 1}),  # its second bit falls in column 32
    ([-1.0, -(2.0**-31)], 32, {0: 1, 31: 1}),  # signs are ignored
    ([1.0, ALL_24 * 2.0**-9], 32, {0: 1, **{c: 1 for c in range(9, 32)}}),  # columns 9..32
    ([1.0, 2.0**-32], 33, {0: 1, 32: 1}),  # d = 32 in the 64-bit word
    ([1.0, 2.0**-33], 33, {0: 1}),
    ([1.0, 2.0**-63], 64, {0: 1, 63: 1}),  # d = 63: the hidden bit in the last column
    ([1.0, 2.0**-64], 64, {0: 1}),  # d = 64: past the 64-bit word
    ([1.5, 1.5 * 2.0**-63], 64, {0: 1, 1: 1, 63: 1}),
    ([1.0, ALL_24 * 2.0**-41], 64, {0: 1, **{c: 1 for c in range(41, 64)}}),  # columns 41..64
    ([2.0**100, 2.0**-100], 64, {0: 1}),  # d = 200
    ([F32_MAX, MIN_NORMAL], 64, {c: 1 for c in range(24)}),  # d = 253
    ([2.0**-31, 1.0, 0.0, 2.0**-32], 32, {0: 1, 31: 1}),  # the largest need not come first
]

# (one group's values, columns, result): bitx keeps bit j of an element d
# binades below the group's largest iff (23 - j) + d < columns.
BITX_EDGES = [
    ([1.0, 1.5 * 2.0**-31, 1.5 * 2.0**-32], 32, [1.0, 2.0**-31, 0.0]),
    ([-1.0, -1.5 * 2.0**-31, -1.5 * 2.0**-32], 32, [-1.0, -(2.0**-31), 0.0]),  # +0.0
    ([1.75, 1.75 * 2.0**-30], 32, [1.75, 1.5 * 2.0**-30]),
    ([1.0, 1.5 * 2.0**-63, 1.5 * 2.0**-64], 64, [1.0, 2.0**-63, 0.0]),
    ([1.0, ALL_24 * 2.0**-41], 64, [1.0, (ALL_24 - 2.0**-23) * 2.0**-41]),  # its last bit goes
    ([1.0, 1.5 * 2.0**-23, 1.5 * 2.0**-24], 24, [1.0, 2.0**-23, 0.0]),
    ([F32_MAX, MIN_NORMAL, 1.0], 64, [F32_MAX, 0.0, 0.0]),
]


def _column(values, copies):
  """`values` as `copies` identical output elements of one group each: [G, copies]
  (copies > 16 spans more than one tile of lanes)."""
  return np.repeat(np.float32(values).reshape(-1, 1), copies, axis=1)


def _hand_columns(width, ones):
  return [ones.get(c, 0) for c in range(width)]


@pytest.mark.parametrize("values,width,ones", ALIGNED_EDGES)
def test_spec_reference_agrees_with_the_hand_counted_edges(values, width, ones):
  w = _column(values, 1)
  assert ref.aligned_column_ones(w, (0,), len(values), width) == _hand_columns(width, ones)
  assert mortar_tf.count_ones(w, "aligned", group_size=len(values), width=width,
                              backend="numpy") == sum(ones.values())


@pytest.mark.parametrize("backend", ["native", "op", "numpy"])
@pytest.mark.parametrize("copies", [1, 17])
@pytest.mark.parametrize("values,width,ones", ALIGNED_EDGES)
def test_aligned_columns_at_the_shift_guards(values, width, ones, copies, backend):
  if backend == "op":
    pytest.importorskip("tensorflow")
  w = _column(values, copies)
  g = len(values)
  expected = [copies * n for n in _hand_columns(width, ones)]
  assert mortar_tf.bit_histogram(w, "aligned", group_size=g, width=width,
                                 backend=backend).tolist() == expected
  assert mortar_tf.count_ones(w, "aligned", group_size=g, width=width,
                              backend=backend) == sum(expected)
  # the per-group cycle figures at the same edges, against the naive loops
  _, lane_max, bitlet = mortar_tf.aligned_statistics(w, group_size=g, width=width, window=2,
                                                     backend=backend)
  figures = ref.engine_group_figures(w, (0,), g, width, 2)
  assert list(zip(lane_max.reshape(-1).tolist(), bitlet.reshape(-1).tolist())) == figures


def test_the_issue_example_counts_two_ones_everywhere():
  # count_ones([[1.0], [2**-31]], "aligned", group_size=2, width=32): 1.0's
  # hidden bit in column 0, 2^-31's in column 31 (< 32): 2 ones.
  w = np.float32([[1.0], [2.0**-31]])
  backends_here = ["numpy", "native"] + (["op"] if _has_tf() else [])
  for backend in backends_here:
    assert mortar_tf.count_ones(w, "aligned", group_size=2, width=32, backend=backend) == 2


def _has_tf():
  try:
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


@pytest.mark.parametrize("backend", ["native", "op", "numpy", "tf"])
@pytest.mark.parametrize("values,columns,expected", BITX_EDGES)
def test_bitx_at_the_shift_guards(values, columns, expected, backend):
  if backend in ("op", "tf"):
    pytest.importorskip("tensorflow")
  w = _column(values, 17)
  got = mortar_tf.morph(w, "bitx", columns=columns, group_size=len(values),
                        width=max(24, columns), backend=backend)
  want = _column(expected, 17)
  np.testing.assert_array_equal(u32(got), u32(want))
  np.testing.assert_array_equal(u32(ref.bitx(w, (0,), len(values), columns)), u32(want))


# ---------------------------------------------------------------------------
# The ball ends of float_bits.h (native.ball_ends), against SPEC's predicate
# evaluated in double exactly as written: a ball end is in the ball and its
# outer neighbour is not (or is past the smallest normal / largest finite).
# The predicate is monotone on each side of x, so that pins each end down.


def _in_ball(y_words, x_words, p):
  y = np.asarray(y_words, np.uint32).view(np.float32).astype(np.float64)
  x = np.asarray(x_words, np.uint32).view(np.float32).astype(np.float64)
  return np.abs(y - x) < p * x  # IEEE double, as SPEC writes it (numpy fuses nothing)


def _ball_end_inputs(seed):
  """Positive normal words: random over every binade, and the edges."""
  r = np.random.default_rng(seed)
  random = ((r.integers(1, 255, 4000).astype(np.uint32) << 23) |
            r.integers(0, 1 << 23, 4000).astype(np.uint32))
  edges = [0x00800000, 0x00800001, 0x00FFFFFF, 0x01000000, 0x7F7FFFFF, 0x7F7FFFFE, 0x7F000000,
           0x7F000001, 0x7EFFFFFF, 0x3F800000, 0x3F800001, 0x3F7FFFFF, 0x3FFFFFFF, 0x40000000,
           0x3FC00000, 0x3FB00000, 0x3F8CCCCD, 0x3DCC8B44]
  near_powers = [(e << 23) + dm for e in (1, 2, 64, 127, 128, 200, 253, 254)
                 for dm in (0, 1, 2, 3, (1 << 23) - 1, (1 << 23) - 2, 1 << 22)]
  return np.concatenate([random, np.array(edges + near_powers, np.uint32)])


BALL_PRECISIONS = [1.0, 1.0 - 2.0**-30, 0.999, 0.75, 0.5 + 2.0**-40, 0.5, 0.3, 0.1, 0.01, 1e-3,
                   2.0**-24, 1e-6, 1e-9, 2.0**-30, 5e-324]


def _check_ball_ends(x, p, lower, upper):
  """Every end against the predicate; returns how many balls were empty."""
  x = np.asarray(x, np.uint32)
  lo, hi = np.asarray(lower).view(np.uint32), np.asarray(upper).view(np.uint32)
  empty = ~_in_ball(x, x, p)  # P * x rounds to 0 in double: nothing is in the ball
  np.testing.assert_array_equal(lo[empty], x[empty])
  np.testing.assert_array_equal(hi[empty], x[empty])
  full = ~empty
  x, lo, hi = x[full], lo[full], hi[full]
  assert np.all((lo <= x) & (x <= hi))
  assert np.all(_in_ball(lo, x, p)) and np.all(_in_ball(hi, x, p))
  below = np.maximum(lo.astype(np.int64) - 1, 0x00800000)
  above = np.minimum(hi.astype(np.int64) + 1, 0x7F7FFFFF)
  assert np.all((lo == 0x00800000) | ~_in_ball(below, x, p))
  assert np.all((hi == 0x7F7FFFFF) | ~_in_ball(above, x, p))
  return int(empty.sum())


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "general"])
@pytest.mark.parametrize("p", BALL_PRECISIONS)
def test_ball_ends_are_the_predicates_ends(p, exact):
  if exact and p > 0.5:
    with pytest.raises(ValueError, match=r"0 < P <= 0.5"):
      native.ball_ends(np.float32([1.0]), p, exact)
    return
  x = _ball_end_inputs(seed=int(p * 1e6) % 1000)
  lower, upper = native.ball_ends(x.view(np.float32), p, exact)
  empty = _check_ball_ends(x, p, lower, upper)
  assert (empty > 0) == (p == 5e-324)  # only there does P * x round to 0 (for x < 2^52 or so)
  # the numpy reference's ends (a second implementation) agree word for word
  from mortar_tf import morphing  # pylint: disable=import-outside-toplevel
  if exact:
    a, b = morphing._ball_ends_exact(x.astype(np.int32), p)  # pylint: disable=protected-access
  else:
    values = x.view(np.float32).astype(np.float64)
    a, b = morphing._ball_ends(x.astype(np.int64), values, p * values)  # pylint: disable=protected-access
  keep = _in_ball(x, x, p)  # an empty ball has no ends to compare
  np.testing.assert_array_equal(lower.view(np.uint32)[keep], np.asarray(a, np.int64)[keep])
  np.testing.assert_array_equal(upper.view(np.uint32)[keep], np.asarray(b, np.int64)[keep])


@pytest.mark.parametrize("p", [1e-3, 1e-4, 2.0**-20])
def test_ball_ends_by_brute_force(p):
  # Every float32 word near x enumerated: the ends are the first and last in the ball.
  x = _ball_end_inputs(seed=11)[::20]
  x = np.concatenate([x, np.array([0x00800000, 0x7F7FFFFF, 0x3F800000, 0x40000000], np.uint32)])
  reach = int(4 * p * 2**24) + 8
  for exact in (True, False):
    lower, upper = native.ball_ends(x.view(np.float32), p, exact)
    for i, word in enumerate(x.tolist()):
      window = np.arange(max(word - reach, 0x00800000), min(word + reach, 0x7F7FFFFF) + 1,
                         dtype=np.int64)
      inside = window[_in_ball(window, word, p)]
      assert inside[0] > window[0] or window[0] == 0x00800000  # the window holds the ball
      assert inside[-1] < window[-1] or window[-1] == 0x7F7FFFFF
      assert (int(lower.view(np.uint32)[i]), int(upper.view(np.uint32)[i])) == (
          int(inside[0]), int(inside[-1])), (hex(word), exact)


def test_ball_ends_refuse_what_they_are_not_for():
  for bad in (0.0, -1.0, 1e-40, np.inf, np.nan):
    with pytest.raises(ValueError, match="positive normal float32"):
      native.ball_ends(np.float32([1.0, bad]), 0.1, exact=False)
  for p in (0.0, 1.5, -0.1, True):
    with pytest.raises(ValueError, match="precision"):
      native.ball_ends(np.float32([1.0]), p, exact=False)
  # the C entry point refuses too (a caller bug past the Python checks)
  lib = native._library()  # pylint: disable=protected-access
  words = np.array([0x3F800000, 0x80000001], np.uint32)
  out = np.zeros(2, np.uint32)
  assert lib.mortar_ball_ends(words.ctypes.data, 2, 0.1, 0, out.ctypes.data,
                              out.ctypes.data) != 0
  assert lib.mortar_ball_ends(words.ctypes.data, 1, 0.7, 1, out.ctypes.data,
                              out.ctypes.data) != 0
  assert out.tolist() == [0, 0]  # nothing written


# ---------------------------------------------------------------------------
# The same answers from every instruction-set variant (chosen at load time, so
# each runs in a subprocess): SPEC 5's worked examples, the window's edges, the
# bitx edges and the ball ends, all on the native library.

JOBS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import mortar_tf
    from mortar_tf import native
    out = []
    for job in json.load(sys.stdin):
      x = np.array(job["words"], np.uint32).view(np.float32).reshape(job["shape"])
      kind, kw = job["kind"], job["kwargs"]
      if kind == "morph":
        out.append(mortar_tf.morph(x, backend="native", **kw).view(np.uint32).reshape(-1)
                   .tolist())
      elif kind == "aligned":
        columns, lane_max, bitlet = mortar_tf.aligned_statistics(x, backend="native", **kw)
        out.append([columns.tolist(), lane_max.reshape(-1).tolist(),
                    bitlet.reshape(-1).tolist()])
      else:
        lower, upper = native.ball_ends(x, **kw)
        out.append([lower.view(np.uint32).tolist(), upper.view(np.uint32).tolist()])
    print(json.dumps({"isa": native.isa(), "results": out}))
""")


def _job(kind, values, **kwargs):
  x = np.asarray(values, np.float32)
  return {"kind": kind, "words": u32(x).reshape(-1).tolist(), "shape": list(x.shape),
          "kwargs": kwargs}


def _variant_jobs():
  """(jobs, check(results)): each check compares with SPEC, the hand counts
  or the predicate, never with another variant."""
  jobs, checks = [], []
  xs = [ref.example_value(x) for x, _, _, _ in ref.WORKED_EXAMPLES]
  for method, column in (("paper", 2), ("fewest_ones", 3)):
    for (x, p, *answers), value in zip(ref.WORKED_EXAMPLES, xs):
      jobs.append(_job("morph", [value], method=method, precision=p))
      checks.append((f"SPEC 5 {method} {x} P={p}", u32([ref.example_value(answers[column - 2])])
                     .tolist()))
  for x, keep, result in ref.ROUND_EXAMPLES:
    jobs.append(_job("morph", [x], method="round", keep_bits=keep))
    checks.append((f"SPEC 5 round {x} keep {keep}", u32([result]).tolist()))
  for columns, result in ref.BITX_EXAMPLES:
    jobs.append(_job("morph", np.float32(ref.BITX_GROUP).reshape(4, 1), method="bitx",
                     columns=columns, group_size=4, width=24))
    checks.append((f"SPEC 5 bitx columns={columns}", u32(result).tolist()))
  e = ref.ENGINE_EXAMPLE
  jobs.append(_job("aligned", np.float32(ref.ENGINE_GROUP).reshape(4, 1),
                   group_size=e["group_size"], width=e["width"], window=e["window"]))
  checks.append(("SPEC 5 engines", [e["columns"], [e["lane_max"]], [e["bitlet"]]]))
  for values, width, ones in ALIGNED_EDGES:
    w = _column(values, 17)
    jobs.append(_job("aligned", w, group_size=len(values), width=width, window=2))
    figures = ref.engine_group_figures(w, (0,), len(values), width, 2)
    checks.append((f"aligned edge {values} width {width}",
                   [[17 * n for n in _hand_columns(width, ones)], [f[0] for f in figures],
                    [f[1] for f in figures]]))
  for values, columns, result in BITX_EDGES:
    jobs.append(_job("morph", _column(values, 17), method="bitx", columns=columns,
                     group_size=len(values), width=max(24, columns)))
    checks.append((f"bitx edge {values} columns {columns}",
                   u32(_column(result, 17)).reshape(-1).tolist()))
  # bitx's bands: rows of more than one 1024-word chunk, a last chunk shorter
  # than a vector (6) or not a whole number of them (76), a last group short of
  # G, a > 1; checked against the numpy backend (SPEC's formulas in numpy)
  for shape, axes, group_size, columns in (((2, 37, 1100), (1,), 16, 5),
                                           ((70, 1030), (0,), 64, 9)):
    w = weights(int(np.prod(shape)), seed=shape[-1], spread=12).reshape(shape)
    jobs.append(_job("morph", w, method="bitx", columns=columns, group_size=group_size,
                     reduction_axes=list(axes)))
    checks.append((f"bitx bands {shape} axes {axes}", u32(mortar_tf.morph(
        w, "bitx", columns=columns, group_size=group_size, reduction_axes=axes,
        backend="numpy")).reshape(-1).tolist()))
  return jobs, checks


def test_every_instruction_set_variant_gives_spec_and_the_edges(tmp_path):
  jobs, checks = _variant_jobs()
  x = _ball_end_inputs(seed=3)
  ball_cases = [(p, exact) for p in BALL_PRECISIONS for exact in (True, False)
                if not (exact and p > 0.5)]
  jobs += [_job("ball_ends", x.view(np.float32), precision=p, exact=exact)
           for p, exact in ball_cases]
  seen = set()
  for isa in ("", "avx2", "baseline"):
    result = subprocess.run([sys.executable, "-c", JOBS_SCRIPT], input=json.dumps(jobs),
                            capture_output=True, text=True, timeout=600, check=False,
                            cwd=tmp_path, env=dict(os.environ, MORTAR_TF_ISA=isa))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    seen.add(out["isa"])
    results = out["results"]
    for (label, expected), got in zip(checks, results):
      assert got == expected, f"{out['isa']}: {label}"
    for (p, exact), (lower, upper) in zip(ball_cases, results[len(checks):]):
      _check_ball_ends(x, p, np.array(lower, np.uint32), np.array(upper, np.uint32))
  assert "baseline" in seen  # the forced variant really ran


# ---------------------------------------------------------------------------
# The largest group: one limit (kMaxGroupSize in mortar_tf/cc/kernels.h, which
# the library reports) for the C++ kernels behind every entry point; G at the
# limit runs on them, G past it is a clear error where the kernels were asked
# for by name (backend=None runs it in numpy, same bits: test_dispatch_...).


def test_one_limit_on_the_group_size_everywhere():
  from mortar_tf.estimator import engines  # pylint: disable=import-outside-toplevel
  lib = native._library()  # pylint: disable=protected-access
  assert lib.mortar_max_group_size() == native.MAX_GROUP_SIZE == 16384
  assert backends.MAX_KERNEL_GROUP_SIZE == engines.MAX_GROUP_SIZE == native.MAX_GROUP_SIZE


def _full_and_empty_group(g):
  """One group of g lanes: the first half 1.11...1b (a 1 in all 24 columns),
  the second half 0: per column g/2 ones and, with window 1, g/2 all-zero
  windows, so Bitlet's count reaches g, the most the counters hold here."""
  w = np.zeros((g, 1), np.float32)
  w[:g // 2] = ALL_24
  return w


@pytest.mark.parametrize("backend", ["native", "op"])
def test_the_largest_group_runs_on_the_kernels_and_one_more_is_refused(backend):
  if backend == "op":
    pytest.importorskip("tensorflow")
  g = native.MAX_GROUP_SIZE
  w = _full_and_empty_group(g)
  # by hand: 24 columns of g/2 ones; one lane holds 24; Bitlet g/2 + g/2 windows
  columns, lane_max, bitlet = mortar_tf.aligned_statistics(w, group_size=g, width=24, window=1,
                                                           backend=backend)
  assert columns.tolist() == [g // 2] * 24
  assert lane_max.tolist() == [[24]] and bitlet.tolist() == [[g]]
  assert mortar_tf.count_ones(w, "aligned", group_size=g, backend=backend) == 24 * (g // 2)
  pruned = mortar_tf.morph(w, "bitx", columns=3, group_size=g, backend=backend)
  np.testing.assert_array_equal(pruned[:g // 2], np.float32(1.75))  # 1.11b: three columns
  np.testing.assert_array_equal(u32(pruned[g // 2:]), 0)
  big = np.zeros((g + 1, 1), np.float32)
  message = f"backend='{backend}' takes group_size up to {g}, got {g + 1}"
  for call in (lambda: mortar_tf.count_ones(big, "aligned", group_size=g + 1, backend=backend),
               lambda: mortar_tf.bit_histogram(big, "aligned", group_size=g + 1,
                                               backend=backend),
               lambda: mortar_tf.aligned_statistics(big, group_size=g + 1, backend=backend),
               lambda: mortar_tf.morph(big, "bitx", columns=3, group_size=g + 1,
                                       backend=backend)):
    with pytest.raises(ValueError, match=message):
      call()


def test_the_raw_entry_points_take_the_largest_group_and_refuse_one_more():
  g = native.MAX_GROUP_SIZE
  w = _full_and_empty_group(g)
  columns, lane_max, bitlet = native.aligned(w, (1, g, 1), g, 24, 1, True)
  assert columns.tolist() == [g // 2] * 24 and bitlet.tolist() == [[g]]
  assert lane_max.tolist() == [[24]]
  assert native.bitx(w, (1, g, 1), g, 24).tolist() == w.tolist()
  for call in (lambda: native.aligned(np.zeros(g + 1, np.float32), (1, g + 1, 1), g + 1, 24, 8,
                                      False),
               lambda: native.bitx(np.zeros(g + 1, np.float32), (1, g + 1, 1), g + 1, 3)):
    with pytest.raises(ValueError, match=f"the native kernels take group_size 1..{g}, got "
                                         f"{g + 1}"):
      call()
  lib = native._library()  # pylint: disable=protected-access
  x = np.zeros(g + 1, np.float32)
  out = np.empty_like(x)
  cols = np.zeros(24, np.int64)
  assert lib.mortar_aligned(x.ctypes.data, 1, g, 1, g, 24, 8, cols.ctypes.data, None, None,
                            1) == 0
  assert lib.mortar_aligned(x.ctypes.data, 1, g + 1, 1, g + 1, 24, 8, cols.ctypes.data, None,
                            None, 1) != 0
  assert lib.mortar_bitx(x.ctypes.data, out.ctypes.data, 1, g, 1, g, 3, 1) == 0
  assert lib.mortar_bitx(x.ctypes.data, out.ctypes.data, 1, g + 1, 1, g + 1, 3, 1) != 0


# ---------------------------------------------------------------------------
# Many pairs in one native call (MortarCallback counts a whole model so).


def test_pair_statistics_many_equal_each_pair_counted_by_numpy():
  rng = np.random.default_rng(11)
  pairs = []
  for shape, view in [((3, 3, 5, 7), (1, 45, 7)), ((130, 9), (1, 130, 9)), ((4, 50, 3), (4, 50, 3)),
                      ((1,), (1, 1, 1)), ((0, 4), (1, 0, 4))]:
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(np.float32)
    x.reshape(-1)[::13] = np.inf
    pairs.append((x, mortar_tf.morph(x, "fewest_ones", 0.05, backend="numpy"), view))
  for group_size, width in [(4, 11), (64, 24)]:
    got = backends.pair_statistics_many(pairs, group_size, width)
    assert len(got) == len(pairs)
    for (x, y, view), (ones_x, ones_y, error) in zip(pairs, got):
      for ones, values in ((ones_x, x), (ones_y, y)):
        assert ones == {d: mortar_tf.count_ones(values.reshape(view), d, reduction_axes=(1,),
                                                group_size=group_size, width=width,
                                                backend="numpy") for d in bits.DOMAINS}
      assert error == backends._max_relative_error_numpy(x, y)  # pylint: disable=protected-access
  assert backends.pair_statistics_many([], 64, 24) == []
