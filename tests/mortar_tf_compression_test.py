"""The measured compressed size (mortar_tf.compression) and where it is shown:
sparsity_report, mortar-analyze (a .tflite's gzip -9 too), mortar-morph's
report, and the search's objective="size".

Every figure is checked against zlib run here on the same values: each
tensor's float32 little-endian C-order bytes compressed alone at level 9,
the bytes summed (morphs by spec_reference's scalar loops, or the numpy
reference where the morph is not what is tested).
"""

import gzip
import json
import sys
import warnings
import zlib

import numpy as np
import pytest

import mortar_tf
from mortar_tf import analyze
from mortar_tf import compression
from mortar_tf import table

import installed_tool
import keras_zoo
import spec_reference as ref


def _zlib(arrays):
  """zlib level 9 of each array's float32 little-endian bytes alone, summed."""
  return sum(len(zlib.compress(np.ascontiguousarray(a).astype("<f4").tobytes(), 9))
             for a in arrays)


def _weights():
  rng = np.random.default_rng(0)
  return {"dense/kernel": (rng.standard_normal((120, 40)) * 0.05).astype(np.float32),
          "conv/kernel": (rng.standard_normal((3, 3, 8, 16)) * 0.1).astype(np.float32),
          "step": np.int64(7)}


def _by_reference(a, p):
  return np.array([ref.paper(np.float32(v), p) for v in a.reshape(-1)],
                  np.float32).reshape(a.shape)


def _arrays():
  rng = np.random.default_rng(1)
  big = (rng.standard_normal(280_000) * 0.02).astype(np.float32)  # 1.12 MB: two 1 MiB slices
  grid = rng.standard_normal((64, 48)).astype(np.float32)
  return {"empty": np.zeros((0, 3), np.float32), "one": np.float32([1.375]),
          "big": big, "morphed": mortar_tf.morph(big[:20_000], "fewest_ones", 0.01),
          "grid morphed": mortar_tf.morph(grid, "fewest_ones", 0.1),
          "strided": grid[:, ::3], "fortran": np.asfortranarray(grid),
          "big-endian": grid.astype(">f4")}


@pytest.mark.parametrize("name", list(_arrays()))
def test_a_tensors_bytes_are_zlib_9_of_its_float32_bytes(name):
  a = _arrays()[name]
  expected = len(zlib.compress(np.ascontiguousarray(a, dtype="<f4").tobytes(), 9))
  assert compression.zlib_size(a) == expected
  sizes = compression.measure(a)
  assert (sizes.raw, sizes.zlib) == (4 * a.size, expected)


def test_zstd_is_measured_with_its_level_where_installed():
  import zstandard  # pylint: disable=import-outside-toplevel  (requirements-test.txt)
  a = _arrays()["grid morphed"]
  expected = len(zstandard.ZstdCompressor(level=compression.ZSTD_LEVEL).compress(a.tobytes()))
  assert compression.zstd_available() and compression.zstd_size(a) == expected
  both = compression.CompressedSize.of(compression.measure(_arrays()["strided"]),
                                       compression.measure(a[:, ::3]))
  assert both.to_dict()["zstd"]["morphed_bytes"] == len(zstandard.ZstdCompressor(
      level=compression.ZSTD_LEVEL).compress(np.ascontiguousarray(a[:, ::3]).tobytes()))


def test_without_zstandard_zstd_is_not_measured_and_says_so(monkeypatch):
  monkeypatch.setitem(sys.modules, "zstandard", None)  # `import zstandard` fails
  assert not compression.zstd_available()
  r = mortar_tf.sparsity_report(_weights(), "paper", precision=0.1)
  measured = r.compressed
  assert measured.original.zstd is None and measured.zstd_ratio is None
  assert measured.ratio == _zlib([w for n, w in _weights().items() if n != "step"]) / _zlib(
      [_by_reference(w, 0.1) for n, w in _weights().items() if n != "step"])
  data = json.loads(json.dumps(r.to_dict()))
  assert "not installed" in data["total"]["compressed"]["zstd"]["not_measured"]
  assert "zstd not measured" in r.format_table()


