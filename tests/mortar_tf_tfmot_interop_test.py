"""Interop with TFMOT (tf_keras only): prune -> strip_pruning -> morph_model -> strip_morphing.

Importing TFMOT switches the whole process to tf_keras, so the pipeline runs in
a fresh process with TF_USE_LEGACY_KERAS=1.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import mortar_tf
    from mortar_tf.keras import morph_model, strip_morphing
    from mortar_tf.keras.compat import LEGACY, keras
    assert LEGACY
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.layers.InputLayer((8,)), keras.layers.Dense(16, name="a"),
                             keras.layers.Dense(4, name="b")])
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule)
    pruned.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    pruned.fit(x, y, epochs=2, batch_size=16, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    plain = tfmot.sparsity.keras.strip_pruning(pruned)
    stripped = strip_morphing(morph_model(plain, "fewest_ones", precision=0.1))
    for name in ("a", "b"):
      k = plain.get_layer(name).kernel.numpy()
      m = stripped.get_layer(name).kernel.numpy()
      assert (k == 0).mean() >= 0.45, f"pruning left {(k == 0).mean():.2f} zeros"
      assert np.array_equal(m == 0, k == 0), "zeros moved"
      expected = mortar_tf.morph(k, "fewest_ones", 0.1, backend="numpy")
      assert np.array_equal(m.view(np.uint32), expected.view(np.uint32)), "kernel != morph(pruned)"
    print("OK")
    """)


def _run(script, legacy="1"):
  env = dict(os.environ, TF_USE_LEGACY_KERAS=legacy, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env=env, timeout=600, check=False)


def test_prune_strip_then_morph_keeps_zeros_and_morphs_the_rest():
  result = _run(SCRIPT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")


QAT_SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow_model_optimization as tfmot
    from mortar_tf.keras import morph_model
    from mortar_tf.keras import tfmot as mortar_tfmot
    from mortar_tf.keras.compat import keras
    q = tfmot.quantization.keras
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.layers.InputLayer((6, 6, 2)), keras.layers.Conv2D(3, 3, name="conv"),
                              keras.layers.DepthwiseConv2D(3, name="dw"), keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(4, name="fc")])
    config = lambda: mortar_tfmot.MorphQuantizeConfig("fewest_ones", 0.1)
    annotated = keras.Sequential([
        keras.layers.InputLayer((6, 6, 2)),
        q.quantize_annotate_layer(keras.layers.Conv2D(3, 3, name="conv"), quantize_config=config()),
        q.quantize_annotate_layer(keras.layers.DepthwiseConv2D(3, name="dw"),
                                  quantize_config=config()),
        keras.layers.Flatten(name="flat"),
        q.quantize_annotate_layer(keras.layers.Dense(4, name="fc"), quantize_config=config())])
    for layer in annotated.layers:
      inner = getattr(layer, "layer", layer)
      if inner.weights:
        inner.set_weights(plain.get_layer(inner.name).get_weights())
    with mortar_tfmot.scope():
      qat = q.quantize_apply(annotated, scheme=mortar_tfmot.MorphScheme())
    kinds = [type(l).__name__ for l in qat.layers]
    assert "QuantizeLayer" not in kinds, kinds  # MorphScheme adds no 8-bit input quantizer
    wrapped = morph_model(plain, "fewest_ones", precision=0.1)
    x = np.random.default_rng(0).standard_normal((3, 6, 6, 2)).astype(np.float32)
    assert np.array_equal(np.asarray(qat(x)).view(np.uint32),
                          np.asarray(wrapped(x)).view(np.uint32)), "TFMOT forward != MorphWrapper"
    qat.compile(optimizer="sgd", loss="mse")
    before = [w.numpy().copy() for w in qat.trainable_weights]
    qat.fit(x, np.zeros((3, 4), np.float32), epochs=1, verbose=0)
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, qat.trainable_weights))
    print("OK")
    """)


def test_tfmot_qat_with_morph_quantize_config_equals_morph_wrapper():
  result = _run(QAT_SCRIPT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")


def test_tfmot_module_refuses_keras3_processes():
  result = _run("import mortar_tf.keras.tfmot", legacy="0")
  assert result.returncode != 0
  assert "TF_USE_LEGACY_KERAS=1" in result.stderr
