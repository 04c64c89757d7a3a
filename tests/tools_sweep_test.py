"""End-to-end tests of the installed `mortar-sweep` command."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import installed_tool

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
                "--budget=0.02", "--search_precisions=0.05,0.5", f"--out_dir={out}")
  assert result.returncode == 0, result.stderr
  for text in ("paper", "round", "search: ", "Search (fewest_ones", "accuracy"):
    assert text in result.stdout
  for name in ("sweep.csv", "sweep.json", "summary.md", "pareto.png", "bit_density.png",
               "columns.png"):
    assert (out / name).stat().st_size > 0


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


class _SlicedWeight(tf.Module):
  """x w + x v[:, :3]: the second weight is cut by a StridedSlice, which the
  graph reader does not trace to a stored tensor."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(5)
    self.w = tf.Variable(rng.standard_normal((6, 3)).astype(np.float32), name="w")
    self.v = tf.Variable(rng.standard_normal((6, 4)).astype(np.float32), name="v")

  @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])
  def __call__(self, x):
    return tf.matmul(x, self.w) + tf.matmul(x, self.v[:, :3])


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
  module = _SlicedWeight()
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