def test_only_float32_is_measured():
  with pytest.raises(TypeError, match="float32"):
    compression.zlib_size(np.zeros(3))


def test_gzip_of_a_file_is_gzip_9(tmp_path):
  data = _arrays()["big"].tobytes() + _arrays()["grid morphed"].tobytes()  # over 1 MiB
  (tmp_path / "f").write_bytes(data)
  assert compression.gzip_file_size(str(tmp_path / "f")) == len(gzip.compress(data, 9))


def test_sparsity_report_compresses_each_tensor_alone_and_sums():
  weights = _weights()
  r = mortar_tf.sparsity_report(weights, "paper", precision=0.1)
  morphed = {n: _by_reference(w, 0.1) for n, w in weights.items() if n != "step"}
  for t in r.tensors:
    assert t.compressed.original.zlib == _zlib([weights[t.name]])
    assert t.compressed.morphed.zlib == _zlib([morphed[t.name]])
    assert t.compressed.raw_bytes == 4 * weights[t.name].size
  before = _zlib(weights[n] for n in morphed)
  after = _zlib(morphed.values())
  total = r.compressed
  assert (total.original.zlib, total.morphed.zlib) == (before, after)
  assert total.ratio == before / after > 1.2
  assert total.tensors == 2 and total.raw_bytes == 4 * (120 * 40 + 3 * 3 * 8 * 16)
  # What is printed and serialised.
  text = r.format_table()
  assert "compressed x" in text.splitlines()[1]
  total_row = next(line for line in text.splitlines() if line.startswith("total"))
  assert total_row.split()[-1] == table.ratio(before / after)
  assert f"{after:,} of {before:,} bytes" in text
  data = json.loads(json.dumps(r.to_dict(), allow_nan=False))["total"]["compressed"]
  assert data["zlib"] == {"level": 9, "original_bytes": before, "morphed_bytes": after,
                          "ratio": before / after}


def test_the_original_row_is_exactly_one_and_measuring_can_be_turned_off():
  weights = _weights()
  same = mortar_tf.sparsity_report(weights, "paper", morphed_by_name=weights)
  assert same.compressed.ratio == 1.0 and same.compressed.zstd_ratio == 1.0
  assert all(t.compressed.ratio == 1.0 for t in same.tensors)
  off = mortar_tf.sparsity_report(weights, "paper", precision=0.1, compressed=False)
  assert off.compressed is None and "compressed" not in off.format_table()
  assert off.to_dict()["total"]["compressed"] is None


def test_mortar_analyze_on_a_real_model_reports_the_measured_figure(tmp_path):
  out = tmp_path / "r.json"
  result = installed_tool.run("mortar-analyze", f"--model={keras_zoo.FER_PATH}",
                              "--methods=fewest_ones", "--precisions=0.01,0.1",
                              "--domain=compressed", f"--json={out}")
  assert result.returncode == 0, result.stderr
  model = keras_zoo.fer()
  values = {}
  for layer in model.layers:
    for w in layer.weights:
      values[f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"] = w.numpy()
  data = json.loads(out.read_text())
  assert len(data["reports"]) == 2
  for report, p in zip(data["reports"], (0.01, 0.1)):
    names = [t["name"] for t in report["tensors"]]
    originals = [values[n] for n in names]
    morphed = [mortar_tf.morph(a, "fewest_ones", p, backend="numpy") for a in originals]
    for t, a, m in zip(report["tensors"], originals, morphed):
      assert (t["compressed"]["zlib"]["original_bytes"],
              t["compressed"]["zlib"]["morphed_bytes"]) == (_zlib([a]), _zlib([m]))
    total = report["total"]["compressed"]["zlib"]
    assert (total["original_bytes"], total["morphed_bytes"]) == (_zlib(originals),
                                                                 _zlib(morphed))
    assert total["ratio"] == _zlib(originals) / _zlib(morphed)
    # The sweep table's row: its compressed x and zlib bytes.
    row = next(l for l in result.stdout.splitlines() if l.startswith("fewest_ones")
               and f"precision={p:g} " in l)
    assert table.ratio(total["ratio"]) in row.split() and f"{_zlib(morphed):,}" in row.split()
  assert "compressed x" in result.stdout
  assert "Per layer, compressed x (zlib 9, measured)" in result.stdout


def test_a_tflite_file_gets_its_gzip_9_size(tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mortar_tf.keras.compat import keras  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
  model = keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))
  path = tmp_path / "m.tflite"
  path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
  result = analyze.analyze(str(path), analyze.parse_settings(["paper"], precisions=[0.1]))
  data = path.read_bytes()
  assert result.file_bytes == len(data)
  assert result.file_gzip_bytes == len(gzip.compress(data, 9))
  assert result.to_dict()["file"] == {"bytes": len(data), "gzip9_bytes": len(gzip.compress(data,
                                                                                            9))}
  assert f"gzip -9 of it: {len(gzip.compress(data, 9)):,} bytes" in analyze.format_analysis(
      result)
  shipped = result.model.weights
  assert result.reports[0].compressed.original.zlib == _zlib(shipped.values())


