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


def test_prune_strip_then_morph_keeps_zeros_and_morphs_the_rest():
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")
