"""End-to-end tests of the installed `mortar-morph` command."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import mortar_tf

import installed_tool
import keras_zoo

TOOL = installed_tool.path("mortar-morph")


def _run(*args):
  return installed_tool.run("mortar-morph", *args)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  return keras_zoo.export_conv_dense(tmp_path_factory.mktemp("tool"), 3, 4)


def _values(path):
  reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def test_tool_is_installed():
  assert os.access(TOOL, os.X_OK), f"{TOOL} is missing: is the package installed?"


def test_morphs_verifies_and_reports(src, tmp_path):
  report = tmp_path / "r.json"
  result = _run(f"--input={src}", f"--output={tmp_path / 'out'}", "--method=fewest_ones",
                "--precision=0.2", "--verify", f"--report={report}")
  assert result.returncode == 0, result.stderr
  for text in ("conv/kernel", "fc/kernel", "total", "Verified on random inputs",
               "1x6x6x2", "output output_0", "passed", "fingerprint.pb"):
    assert text in result.stdout
  data = json.loads(report.read_text())
  assert data["method"] == "fewest_ones" and data["settings"] == {"precision": 0.2}
  before, after = _values(src), _values(tmp_path / "out")
  for entry in data["variables"]:
    expected = mortar_tf.morph(before[entry["key"]], "fewest_ones", precision=0.2,
                               backend="numpy")
    np.testing.assert_array_equal(after[entry["key"]].view(np.uint32), expected.view(np.uint32))
  assert data["verification"]["outputs"]["output_0"]["max_abs"] > 0
  assert data["verification"]["passed"] and data["verification"]["tolerance"]["max_rel"] == 0.4


def test_precision_map_file(src, tmp_path):
  pmap = tmp_path / "p.json"
  pmap.write_text(json.dumps({"fc/*": 0.3}))
  result = _run(f"--input={src}", f"--output={tmp_path / 'out'}", f"--precision_map={pmap}")
  assert result.returncode == 0, result.stderr
  assert "fc/kernel" in result.stdout
  assert "conv/kernel: not covered by the precision map" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--input={missing}"], "no such SavedModel"),
    (["--precision=2"], "precision"),
    (["--select=conv/bias,nothing"], "unknown variable 'nothing'"),
    (["--signature=nope"], "unknown signature 'nope'"),
    (["--precision=0.1", "--precision_map={pmap}"], "not both"),
    (["--precision_map={bad_json}"], "not valid JSON"),
])
def test_bad_input_exits_nonzero_and_writes_nothing(src, tmp_path, args, message):
  (tmp_path / "bad.json").write_text("{oops")
  (tmp_path / "p.json").write_text("{}")
  fill = {"missing": tmp_path / "missing", "pmap": tmp_path / "p.json",
          "bad_json": tmp_path / "bad.json"}
  args = [a.format(**fill) for a in args]
  if not any(a.startswith("--input") for a in args):
    args.append(f"--input={src}")
  result = _run(*args, f"--output={tmp_path / 'out'}")
  assert result.returncode != 0
  assert message in result.stderr
  assert not (tmp_path / "out").exists()
  assert not any(p.name.endswith(".mortar-tmp") for p in tmp_path.iterdir())


class _Typed(tf.Module):
  """Two matmul kernels of one dtype (float16, bfloat16, float64, or int8
  cast to float32 before the matmul, as a dequantising model does)."""

  def __init__(self, dtype):
    super().__init__()
    rng = np.random.default_rng(1)
    make = (lambda shape: rng.integers(-8, 8, shape)) if dtype == "int8" else (
        lambda shape: rng.standard_normal(shape))
    self.w1 = tf.Variable(tf.constant(make((4, 3)), dtype=dtype), name="w1")
    self.w2 = tf.Variable(tf.constant(make((3, 2)), dtype=dtype), name="w2")
    self.compute = tf.float32 if dtype == "int8" else tf.as_dtype(dtype)
    self.__call__ = tf.function(self.forward,
                                input_signature=[tf.TensorSpec([None, 4], self.compute)])

  def forward(self, x):
    w1, w2 = tf.cast(self.w1, self.compute), tf.cast(self.w2, self.compute)
    return tf.matmul(tf.matmul(x, w1), w2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64", "int8"])
def test_a_model_without_float32_kernels_is_refused_before_writing(tmp_path, dtype):
  module = _Typed(dtype)
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  result = _run(f"--input={tmp_path / 'm'}", f"--output={tmp_path / 'out'}")
  assert result.returncode == 1, result.stdout
  assert f"are {dtype} (2), none float32" in result.stderr, result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no copy, no lock, no temp
  assert "Traceback" not in result.stderr


class _HalfAndFull(tf.Module):
  """A float32 kernel `full` and a float16 kernel `half` side by side."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(2)
    self.full = tf.Variable(rng.standard_normal((4, 3)).astype(np.float32), name="full")
    self.half = tf.Variable(rng.standard_normal((4, 3)).astype(np.float16), name="half")

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def __call__(self, x):
    return tf.matmul(x, self.full) + tf.cast(tf.matmul(tf.cast(x, tf.float16), self.half),
                                             tf.float32)


def test_a_map_entry_naming_only_a_float16_kernel_says_so(tmp_path):
  module = _HalfAndFull()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  (tmp_path / "map.json").write_text('{"half": 0.1, "full": 0.1}')
  result = _run(f"--input={tmp_path / 'm'}", f"--output={tmp_path / 'out'}",
                f"--precision_map={tmp_path / 'map.json'}")
  assert result.returncode == 1
  assert "entry 'half' matches only half (float16): only float32" in result.stderr, result.stderr
  assert not (tmp_path / "out").exists()