def test_mortar_morph_reports_what_its_checkpoint_compresses_to(tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  keras_zoo.fer().export(str(tmp_path / "fer"), verbose=False)
  report = tmp_path / "r.json"
  result = installed_tool.run("mortar-morph", f"--input={tmp_path / 'fer'}",
                              f"--output={tmp_path / 'out'}", "--method=fewest_ones",
                              "--precision=0.01", f"--report={report}", "--noprogress",
                              "--compressed")
  assert result.returncode == 0, result.stderr

  def tensors(path):
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}

  before, after = tensors(tmp_path / "fer"), tensors(tmp_path / "out")
  data = json.loads(report.read_text())
  counted = [v for v in data["variables"] if not v["twin_of"]]
  assert len(counted) > 10
  # Keras 3 exports store each variable twice: the unread twin is not measured again.
  assert all(v["compressed"] is None for v in data["variables"] if v["twin_of"])
  for v in counted:
    assert (v["compressed"]["zlib"]["original_bytes"],
            v["compressed"]["zlib"]["morphed_bytes"]) == (_zlib([before[v["key"]]]),
                                                          _zlib([after[v["key"]]]))
  total = data["compressed"]["zlib"]
  expected = (_zlib(before[v["key"]] for v in counted), _zlib(after[v["key"]] for v in counted))
  assert (total["original_bytes"], total["morphed_bytes"]) == expected
  assert "compressed x" in result.stdout
  assert f"{expected[1]:,} of {expected[0]:,} bytes" in result.stdout


# --------------------------------------------------------------------------
# search_precisions(objective="size")


def _mse(model, x):
  from mortar_tf import explore  # pylint: disable=import-outside-toplevel
  reference = model.predict(x, verbose=0)
  return explore.Metric("mse", lambda m: float(np.mean((m.predict(x, verbose=0) - reference)
                                                       ** 2)),
                        higher_is_better=False, inputs=x)


def _small_model():
  from mortar_tf.keras.compat import keras  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(4)
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(8, 3, name="conv", activation="relu")(inputs)
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(16, name="hidden", activation="relu")(x)
  model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x))
  model.set_weights([(rng.standard_normal(w.shape) * 0.2).astype(np.float32)
                     for w in model.weights])
  return model


def _global_bytes(model, metric, grid, budget, kernels, original):
  """{P: zlib bytes of every kernel morphed at P} for each global P within the
  budget, every P scored here."""
  from mortar_tf.explore import in_place  # pylint: disable=import-outside-toplevel
  fits = {}
  for p in grid:
    values = {i: mortar_tf.morph(k.original, "fewest_ones", p, backend="numpy")
              for i, k in enumerate(kernels)}
    with in_place.Applied(kernels, values):
      drop = metric.drop(original, metric(model))
    if drop <= budget + 1e-12:
      fits[p] = _zlib(values.values())
  return fits


