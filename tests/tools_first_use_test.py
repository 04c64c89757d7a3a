"""What a new user ran into with the SavedModel tools on real models (MTCNN's
fully convolutional PNet, FER, HED), each checked through the installed
commands: one clear message, a non-zero exit, nothing left behind.
"""

import os
import stat

import numpy as np
import pytest
import tensorflow as tf

import installed_tool
import keras_zoo

rng = np.random.default_rng(9)


@pytest.fixture(scope="module")
def fully_conv(tmp_path_factory):
  """Free H and W, two valid 3x3 convs: inputs under 5x5 cannot run."""
  d = tmp_path_factory.mktemp("fc")
  keras_zoo.fully_convolutional().export(str(d / "m"), verbose=False)
  return d / "m"


def _leftovers(directory):
  return sorted(n for n in os.listdir(directory) if n != "m" and not n.endswith(".npz"))


def test_an_input_too_small_for_the_model_is_one_message(fully_conv, tmp_path):
  out = tmp_path / "o"
  result = installed_tool.run("mortar-morph", f"--input={fully_conv}", f"--output={out}",
                              "--verify", "--input_shape=1,3,3,3")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert "does not run on the verification inputs (image" in result.stderr or \
      "does not run on the verification inputs" in result.stderr
  assert not out.exists() and _leftovers(tmp_path) == []
  estimate = installed_tool.run("mortar-estimate", f"--saved_model={fully_conv}",
                                "--input_shape=1,3,3,3", f"--csv={tmp_path / 'e.csv'}")
  assert estimate.returncode == 1
  assert "could be estimated" in estimate.stderr and "shape inference failed" in estimate.stderr
  assert not (tmp_path / "e.csv").exists()


def test_nothing_estimable_is_an_error_not_a_table_of_dashes(fully_conv, tmp_path):
  # No input_shape for free H and W: no op has a size, and the tool says so.
  result = installed_tool.run("mortar-estimate", f"--saved_model={fully_conv}",
                              f"--json={tmp_path / 'e.json'}")
  assert result.returncode == 1
  assert "output shape unknown (give input_shape)" in result.stderr
  assert not (tmp_path / "e.json").exists()


def test_verify_inputs(fully_conv, tmp_path):
  x = rng.standard_normal((4, 9, 9, 3)).astype(np.float32)
  np.savez(tmp_path / "x.npz", x=x)  # mortar-sweep's layout: one array named x
  ok = installed_tool.run("mortar-morph", f"--input={fully_conv}", f"--output={tmp_path / 'o1'}",
                          "--verify", f"--verify_inputs={tmp_path / 'x.npz'}",
                          "--verify_max_rel=10")
  assert ok.returncode == 0, ok.stderr
  assert "(image 4x9x9x3)" in ok.stdout or "4x9x9x3" in ok.stdout
  np.savez(tmp_path / "empty.npz", x=x[:0])
  empty = installed_tool.run("mortar-morph", f"--input={fully_conv}",
                             f"--output={tmp_path / 'o2'}", "--verify",
                             f"--verify_inputs={tmp_path / 'empty.npz'}")
  assert empty.returncode == 1 and "is empty" in empty.stderr
  assert "Traceback" not in empty.stderr
  clash = installed_tool.run("mortar-morph", f"--input={fully_conv}",
                             f"--output={tmp_path / 'o3'}", "--verify",
                             f"--verify_inputs={tmp_path / 'x.npz'}", "--input_shape=1,12,12,3")
  assert clash.returncode == 1 and "make them agree" in clash.stderr
  alone = installed_tool.run("mortar-morph", f"--input={fully_conv}",
                             f"--output={tmp_path / 'o4'}",
                             f"--verify_inputs={tmp_path / 'x.npz'}")
  assert alone.returncode != 0 and "--verify_inputs is for --verify" in alone.stderr
  assert not any((tmp_path / f"o{i}").exists() for i in (2, 3, 4))


def test_the_written_model_directory_follows_the_umask(fully_conv, tmp_path):
  out = tmp_path / "o"
  result = installed_tool.run("mortar-morph", f"--input={fully_conv}", f"--output={out}")
  assert result.returncode == 0, result.stderr
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask


class _Twice(tf.Module):
  """Two variables named alike (HED's VGG backbone has six `hed/kernel`)."""

  def __init__(self):
    super().__init__()
    self.first = tf.Variable(rng.standard_normal((4, 4)).astype(np.float32), name="k")
    self.second = tf.Variable(rng.standard_normal((4, 4)).astype(np.float32), name="k")

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def __call__(self, x):
    return tf.matmul(tf.matmul(x, self.first), self.second)


def test_every_tool_names_a_shared_name_the_same_way(tmp_path):
  module = _Twice()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  analyze = installed_tool.run("mortar-analyze", f"--model={tmp_path / 'm'}")
  morph = installed_tool.run("mortar-morph", f"--input={tmp_path / 'm'}",
                             f"--output={tmp_path / 'o'}")
  assert analyze.returncode == 0 and morph.returncode == 0, analyze.stderr + morph.stderr
  for name in ("k (first)", "k (second)"):
    assert name in analyze.stdout and name in morph.stdout, name
  assert "#2" not in analyze.stdout


@pytest.mark.parametrize("command,flag", [("mortar-analyze", "--model"),
                                          ("mortar-morph", "--input"),
                                          ("mortar-estimate", "--saved_model"),
                                          ("mortar-sweep", "--model")])
def test_helpshort_of_an_installed_command_describes_it_and_its_flags(command, flag):
  result = installed_tool.run(command, "--helpshort")
  assert f"{flag}:" in result.stdout and "flags:" in result.stdout, result.stdout[-2000:]
  assert len(result.stdout.splitlines()) > 10  # the tool's docstring, not just USAGE
