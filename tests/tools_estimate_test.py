"""End-to-end tests of the installed `mortar-estimate` command."""

import csv
import json
import os

import keras
import numpy as np
import pytest

import installed_tool

TOOL = installed_tool.path("mortar-estimate")


def _run(*args):
  return installed_tool.run("mortar-estimate", *args)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  d = tmp_path_factory.mktemp("estimate")
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(5, name="fc")(x)
  m = keras.Model(inputs, outputs)
  rng = np.random.default_rng(7)
  m.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in m.weights])
  m.export(str(d / "m"), verbose=False)
  return d / "m"


def test_tool_is_installed():
  assert os.access(TOOL, os.X_OK), f"{TOOL} is missing: is the package installed?"


def test_writes_table_csv_json_and_plots(model, tmp_path):
  result = _run(f"--saved_model={model}", "--input_shape=2,8,8,3", "--precision=0.2",
                f"--csv={tmp_path / 'l.csv'}", f"--json={tmp_path / 'e.json'}",
                f"--plots_dir={tmp_path / 'plots'}")
  assert result.returncode == 0, result.stderr
  assert "total" in result.stdout and "mortar x" in result.stdout
  with open(tmp_path / "l.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [r["Op"] for r in rows] == ["Conv2D", "DepthwiseConv2dNative", "MatMul"]
  data = json.loads((tmp_path / "e.json").read_text())
  assert [int(r["Total Cycles mortar"]) for r in rows] == [
      layer["cycles"]["mortar"] for layer in data["layers"]]
  for name in ("cycles.png", "speedup.png", "density.png"):
    assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_engine_subset_and_config(model, tmp_path):
  config = tmp_path / "engines.json"
  config.write_text(json.dumps([
      {"name": "bitlet", "model": "bitlet", "group_size": 16, "area_mm2": 0.04},
      {"name": "mortar", "model": "mortar", "group_size": 16, "area_mm2": 0.031}]))
  result = _run(f"--saved_model={model}", f"--config={config}", "--engines=bitlet,mortar")
  assert result.returncode == 0, result.stderr
  assert "iso-area speedup" in result.stdout and "G=16" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--saved_model=/nonexistent"], "no such SavedModel"),
    (["--engines=bitlet,tpu"], "unknown engines ['tpu']"),
    (["--baseline=tpu"], "baseline 'tpu' is not one of the engines"),
    (["--config=/nonexistent.json"], "no such engine config"),
    (["--precision=0"], "precision"),
])
def test_bad_input_exits_nonzero(model, args, message):
  if not any(a.startswith("--saved_model") for a in args):
    args = [f"--saved_model={model}", *args]
  result = _run(*args)
  assert result.returncode != 0
  assert message in result.stderr
