"""Per-layer methods through every consumer: a map whose values are MorphSpecs
(bitx on some kernels, round on one, fewest_ones elsewhere) and a MorphSpec in
place of a method, through morph_model -> strip_morphing, MorphWrapper's saved
config, MortarCallback, the SavedModel converter, the estimator and the
mortar-morph / mortar-estimate JSON maps. Runs under Keras 3 and, via
scripts/test.sh, tf_keras.

References are independent of the code under test: each kernel's expected
method is written down here, and its expected value is SPEC's loops in
tests/spec_reference.py (bitx, round, aligned columns) or the numpy reference
mortar_tf.morphing.morph_numpy (fewest_ones; the paths under test run the C++
kernels or TensorFlow ops). SavedModel variables are found by their values,
never by the converter's names.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import installed_tool
import keras_zoo
import spec_reference as ref
from mortar_tf import MorphSpec
from mortar_tf import estimator
from mortar_tf import savedmodel
from mortar_tf.keras import MortarCallback
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras import morph_model
from mortar_tf.keras import strip_morphing
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras
from mortar_tf.morphing import morph_numpy
from mortar_tf.savedmodel import converter

BITX_CONV = MorphSpec("bitx", columns=6, group_size=8)
BITX_DW = MorphSpec("bitx", columns=5, group_size=4)
ROUND = MorphSpec("round", keep_bits=3)
ELSEWHERE = MorphSpec("fewest_ones", 0.05)
# The zoo's "nested" model: stem (Conv2D "conv", BN), block (DepthwiseConv2D
# "dw", Conv2D "pw"), Dense "head"; kernel -> (spec, its reduction axes).
MAP = {"stem/conv": BITX_CONV, "dw": BITX_DW, "head": ROUND, "*": 0.05}
SAVEDMODEL_MAP = {"conv": BITX_CONV, "dw": {"method": "bitx", "columns": 5, "group_size": 4},
                  "head": ROUND.to_config(), "*": 0.05}


def u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


def reference(value, spec, axes):
  value = np.asarray(value, np.float32)
  if spec.method == "bitx":
    return ref.bitx(value, axes, spec.group_size, spec.columns)
  if spec.method == "round":
    return np.vectorize(lambda v: ref.round_keep_bits(np.float32(v), spec.keep_bits),
                        otypes=[np.float32])(value)
  return morph_numpy(value, spec)


def _nested_kernels(model):
  """{id(kernel variable): (label, spec, reduction axes)} of the nested model."""
  stem, block = model.get_layer("stem"), model.get_layer("block")
  dw = block.get_layer("dw")
  dw_kernel = dw.kernel if IS_KERAS3 else dw.depthwise_kernel
  return {id(stem.get_layer("conv").kernel): ("stem/conv", BITX_CONV, (0, 1, 2)),
          id(dw_kernel): ("block/dw", BITX_DW, (0, 1)),
          id(block.get_layer("pw").kernel): ("block/pw", ELSEWHERE, (0, 1, 2)),
          id(model.get_layer("head").kernel): ("head", ROUND, (0,))}


def _assert_morphed_copy(source, copy, kernels):
  """`copy` holds source's variables, position by position: the kernels morphed
  as `kernels` says (bit for bit), every other variable bit-identical."""
  assert [tuple(w.shape) for w in copy.weights] == [tuple(w.shape) for w in source.weights]
  seen = set()
  for original, got in zip(source.weights, copy.weights):
    entry = kernels.get(id(original))
    if entry is None:
      np.testing.assert_array_equal(u32(got.numpy()), u32(original.numpy()), err_msg=got.name)
      continue
    label, spec, axes = entry
    seen.add(label)
    want = reference(original.numpy(), spec, axes)
    np.testing.assert_array_equal(u32(got.numpy()), u32(want), err_msg=label)
    assert not np.array_equal(u32(want), u32(original.numpy())), label  # really morphed
  assert seen == {label for label, _, _ in kernels.values()}


def test_per_layer_methods_through_morph_model_and_strip_morphing():
  model = keras_zoo.build("nested")
  wrapped = morph_model(model, "fewest_ones", precision=MAP)
  # each wrapper gets its own spec (one per layer: no map left in them)
  specs = {w.layer.name: w.spec for w in _wrappers(wrapped)}
  assert specs == {"conv": BITX_CONV, "dw": BITX_DW, "pw": ELSEWHERE, "head": ROUND}
  stripped = strip_morphing(wrapped)
  _assert_morphed_copy(model, stripped, _nested_kernels(model))
  x = keras_zoo.inputs(model, batch=3, seed=1)
  np.testing.assert_array_equal(u32(np.asarray(stripped(x))), u32(np.asarray(wrapped(x))))


def _wrappers(model):
  for layer in model.layers:
    if isinstance(layer, MorphWrapper):
      yield layer
    elif isinstance(layer, keras.Model):
      yield from _wrappers(layer)


def test_one_spec_in_place_of_the_method_morphs_every_kernel():
  model = keras_zoo.build("nested")
  spec = MorphSpec("round", keep_bits=2)
  kernels = {i: (label, spec, axes) for i, (label, _, axes) in _nested_kernels(model).items()}
  _assert_morphed_copy(model, strip_morphing(morph_model(model, spec)), kernels)
  with pytest.raises(ValueError, match="not both"):
    morph_model(model, spec, keep_bits=4)
  with pytest.raises(ValueError, match="put the spec into the map"):
    morph_model(model, spec, precision={"head": 0.1})


def test_a_wrapper_with_different_specs_per_kernel_saves_and_loads_them(tmp_path):
  """MultiHeadAttention: bitx on the query kernel, fewest_ones on the others,
  in one wrapper (its map of exact kernel names); the saved model loads with
  the same specs and strips to the same values."""
  model = keras_zoo.build("transformer")
  wrapped = morph_model(model, "fewest_ones", precision={"mha/query": BITX_CONV, "*": 0.05})
  mha = next(w for w in _wrappers(wrapped) if w.layer.name == "mha")
  assert mha.spec is None
  assert {t.name: t.spec for t in mha.targets} == {
      "query/kernel": BITX_CONV, "key/kernel": ELSEWHERE, "value/kernel": ELSEWHERE,
      "attention_output/kernel": ELSEWHERE}
  stripped = strip_morphing(wrapped)
  layer = model.get_layer("mha")
  axes = {id(getattr(layer, f"_{n}_dense").kernel): (n, BITX_CONV if n == "query" else ELSEWHERE,
                                                     (0,) if n != "output" else (0, 1))
          for n in ("query", "key", "value", "output")}
  ffn = model.get_layer("ffn")
  axes.update({id(ffn.up.kernel): ("ffn/up", ELSEWHERE, (0,)),
               id(ffn.down.kernel): ("ffn/down", ELSEWHERE, (0,)),
               id(model.get_layer("head").kernel): ("head", ELSEWHERE, (0,))})
  _assert_morphed_copy(model, stripped, axes)

  path = str(tmp_path / "wrapped.keras")  # tf_keras too (its .h5 needs unique weight names)
  wrapped.save(path)
  loaded = keras.models.load_model(path, compile=False)
  loaded_mha = next(w for w in _wrappers(loaded) if w.layer.name == "mha")
  assert {t.name: t.spec for t in loaded_mha.targets} == {t.name: t.spec for t in mha.targets}
  for a, b in zip(strip_morphing(loaded).weights, stripped.weights):
    np.testing.assert_array_equal(u32(a.numpy()), u32(b.numpy()), err_msg=a.name)


def test_wrapper_configs_keep_the_flat_form_and_load_older_ones():
  dense = keras.layers.Dense(3, name="fc")
  dense.build((None, 5))
  config = MorphWrapper(dense, BITX_CONV).get_config()
  # a spec is written as the flat keywords older versions wrote (and read)
  assert {k: config[k] for k in ("method", "columns", "group_size", "width")} == {
      "method": "bitx", "columns": 6, "group_size": 8, "width": BITX_CONV.width}
  assert "precision" not in config and "keep_bits" not in config
  # configs as older versions saved them: flat settings, or a map of numbers
  old = dict(config, method="paper", precision=0.2)
  for key in ("columns", "group_size", "width"):
    del old[key]
  assert MorphWrapper.from_config(old).spec == MorphSpec("paper", 0.2)
  old_map = dict(old, method="fewest_ones", precision={"kernel": 0.3})
  wrapper = MorphWrapper.from_config(old_map)
  assert wrapper.get_config()["precision"] == {"kernel": 0.3}
  # a map of specs is written as their configs and read back
  mixed = MorphWrapper(dense, "paper", precision={"kernel": BITX_DW})
  assert mixed.get_config()["precision"] == {"kernel": BITX_DW.to_config()}
  again = MorphWrapper.from_config(json.loads(json.dumps(mixed.get_config())))
  again.build((None, 5))
  assert [t.spec for t in again.targets] == [BITX_DW]
  own = lambda config: {k: v for k, v in config.items() if k != "layer"}  # the built state differs
  assert own(again.get_config()) == own(mixed.get_config())


def test_wrapper_errors_name_the_entry_and_the_conflict():
  dense = keras.layers.Dense(3, name="fc")
  with pytest.raises(ValueError, match="entry 'kernel': method 'bitx' needs columns"):
    MorphWrapper(dense, precision={"kernel": {"method": "bitx"}})
  with pytest.raises(ValueError, match="entry 'kernel' is a number.*not 'round'"):
    MorphWrapper(dense, "round", precision={"kernel": 0.1})
  with pytest.raises(ValueError, match="not both"):
    MorphWrapper(dense, ROUND, precision=0.1)
  with pytest.raises(TypeError):
    MorphWrapper(dense, "round", None, 3)  # settings are keyword-only


def test_mortar_callback_saves_per_layer_and_single_spec_copies(tmp_path):
  model = keras_zoo.build("nested")
  model.compile(keras.optimizers.SGD(0.01), "mse")
  suffix = ".keras" if IS_KERAS3 else ".h5"
  mixed = str(tmp_path / ("mixed" + suffix))
  single = str(tmp_path / ("bitx" + suffix))
  x = keras_zoo.inputs(model, batch=8, seed=2)
  model.fit(x, keras_zoo.targets(model, batch=8), epochs=1, verbose=0,
            callbacks=[MortarCallback(mixed, "fewest_ones", precision=MAP),
                       MortarCallback(single, BITX_CONV)])
  kernels = _nested_kernels(model)
  _assert_morphed_copy(model, keras.models.load_model(mixed, compile=False), kernels)
  everywhere = {i: (label, BITX_CONV, axes) for i, (label, _, axes) in kernels.items()}
  _assert_morphed_copy(model, keras.models.load_model(single, compile=False), everywhere)
  with pytest.raises(ValueError, match="entry 'head': unknown morphing method 'bitz'"):
    MortarCallback(mixed, precision={"head": {"method": "bitz", "columns": 3}})


# --------------------------------------------------------------------------
# SavedModel: the converter, the estimator and the tools


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = keras_zoo.build("nested")
  path = tmp_path_factory.mktemp("spec") / "src"
  model.export(str(path), **({"verbose": False} if IS_KERAS3 else {}))
  kernels = {label: (np.asarray(v.numpy()), spec, axes)
             for v in model.weights for i, (label, spec, axes) in _nested_kernels(model).items()
             if id(v) == i}
  return str(path), kernels


def _checkpoint(path):
  reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def _bytes(value):
  return value if isinstance(value, bytes) else np.asarray(value).tobytes()


def _assert_converted(src, dst, kernels):
  """Every checkpoint entry holding a kernel's value (found by its bytes; Keras
  3 keeps two copies) is that kernel morphed by its spec; the rest unchanged."""
  before, after = _checkpoint(src), _checkpoint(dst)
  assert sorted(before) == sorted(after)
  by_bytes = {value.tobytes(): label for label, (value, _, _) in kernels.items()}
  found = {}
  for key, value in before.items():
    label = by_bytes.get(_bytes(value))
    if label is None:
      assert _bytes(after[key]) == _bytes(value), key
      continue
    found.setdefault(label, []).append(key)
    original, spec, axes = kernels[label]
    np.testing.assert_array_equal(u32(after[key]), u32(reference(original, spec, axes)),
                                  err_msg=f"{label} ({key})")
  assert set(found) == set(kernels)
  return found


def test_convert_morphs_each_variable_with_its_entrys_spec(exported, tmp_path):
  src, kernels = exported
  dst = str(tmp_path / "dst")
  report = savedmodel.convert(src, dst, "fewest_ones", SAVEDMODEL_MAP)
  keys = _assert_converted(src, dst, kernels)
  record = converter.read_record(dst)
  # the record states each variable's method and settings, and the map as JSON
  by_key = {v["key"]: v for v in record["variables"]}
  for label, (_, spec, _) in kernels.items():
    for key in keys[label]:
      assert {"method": by_key[key]["method"], **by_key[key]["settings"]} == spec.to_config()
  assert record["method"] == "fewest_ones"
  assert record["settings"] == {"precision_map": {
      "conv": BITX_CONV.to_config(), "dw": BITX_DW.to_config(), "head": ROUND.to_config(),
      "*": 0.05}}
  assert "bitx columns=6" in report.summary() and "round keep_bits=3" in report.summary()


def test_convert_takes_one_spec(exported, tmp_path):
  src, kernels = exported
  dst = str(tmp_path / "dst")
  report = savedmodel.convert(src, dst, BITX_DW)
  _assert_converted(src, dst, {label: (value, BITX_DW, axes)
                               for label, (value, _, axes) in kernels.items()})
  assert (report.method, report.settings) == ("bitx", BITX_DW.settings())
  assert (report.group_size, report.width) == (BITX_DW.group_size, BITX_DW.width)
  with pytest.raises(ValueError, match="not both"):
    savedmodel.convert(src, str(tmp_path / "x"), BITX_DW, group_size=8)
  with pytest.raises(ValueError, match="entry '\\*' is a number.*not 'bitx'"):
    savedmodel.convert(src, str(tmp_path / "x"), "bitx", {"*": 0.1})
  assert not os.path.exists(tmp_path / "x")


def test_estimator_mixed_map_is_the_sum_of_each_spec_alone(exported):
  src, kernels = exported
  mixed = estimator.estimate(src, method="fewest_ones", precision=SAVEDMODEL_MAP)
  alone = {"conv": estimator.estimate(src, precision={"conv": BITX_CONV}),
           "dw": estimator.estimate(src, precision={"dw": BITX_DW}),
           "pw": estimator.estimate(src, method="fewest_ones", precision={"pw": 0.05}),
           "head": estimator.estimate(src, precision={"head": ROUND})}
  shapes = {value.shape: label for label, (value, _, _) in kernels.items()}
  names = {"stem/conv": "conv", "block/dw": "dw", "block/pw": "pw", "head": "head"}
  assert len(mixed.mapped) == 4
  for index, layer in enumerate(mixed.layers):
    own = alone[names[shapes[layer.weight_shape]]].layers[index]
    for engine in layer.cycles:
      assert layer.cycles[engine] == own.cycles[engine], (layer.name, engine)
  for engine, cells in mixed.total_cycles().items():
    assert cells["morphed"] == sum(
        e.layers[i].cycles[engine]["morphed"] for i, layer in enumerate(mixed.layers)
        for e in [alone[names[shapes[layer.weight_shape]]]])
  # bitx prunes with each engine's own G and width, not the spec's (G=8 here)
  conv = next(l for l in mixed.layers if l.weight_shape == kernels["stem/conv"][0].shape)
  value = kernels["stem/conv"][0]
  for engine in mixed.engines:
    g, width = engine.group_size, engine.width
    want = ref.aligned_column_ones(ref.bitx(value, (0, 1, 2), g, BITX_CONV.columns),
                                   (0, 1, 2), g, width)
    assert list(conv.columns[engine.name]["morphed"]) == want, engine.name
  assert conv.precision == {"method": "bitx", "columns": 6}  # the engines' geometry applies


def test_the_tools_take_spec_objects_in_the_json_map(exported, tmp_path):
  src, kernels = exported
  path = tmp_path / "map.json"
  path.write_text(json.dumps({**SAVEDMODEL_MAP, "conv": BITX_CONV.to_config()}))
  out = str(tmp_path / "out")
  result = installed_tool.run("mortar-morph", f"--input={src}", f"--output={out}",
                              "--method=fewest_ones", f"--precision_map={path}", "--noprogress")
  assert result.returncode == 0, result.stderr
  _assert_converted(src, out, kernels)
  result = installed_tool.run("mortar-estimate", f"--saved_model={src}", "--method=fewest_ones",
                              f"--precision_map={path}", f"--json={tmp_path / 'e.json'}")
  assert result.returncode == 0, result.stderr
  want = estimator.estimate(src, method="fewest_ones", precision=SAVEDMODEL_MAP)
  assert json.loads((tmp_path / "e.json").read_text())["total"]["cycles"] == want.total_cycles()
  # a bad object names its entry; a value that is neither a number nor an object is refused
  for entry, message in (({"method": "bitx"}, "entry 'conv': method 'bitx' needs columns"),
                         ("bitx", "entry 'conv' is \"bitx\"")):
    path.write_text(json.dumps({"conv": entry}))
    result = installed_tool.run("mortar-morph", f"--input={src}",
                                f"--output={tmp_path / 'bad'}", f"--precision_map={path}")
    assert result.returncode == 1 and message in result.stderr, result.stderr
  assert not os.path.exists(tmp_path / "bad")
