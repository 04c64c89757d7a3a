"""End-to-end tests of the installed `mortar-sweep` command."""

import csv
import json
import os
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
import installed_tool
import tf_modules
import spec_reference as ref

TOOL = installed_tool.path("mortar-sweep")


def _run(*args):
  return installed_tool.run("mortar-sweep", *args)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("sweep")
  rng = np.random.default_rng(3)
  model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu",
                                                                 name="h"),
                            keras.layers.Dense(3, name="out")])
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
  model.save(d / "m.keras")
  x = rng.standard_normal((300, 6)).astype(np.float32)
  np.savez(d / "data.npz", x=x, y=np.argmax(model.predict(x, verbose=0), -1))
  return d


def test_tool_is_installed():
  assert os.access(TOOL, os.X_OK), f"{TOOL} is missing: is the package installed?"


def test_sweep_and_search(files, tmp_path):
  out = tmp_path / "out" / "main"  # missing directories are made (as scripts/main.sh needs)
  result = _run(f"--model={files / 'm.keras'}", f"--data={files / 'data.npz'}",
                "--methods=paper,round", "--precisions=0.05,0.3", "--keep_bits=4",
                "--budget=0.02", "--search_precisions=0.05,0.5", f"--out_dir={out}",
                "--held_out=0")  # every sample scored (held-out: its own test)
  assert result.returncode == 0, result.stderr
  for text in ("paper", "round", "search: ", "Search (fewest_ones", "accuracy"):
    assert text in result.stdout
  for name in ("sweep.csv", "sweep.json", "summary.md", "pareto.png", "bit_density.png",
               "columns.png"):
    assert (out / name).stat().st_size > 0

  # Every number of the CSV, recomputed here from the morphed kernels: ones
  # and cycles with the naive loops of spec_reference, accuracy with
  # model.predict. The sweep's rows are SPEC's methods by the scalar
  # references; the search's row is its map morphed by the numpy reference.
  with open(out / "sweep.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["method", "setting", "precisions", "accuracy", "drop", "ratio_significand",
                     "ratio_word", "ratio_aligned", "ratio_compressed", "speedup_over_stripes",
                     "speedup_over_unmorphed", "compressed_bytes", "compressed_bytes_original",
                     "raw_bytes", "ratio_compressed_zstd", "compressed_bytes_zstd"]
  model = keras.models.load_model(files / "m.keras")
  data = np.load(files / "data.npz")
  x, y = data["x"], data["y"]
  names = [layer.name for layer in model.layers]
  assert names == ["h", "out"]
  originals = [layer.kernel.numpy() for layer in model.layers]

  def accuracy(kernels):
    for layer, kernel in zip(model.layers, kernels):
      layer.kernel.assign(kernel)
    try:
      return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))
    finally:
      for layer, kernel in zip(model.layers, originals):
        layer.kernel.assign(kernel)

  def elementwise(kernel, fn):
    return np.array([fn(np.float32(v)) for v in kernel.ravel()], np.float32).reshape(
        kernel.shape)

  expected_settings = [("paper", {"precision": 0.05}), ("paper", {"precision": 0.3}),
                       ("round", {"keep_bits": 4})]
  morphed_rows = []
  for method, settings in expected_settings:
    if method == "paper":
      fn = lambda v, p=settings["precision"]: ref.paper(v, p)  # pylint: disable=cell-var-from-loop
    else:
      fn = lambda v, k=settings["keep_bits"]: ref.round_keep_bits(v, k)  # pylint: disable=cell-var-from-loop
    morphed_rows.append([elementwise(k, fn) for k in originals])
  assert len(rows) == 1 + len(expected_settings) + 1  # the sweep, then the search
  search_row = rows[-1]
  chosen = json.loads(search_row[2])
  assert chosen and set(chosen) <= {"*", "h", "out"}
  precision_of = {name: chosen.get(name, chosen.get("*")) for name in names}
  morphed_rows.append([
      k if precision_of[name] is None else
      mortar_tf.morph(k, "fewest_ones", precision_of[name], backend="numpy")
      for name, k in zip(names, originals)])

  base_ones, base_stripes, base_mortar = _ones(originals), _stripes(originals), \
      _mortar(originals)
  base_zlib = _zlib(originals)
  original_accuracy = accuracy(originals)
  assert original_accuracy == 1.0  # the labels are the model's own predictions
  for row, kernels, (method, settings) in zip(
      rows[1:], morphed_rows, expected_settings + [("fewest_ones", None)]):
    assert row[0] == method
    if settings is not None:
      assert {k: v for k, v in json.loads(row[1]).items() if k in settings} == settings
    ones = _ones(kernels)
    acc = accuracy(kernels)
    numbers = [float(v) for v in row[3:]]
    assert numbers[0] == pytest.approx(acc, abs=1e-12), row
    assert numbers[1] == pytest.approx(original_accuracy - acc, abs=1e-12), row
    for value, domain in zip(numbers[2:5], ("significand", "word", "aligned")):
      assert value == pytest.approx(base_ones[domain] / ones[domain], rel=1e-12), (row, domain)
    # compressed x: zlib 9 of each kernel alone, summed, original over morphed.
    assert numbers[5] == base_zlib / _zlib(kernels), row
    assert numbers[6] == pytest.approx(base_stripes / _mortar(kernels), rel=1e-12), row
    assert numbers[7] == pytest.approx(base_mortar / _mortar(kernels), rel=1e-12), row
    assert numbers[8:11] == [_zlib(kernels), base_zlib, 4 * sum(k.size for k in kernels)], row
  assert float(search_row[4]) <= 0.02 + 1e-12  # the search met its budget
  # The printed table's `compressed x` column: each row's value, as recomputed.
  lines = result.stdout.splitlines()
  assert any(line.startswith("method") and "  compressed x  " in line for line in lines)
  for kernels, (method, settings) in zip(morphed_rows, expected_settings):
    label = ", ".join(f"{k}={v}" for k, v in settings.items())
    line = next(l for l in lines if l.startswith(method) and f" {label} " in l)
    assert f"{base_zlib / _zlib(kernels):.3f}x" in line.split(), line

  # The JSON holds the same numbers, and the search stayed within its cap.
  record = json.loads((out / "sweep.json").read_text())
  points = record["sweep"]["points"]
  assert len(points) == len(rows) - 1
  for point, row in zip(points, rows[1:]):
    assert [point["metric"], point["drop"], point["ratio"]["significand"],
            point["ratio"]["word"], point["ratio"]["aligned"],
            point["compressed"]["zlib"]["ratio"], point["speedup"],
            point["speedup_unmorphed"], point["compressed"]["zlib"]["morphed_bytes"],
            point["compressed"]["zlib"]["original_bytes"],
            point["compressed"]["raw_bytes"]] == [float(v) for v in row[3:14]]
  search = record["search"]
  assert search["precisions"] == chosen
  assert search["evaluations"] <= search["max_evaluations"] == 30


