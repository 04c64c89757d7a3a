"""The SavedModel converter: bit-exact kernels, untouched rest, atomic output, bad input.

References are independent of the converter: `mortar_tf.morph` on the values
read with TensorFlow's checkpoint reader, the Keras model itself with morphed
kernels, popcounts with numpy's unpackbits, and files compared byte for byte.
"""

import json
import os
import signal
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import savedmodel
from mortar_tf.savedmodel import SavedModelError
from mortar_tf.savedmodel import converter

import installed_tool


def _model():
  inputs = keras.Input((8, 8, 3), name="image")
  x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(5, name="fc")(x)
  model = keras.Model(inputs, outputs)
  rng = np.random.default_rng(1)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) + 1.5 * (i % 2)
                     for i, w in enumerate(model.weights)])
  return model


KERNELS = ("conv/kernel", "dw/kernel", "fc/kernel")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  d = tmp_path_factory.mktemp("convert")
  model = _model()
  model.export(str(d / "src"), verbose=False)
  return d / "src", model


def _checkpoint(path):
  reader = tf.train.load_checkpoint(os.path.join(str(path), "variables", "variables"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def _bytes(value):
  return value if isinstance(value, bytes) else np.asarray(value).tobytes()


def _popcount(a):
  return int(np.unpackbits(np.ascontiguousarray(a).view(np.uint8)).sum())


def _files(path):
  out = {}
  for root, _, names in os.walk(path):
    for name in names:
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = open(full, "rb").read()
  return out


def test_kernels_morphed_bit_for_bit_and_everything_else_unchanged(exported, tmp_path):
  src, model = exported
  report = savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1)
  before, after = _checkpoint(src), _checkpoint(tmp_path / "dst")
  assert sorted(before) == sorted(after)
  morphed_keys = {v.key for v in report.morphed}
  names = {v.name for v in report.morphed if not v.twin_of}
  assert names == set(KERNELS)
  for key, value in before.items():
    if key in morphed_keys:
      expected = mortar_tf.morph(value, "paper", precision=0.1, backend="numpy")
      np.testing.assert_array_equal(after[key].view(np.uint32), expected.view(np.uint32))
      assert _bytes(after[key]) != _bytes(value)
    else:
      assert _bytes(after[key]) == _bytes(value), key
  # The twin copies Keras 3 keeps under `_all_variables` are morphed alike.
  assert len(morphed_keys) == 2 * len(KERNELS)
  src_files, dst_files = _files(src), _files(tmp_path / "dst")
  assert dst_files["saved_model.pb"] == src_files["saved_model.pb"]
  for name in src_files:
    if not name.startswith("variables/") and name != "fingerprint.pb":
      assert dst_files[name] == src_files[name], name


def test_converted_model_serves_like_keras_with_morphed_kernels(exported, tmp_path):
  src, model = exported
  savedmodel.convert(str(src), str(tmp_path / "dst"), "fewest_ones", 0.2)
  reference = keras.models.clone_model(model)
  reference.set_weights(model.get_weights())
  for name in ("conv", "dw", "fc"):
    layer = reference.get_layer(name)
    weights = layer.get_weights()
    weights[0] = mortar_tf.morph(weights[0], "fewest_ones", precision=0.2, backend="numpy")
    layer.set_weights(weights)
  x = np.random.default_rng(2).standard_normal((4, 8, 8, 3)).astype(np.float32)
  loaded = tf.saved_model.load(str(tmp_path / "dst"))
  served = loaded.serve(tf.constant(x)).numpy()
  np.testing.assert_allclose(served, reference.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
  original = model.predict(x, verbose=0)
  assert np.abs(served - original).max() > 1e-3  # the kernels really changed


def test_record_fingerprint_and_report(exported, tmp_path):
  src, _ = exported
  out = tmp_path / "r.json"
  report = savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1, report_path=str(out))
  record = converter.read_record(str(tmp_path / "dst"))
  assert record["method"] == "paper" and record["settings"] == {"precision": 0.1}
  assert record["mortar_tf_version"] == mortar_tf.__version__
  values = _checkpoint(src)
  morphed_values = _checkpoint(tmp_path / "dst")
  for entry in record["variables"]:
    assert entry["ones_before"]["word"] == _popcount(values[entry["key"]])
    assert entry["ones_after"]["word"] == _popcount(morphed_values[entry["key"]])
  assert json.loads(out.read_text())["variables"] == record["variables"]
  # The fingerprint's checkpoint hash follows the new variables; the rest is the same graph.
  old = tf.saved_model.experimental.read_fingerprint(str(src))
  new = tf.saved_model.experimental.read_fingerprint(str(tmp_path / "dst"))
  assert report.fingerprint == "regenerated"
  assert new.checkpoint_hash != old.checkpoint_hash
  assert (new.graph_def_program_hash, new.signature_def_hash, new.saved_object_graph_hash) == (
      old.graph_def_program_hash, old.signature_def_hash, old.saved_object_graph_hash)
  assert "conv/kernel" in report.summary() and "total" in report.summary()


def test_morphed_model_is_refused_unless_forced(exported, tmp_path):
  src, _ = exported
  savedmodel.convert(str(src), str(tmp_path / "once"), "paper", 0.1)
  with pytest.raises(ValueError, match="already morphed.*force=True"):
    savedmodel.convert(str(tmp_path / "once"), str(tmp_path / "twice"), "paper", 0.1)
  assert not (tmp_path / "twice").exists()
  savedmodel.convert(str(tmp_path / "once"), str(tmp_path / "twice"), "round", keep_bits=2,
                     force=True)
  record = converter.read_record(str(tmp_path / "twice"))
  assert record["method"] == "round" and record["previous"]["method"] == "paper"


def test_precision_map_and_explicit_selection(exported, tmp_path):
  src, _ = exported
  report = savedmodel.convert(str(src), str(tmp_path / "map"), "paper",
                              {"conv/*": 0.3, "fc/kernel": 0.05})
  before, after = _checkpoint(src), _checkpoint(tmp_path / "map")
  by_name = {v.name: v for v in report.morphed if not v.twin_of}
  assert set(by_name) == {"conv/kernel", "fc/kernel"}
  for name, p in (("conv/kernel", 0.3), ("fc/kernel", 0.05)):
    key = by_name[name].key
    np.testing.assert_array_equal(
        after[key].view(np.uint32),
        mortar_tf.morph(before[key], "paper", precision=p, backend="numpy").view(np.uint32))
  assert any(name == "dw/kernel" and "precision map" in why for name, why in report.skipped)
  with pytest.raises(ValueError, match=r"\['nope/\*'\] match no selected variable"):
    savedmodel.convert(str(src), str(tmp_path / "bad"), "paper", {"nope/*": 0.1})
  # Explicit selection: a bias (not a kernel) can be chosen by name.
  report = savedmodel.convert(str(src), str(tmp_path / "sel"), "round", keep_bits=3,
                              select=["fc/bias"])
  assert {v.name for v in report.morphed if not v.twin_of} == {"fc/bias"}
  with pytest.raises(ValueError, match="unknown variable 'fc/nothing'"):
    savedmodel.convert(str(src), str(tmp_path / "bad"), "paper", 0.1, select=["fc/nothing"])
  assert not (tmp_path / "bad").exists()


def test_bitx_groups_on_the_graphs_reduction_axes(exported, tmp_path):
  src, _ = exported
  report = savedmodel.convert(str(src), str(tmp_path / "b"), "bitx", columns=4)
  before, after = _checkpoint(src), _checkpoint(tmp_path / "b")
  axes = {"conv/kernel": (0, 1, 2), "dw/kernel": (0, 1), "fc/kernel": (0,)}  # SPEC 3
  for v in report.morphed:
    assert v.reduction_axes == axes[v.name]
    expected = mortar_tf.morph(before[v.key], "bitx", columns=4, reduction_axes=axes[v.name],
                               backend="numpy")
    np.testing.assert_array_equal(after[v.key].view(np.uint32), expected.view(np.uint32))


def test_verify_says_when_its_default_tolerance_checks_nothing(exported, tmp_path):
  """bitx's default tolerance is max rel 1 (a weight may drop whole): --verify
  passes almost anything then, and says so; a P-bounded method does not warn."""
  src, _ = exported
  with pytest.warns(RuntimeWarning, match="default tolerance is max rel 1"):
    report = savedmodel.convert(str(src), str(tmp_path / "b"), "bitx", columns=4, verify=True)
  assert report.verification.max_rel == 1.0
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    savedmodel.convert(str(src), str(tmp_path / "p"), "paper", 0.05, verify=True)
    savedmodel.convert(str(src), str(tmp_path / "x"), "bitx", columns=4, verify=True,
                       verify_max_rel=0.5)


class _Mixed(tf.Module):

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 7, name="w")
    self.steps = tf.Variable(3, dtype=tf.int32, name="steps")
    self.scale = tf.Variable(np.float64(0.5), name="scale")

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def __call__(self, x):
    return tf.matmul(x, self.w) * tf.cast(self.scale, tf.float32) + tf.cast(self.steps,
                                                                            tf.float32)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  d = tmp_path_factory.mktemp("mixed")
  module = _Mixed()
  tf.saved_model.save(module, str(d / "m"), signatures=module.__call__)
  return d / "m"


