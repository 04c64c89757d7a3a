"""The checkpoint patch route of the converter (mortar_tf.savedmodel.bundle).

Invariants: our CRC-32C is the standard one (a bitwise reference); the index
reader finds every entry TensorFlow's reader lists, with the checksum
TensorFlow stored for its bytes; the patch route and TensorFlow's
restore/save route write checkpoints whose every entry is byte-identical,
with the same report figures; a corrupt source entry is an error.
"""

import os
import pathlib
import shutil
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import backends
from mortar_tf import savedmodel
from mortar_tf.savedmodel import bundle
from mortar_tf.savedmodel import SavedModelError

import installed_tool

BASIC_PITCH = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "models" / "basic_pitch_nmp"


def _crc32c_bitwise(data: bytes, crc: int = 0) -> int:
  """CRC-32C one bit at a time (reflected polynomial 0x82F63B78)."""
  crc ^= 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def test_crc32c_is_the_standard_one_at_every_length_and_alignment():
  assert backends.crc32c(b"123456789") == 0xE3069283  # the published check value
  rng = np.random.default_rng(0)
  data = rng.integers(0, 256, 300, dtype=np.uint8)
  for start in range(9):
    for length in (0, 1, 7, 8, 9, 63, 64, 65, 200):
      piece = data[start:start + length]
      assert backends.crc32c(piece) == _crc32c_bitwise(piece.tobytes()), (start, length)
      half = length // 2
      assert backends.crc32c(piece[half:], backends.crc32c(piece[:half])) == \
          _crc32c_bitwise(piece.tobytes()), (start, length)


def _model():
  inputs = keras.Input((8, 8, 3), name="image")
  x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(16, name="fc1")(x)
  outputs = keras.layers.Dense(5, name="fc2")(x)
  model = keras.Model(inputs, outputs)
  rng = np.random.default_rng(3)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
  return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  d = tmp_path_factory.mktemp("bundle")
  _model().export(str(d / "src"), verbose=False)
  return d / "src"


def _sources(exported):
  return [exported] + ([BASIC_PITCH] if BASIC_PITCH.is_dir() else [])


