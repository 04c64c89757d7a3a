"""MorphWrapper training and MortarCallback under MirroredStrategy on 2 logical CPUs.

Logical devices must be set before TensorFlow initialises, so each case runs in
a process of its own (installed_tool.python: forked from one that has imported
TensorFlow and nothing else, which initialises nothing); it inherits
TF_USE_LEGACY_KERAS, so scripts/test.sh covers both Keras flavours.
"""

import textwrap

import pytest

import installed_tool

SCRIPT = textwrap.dedent("""
    import os, sys
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import mortar_tf
    from mortar_tf.keras import MortarCallback, morph_model
    from mortar_tf.keras.compat import IS_KERAS3, keras

    out, wrapped = sys.argv[1], sys.argv[2] == "wrapped"
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
      keras.utils.set_random_seed(0)
      model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, name="conv"),
                                keras.layers.Flatten(), keras.layers.Dense(2, name="fc")])
      if wrapped:
        model = morph_model(model, "fewest_ones", precision=0.1)
      model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6, 6, 1)).astype(np.float32)
    y = rng.standard_normal((32, 2)).astype(np.float32)
    fc = model.get_layer("morph_fc").layer if wrapped else model.get_layer("fc")
    before = fc.weights[0].numpy().copy()
    path = os.path.join(out, "m" + (".keras" if IS_KERAS3 else ".h5"))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[MortarCallback(path, "fewest_ones", precision=0.1)])
    master = fc.weights[0].numpy()
    assert not np.array_equal(before, master), "no training happened"
    saved = keras.models.load_model(path, compile=False)
    expected = mortar_tf.morph(master, "fewest_ones", 0.1, backend="numpy")
    assert np.array_equal(saved.get_layer("fc").weights[0].numpy().view(np.uint32),
                          expected.view(np.uint32)), "saved kernel is not morph(master)"
    print("OK")
    """)


@pytest.mark.parametrize("variant", ["wrapped", "unwrapped"])
def test_mirrored_strategy_training_and_callback(tmp_path, variant):
  result = installed_tool.python("-c", SCRIPT, str(tmp_path), variant, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")
