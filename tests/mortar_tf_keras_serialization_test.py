"""A model saved while it holds MorphWrappers loads with Keras alone after a
plain `import mortar_tf`, in either import order, and inside morph_scope();
without either, Keras cannot load it (so the registration is what works).
Runs in scripts/test.sh, again under tf_keras (TF_USE_LEGACY_KERAS=1)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import installed_tool
import keras_zoo
from mortar_tf.keras import morph_model
from mortar_tf.keras.compat import LEGACY
from mortar_tf.keras.compat import keras

KERAS = "tf_keras" if LEGACY else "keras"
FORMATS = [".keras", ".h5"] if LEGACY else [".keras"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """An unstripped morph-aware model (MorphWrappers, one with a BN folded in) saved in
  every format this Keras writes, its inputs and its outputs."""
  tmp = tmp_path_factory.mktemp("saved")
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.Flatten()(x)
  model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
  keras_zoo.with_batchnorm_statistics(model, seed=5)
  wrapped = morph_model(model, "paper", precision=0.1, fold_batchnorm=True)
  names = {type(layer).__name__ for layer in wrapped.layers}
  assert "MorphWrapper" in names, names
  x = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype(np.float32)
  np.save(tmp / "x.npy", x)
  np.save(tmp / "y.npy", np.asarray(wrapped(x)))
  for suffix in FORMATS:
    wrapped.save(str(tmp / f"wrapped{suffix}"))
  return tmp


def _run(saved, body, bare=False):
  """Runs `body` in a process of its own with `load(path)` comparing a loaded
  model's outputs with the saved model's, bit for bit: a bare interpreter
  (`bare`: where the order of imports is the point, TensorFlow's included), or
  one forked from a process that has imported TensorFlow (installed_tool)."""
  script = textwrap.dedent(f"""\
      import sys
      import numpy as np
      x = np.load({str(saved / "x.npy")!r})
      want = np.load({str(saved / "y.npy")!r})
      paths = [{", ".join(repr(str(saved / f"wrapped{s}")) for s in FORMATS)}]
      def load(path):
        model = sys.modules[{KERAS!r}].models.load_model(path)
        got = np.asarray(model(x))
        assert (got.view(np.uint32) == want.view(np.uint32)).all(), path
        return model
      """) + textwrap.dedent(body)
  env = installed_tool.ENV
  if bare:
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300, check=False)
  else:
    result = installed_tool.python("-c", script, env=env)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.strip().endswith("OK"), result.stdout


@pytest.mark.parametrize("order", ["mortar_tf first", "keras first", "tensorflow between"])
def test_a_plain_import_mortar_tf_registers_the_classes(saved, order):
  imports = {
      "mortar_tf first": f"import mortar_tf\nimport {KERAS}\n",
      "keras first": f"import {KERAS}\nimport mortar_tf\n",
      "tensorflow between": f"import mortar_tf\nimport tensorflow\nimport {KERAS}\n",
  }[order]
  _run(saved, imports + textwrap.dedent("""\
      assert "tensorflow" in sys.modules
      for path in paths:
        model = load(path)
      # Deploying from a checkpoint: strip the loaded model; the forward pass is unchanged.
      from mortar_tf.keras import strip_morphing
      got = np.asarray(strip_morphing(model)(x))
      assert (got.view(np.uint32) == want.view(np.uint32)).all()
      assert not any(type(f).__module__ == "mortar_tf._keras_registration" for f in sys.meta_path)
      print("OK")
      """), bare=True)


def test_without_mortar_tf_keras_cannot_load_it_and_morph_scope_can(saved):
  _run(saved, f"""\
      import {KERAS}
      for path in paths:
        try:
          load(path)
        except Exception:  # Keras' own error (tf_keras' for .h5 does not name the class)
          pass
        else:
          raise AssertionError("loaded without mortar_tf: " + path)
      assert "mortar_tf" not in sys.modules
      from mortar_tf.keras import morph_scope
      registry = ({KERAS}.saving.get_custom_objects() if hasattr({KERAS}, "saving")
                  and hasattr({KERAS}.saving, "get_custom_objects")
                  else {KERAS}.utils.get_custom_objects())
      assert any("MorphWrapper" in name for name in registry)
      registry.clear()  # as if never registered
      for path in paths:
        try:
          load(path)
        except Exception:
          pass
        else:
          raise AssertionError("the registry was cleared, yet it loaded: " + path)
        with morph_scope():
          load(path)
      print("OK")
      """)


def test_a_weights_only_checkpoint_loads_into_the_same_wrapped_structure(tmp_path):
  inputs = keras.Input((6,))
  model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(
      keras.layers.Dense(5, activation="relu", name="hidden")(inputs)))
  x = np.random.default_rng(4).standard_normal((4, 6)).astype(np.float32)
  wrapped = morph_model(model, "fewest_ones", precision={"hidden": 0.2, "fc": 0.05})
  wrapped.compile("sgd", "mse")
  wrapped.fit(x, np.zeros((4, 3), np.float32), epochs=1, verbose=0)
  path = str(tmp_path / ("ckpt.weights.h5" if not LEGACY else "ckpt.h5"))
  wrapped.save_weights(path)
  fresh = morph_model(keras.models.clone_model(model), "fewest_ones",
                      precision={"hidden": 0.2, "fc": 0.05})
  fresh.load_weights(path)
  np.testing.assert_array_equal(np.asarray(fresh(x)).view(np.uint32),
                                np.asarray(wrapped(x)).view(np.uint32))