def _checkpoint(path):
  reader = tf.train.load_checkpoint(os.path.join(str(path), "variables", "variables"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def _bytes(value):
  return value if isinstance(value, bytes) else np.asarray(value).tobytes()


def test_the_index_lists_what_tensorflow_reads_with_its_checksums(exported):
  if not BASIC_PITCH.is_dir():
    raise AssertionError(f"{BASIC_PITCH} is missing: run scripts/fetch_models.sh")
  for src in _sources(exported):
    prefix = os.path.join(str(src), "variables", "variables")
    index = bundle.Index.read(prefix)
    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    assert set(index.entries) == set(shapes)
    floats = 0
    for key, entry in index.entries.items():
      assert list(entry.shape) == shapes[key], key
      assert entry.dtype == dtypes[key].as_datatype_enum, key
      if entry.float32:  # TF's value, our offsets and checksum
        floats += 1
        value = np.ascontiguousarray(reader.get_tensor(key), np.float32)
        assert bundle.checksum(value) == entry.crc32c, key
        with open(index.data_path(prefix, entry.shard_id), "rb") as f:
          f.seek(entry.offset)
          assert f.read(entry.size) == value.tobytes(), key
    assert floats >= 4
    written = os.path.join(os.path.dirname(prefix), "..", "..", "copy.index")
    index.write(written, {})
    with open(written, "rb") as f:
      assert f.read() == index.data
    os.remove(written)


@pytest.mark.parametrize("spec", [dict(method="paper", precision=0.1),
                                  dict(method="fewest_ones", precision=0.01),
                                  dict(method="round", keep_bits=3),
                                  dict(method="bitx", columns=6)])
def test_patch_and_tensorflow_routes_write_the_same_checkpoint(exported, tmp_path, spec):
  for number, src in enumerate(_sources(exported)):
    routes = {}
    for route in ("patch", "tensorflow"):
      out = tmp_path / f"{number}-{route}"
      report = savedmodel.convert(str(src), str(out), mortar_tf.MorphSpec.create(**spec),
                                  checkpoint=route)
      assert report.checkpoint == route
      routes[route] = (out, report)
    (patched, a), (rewritten, b) = routes["patch"], routes["tensorflow"]
    got, want = _checkpoint(patched), _checkpoint(rewritten)
    assert got.keys() == want.keys()
    for key in got:
      assert _bytes(got[key]) == _bytes(want[key]), key
    assert [v.to_dict() for v in a.morphed] == [v.to_dict() for v in b.morphed]
    assert a.morphed and any(_bytes(got[v.key]) != _bytes(_checkpoint(src)[v.key])
                             for v in a.morphed)
    # Everything but the variables is the source's, byte for byte.
    for name in os.listdir(src):
      if name not in ("variables", "fingerprint.pb", "assets.extra") and os.path.isfile(src / name):
        assert (patched / name).read_bytes() == (src / name).read_bytes()


def test_the_patched_model_serves_as_the_rewritten_one(exported, tmp_path):
  outs = {}
  for route in ("patch", "tensorflow"):
    savedmodel.convert(str(exported), str(tmp_path / route), "fewest_ones", 0.05,
                       checkpoint=route)
    served = tf.saved_model.load(str(tmp_path / route)).signatures["serving_default"]
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32)
    outs[route] = {k: v.numpy() for k, v in served(image=tf.constant(x)).items()}
  for key, value in outs["patch"].items():
    np.testing.assert_array_equal(value, outs["tensorflow"][key])


def test_a_corrupt_entry_is_an_error_and_nothing_is_written(tmp_path):
  """The patch route checks each source entry it reads (TF's route does too,
  inside RestoreV2): a flipped bit never gets a fresh checksum."""
  if not BASIC_PITCH.is_dir():
    raise AssertionError(f"{BASIC_PITCH} is missing: run scripts/fetch_models.sh")
  src = tmp_path / "src"
  shutil.copytree(BASIC_PITCH, src)
  prefix = os.path.join(str(src), "variables", "variables")
  index = bundle.Index.read(prefix)
  report = savedmodel.convert(str(BASIC_PITCH), str(tmp_path / "ok"), "paper", 0.1)
  entry = index.entries[report.morphed[-1].key]
  shutil.rmtree(tmp_path / "ok")
  with open(index.data_path(prefix, entry.shard_id), "r+b") as f:
    f.seek(entry.offset + 4)
    byte = f.read(1)
    f.seek(entry.offset + 4)
    f.write(bytes([byte[0] ^ 0x10]))
  with pytest.raises(SavedModelError, match=f"{entry.key}.* of .*fail their checksum"):
    savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1, checkpoint="patch")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_the_checkpoint_argument_is_checked(exported, tmp_path):
  with pytest.raises(ValueError, match="checkpoint must be one of"):
    savedmodel.convert(str(exported), str(tmp_path / "dst"), "paper", 0.1, checkpoint="fast")
  assert not (tmp_path / "dst").exists()


WITHOUT_NATIVE = textwrap.dedent("""
    import sys
    from mortar_tf import native, savedmodel
    assert not native.is_built()
    try:
      savedmodel.convert(sys.argv[1], sys.argv[2] + "-patch", "paper", 0.1, checkpoint="patch")
    except ValueError as e:
      print("refused:", e)
    report = savedmodel.convert(sys.argv[1], sys.argv[2], "paper", 0.1)
    print("route:", report.checkpoint)
""")