def _map_bytes(found, kernels):
  """zlib bytes of the kernels with the found map applied as a user applies it."""
  from mortar_tf.explore import search  # pylint: disable=import-outside-toplevel
  applied = search.resolve_map(found.precisions, kernels, "fewest_ones") if found.precisions \
      else {}
  return _zlib(mortar_tf.morph(k.original, "fewest_ones", applied[i], backend="numpy")
               if i in applied else k.original for i, k in enumerate(kernels))


@pytest.mark.parametrize("scale", [0.0, 0.2, 1.0, 5.0])
def test_objective_size_is_never_larger_than_any_global_p_within_the_budget(scale):
  from mortar_tf import explore  # pylint: disable=import-outside-toplevel
  model = _small_model()
  x = np.random.default_rng(6).standard_normal((64, 8, 8, 3)).astype(np.float32)
  metric = _mse(model, x)
  kernels = explore.models.model_kernels(model)
  grid = [0.005, 0.02, 0.1, 0.3]
  from mortar_tf.explore import in_place  # pylint: disable=import-outside-toplevel
  values = {i: mortar_tf.morph(k.original, "fewest_ones", 0.02) for i, k in enumerate(kernels)}
  with in_place.Applied(kernels, values):
    budget = scale * metric(model)
  found = explore.search_precisions(model, metric, budget, precisions=grid, objective="size",
                                    estimate_speedup=False)
  fits = _global_bytes(model, metric, grid, budget, kernels, 0.0)
  got = _map_bytes(found, kernels)
  assert found.point.compressed.morphed.zlib == got  # the point is its map's, measured
  assert found.point.compressed.original.zlib == _zlib(k.original for k in kernels)
  assert found.point.drop <= budget + 1e-12
  if fits:
    assert got <= min(fits.values())
    assert found.best_global.compressed.morphed.zlib == fits[found.best_global.settings[
        "precision"]]
  assert "objective size" in found.summary() and "compressed" in found.summary()


def test_objective_size_with_compensation_counts_the_compensated_kernels():
  from mortar_tf import explore  # pylint: disable=import-outside-toplevel
  from mortar_tf.keras import morph_model, strip_morphing  # pylint: disable=import-outside-toplevel
  model = _small_model()
  x = np.random.default_rng(7).standard_normal((96, 8, 8, 3)).astype(np.float32) + 0.2
  metric = _mse(model, x[32:])
  found = explore.search_precisions(model, metric, 1e-3, precisions=[0.01, 0.1, 0.3],
                                    objective="size", compensate=x[:32],
                                    estimate_speedup=False)
  assert found.precisions
  stripped = strip_morphing(morph_model(model, "fewest_ones", found.precisions,
                                        compensate=x[:32]))
  kernels = [stripped.get_layer(n).weights[0].numpy() for n in ("conv", "hidden", "head")]
  assert found.point.compressed.morphed.zlib == _zlib(kernels)


def test_objective_size_on_a_real_model_is_at_most_the_best_global_p():
  """FER mini-Xception, top-1 agreement with itself on 64 noise images."""
  from mortar_tf import explore  # pylint: disable=import-outside-toplevel
  model = keras_zoo.fer()
  x = np.random.default_rng(8).uniform(-1, 1, (64, 64, 64, 1)).astype(np.float32)
  metric = explore.builtin_metric("agreement", model, {"x": x})
  grid, budget = [0.005, 0.02], 0.05
  with warnings.catch_warnings():  # a cap this small may cut the search short: fine here
    warnings.simplefilter("ignore", RuntimeWarning)
    found = explore.search_precisions(model, metric, budget, precisions=grid, objective="size",
                                      estimate_speedup=False, max_evaluations=8)
  kernels = explore.models.model_kernels(model)
  fits = _global_bytes(model, metric, grid, budget, kernels, 1.0)
  got = _map_bytes(found, kernels)
  assert found.point.compressed.morphed.zlib == got and found.point.drop <= budget + 1e-12
  assert fits and got <= min(fits.values())
