"""Converter and tool output under concurrency and I/O faults, and verification
that can fail.

Faults are injected into TensorFlow's and the OS's writing calls (this
machine runs the tests as root, whom permissions do not stop); the checks are
on what is left on disk and on the error the user reads.
"""

import errno
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import files
from mortar_tf import savedmodel

import installed_tool
import keras_zoo


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  return keras_zoo.export_conv_dense(tmp_path_factory.mktemp("out"), 8, 4, input_name="image")


def _entries(tmp_path):
  return sorted(p.name for p in tmp_path.iterdir())


def _values(path):
  reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


RACE = textwrap.dedent("""
    import sys, time
    from mortar_tf import savedmodel
    start = float(sys.argv[4])
    while time.time() < start:
      time.sleep(0.001)
    try:
      savedmodel.convert(sys.argv[1], sys.argv[2], "paper", float(sys.argv[3]))
      print("DONE")
    except ValueError as e:
      print("REFUSED", e)
""")


def test_two_runs_on_one_output_never_mix(src, tmp_path):
  import time  # pylint: disable=import-outside-toplevel
  for attempt in range(3):
    dst = tmp_path / f"dst{attempt}"
    start = time.time() + 6  # both processes import TensorFlow first, then start together
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(src), str(dst), str(p),
                               str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for p in (0.1, 0.2)]
    outs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["DONE", "REFUSED"], outs
    assert any("another run is writing" in o or "already exists" in o for o in outs)
    record = json.loads((dst / "assets.extra" / "mortar.json").read_text())
    p = record["settings"]["precision"]
    before, after = _values(src), _values(dst)
    for entry in record["variables"]:  # every kernel morphed with the P the record names
      want = mortar_tf.morph(before[entry["key"]], "paper", p, backend="numpy")
      np.testing.assert_array_equal(after[entry["key"]].view(np.uint32), want.view(np.uint32))
    assert not [n for n in _entries(tmp_path) if n.startswith(f".dst{attempt}.")]


def test_a_directory_that_looks_like_a_temp_is_never_deleted(src, tmp_path):
  foreign = tmp_path / ".dst.abcd1234.mortar-tmp"
  foreign.mkdir()
  (foreign / "mine.txt").write_text("not yours")
  report = savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1)
  assert (foreign / "mine.txt").read_text() == "not yours"
  assert any(str(foreign) in note for note in report.notes)
  assert (tmp_path / "dst" / "saved_model.pb").is_file()
  assert not (tmp_path / ".dst.mortar-lock").exists()


def _inject(monkeypatch, target, name, error):
  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(target, name, fail)


@pytest.mark.parametrize("case", ["disk_full", "disk_full_tensorflow", "permission",
                                  "read_only"])
def test_io_faults_are_one_clear_error_and_leave_nothing(src, tmp_path, monkeypatch, case):
  route = "auto"
  if case == "disk_full":  # the kernel's copy of the checkpoint runs out of space
    _inject(monkeypatch, os, "copy_file_range", OSError(errno.ENOSPC, "No space left on device"))
    match = "cannot write .*: no space left"
  elif case == "disk_full_tensorflow":  # SaveV2 runs out of space while writing it
    _inject(monkeypatch, tf.raw_ops, "SaveV2",
            tf.errors.ResourceExhaustedError(None, None, "No space left on device"))
    match = "cannot write .*: no space left"
    route = "tensorflow"
  elif case == "permission":
    import shutil  # pylint: disable=import-outside-toplevel
    _inject(monkeypatch, shutil, "copy2", PermissionError(errno.EACCES, "Permission denied"))
    match = "cannot write .*: permission denied"
  else:
    import tempfile  # pylint: disable=import-outside-toplevel
    _inject(monkeypatch, tempfile, "mkdtemp", OSError(errno.EROFS, "Read-only file system"))
    match = "cannot write .*: the file system is read-only"
  with pytest.raises(files.OutputError, match=match):
    savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1, checkpoint=route)
  assert _entries(tmp_path) == []
  monkeypatch.undo()
  savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1)  # and the rerun works
  assert _entries(tmp_path) == ["dst"]


