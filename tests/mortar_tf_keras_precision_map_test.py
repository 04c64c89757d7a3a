"""A {pattern: P} entry that matches kernels but wins none is an error
everywhere a map is taken: morph_model, MorphWrapper, MortarCallback (at train
start, before the first batch), the search's resolve_map, mortar-morph and
mortar-estimate."""

import json

import numpy as np
import pytest

import installed_tool
from mortar_tf import explore
from mortar_tf.keras import MortarCallback
from mortar_tf.keras import MorphWrapper
from mortar_tf.keras import morph_model
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras
from mortar_tf.explore import models as models_lib

SHADOWED = {"*": 0.1, "pooled_dense": 0.01}
MESSAGE = "entry 'pooled_dense' never applies.*earlier entry '\\*'"


def _export(model, path):
  model.export(str(path), **({"verbose": False} if IS_KERAS3 else {}))


def _model():
  inputs = keras.Input((6,))
  x = keras.layers.Dense(5, name="conv1d_1")(inputs)
  outputs = keras.layers.Dense(3, name="pooled_dense")(x)
  return keras.Model(inputs, outputs)


def test_morph_model_and_wrapper_refuse_a_shadowed_entry():
  model = _model()
  with pytest.raises(ValueError, match=MESSAGE):
    morph_model(model, "paper", precision=SHADOWED)
  with pytest.raises(ValueError, match="entry 'kernel' never applies.*its own layer's kernels"):
    MorphWrapper(model.get_layer("pooled_dense"), "paper", precision={"*": 0.1, "kernel": 0.2})
  # In the right order both entries apply.
  wrapped = morph_model(model, "paper", precision={"pooled_dense": 0.01, "*": 0.1})
  assert len(wrapped.layers) == 3


def test_the_callback_refuses_it_before_the_first_batch(tmp_path):
  model = _model()
  model.compile("sgd", "mse")
  seen = []
  probe = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: seen.append(1))
  with pytest.raises(ValueError, match=MESSAGE):
    model.fit(np.zeros((4, 6), np.float32), np.zeros((4, 3), np.float32), epochs=1, verbose=0,
              callbacks=[MortarCallback(str(tmp_path / "m.keras"), "paper", precision=SHADOWED),
                         probe])
  assert not seen and not list(tmp_path.iterdir())


def test_the_search_map_resolution_refuses_it():
  kernels = models_lib.model_kernels(_model())
  with pytest.raises(ValueError, match=MESSAGE):
    explore.resolve_map(SHADOWED, kernels, "fewest_ones")


def test_the_savedmodel_tools_refuse_it(tmp_path):
  _export(_model(), tmp_path / "m")
  (tmp_path / "map.json").write_text(json.dumps(SHADOWED))
  for tool, args in (("mortar-morph", [f"--input={tmp_path / 'm'}",
                                       f"--output={tmp_path / 'out'}"]),
                     ("mortar-estimate", [f"--saved_model={tmp_path / 'm'}"])):
    result = installed_tool.run(tool, *args, f"--precision_map={tmp_path / 'map.json'}")
    assert result.returncode == 1, (tool, result.stdout)
    assert "entry 'pooled_dense' never applies" in result.stderr, result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "map.json"]


def test_a_map_file_naming_an_entry_twice_is_refused(tmp_path):
  _export(_model(), tmp_path / "m")
  (tmp_path / "map.json").write_text('{"pooled_dense": 0.1, "pooled_dense": 0.3}')
  result = installed_tool.run("mortar-morph", f"--input={tmp_path / 'm'}",
                              f"--output={tmp_path / 'out'}",
                              f"--precision_map={tmp_path / 'map.json'}")
  assert result.returncode == 1
  assert "gives 'pooled_dense' twice" in result.stderr
