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
  *rows, coverage = rows  # the last row states the coverage
  assert [r["Op"] for r in rows] == ["Conv2D", "DepthwiseConv2dNative", "MatMul"]
  # By hand, batch 2: conv 6x6x4 outputs x 3x3x3, depthwise 4x4x4 x 3x3, dense 5 x 64.
  macs = 2 * (6 * 6 * 4 * 27 + 4 * 4 * 4 * 9 + 5 * 64)
  assert [int(r["MACs"]) for r in rows] == [2 * 6 * 6 * 4 * 27, 2 * 4 * 4 * 4 * 9, 2 * 5 * 64]
  assert coverage["LayerID"] == "coverage" and int(coverage["MACs"]) == macs
  assert int(coverage["Op MACs"]) == macs and coverage["Layer name"].startswith(
      "100% of the weight MACs")
  assert "Coverage: 100% of the weight MACs (9,568 of 9,568; 3 of 3 weight ops estimated)" in (
      result.stdout) and macs == 9568
  assert "warning" not in result.stderr
  data = json.loads((tmp_path / "e.json").read_text())
  assert data["coverage"]["fraction"] == 1.0 and data["coverage"]["macs"] == macs
  for weights in ("original", "morphed"):
    assert [int(r[f"Total Cycles mortar {weights}"]) for r in rows] == [
        layer["cycles"]["mortar"][weights] for layer in data["layers"]]
  assert float(rows[0]["Speedup mortar over stripes"]) == pytest.approx(
      data["layers"][0]["cycles"]["stripes"]["original"] /
      data["layers"][0]["cycles"]["mortar"]["morphed"], rel=1e-5)
  for name in ("cycles.png", "speedup.png", "density.png"):
    assert (tmp_path / "plots" / name).stat().st_size > 1000


def _totals(data, name, weights):
  return sum(layer["cycles"][name][weights] for layer in data["layers"])


def test_another_baseline_is_named_by_every_headline_and_speedup(model, tmp_path):
  out = tmp_path / "e.json"
  result = _run(f"--saved_model={model}", "--input_shape=2,8,8,3", "--baseline=bitlet:original",
                f"--json={out}")
  assert result.returncode == 0, result.stderr
  data = json.loads(out.read_text())
  mortar = _totals(data, "mortar", "morphed")
  over_bitlet = _totals(data, "bitlet", "original") / mortar
  over_stripes = _totals(data, "stripes", "original") / mortar
  over_unmorphed = _totals(data, "mortar", "original") / mortar
  assert len({f"{x:.3f}" for x in (over_bitlet, over_stripes, over_unmorphed)}) == 3
  lines = result.stdout.splitlines()
  # The headlines: first over the chosen baseline, then SPEC 4's, each naming its cell.
  first = lines.index(f"mortar on the morphed weights: {over_bitlet:.3f}x over bitlet on the "
                      "original weights (the chosen baseline)")
  assert lines[first + 1] == "SPEC 4's two headlines, over their own cells whatever the baseline:"
  assert lines[first + 2].startswith(f"mortar on the morphed weights: {over_stripes:.3f}x over "
                                     "stripes on the original weights")
  assert f"{over_unmorphed:.3f}x" in lines[first + 3]
  assert "over mortar on the original weights" in lines[first + 3]
  assert data["headline_over_baseline"] == pytest.approx(over_bitlet, rel=1e-12)
  # Per layer: mortar morphed over the chosen baseline, then SPEC 4's two, by name.
  header = next(line for line in lines if line.startswith("#  layer"))
  assert header.endswith("x bitlet orig  x stripes  x unmorphed")
  for layer in data["layers"]:
    row = next(line for line in lines if line.startswith(f"{layer['index']}  "))
    cycles = layer["cycles"]
    expected = [cycles["bitlet"]["original"] / cycles["mortar"]["morphed"],
                cycles["stripes"]["original"] / cycles["mortar"]["morphed"],
                cycles["mortar"]["original"] / cycles["mortar"]["morphed"]]
    assert row.split()[-3:] == [f"{x:.3f}x" for x in expected], row
  total = next(line for line in lines if line.split()[:1] == ["total"])
  assert total.split()[-3:] == [f"{x:.3f}x" for x in (over_bitlet, over_stripes, over_unmorphed)]
  assert "x bitlet orig: mortar on the morphed weights over the chosen baseline" in result.stdout
  # The matrix: every cell over the chosen baseline, and its header says so.
  matrix = next(line for line in lines if line.startswith("engine "))
  assert "x bitlet orig" in matrix and "iso-area x bitlet orig" in matrix
  for engine, weights, value in (("bitlet", "original", 1.0), ("mortar", "morphed", over_bitlet),
                                 ("stripes", "original",
                                  _totals(data, "bitlet", "original") /
                                  _totals(data, "stripes", "original"))):
    row = next(line for line in lines if line.split()[:2] == [engine, weights])
    assert f"{value:.3f}x" in row.split(), row

  # With the default baseline there is no separate headline, and the matrix says stripes.
  result = _run(f"--saved_model={model}", "--input_shape=2,8,8,3")
  assert result.returncode == 0, result.stderr
  assert "chosen baseline" not in result.stdout and "x bitlet orig" not in result.stdout
  assert "x stripes orig" in next(line for line in result.stdout.splitlines()
                                  if line.startswith("engine "))


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


