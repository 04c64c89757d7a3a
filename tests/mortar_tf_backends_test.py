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
    columns, lane_max, bitlet = mortar_tf.aligned_statistics(empty, reduction_axes=(0, 2),
                                                             backend=backend)
    assert columns.tolist() == [0] * 24 and lane_max.shape == bitlet.shape == (0, 2)
  # a window of G lanes or more is one window: the same figures, no huge allocation
  w = weights(256 * 4, seed=2).reshape(256, 4)
  one_window = mortar_tf.aligned_statistics(w, window=16)
  for window in (17, 2**32 + 8, 2**62):
    for backend in ("native", "numpy"):
      got = mortar_tf.aligned_statistics(w, window=window, backend=backend)
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