def test_the_report_is_checked_first_and_published_with_the_model(src, tmp_path, monkeypatch):
  with pytest.raises(files.OutputError, match="does not exist"):
    savedmodel.convert(str(src), str(tmp_path / "dst"), report_path=str(tmp_path / "no" / "r.json"))
  (tmp_path / "adir").mkdir()
  with pytest.raises(files.OutputError, match="is a directory"):
    savedmodel.convert(str(src), str(tmp_path / "dst"), report_path=str(tmp_path / "adir"))
  assert _entries(tmp_path) == ["adir"]
  # the report's rename fails at the very end: the model is taken back, a rerun works
  # (files.move_into_place renames, exchanges or replaces: each name fails for r.json)
  real_replace, real_rename, real_exchange = os.replace, os.rename, files._exchange

  def failing(real):
    def call(a, b):
      if str(b).endswith("r.json"):
        raise OSError(errno.ENOSPC, "No space left on device")
      return real(a, b)
    return call

  monkeypatch.setattr(files.os, "replace", failing(real_replace))
  monkeypatch.setattr(files.os, "rename", failing(real_rename))
  monkeypatch.setattr(files, "_exchange", failing(real_exchange))
  with pytest.raises(files.OutputError, match="r.json.*no space left"):
    savedmodel.convert(str(src), str(tmp_path / "dst"), report_path=str(tmp_path / "r.json"))
  assert _entries(tmp_path) == ["adir"]
  monkeypatch.undo()
  savedmodel.convert(str(src), str(tmp_path / "dst"), report_path=str(tmp_path / "r.json"))
  assert _entries(tmp_path) == ["adir", "dst", "r.json"]


def test_an_output_parent_that_is_a_file_is_named(src, tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="does not exist|not a directory"):
    savedmodel.convert(str(src), str(tmp_path / "file" / "dst"))


def test_verification_fails_beyond_its_tolerance_and_writes_nothing(src, tmp_path):
  with pytest.raises(savedmodel.VerificationError, match="max rel diff .* > 1e-09") as info:
    savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.3, verify=True,
                       verify_max_rel=1e-9)
  assert not info.value.verification.passed
  assert info.value.verification.inputs == {"image": (1, 6, 6, 2)}
  assert _entries(tmp_path) == []
  report = savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.3, verify=True,
                              input_shape=(3, 6, 6, 2))
  assert report.verification.passed and report.verification.max_rel == pytest.approx(0.6)
  assert report.verification.inputs == {"image": (3, 6, 6, 2)}


def test_dynamic_dimensions_are_never_invented(tmp_path):
  inputs = keras.Input((None, None, 3), name="image")
  model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs))
  model.export(str(tmp_path / "m"), verbose=False)
  with pytest.raises(ValueError, match=r"'image' has unknown dimensions \[None, None, None, 3\]"):
    savedmodel.convert(str(tmp_path / "m"), str(tmp_path / "dst"), verify=True)
  assert not (tmp_path / "dst").exists()
  report = savedmodel.convert(str(tmp_path / "m"), str(tmp_path / "dst"), verify=True,
                              input_shape={"image": (1, 9, 9, 3)})
  assert report.verification.inputs == {"image": (1, 9, 9, 3)}


def test_tool_verification_failure_has_its_own_exit_status(src, tmp_path):
  result = installed_tool.run("mortar-morph", f"--input={src}", f"--output={tmp_path / 'o'}",
                              "--precision=0.3", "--verify", "--verify_max_rel=1e-9",
                              "--input_shape=2,6,6,2")
  assert result.returncode == 2, result.stderr
  assert "FAILED" in result.stderr and "image 2x6x6x2" in result.stderr
  assert not (tmp_path / "o").exists()


def test_estimator_files_are_all_or_none(src, tmp_path):
  result = installed_tool.run("mortar-estimate", f"--saved_model={src}",
                              f"--csv={tmp_path / 'layers.csv'}",
                              f"--json={tmp_path / 'missing' / 'e.json'}")
  assert result.returncode == 1 and "does not exist" in result.stderr
  assert _entries(tmp_path) == []
  # the plots' directory is a file: found before any work
  (tmp_path / "plots").write_text("x")
  result = installed_tool.run("mortar-estimate", f"--saved_model={src}",
                              f"--csv={tmp_path / 'layers.csv'}", f"--plots_dir={tmp_path / 'plots'}")
  assert result.returncode == 1 and "not a directory" in result.stderr
  assert _entries(tmp_path) == ["plots"]
  # a failure after the CSV and JSON were written (a plot's path is a directory): none is left
  (tmp_path / "plots").unlink()
  (tmp_path / "plots" / "density.png").mkdir(parents=True)
  result = installed_tool.run("mortar-estimate", f"--saved_model={src}",
                              f"--csv={tmp_path / 'layers.csv'}",
                              f"--json={tmp_path / 'e.json'}", f"--plots_dir={tmp_path / 'plots'}")
  assert result.returncode == 1, result.stdout
  assert "cannot write" in result.stderr and "density.png" in result.stderr
  assert _entries(tmp_path) == ["plots"]
  assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["density.png"]
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(tmp_path / "plots")
  result = installed_tool.run("mortar-estimate", f"--saved_model={src}",
                              f"--csv={tmp_path / 'layers.csv'}",
                              f"--json={tmp_path / 'e.json'}", f"--plots_dir={tmp_path / 'plots'}")
  assert result.returncode == 0, result.stderr
  assert _entries(tmp_path) == ["e.json", "layers.csv", "plots"]
