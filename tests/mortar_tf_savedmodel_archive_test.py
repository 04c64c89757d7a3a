"""Morphed SavedModels shipped as one compressed archive (convert's
archive_path, mortar-morph --archive, savedmodel.write_archive).

The archive is read back with the standard library's tarfile / zipfile (not
with our code): it holds the --output directory byte for byte, TensorFlow
loads what it extracts to, its figures are the sizes on disk, and it is
written whole or not at all, never over or inside what the run reads.
"""

import errno
import gzip
import json
import os
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from mortar_tf import files
from mortar_tf import savedmodel

import installed_tool
import keras_zoo

FORMATS = ["model.tar.gz", "model.tar.xz", "model.zip"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  return keras_zoo.export_conv_dense(tmp_path_factory.mktemp("src"), 16, 8, input_name="image")


def _tree(root) -> dict:
  """{relative path: bytes} of every file under `root` (directories as None)."""
  out = {}
  for path, dirs, names in os.walk(root):
    rel = os.path.relpath(path, root)
    if rel != ".":
      out[rel] = None
    for name in names:
      with open(os.path.join(path, name), "rb") as f:
        out[os.path.normpath(os.path.join(rel, name))] = f.read()
  return out


def _extract(archive, into):
  """Extracts with the standard library alone; checks the codec on the way."""
  os.makedirs(into)
  name = str(archive)
  if name.endswith(".zip"):
    with zipfile.ZipFile(name) as zf:
      assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist() if not i.is_dir())
      zf.extractall(into)
  else:
    with tarfile.open(name, "r:gz" if name.endswith(".gz") else "r:xz") as tar:
      assert all(m.uname == "" and m.uid == 0 for m in tar.getmembers())
      tar.extractall(into, filter="data")
  return into


def _outputs(path, x):
  loaded = tf.saved_model.load(str(path))
  fn = loaded.signatures["serving_default"]
  return {k: v.numpy() for k, v in fn(image=tf.constant(x)).items()}


def _entries(d):
  return sorted(os.listdir(d))


@pytest.mark.parametrize("name", FORMATS)
def test_the_archive_holds_the_output_byte_for_byte_and_loads(src, tmp_path, name):
  archive = tmp_path / name
  report = savedmodel.convert(str(src), str(tmp_path / "dst"), "fewest_ones", 0.01,
                              archive_path=str(archive))
  assert _entries(tmp_path) == sorted(["dst", name])  # no lock, no temp left
  got = _tree(_extract(archive, tmp_path / "x"))
  assert got == _tree(tmp_path / "dst")
  x = np.random.default_rng(1).standard_normal((2, 6, 6, 2)).astype(np.float32)
  a, b = _outputs(tmp_path / "x", x), _outputs(tmp_path / "dst", x)
  assert {k: v.view(np.uint32).tolist() for k, v in a.items()} == {
      k: v.view(np.uint32).tolist() for k, v in b.items()}
  # The figures are what is on disk.
  assert report.archive.bytes == os.path.getsize(archive)
  assert report.archive.raw_bytes == sum(len(v) for v in got.values() if v is not None)
  assert report.archive.input_raw_bytes == sum(
      len(v) for v in _tree(src).values() if v is not None)
  assert report.archive.ratio == report.archive.input_bytes / report.archive.bytes


def test_the_input_archived_alike_is_measured_and_larger(src, tmp_path):
  report = savedmodel.convert(str(src), None, "fewest_ones", 0.01,
                              archive_path=str(tmp_path / "m.tar.gz"))
  assert _entries(tmp_path) == ["m.tar.gz"]
  # An independent archive of the input: the standard library's tar.gz at level 9.
  with tarfile.open(tmp_path / "in.tar.gz", "w:gz", compresslevel=9) as tar:
    for entry in sorted(os.listdir(src)):
      tar.add(src / entry, arcname=entry)
  independent = os.path.getsize(tmp_path / "in.tar.gz")
  assert abs(report.archive.input_bytes - independent) < 0.01 * independent
  # Morphed weights compress better; the archive also holds the report
  # (assets.extra/mortar.json, with each variable's measured compressed
  # sizes), a sizable share of this toy model's archive: 1.31x without it.
  assert report.archive.ratio > 1.25
  assert report.dst is None and "m.tar.gz" in report.summary()


def test_an_archive_without_output_is_the_same_model(src, tmp_path):
  savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1)
  savedmodel.convert(str(src), None, "paper", 0.1, archive_path=str(tmp_path / "only.zip"))
  assert _entries(tmp_path) == ["dst", "only.zip"]
  got, want = _tree(_extract(tmp_path / "only.zip", tmp_path / "x")), _tree(tmp_path / "dst")
  record = json.loads(got.pop("assets.extra/mortar.json"))
  want.pop("assets.extra/mortar.json")
  # fingerprint.pb holds a random UUID per write; the checkpoint and graph are the same.
  assert got.pop("fingerprint.pb") and want.pop("fingerprint.pb")
  assert got == want and record["dst"] is None


