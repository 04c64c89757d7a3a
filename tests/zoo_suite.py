"""The checks the Keras zoo tests run (tests/keras_zoo.py builds the models),
made into test functions for a list of model names by `make`, so the zoo can be
split over test files (and pytest-xdist workers).

Each model goes morph_model -> two fit steps -> strip_morphing -> save ->
export, and through MortarCallback; then a process of its own loads every saved
copy and export with plain Keras/TensorFlow (no mortar_tf imported). The
invariant checked everywhere: in the copy, every kernel (by Keras' own weight
names, independently of our registry) equals the numpy reference
mortar_tf.morph(original) bit for bit, and every other variable is
bit-identical to the variable at the same place in the source model.
"""

import json
import os
import textwrap

import numpy as np
import pytest

import installed_tool
import keras_zoo
import mortar_tf
from mortar_tf.keras import MortarCallback
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras import find_kernels
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

METHOD = dict(method="paper", precision=0.1)


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


def expected_weights(source_model):
  """The copy's weights, by the invariant: kernels morphed (numpy reference),
  the rest as they are."""
  return [mortar_tf.morph(np.asarray(w.numpy()), **METHOD, backend="numpy")
          if keras_zoo.is_kernel(w) else np.asarray(w.numpy()) for w in source_model.weights]


def assert_invariant(copy, expected, what):
  got = copy.weights
  assert len(got) == len(expected), f"{what}: {len(got)} weights, expected {len(expected)}"
  for i, (w, want) in enumerate(zip(got, expected)):
    value = np.asarray(w.numpy())
    assert value.shape == want.shape, f"{what}: weight {i} ({w.name}) has shape {value.shape}"
    if value.dtype == np.float32:
      np.testing.assert_array_equal(u32(value), u32(want), err_msg=f"{what}: {w.name}")
    else:
      np.testing.assert_array_equal(value, want, err_msg=f"{what}: {w.name}")


def _load(path, name):
  return keras.models.load_model(path, compile=False,
                                 custom_objects=keras_zoo.custom_objects(name))


def _export(model, path):
  if IS_KERAS3:
    model.export(path, verbose=False)
  else:
    model.export(path)


def _outputs(model, x):
  out = model(x, training=False)
  out = out if isinstance(out, (list, tuple)) else [out]
  return [np.asarray(o, np.float32) for o in out]


def _all(model):
  for layer in model.layers:
    yield layer.name, layer
    if isinstance(layer, keras.Model):
      yield from _all(layer)


LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, sys.argv[2])
    import keras_zoo
    cases = json.load(open(sys.argv[1]))
    report = {}
    for name, files in cases.items():
      model = keras_zoo.keras.models.load_model(
          files["keras"], compile=False, custom_objects=keras_zoo.custom_objects(name))
      if files["expected"]:
        expected = np.load(files["expected"])
        want = [expected[f"arr_{i}"] for i in range(len(expected.files))]
        got = [np.asarray(w.numpy()) for w in model.weights]
        assert len(got) == len(want), (name, len(got), len(want))
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if a.tobytes() != b.tobytes()]
        assert not bad, (name, "weights differ", bad[:5])
      if files["export"]:
        io = np.load(files["io"])
        arrays = [io[f"arr_{i}"] for i in range(len(io.files))]
        x, outputs = arrays[:files["inputs"]], arrays[files["inputs"]:]
        loaded = tf.saved_model.load(files["export"])
        fn = loaded.serve if hasattr(loaded, "serve") else loaded.signatures["serving_default"]
        if hasattr(loaded, "serve"):
          tensors = [tf.constant(a) for a in x]
          try:
            out = fn(tensors) if len(x) > 1 else fn(tensors[0])
          except TypeError:  # a model whose inputs are a list, even of one (FER's h5)
            out = fn(tensors)
        else:
          out = fn(**{n: tf.constant(a) for n, a in zip(files["input_names"], x)})
        out = [out] if isinstance(out, tf.Tensor) else (
            list(out.values()) if isinstance(out, dict) else list(out))
        assert len(out) == len(outputs), (name, len(out), len(outputs))
        def diff(a, b):  # an untrained ResNet's inference output can be NaN: NaN == NaN here
          a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
          if not np.array_equal(np.isnan(a), np.isnan(b)):
            return float("inf")
          return float(np.max(np.abs(np.where(np.isnan(a), 0, a - b)), initial=0))
        for e in outputs:  # signatures return outputs by name: match each by value
          diffs = [diff(o, e) for o in out if np.shape(o) == np.shape(e)]
          assert diffs and min(diffs) < 1e-4, (name, "export outputs differ", diffs)
      report[name] = "ok"
    assert "mortar_tf" not in sys.modules, "mortar_tf was imported"
    print(json.dumps(report))
    """)


def make(names):
  """{test name: test function} over the zoo models `names`, for a test
  module's globals(); the last one loads what the others saved."""
  saved = {}  # name -> files for the final load-without-mortar_tf check

  @pytest.fixture(autouse=True)
  def _seed():
    keras.utils.set_random_seed(0)

  def test_registry_finds_exactly_the_kernels_keras_names_so():
    for name in names:
      model = keras_zoo.build(name)
      found = {id(k.variable) for k in find_kernels(model).kernels}
      oracle = {id(w) for w in model.weights if keras_zoo.is_kernel(w)}
      assert found == oracle, name
      kernel_names = [k.name for k in find_kernels(model).kernels]
      assert len(set(kernel_names)) == len(kernel_names), f"{name}: duplicate kernel names"

  @pytest.mark.slow
  @pytest.mark.parametrize("name", [n for n in names if n != "subclassed"])
  def test_morph_fit_strip_save_export(tmp_path, name):
    model = keras_zoo.build(name)
    wrapped = morph_model(model, **METHOD)
    assert any(isinstance(l, MorphWrapper) for l in wrapped.layers)
    x, y = keras_zoo.inputs(model), keras_zoo.targets(model)
    before = [np.asarray(w.numpy()).copy() for w in model.weights if keras_zoo.is_kernel(w)]
    wrapped.compile(optimizer="sgd", loss="mse")
    wrapped.fit(x, y, batch_size=2, epochs=1, verbose=0)
    after = [np.asarray(w.numpy()) for w in model.weights if keras_zoo.is_kernel(w)]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "no kernel trained"

    stripped = strip_morphing(wrapped)
    assert not any(isinstance(l, MorphWrapper) for _, l in _all(stripped))
    assert stripped.get_config() == model.get_config()
    expected = expected_weights(model)
    assert_invariant(stripped, expected, f"{name} stripped")
    want = _outputs(wrapped, x)
    for got, ref in zip(_outputs(stripped, x), want):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, equal_nan=True)

    path, export = str(tmp_path / "stripped.keras"), str(tmp_path / "export")
    stripped.save(path)
    assert_invariant(_load(path, name), expected, f"{name} saved and loaded")
    _export(stripped, export)
    np.savez(tmp_path / "expected.npz", *expected)
    np.savez(tmp_path / "io.npz", *(x if isinstance(x, list) else [x]), *_outputs(stripped, x))
    saved[name] = dict(keras=path, export=export, expected=str(tmp_path / "expected.npz"),
                       io=str(tmp_path / "io.npz"), inputs=len(x) if isinstance(x, list) else 1,
                       input_names=[] if IS_KERAS3 else list(model.input_names))

  @pytest.mark.slow
  @pytest.mark.parametrize("name", names)
  def test_callback_saves_the_invariant_copy(tmp_path, name):
    model = keras_zoo.build(name)
    model.compile(optimizer="sgd", loss="mse")
    x, y = keras_zoo.inputs(model), keras_zoo.targets(model)
    path = str(tmp_path / "cb-{epoch}.keras")
    callback = MortarCallback(path, **METHOD)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[callback])
    copy = _load(path.format(epoch=1), name)
    assert_invariant(copy, expected_weights(model), f"{name} callback")
    assert callback.last_ratios["word"] > 1.0
    if name == "subclassed":
      saved[name + "_callback"] = dict(keras=path.format(epoch=1), export=None,
                                       expected=None, io=None, inputs=1)

  @pytest.mark.slow
  def test_saved_copies_load_and_run_without_mortar_tf(tmp_path):
    assert saved, "the tests above saved nothing"
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(saved))
    result = installed_tool.python("-c", LOADER, str(cases),
                                   os.path.dirname(os.path.abspath(__file__)),
                                   timeout=900, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == set(saved)

  return {key: fn for key, fn in locals().items() if key.startswith(("test_", "_seed"))}