def test_without_the_native_library_auto_takes_tensorflows_route(exported, tmp_path):
  env = dict(installed_tool.ENV, MORTAR_TF_DISABLE_OPS="1")
  result = installed_tool.python("-c", WITHOUT_NATIVE, str(exported), str(tmp_path / "dst"),
                                 env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "refused: checkpoint='patch'" in result.stdout and "native library" in result.stdout
  assert "route: tensorflow" in result.stdout
  assert not (tmp_path / "dst-patch").exists()
  patched = tmp_path / "patched"
  savedmodel.convert(str(exported), str(patched), "paper", 0.1)
  got, want = _checkpoint(patched), _checkpoint(tmp_path / "dst")
  assert got.keys() == want.keys()
  for key in got:
    assert _bytes(got[key]) == _bytes(want[key]), key


@pytest.mark.parametrize("chunk", [64, 1000, 1 << 21])
def test_chunked_records_equal_whole_tensor_records_on_every_route(exported, tmp_path,
                                                                   monkeypatch, chunk):
  """The patch route morphs and counts chunk by chunk (whole groups per
  chunk); TensorFlow's route counts whole tensors: the same report at a
  group size that splits the kernels into many groups and chunks."""
  from mortar_tf.savedmodel import converter  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(converter, "_CHUNK_ELEMENTS", chunk)
  for number, src in enumerate(_sources(exported)):
    a = savedmodel.convert(str(src), str(tmp_path / f"{number}p"), "fewest_ones", 0.02,
                           group_size=4, width=12, checkpoint="patch")
    b = savedmodel.convert(str(src), str(tmp_path / f"{number}t"), "fewest_ones", 0.02,
                           group_size=4, width=12, checkpoint="tensorflow")
    assert [v.to_dict() for v in a.morphed] == [v.to_dict() for v in b.morphed]
    got, want = _checkpoint(tmp_path / f"{number}p"), _checkpoint(tmp_path / f"{number}t")
    for key in got:
      assert _bytes(got[key]) == _bytes(want[key]), key


@pytest.mark.parametrize("shape,axes", [((5, 7, 3), (1,)), ((6, 10, 4), (1, 2)),
                                        ((3, 130, 2), (1,)), ((200, 3), (0,)), ((9,), ())])
@pytest.mark.parametrize("method", ["paper", "round"])
def test_chunks_over_any_grouped_view_count_as_the_whole_tensor(monkeypatch, shape, axes,
                                                                method):
  """Views with a > 1 (reduction axes inside the shape) and partial last
  groups: the chunked record equals _record's, and the CRCs the whole arrays'."""
  import types  # pylint: disable=import-outside-toplevel
  from mortar_tf.savedmodel import converter  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(converter, "_CHUNK_ELEMENTS", 16)
  rng = np.random.default_rng(sum(shape))
  x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3, shape)).astype(np.float32)
  x.reshape(-1)[::11] = 0.0
  spec = (mortar_tf.MorphSpec.create("paper", 0.1) if method == "paper"
          else mortar_tf.MorphSpec.create("round", keep_bits=2))
  var = types.SimpleNamespace(name="w", key="w/.ATTRIBUTES/VARIABLE_VALUE", shape=shape,
                              path="w")
  target = types.SimpleNamespace(spec=spec, axes=axes, other_readers=(), twin_of=None, var=var,
                                 display="w")
  out = np.empty_like(x)
  record, crc_in, crc_out = converter._morph_and_record(x, out, target, 3, 10)  # pylint: disable=protected-access
  np.testing.assert_array_equal(out.view(np.uint32),
                                mortar_tf.morph(x, spec, backend="numpy").view(np.uint32))
  assert record == converter._record(x, out, target, 3, 10)  # pylint: disable=protected-access
  assert (crc_in, crc_out) == (bundle.checksum(x), bundle.checksum(out))


def test_pair_statistics_equal_the_numpy_references_on_every_class_of_word():
  """The one-pass totals and the error of the patch route against the numpy
  references, on words of every class: zeros, subnormals, normals, Inf, NaN
  (with payloads), both signs."""
  from mortar_tf import bits  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(7)
  words = rng.integers(0, 2**32, (40, 7, 9), dtype=np.uint64).astype(np.uint32)
  flat = words.reshape(-1)
  flat[:40] = [0, 0x80000000, 1, 0x807FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001, 0x7F800001,
               0x00400000, 0x7F7FFFFF] * 4
  x = words.view(np.float32)
  y = mortar_tf.morph(x, "paper", 0.3, backend="numpy")
  for a, b in ((x, y), (y, x)):
    ones_a, ones_b, error = backends.pair_statistics(a.reshape(40, 7, 9), b.reshape(40, 7, 9),
                                                     (40, 7, 9), 3, 11)
    for got, values in ((ones_a, a), (ones_b, b)):
      assert got == {d: bits.count_ones(values, d, reduction_axes=(1,), group_size=3, width=11)
                     for d in bits.DOMAINS}
    reference = backends._max_relative_error_numpy(a, b)  # pylint: disable=protected-access
    assert error == reference or (np.isnan(error) and np.isnan(reference))


