"""Metric evaluation under tf.distribute: MirroredStrategy over 2 logical CPU
devices gives the same predictions and scores as one device.

Logical devices must be set before TensorFlow initialises, so the check runs
in a process of its own (installed_tool.python: forked from one that has only
imported TensorFlow); it compares with the single-device run there.
"""

import json
import textwrap

import installed_tool

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from mortar_tf import explore
    from mortar_tf.explore import metrics

    rng = np.random.default_rng(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(5, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
    data = {"x": rng.standard_normal((103, 6, 6, 2)).astype(np.float32),
            "y": rng.integers(0, 5, 103)}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = metrics.predict(model, data["x"], 32)
    two = metrics.predict(model, data["x"], 32, strategy)
    out = {"replicas": strategy.num_replicas_in_sync, "shape": list(two.shape),
           "max_diff": float(np.abs(one - two).max())}
    for name in ("accuracy", "agreement", "mse"):
      single = explore.builtin_metric(name, model, data, batch_size=32)
      mirrored = explore.builtin_metric(name, model, data, batch_size=32, strategy=strategy)
      # Both score the model with its first kernel scaled, so the scores move.
      kernel = model.get_layer("conv").kernel
      original = kernel.numpy()
      kernel.assign(original * 0.9)
      out[name] = [single(model), mirrored(model)]
      kernel.assign(original)
    model.export(sys.argv[1], verbose=False)
    loaded = explore.LoadedSavedModel(sys.argv[1])
    out["saved_model_max_diff"] = float(np.abs(metrics.predict(loaded, data["x"], 32, strategy)
                                               - one).max())
    print(json.dumps(out))
""")


def test_mirrored_strategy_predicts_and_scores_like_one_device(tmp_path):
  result = installed_tool.python("-c", SCRIPT, str(tmp_path / "sm"), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["replicas"] == 2
  assert out["shape"] == [103, 5]  # the last, uneven batch is split and put back in order
  assert out["max_diff"] <= 1e-5
  assert out["saved_model_max_diff"] <= 1e-5
  for name in ("accuracy", "agreement"):
    assert out[name][0] == out[name][1], name
  assert abs(out["mse"][0] - out["mse"][1]) <= 1e-6 * max(1.0, out["mse"][0])
  assert out["agreement"][0] < 1.0  # the scaled kernel changed some answers
