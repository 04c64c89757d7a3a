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
  assert "total" in result.stdout and "weight (map name)" in result.stdout
  assert "over stripes on the original weights" in result.stdout
  assert "over mortar on the original weights" in result.stdout
  with open(tmp_path / "l.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [r["Op"] for r in rows] == ["Conv2D", "DepthwiseConv2dNative", "MatMul"]
  data = json.loads((tmp_path / "e.json").read_text())
  for weights in ("original", "morphed"):
    assert [int(r[f"Total Cycles mortar {weights}"]) for r in rows] == [
        layer["cycles"]["mortar"][weights] for layer in data["layers"]]
  assert float(rows[0]["Speedup mortar over stripes"]) == pytest.approx(
      data["layers"][0]["cycles"]["stripes"]["original"] /
      data["layers"][0]["cycles"]["mortar"]["morphed"], rel=1e-5)
  for name in ("cycles.png", "speedup.png", "density.png"):
    assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_engine_subset_and_config(model, tmp_path):
  config = tmp_path / "engines.json"
  config.write_text(json.dumps([
      {"name": "bitlet", "model": "bitlet", "group_size": 16, "area_mm2": 0.04},
      {"name": "mortar", "model": "mortar", "group_size": 16, "area_mm2": 0.031}]))
  result = _run(f"--saved_model={model}", f"--config={config}", "--engines=bitlet,mortar")
  assert result.returncode == 0, result.stderr
  assert "iso-area" in result.stdout and "G=16" in result.stdout
  assert "baseline, bitlet on the original weights" in result.stdout  # no stripes here


def test_group_size_and_width_flags_set_every_engines_geometry(model, tmp_path):
  result = _run(f"--saved_model={model}", "--input_shape=2,8,8,3", "--group_size=8",
                "--width=12", f"--json={tmp_path / 'e.json'}")
  assert result.returncode == 0, result.stderr
  data = json.loads((tmp_path / "e.json").read_text())
  assert {(e["group_size"], e["width"]) for e in data["engines"]} == {(8, 12)}
  assert all(e["sources"]["group_size"] == "set by the user" for e in data["engines"])
  # Aligned columns shown next to an engine have that engine's width.
  assert all(len(layer["columns"][name]["original"]) == 12
             for layer in data["layers"] for name in layer["columns"])
  assert "G=8 width=12" in result.stdout


def test_the_largest_group_is_the_kernels_and_one_more_is_refused(model, tmp_path):
  # G = 16384 (the C++ kernels' largest) runs; 16385 is refused by name.
  result = _run(f"--saved_model={model}", "--input_shape=2,8,8,3", "--group_size=16384",
                f"--json={tmp_path / 'e.json'}")
  assert result.returncode == 0, result.stderr
  data = json.loads((tmp_path / "e.json").read_text())
  assert {e["group_size"] for e in data["engines"]} == {16384}
  # one group per output element (the conv's 27, the depthwise's 9 and the
  # dense's 64 reduced weights each fit one): 4, 4 and 5 groups
  assert [set(layer["n_groups"].values()) for layer in data["layers"]] == [{4}, {4}, {5}]
  result = _run(f"--saved_model={model}", "--input_shape=2,8,8,3", "--group_size=16385")
  assert result.returncode == 1
  assert "group_size (lanes) must be 1..16384, got 16385" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--saved_model=/nonexistent"], "no such SavedModel"),
    (["--engines=bitlet,tpu"], "unknown engines ['tpu']"),
    (["--baseline=tpu"], "baseline 'tpu' is not one of the engines"),
    (["--config=/nonexistent.json"], "no such engine config"),
    (["--precision=0"], "precision"),
    (["--baseline=stripes:later"], "'original' or 'morphed'"),
    (["--group_size=0"], "group_size"),
])
def test_bad_input_exits_nonzero(model, args, message):
  if not any(a.startswith("--saved_model") for a in args):
    args = [f"--saved_model={model}", *args]
  result = _run(*args)
  assert result.returncode != 0
  assert message in result.stderr