def _zlib(kernels):
  """zlib level 9 bytes of each kernel's float32 little-endian bytes alone, summed."""
  return sum(len(zlib.compress(np.asarray(k).astype("<f4").tobytes(), 9)) for k in kernels)


def _ones(kernels):
  """Ones of Dense kernels in each domain, by spec_reference's loops (aligned:
  the engines' G = 64, width 24, reduced along axis 0)."""
  words = [ref.f32_bits(v) for k in kernels for v in k.ravel()]
  return {"significand": sum(ref.sig_ones(u) for u in words),
          "word": sum(bin(u).count("1") for u in words),
          "aligned": sum(sum(ref.aligned_column_ones(k, (0,), 64, 24)) for k in kernels)}


def _stripes(kernels):
  """SPEC 4's stripes cycles at batch 1 (N_pos = 1 for a Dense layer): width
  24 per group of 64, one group per output here (6 and 8 inputs)."""
  return sum(24 * k.shape[1] * -(-k.shape[0] // 64) for k in kernels)


def _mortar(kernels):
  """SPEC 4's mortar cycles at batch 1: per group the most ones in one lane,
  at least 1 (spec_reference's loops)."""
  return sum(max(1, lane_max) for k in kernels
             for lane_max, _ in ref.engine_group_figures(k, (0,), 64, 24, 8))


def test_objective_size_is_never_larger_than_the_best_global_p(files, tmp_path):
  """--objective=size: the searched map's kernels compress (zlib 9, each
  alone, recomputed here) to no more bytes than those of any global P of the
  grid that meets the budget (every P scored here)."""
  out = tmp_path / "out"
  grid = [0.01, 0.05, 0.2, 1.0]
  result = _run(f"--model={files / 'm.keras'}", f"--data={files / 'data.npz'}",
                "--methods=round", "--keep_bits=10", "--budget=0.02", "--objective=size",
                f"--search_precisions={','.join(map(str, grid))}", f"--out_dir={out}",
                "--held_out=0")
  assert result.returncode == 0, result.stderr
  model = keras.models.load_model(files / "m.keras")
  data = np.load(files / "data.npz")
  originals = [layer.kernel.numpy() for layer in model.layers]

  def accuracy(kernels):
    for layer, kernel in zip(model.layers, kernels):
      layer.kernel.assign(kernel)
    return float(np.mean(np.argmax(model.predict(data["x"], verbose=0), -1) == data["y"]))

  fits = {}
  for p in grid:
    kernels = [mortar_tf.morph(k, "fewest_ones", p, backend="numpy") for k in originals]
    if accuracy(kernels) >= 1.0 - 0.02 - 1e-12:
      fits[p] = _zlib(kernels)
  assert fits  # some global P meets the budget
  record = json.loads((out / "sweep.json").read_text())
  search = record["search"]
  assert search["objective"] == "size"
  chosen = search["precisions"]
  names = [layer.name for layer in model.layers]
  found = [k if chosen.get(n, chosen.get("*")) is None else
           mortar_tf.morph(k, "fewest_ones", chosen.get(n, chosen.get("*")), backend="numpy")
           for n, k in zip(names, originals)]
  assert accuracy(found) >= 1.0 - 0.02 - 1e-12
  assert search["point"]["compressed"]["zlib"]["morphed_bytes"] == _zlib(found)
  assert _zlib(found) <= min(fits.values())


@pytest.mark.parametrize("args,message", [
    (["--budget=-1"], "budget must be a number >= 0"),
    (["--x_key=images"], "has no array ['images']"),
    (["--methods=magic"], "unknown methods ['magic']"),
    (["--precisions=0"], "precision"),
])
def test_bad_input_exits_nonzero(files, tmp_path, args, message):
  result = _run(f"--model={files / 'm.keras'}", f"--data={files / 'data.npz'}",
                f"--out_dir={tmp_path / 'out'}", *args)
  assert result.returncode != 0
  assert message in result.stderr


def test_an_output_directory_that_cannot_be_made_fails_before_the_sweep(files, tmp_path):
  (tmp_path / "file").write_text("x")
  result = _run(f"--model={files / 'm.keras'}", f"--data={files / 'data.npz'}",
                "--methods=round", "--keep_bits=4", "--nosearch",
                f"--out_dir={tmp_path / 'file' / 'out'}")
  assert result.returncode == 1
  assert "not a directory" in result.stderr and "Sweep" not in result.stdout
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_summary_and_json_state_what_the_speedups_cover(files, tmp_path):
  out = tmp_path / "out"
  result = _run(f"--model={files / 'm.keras'}", f"--data={files / 'data.npz'}",
                "--methods=paper", "--precisions=0.1", "--nosearch", f"--out_dir={out}")
  assert result.returncode == 0, result.stderr
  # By hand, one sample (the estimator's shape): Dense 6 -> 8 and 8 -> 3.
  text = "Estimated speedups cover 100% of the weight MACs (72 of 72; 2 of 2 weight ops"
  assert text in result.stdout and text in (out / "summary.md").read_text()
  assert 6 * 8 + 8 * 3 == 72 and "warning" not in result.stderr
  record = json.loads((out / "sweep.json").read_text())
  assert record["sweep"]["coverage"]["complete"] and record["sweep"]["coverage"]["macs"] == 72


def test_speedups_of_a_partly_estimated_model_are_flagged(files, tmp_path):
  module = tf_modules.SlicedWeight()
  tf.saved_model.save(module, str(tmp_path / "sliced"), signatures=module.__call__)
  out = tmp_path / "out"
  result = _run(f"--model={tmp_path / 'sliced'}", f"--data={files / 'data.npz'}",
                "--metric=mse", "--methods=paper", "--precisions=0.1", "--nosearch",
                f"--out_dir={out}")
  assert result.returncode == 0, result.stderr
  # By hand, one sample: x w and x v[:, :3] each multiply 6 x 3; only the first is estimated.
  (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
  assert warning.startswith("mortar-sweep: warning: the estimated speedups (est. x columns) "
                            "miss part of the model: the estimate covers 50.0% of the weight "
                            "MACs (18 of 36; 1 of 2 weight ops estimated)")
  assert "StridedSlice" in warning
  summary = (out / "summary.md").read_text()
  assert "Estimated speedups cover 50.0% of the weight MACs (18 of 36;" in summary
  assert "Not estimated: #" in summary
  coverage = json.loads((out / "sweep.json").read_text())["sweep"]["coverage"]
  assert (coverage["fraction"], coverage["complete"]) == (0.5, False)


def test_compensated_rows_and_a_held_out_search(files, tmp_path):
  out = tmp_path / "comp"
  result = _run(f"--model={files / 'm.keras'}", f"--data={files / 'data.npz'}",
                "--methods=fewest_ones", "--precisions=0.3", "--budget=0.05",
                "--search_precisions=0.05,0.5", "--compensate", "--calibration_samples=60",
                "--held_out=0.5", f"--out_dir={out}")
  assert result.returncode == 0, result.stderr
  record = json.loads((out / "sweep.json").read_text())
  assert (record["calibration_samples"], record["samples"], record["held_out_samples"]) == (
      60, 120, 120)
  assert "60 samples before them calibrate" in result.stdout
  assert "Held out (120 samples" in result.stdout and "Compensated (" in result.stdout
  # The compensated row, recomputed: compensate_model on the first 60 samples,
  # accuracy on the next 120 (the held-out 120 are the search's alone).
  from mortar_tf.keras import compensate_model  # pylint: disable=import-outside-toplevel
  model = keras.models.load_model(files / "m.keras")
  data = np.load(files / "data.npz")
  x, y = data["x"], data["y"]
  copy, _ = compensate_model(model, "fewest_ones", 0.3, calibration=x[:60])
  expected = float(np.mean(np.argmax(copy.predict(x[60:180], verbose=0), -1) == y[60:180]))
  rows = [p for p in record["sweep"]["points"] if p["settings"].get("compensated")
          and p["precisions"] is None]
  assert len(rows) == 1 and rows[0]["metric"] == pytest.approx(expected)
  search = record["search"]
  assert search["held_out"]["samples"] == 120
  assert search["held_out"]["drop"] <= 0.05 + 1e-9
  with open(out / "sweep.csv", newline="", encoding="utf-8") as f:
    assert any("compensated" in row[1] for row in csv.reader(f))


def test_calibration_samples_without_compensate_is_a_usage_error(files, tmp_path):
  result = _run(f"--model={files / 'm.keras'}", f"--data={files / 'data.npz'}",
                "--calibration_samples=10", f"--out_dir={tmp_path / 'x'}")
  assert result.returncode == 1
  assert "give --compensate too" in result.stderr
  assert not (tmp_path / "x").exists()


def test_a_savedmodel_takes_its_own_dtype_and_one_input_or_says_so(files, tmp_path):
  """float64 data for a float32 signature is refused in one line (nothing is
  cast silently), as mortar-morph refuses it; a two-input signature is named
  as such, without the converter's --input_shape advice this tool has no flag for."""
  module = tf_modules.SlicedWeight()
  tf.saved_model.save(module, str(tmp_path / "sliced"), signatures=module.__call__)
  x = np.load(files / "data.npz")["x"].astype(np.float64)
  np.savez(tmp_path / "f64.npz", x=x)
  result = _run(f"--model={tmp_path / 'sliced'}", f"--data={tmp_path / 'f64.npz'}",
                "--metric=mse", "--methods=paper", "--precisions=0.1", "--nosearch",
                f"--out_dir={tmp_path / 'out'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert "the inputs are float64" in result.stderr and "takes float32" in result.stderr
  assert not (tmp_path / "out").exists()

  class TwoInputs(tf.Module):
    def __init__(self):
      super().__init__()
      self.w = tf.Variable(np.ones((6, 3), np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="a"),
                                  tf.TensorSpec([None, 6], tf.float32, name="b")])
    def __call__(self, a, b):
      return {"y": tf.matmul(a, self.w) + tf.matmul(b, self.w)}

  two = TwoInputs()
  tf.saved_model.save(two, str(tmp_path / "two"), signatures=two.__call__)
  result = _run(f"--model={tmp_path / 'two'}", f"--data={files / 'data.npz'}", "--metric=mse",
                "--methods=paper", "--precisions=0.1", "--nosearch",
                f"--out_dir={tmp_path / 'out2'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert "exploration needs a signature with one input" in result.stderr
  assert "--input_shape" not in result.stderr