def test_non_float32_variables_are_copied_and_refused_when_selected(mixed, tmp_path):
  report = savedmodel.convert(str(mixed), str(tmp_path / "all"), "paper", 0.1, select="all")
  assert {v.name for v in report.morphed} == {"w"}
  skipped = dict(report.skipped)
  assert "int32" in skipped["steps"] and "float64" in skipped["scale"]
  before, after = _checkpoint(mixed), _checkpoint(tmp_path / "all")
  for key in before:
    if "w/" not in key and key != "_CHECKPOINTABLE_OBJECT_GRAPH":
      assert _bytes(after[key]) == _bytes(before[key])
  with pytest.raises(ValueError, match="'steps' is int32; only float32"):
    savedmodel.convert(str(mixed), str(tmp_path / "bad"), "paper", 0.1, select=["steps"])
  assert not (tmp_path / "bad").exists()


def _no_leftovers(tmp_path, name="dst"):
  assert not (tmp_path / name).exists()
  left = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}.")]
  assert not left, left


def test_bad_inputs_raise_one_clear_error_and_write_nothing(exported, mixed, tmp_path):
  src, _ = exported
  dst = str(tmp_path / "dst")
  with pytest.raises(SavedModelError, match="no such SavedModel"):
    savedmodel.convert(str(tmp_path / "missing"), dst)
  (tmp_path / "plain").mkdir()
  (tmp_path / "plain" / "notes.txt").write_text("hello")
  with pytest.raises(SavedModelError, match="no saved_model.pb"):
    savedmodel.convert(str(tmp_path / "plain"), dst)
  _no_leftovers(tmp_path)

  def _copy(name):
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.copytree(src, tmp_path / name)
    return tmp_path / name

  truncated = _copy("truncated")
  pb = (truncated / "saved_model.pb").read_bytes()
  (truncated / "saved_model.pb").write_bytes(pb[: len(pb) // 2])
  with pytest.raises(SavedModelError, match="truncated or corrupted"):
    savedmodel.convert(str(truncated), dst)
  _no_leftovers(tmp_path)

  def _flip_data(model_dir, positions, mask):
    """XORs `mask` into the checkpoint data bytes at positions(data)."""
    (data,) = [p for p in (model_dir / "variables").iterdir() if "data" in p.name]
    raw = bytearray(data.read_bytes())
    for i in positions(raw):
      raw[i] ^= mask
    data.write_bytes(bytes(raw))

  corrupted = _copy("corrupted")
  _flip_data(corrupted, lambda raw: range(0, len(raw), 7), 0xFF)  # every tensor is hit
  with pytest.raises(SavedModelError, match="corrupted"):
    savedmodel.convert(str(corrupted), dst)
  _no_leftovers(tmp_path)

  # One flipped bit in fc's bias: the object graph reads fine, streaming fails
  # part-way (after the temp directory exists) and cleans up.
  one_bad = _copy("one_bad")
  bias = exported[1].get_layer("fc").get_weights()[1]  # not a kernel: read only when streaming

  def _in_bias(raw):
    at = raw.find(bias.tobytes())
    assert at >= 0
    return [at + 9]

  _flip_data(one_bad, _in_bias, 0x01)
  with pytest.raises(SavedModelError, match="cannot read variable .*corrupted or missing"):
    savedmodel.convert(str(one_bad), dst)
  _no_leftovers(tmp_path)

  no_vars = _copy("no_vars")
  (no_vars / "variables" / "variables.index").unlink()
  with pytest.raises(SavedModelError, match="variables are missing"):
    savedmodel.convert(str(no_vars), dst)
  _no_leftovers(tmp_path)

  with pytest.raises(SavedModelError, match="unknown signature 'predict'"):
    savedmodel.convert(str(src), dst, signature="predict")
  with pytest.raises(ValueError, match="precision"):
    savedmodel.convert(str(src), dst, "paper", 1.5)
  with pytest.raises(ValueError, match="is the input"):
    savedmodel.convert(str(src), str(src))
  (tmp_path / "exists").mkdir()
  with pytest.raises(ValueError, match="already exists"):
    savedmodel.convert(str(src), str(tmp_path / "exists"))
  _no_leftovers(tmp_path)


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from mortar_tf import savedmodel
    def die(done, total, key):
      if done == 2:  # mid-way through the checkpoint: part of the output exists
        os.kill(os.getpid(), signal.SIGKILL)
    savedmodel.convert(sys.argv[1], sys.argv[2], "paper", 0.1, progress=die)
""")


def test_a_killed_run_leaves_no_output_and_the_next_run_reports_its_temp(exported, tmp_path):
  src, _ = exported
  dst = tmp_path / "dst"
  result = installed_tool.python("-c", KILLED_RUN, str(src), str(dst))
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert not dst.exists()
  (stale,) = [p for p in tmp_path.iterdir() if p.name.endswith(".mortar-tmp")]
  report = savedmodel.convert(str(src), str(dst), "paper", 0.1)
  assert dst.is_dir() and stale.is_dir()  # never deleted: reported, with how to remove it
  assert any(str(stale) in note and "rm -r" in note for note in report.notes)
  assert str(stale) in report.summary()


def test_verify_compares_outputs_on_given_inputs(exported, tmp_path):
  src, model = exported
  x = np.random.default_rng(3).standard_normal((3, 8, 8, 3)).astype(np.float32)
  np.savez(tmp_path / "in.npz", image=x)
  report = savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.05, verify=True,
                              verify_inputs=str(tmp_path / "in.npz"))
  loaded = tf.saved_model.load(str(tmp_path / "dst"))
  served = loaded.serve(tf.constant(x)).numpy()
  original = model.predict(x, verbose=0)
  (diff,) = report.verification.outputs.values()
  assert report.verification.inputs == {"image": (3, 8, 8, 3)} and report.verification.passed
  assert diff["max_abs"] == pytest.approx(float(np.abs(served - original).max()), rel=1e-6)
  np.savez(tmp_path / "wrong.npz", other=x)
  with pytest.raises(ValueError, match="inputs lack \\['image'\\]"):
    savedmodel.convert(str(src), str(tmp_path / "dst2"), verify=True,
                       verify_inputs=str(tmp_path / "wrong.npz"))
  _no_leftovers(tmp_path, "dst2")


def test_select_all_morphs_each_keras_variable_once_and_its_twin_alike(exported, tmp_path):
  src, model = exported
  report = savedmodel.convert(str(src), str(tmp_path / "all"), "round", keep_bits=4,
                              select="all")
  primary = [v for v in report.morphed if not v.twin_of]
  twins = [v for v in report.morphed if v.twin_of]
  # Keras' own list of float32 variables: kernels, biases, BN parameters and statistics.
  assert sorted(v.name for v in primary) == sorted(w.path for w in model.weights)
  assert sorted(v.twin_of for v in twins) == sorted(v.name for v in primary)
  after = _checkpoint(tmp_path / "all")
  for twin in twins:
    first = next(v for v in primary if v.name == twin.twin_of)
    assert _bytes(after[twin.key]) == _bytes(after[first.key])


WITHOUT_OP = textwrap.dedent("""
    import sys
    from mortar_tf import ops, savedmodel
    from mortar_tf.morphing import MorphSpec
    assert not ops.is_built()
    savedmodel.convert(sys.argv[1], sys.argv[2], MorphSpec.create(
        sys.argv[3], float(sys.argv[4]) or None, keep_bits=int(sys.argv[5]) or None,
        columns=int(sys.argv[6]) or None))
""")


@pytest.mark.parametrize("spec", [dict(method="paper", precision=0.1),
                                  dict(method="fewest_ones", precision=0.05),
                                  dict(method="round", keep_bits=4),
                                  dict(method="bitx", columns=5)])
def test_the_converter_without_the_op_writes_the_same_checkpoint(exported, tmp_path, spec):
  """Kernels morph on the TF op when its library loads, else with numpy in and
  a copy out: every checkpoint entry and the report's figures agree."""
  src, _ = exported
  from mortar_tf import ops  # pylint: disable=import-outside-toplevel
  assert ops.is_built(), ops.why_not_built()
  with_op = savedmodel.convert(str(src), str(tmp_path / "op"), mortar_tf.MorphSpec.create(**spec))
  env = dict(installed_tool.ENV, MORTAR_TF_DISABLE_OPS="1")
  args = [str(spec.get(k) or 0) for k in ("method", "precision", "keep_bits", "columns")]
  result = installed_tool.python("-c", WITHOUT_OP, str(src), str(tmp_path / "numpy"), *args,
                                 env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  a, b = _checkpoint(tmp_path / "op"), _checkpoint(tmp_path / "numpy")
  assert a.keys() == b.keys()
  for key in a:
    assert _bytes(a[key]) == _bytes(b[key]), key
  expected = _checkpoint(src)
  assert with_op.morphed
  for v in with_op.morphed:
    grouping = {"reduction_axes": v.reduction_axes} if v.spec.method == "bitx" else {}
    np.testing.assert_array_equal(
        a[v.key].view(np.uint32),
        mortar_tf.morph(expected[v.key], v.spec, **grouping, backend="numpy").view(np.uint32))


def test_bitx_groups_past_the_ops_counters_are_morphed_by_numpy(exported, tmp_path):
  """A group the op cannot hold goes to the numpy kernels: the same bits."""
  src, _ = exported
  from mortar_tf import backends  # pylint: disable=import-outside-toplevel
  spec = mortar_tf.MorphSpec.create("bitx", columns=5,
                                    group_size=2 * backends.MAX_KERNEL_GROUP_SIZE)
  report = savedmodel.convert(str(src), str(tmp_path / "dst"), spec)
  got, original = _checkpoint(tmp_path / "dst"), _checkpoint(src)
  assert report.morphed
  for v in report.morphed:
    np.testing.assert_array_equal(
        got[v.key].view(np.uint32),
        mortar_tf.morph(original[v.key], spec, reduction_axes=v.reduction_axes,
                        backend="numpy").view(np.uint32))