class _WithStrings(tf.Module):
  """A kernel read by a MatMul beside a string variable (copied as it is)."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(5)
    self.w = tf.Variable(rng.standard_normal((6, 4)).astype(np.float32), name="w")
    self.names = tf.Variable(["alpha", "beta", "gamma" * 9], name="names")

  @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])
  def __call__(self, x):
    return tf.matmul(x, self.w)


def test_a_corrupt_string_variable_copied_as_it_is_is_an_error(tmp_path):
  """A string entry's checksum covers its lengths as well as its bytes: the
  patch route has TensorFlow's reader check it, as its restore would."""
  module = _WithStrings()
  src = tmp_path / "src"
  tf.saved_model.save(module, str(src), signatures=module.__call__)
  prefix = os.path.join(str(src), "variables", "variables")
  index = bundle.Index.read(prefix)
  (key,) = [k for k, e in index.entries.items()
            if e.dtype == tf.string.as_datatype_enum and "names" in k]
  entry = index.entries[key]
  report = savedmodel.convert(str(src), str(tmp_path / "ok"), "paper", 0.1, checkpoint="patch")
  assert report.checkpoint == "patch" and [v.name for v in report.morphed]
  with open(index.data_path(prefix, entry.shard_id), "r+b") as f:
    f.seek(entry.offset + entry.size - 3)  # inside "gammagamma..."
    byte = f.read(1)
    f.seek(entry.offset + entry.size - 3)
    f.write(bytes([byte[0] ^ 0x01]))
  for route in ("patch", "tensorflow"):
    with pytest.raises(SavedModelError, match=f"{key}.*corrupted"):
      savedmodel.convert(str(src), str(tmp_path / f"dst-{route}"), "paper", 0.1,
                         checkpoint=route)
    assert not (tmp_path / f"dst-{route}").exists()


def test_twin_copies_are_compared_in_place_as_a_whole_read_would(exported, tmp_path,
                                                                  monkeypatch):
  """A Keras 3 export's two copies of each variable are compared a few bytes
  at a time from the data file (here 64), as reading both whole compares
  them: every pair of entries with one shape gets the same answer, and a copy
  with one byte changed (its stored checksum still its partner's) is told
  apart, then refused when the conversion copies it."""
  from mortar_tf.savedmodel import selection  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(selection, "_COMPARE_BYTES", 64)
  src = tmp_path / "src"
  shutil.copytree(exported, src)
  prefix = os.path.join(str(src), "variables", "variables")
  index = bundle.Index.read(prefix)
  values = _checkpoint(src)
  floats = [k for k, e in index.entries.items() if e.float32]
  pairs = [(a, b) for a in floats for b in floats if a < b
           and index.entries[a].shape == index.entries[b].shape]
  assert sum(_bytes(values[a]) == _bytes(values[b]) for a, b in pairs) >= 4  # the twins
  for a, b in pairs:
    assert selection._same_bytes(index, prefix, a, b) == (_bytes(values[a]) == _bytes(values[b]))  # pylint: disable=protected-access
  a, b = max(((a, b) for a, b in pairs if _bytes(values[a]) == _bytes(values[b])),
             key=lambda p: index.entries[p[0]].size)
  entry = index.entries[b]
  with open(index.data_path(prefix, entry.shard_id), "r+b") as f:
    f.seek(entry.offset + entry.size - 1)
    byte = f.read(1)
    f.seek(entry.offset + entry.size - 1)
    f.write(bytes([byte[0] ^ 0x01]))
  assert selection._same_bytes(index, prefix, a, b) is False  # pylint: disable=protected-access
  with pytest.raises(SavedModelError, match="corrupted"):
    savedmodel.convert(str(src), str(tmp_path / "dst"), "paper", 0.1, checkpoint="patch")
  assert not (tmp_path / "dst").exists()