@pytest.fixture(scope="module")
def stacked_lstm(tmp_path_factory):
  """Two stacked LSTMs (the first returns sequences), exported with a fixed
  time dimension (10) and with a free one; and a free-time LSTM under a Dense."""
  d = tmp_path_factory.mktemp("lstm")
  for name, steps in (("fixed", 10), ("free", None)):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((steps, 8)),
                              keras.layers.LSTM(4, return_sequences=True, name="lstm_a"),
                              keras.layers.LSTM(4, name="lstm_b")], name="stack")
    model.export(str(d / name), verbose=False)
  inputs = keras.Input((None, 8))
  head = keras.layers.Dense(3, name="fc")(keras.layers.LSTM(4, name="lstm")(inputs))
  keras.Model(inputs, head).export(str(d / "headed"), verbose=False)
  return d


@pytest.mark.parametrize("name", ["fixed", "free"])
def test_stacked_lstm_kernels_are_estimated_at_every_time_step(stacked_lstm, name, tmp_path):
  result = _run(f"--saved_model={stacked_lstm / name}", "--input_shape=1,10,8",
                f"--json={tmp_path / 'e.json'}", f"--csv={tmp_path / 'l.csv'}")
  assert result.returncode == 0, result.stderr
  assert "warning" not in result.stderr
  # By hand, 10 time steps of one sample: LSTM(4) on 8 features multiplies
  # 8 x 16 (input kernel) and 4 x 16 (recurrent) per step; the second LSTM,
  # on the first one's 4 features, 4 x 16 and 4 x 16.
  expected = {"stack/lstm_a/lstm_cell/kernel": 10 * 8 * 16,
              "stack/lstm_a/lstm_cell/recurrent_kernel": 10 * 4 * 16,
              "stack/lstm_b/lstm_cell/kernel": 10 * 4 * 16,
              "stack/lstm_b/lstm_cell/recurrent_kernel": 10 * 4 * 16}
  data = json.loads((tmp_path / "e.json").read_text())
  assert {layer["weight"]: layer["macs"] for layer in data["layers"]} == expected
  assert {layer["weight"]: layer["n_pos"] for layer in data["layers"]} == dict.fromkeys(
      expected, 10)
  assert data["coverage"]["complete"] and data["coverage"]["macs"] == 3200
  assert sum(expected.values()) == 3200
  assert "Coverage: 100% of the weight MACs (3,200 of 3,200; 4 of 4 weight ops estimated)" in (
      result.stdout)
  with open(tmp_path / "l.csv", newline="", encoding="utf-8") as f:
    coverage = list(csv.DictReader(f))[-1]
  assert coverage["LayerID"] == "coverage" and int(coverage["Op MACs"]) == 3200


def test_an_incomplete_estimate_warns_and_require_complete_refuses(stacked_lstm, tmp_path):
  model = stacked_lstm / "headed"  # no --input_shape: the LSTM's steps are unknown
  result = _run(f"--saved_model={model}", f"--json={tmp_path / 'e.json'}")
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if "warning" in line]
  assert len(warnings) == 1, result.stderr
  # By hand: the Dense reads 4 x 3 weights, the LSTM 8 x 16 + 4 x 16; the
  # LSTM's MACs are unknown without its steps, so coverage counts weights.
  assert warnings[0].startswith("mortar-estimate: warning: the estimate covers 5.9% of the "
                                "weights the weight ops read (12 of 204; 1 of 3 weight ops "
                                "estimated)")
  assert "lstm_cell_1/MatMul (MatMul): in a loop whose number of steps" in warnings[0]
  assert "give input_shape" in warnings[0] and 12 / 204 < 0.0595
  coverage = json.loads((tmp_path / "e.json").read_text())["coverage"]
  assert (coverage["basis"], coverage["estimated_weights"], coverage["weights"]) == (
      "weights", 12, 204)
  assert not coverage["complete"] and coverage["macs"] is None and len(coverage["missing"]) == 2
  refused = _run(f"--saved_model={model}", "--require_complete", f"--json={tmp_path / 'r.json'}",
                 f"--csv={tmp_path / 'r.csv'}", f"--plots_dir={tmp_path / 'plots'}")
  assert refused.returncode == 1
  (error,) = [line for line in refused.stderr.splitlines() if line.startswith("mortar-")]
  assert error.startswith("mortar-estimate: error: --require_complete: the estimate covers 5.9% "
                          "of the weights")
  assert error.endswith("(nothing was written)") and refused.stdout == ""
  assert not any((tmp_path / name).exists() for name in ("r.json", "r.csv", "plots"))
  given = _run(f"--saved_model={model}", "--input_shape=2,6,8", "--require_complete")
  assert given.returncode == 0, given.stderr
  # 2 samples x 6 steps x (8 x 16 + 4 x 16), and the Dense 2 x 4 x 3.
  assert "100% of the weight MACs (2,328 of 2,328;" in given.stdout
  assert 2 * 6 * (8 * 16 + 4 * 16) + 2 * 4 * 3 == 2328
