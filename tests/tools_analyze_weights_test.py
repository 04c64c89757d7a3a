"""End-to-end tests of the installed `mortar-analyze` command on real saved models."""

import json
import os
import subprocess

import numpy as np
import pytest

from mortar_tf import analyze
from mortar_tf.keras.compat import keras

import installed_tool
import spec_reference as ref

# The console script installed beside the interpreter that runs the tests.
TOOL = installed_tool.path("mortar-analyze")
ENV = installed_tool.ENV


def _model():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(5, name="fc")(x)
  model = keras.Model(inputs, outputs)
  rng = np.random.default_rng(0)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
  return model


def _run(*args):
  return installed_tool.run("mortar-analyze", *args)


def _sig_ones(a):
  return sum(ref.sig_ones(int(w)) for w in np.asarray(a).reshape(-1).view(np.uint32))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  d = tmp_path_factory.mktemp("models")
  model = _model()
  model.save(d / "m.keras")
  model.save(d / "m.h5")
  model.export(str(d / "sm"), verbose=False)
  # Keras 3 calls the depthwise kernel "kernel", tf_keras "depthwise_kernel".
  dw_name = "dw/" + model.get_layer("dw").weights[0].name.split(":")[0]
  kernels = {"conv/kernel": model.get_layer("conv").weights[0].numpy(),
             dw_name: model.get_layer("dw").weights[0].numpy(),
             "fc/kernel": model.get_layer("fc").weights[0].numpy()}
  return d, kernels


def test_tool_is_installed():
  assert os.access(TOOL, os.X_OK), f"{TOOL} is missing: is the package installed?"


@pytest.mark.parametrize("filename", ["m.keras", "m.h5"])
def test_keras_files_report_each_kernel_with_its_layout(saved, filename, tmp_path):
  d, kernels = saved
  out = tmp_path / "r.json"
  result = _run(f"--model={d / filename}", "--methods=paper,round", "--precisions=0.1,0.3",
                "--keep_bits=5", f"--json={out}")
  assert result.returncode == 0, result.stderr
  for text in ("conv/kernel", "depthwise", "fc/kernel", "paper", "round", "Sweep", *kernels):
    assert text in result.stdout
  data = json.loads(out.read_text())
  assert [r["settings"] for r in data["reports"]] == [
      {"precision": 0.1}, {"precision": 0.3}, {"keep_bits": 5}]
  paper = data["reports"][0]
  for t in paper["tensors"]:
    original = kernels[t["name"]]
    morphed = [ref.paper(v, 0.1) for v in original.reshape(-1)]
    assert t["ones_before"]["significand"] == _sig_ones(original)
    assert t["ones_after"]["significand"] == _sig_ones(np.float32(morphed))
  assert sorted(t["name"] for t in paper["tensors"]) == sorted(kernels)
  dw = next(t for t in paper["tensors"] if t["name"].startswith("dw/"))
  assert dw["grouping"] == "depthwise"
  assert dw["ones_before"]["aligned"] == sum(
      ref.aligned_column_ones(kernels[dw["name"]], (0, 1), 64, 24))  # the default G, width


def test_saved_model_directory(saved, tmp_path):
  d, kernels = saved
  out = tmp_path / "r.json"
  result = _run(f"--model={d / 'sm'}", "--methods=fewest_ones", "--precisions=0.2",
                f"--json={out}")
  assert result.returncode == 0, result.stderr
  # The graph reader gives each kernel its layer's axes (SPEC 3), e.g. depthwise (0, 1).
  tensors = {t["name"]: t for t in json.loads(out.read_text())["reports"][0]["tensors"]}
  expected_axes = {"conv/kernel": (0, 1, 2), "fc/kernel": (0,)}
  for name, kernel in kernels.items():
    axes = expected_axes.get(name, (0, 1))
    assert tensors[name]["grouping"] == f"axes {axes}"
    assert tensors[name]["ones_before"]["aligned"] == sum(
        ref.aligned_column_ones(kernel, axes, 64, 24))  # the default G, width
  weights = analyze.load_weights(str(d / "sm"))
  # each kernel once (Keras 3 exports track variables twice), biases left out
  assert sorted(v.shape for v in weights.weights.values()) == sorted(
      k.shape for k in kernels.values())
  for value in weights.weights.values():
    match = [k for k in kernels.values() if k.shape == value.shape]
    np.testing.assert_array_equal(value.view(np.uint32), match[0].view(np.uint32))


@pytest.mark.parametrize("args,message", [
    (["--model=/nonexistent.keras"], "no such model"),
    (["--model={d}/m.keras", "--precisions=abc"], "--precisions"),
    (["--model={d}/m.keras", "--precisions=1.5"], "precision"),
    (["--model={d}/m.keras", "--methods=magic"], "unknown method"),
    (["--model={d}/m.keras", "stray"], "unexpected arguments"),
    (["--model={d}/broken.keras"], "cannot load"),
    (["--model={d}/broken_sm"], "not a valid SavedModel"),
])
def test_bad_input_exits_with_a_clear_message(saved, args, message):
  d, _ = saved
  (d / "broken.keras").write_bytes(b"not a zip")
  (d / "broken_sm").mkdir(exist_ok=True)
  (d / "broken_sm" / "saved_model.pb").write_bytes(b"\xff\xff garbage")
  result = _run(*[a.format(d=d) for a in args])
  assert result.returncode != 0
  assert message in result.stderr + result.stdout
  assert "Traceback" not in result.stderr


def test_json_is_not_written_on_failure(saved, tmp_path):
  d, _ = saved
  out = tmp_path / "r.json"
  result = _run(f"--model={d}/missing.keras", f"--json={out}")
  assert result.returncode != 0 and not out.exists()


def test_tf_keras_models_and_optimizer_slots_are_left_out(tmp_path):
  import tf_keras  # pylint: disable=import-outside-toplevel
  model = tf_keras.Sequential([
      tf_keras.Input((6, 6, 2)), tf_keras.layers.DepthwiseConv2D(3, name="dw"),
      tf_keras.layers.Flatten(), tf_keras.layers.Dense(3, name="fc")])
  model.compile("adam", "mse")
  model.fit(np.ones((4, 6, 6, 2), np.float32), np.ones((4, 3), np.float32), verbose=0)
  model.save(tmp_path / "tfk.h5")
  model.save(str(tmp_path / "tfk_sm"))  # tf_keras SavedModel, with Adam's slots inside

  legacy = dict(ENV, TF_USE_LEGACY_KERAS="1")
  result = subprocess.run([TOOL, f"--model={tmp_path / 'tfk.h5'}", "--methods=paper"],
                          capture_output=True, text=True, env=legacy, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert "dw/depthwise_kernel" in result.stdout and "depthwise" in result.stdout

  found = analyze.load_weights(str(tmp_path / "tfk_sm"))
  expected = {"dw": model.get_layer("dw").weights[0].numpy(),
              "fc": model.get_layer("fc").weights[0].numpy()}
  assert len(found.weights) == 2, sorted(found.weights)  # no Adam m/v slots
  for name, value in found.weights.items():
    layer = name.split("/")[0]
    np.testing.assert_array_equal(value.view(np.uint32), expected[layer].view(np.uint32))