@pytest.mark.parametrize("with_dst", [False, True])
def test_a_failure_mid_archive_leaves_nothing(src, tmp_path, monkeypatch, with_dst):
  real = tarfile.TarFile.addfile
  calls = []

  def failing(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, *args, **kwargs)

  monkeypatch.setattr(tarfile.TarFile, "addfile", failing)
  dst = str(tmp_path / "dst") if with_dst else None
  with pytest.raises(files.OutputError, match="m.tar.gz.*no space left"):
    savedmodel.convert(str(src), dst, "paper", 0.1, archive_path=str(tmp_path / "m.tar.gz"),
                       report_path=str(tmp_path / "r.json"))
  assert len(calls) > 2
  assert _entries(tmp_path) == []  # no archive, no temp, no lock, no report, no dst
  monkeypatch.undo()
  savedmodel.convert(str(src), dst, "paper", 0.1, archive_path=str(tmp_path / "m.tar.gz"),
                     report_path=str(tmp_path / "r.json"))
  assert _entries(tmp_path) == sorted(["m.tar.gz", "r.json"] + (["dst"] if with_dst else []))


def test_a_failure_publishing_the_archive_takes_the_output_back(src, tmp_path, monkeypatch):
  real = os.replace

  def replace(a, b):
    if str(b).endswith(".tar.gz"):
      raise OSError(errno.EROFS, "Read-only file system")
    return real(a, b)

  monkeypatch.setattr(os, "replace", replace)
  with pytest.raises(files.OutputError, match="read-only"):
    savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1,
                       archive_path=str(tmp_path / "m.tar.gz"), report_path=str(tmp_path / "r.json"))
  assert _entries(tmp_path) == []


@pytest.mark.parametrize("where,match", [
    ("inside_src", "archive_path '[^']*' lies inside the input src"),
    ("src_alias", "archive_path '[^']*' is the input src"),
    ("report", "are the same path"),
    ("inside_dst", "archive_path '[^']*' lies inside dst"),
    ("exists", "already exists"),
    ("suffix", "cannot tell the archive format"),
])
def test_an_archive_that_would_alias_or_overwrite_is_refused(src, tmp_path, where, match):
  report = None
  if where == "inside_src":
    archive = src / "m.tar.gz"
  elif where == "src_alias":
    archive = tmp_path / "alias.tar.gz"
    os.symlink(src, archive)
  elif where == "report":
    archive = report = tmp_path / "r.tar.gz"
  elif where == "inside_dst":
    archive = tmp_path / "dst" / "m.tar.gz"
  elif where == "exists":
    archive = tmp_path / "m.zip"
    archive.write_bytes(b"the user's file")
  else:
    archive = tmp_path / "m.rar"
  before, src_before = _entries(tmp_path), _tree(src)
  with pytest.raises(ValueError, match=match):
    savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1, archive_path=str(archive),
                       report_path=report and str(report))
  assert _entries(tmp_path) == before and _tree(src) == src_before
  if where == "exists":
    assert archive.read_bytes() == b"the user's file"


def test_the_tool_writes_only_the_archive_and_reports_it(src, tmp_path):
  result = installed_tool.run("mortar-morph", f"--input={src}", "--method=fewest_ones",
                              "--precision=0.01", f"--archive={tmp_path / 'm.tgz'}",
                              f"--report={tmp_path / 'r.json'}")
  assert result.returncode == 0, result.stderr
  assert _entries(tmp_path) == ["m.tgz", "r.json"]
  figures = json.loads((tmp_path / "r.json").read_text())["archive"]
  assert figures["bytes"] == os.path.getsize(tmp_path / "m.tgz") and figures["format"] == "tar.gz"
  assert f"Archive {tmp_path / 'm.tgz'} (tar.gz, gzip level 9): {figures['bytes']:,} bytes" in (
      result.stdout)
  with gzip.open(tmp_path / "m.tgz") as f:  # a gzip stream that names no temp file
    f.read(1)
  assert b"m.tgz." not in (tmp_path / "m.tgz").read_bytes()[:64]
  usage = installed_tool.run("mortar-morph", f"--input={src}")
  assert usage.returncode == 1 and "give --output=" in usage.stderr


def test_write_archive_is_whole_or_nothing(src, tmp_path, monkeypatch):
  path = tmp_path / "copy.tar.xz"
  report = savedmodel.write_archive(str(src), str(path))
  assert _tree(_extract(path, tmp_path / "x")) == _tree(src)
  assert report.bytes == os.path.getsize(path) and report.input_bytes is None
  with pytest.raises(ValueError, match="lies inside"):
    savedmodel.write_archive(str(src), str(src / "in.tar.gz"))
  old = path.read_bytes()
  monkeypatch.setattr(tarfile.TarFile, "addfile",
                      lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
  with pytest.raises(files.OutputError, match="no space"):
    savedmodel.write_archive(str(src), str(path))
  assert _entries(tmp_path) == ["copy.tar.xz", "x"] and path.read_bytes() == old
