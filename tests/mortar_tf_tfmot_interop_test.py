"""Interop with TFMOT (tf_keras only): prune -> strip_pruning -> morph_model -> strip_morphing.

Importing TFMOT switches the whole process to tf_keras, so the pipeline runs in
a process of its own with TF_USE_LEGACY_KERAS=1 (installed_tool.python).
"""

import os
import textwrap

import installed_tool

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
  env = dict(installed_tool.ENV, TF_USE_LEGACY_KERAS=legacy)
  # cwd: the tests' folder, so `python -c` (which puts the cwd first on
  # sys.path) imports the installed mortar_tf, not the source tree
  return installed_tool.python("-c", script, env=env, timeout=600,
                               cwd=os.path.dirname(os.path.abspath(__file__)))


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


PRUNE_SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import mortar_tf
    from mortar_tf.keras import MortarCallback, morph_model, strip_morphing
    from mortar_tf.keras.compat import keras
    sparsity = tfmot.sparsity.keras
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.layers.InputLayer((8,)), keras.layers.Dense(16, name="a"),
                             keras.layers.ReLU(name="relu"), keras.layers.Dense(4, name="b")])
    schedule = sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1)
    pruned = sparsity.prune_low_magnitude(base, pruning_schedule=schedule)
    pruned.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    out = tempfile.mkdtemp()
    # 1. MortarCallback beside UpdatePruningStep: morphs the pruned kernels in place
    pruned.fit(x, y, epochs=2, batch_size=16, verbose=0,
               callbacks=[sparsity.UpdatePruningStep(),
                          MortarCallback(os.path.join(out, "p-{epoch}.h5"), "paper",
                                         precision=0.1)])
    with sparsity.prune_scope():
      saved = keras.models.load_model(os.path.join(out, "p-2.h5"), compile=False)
    for name in ("a", "b"):
      k = pruned.get_layer("prune_low_magnitude_" + name).layer.kernel.numpy()
      s = saved.get_layer("prune_low_magnitude_" + name).layer.kernel.numpy()
      assert (k == 0).mean() >= 0.45
      want = mortar_tf.morph(k, "paper", 0.1, backend="numpy")
      assert np.array_equal(s.view(np.uint32), want.view(np.uint32)), name
    # 2. morph_model refuses TFMOT wrappers, naming the fix
    try:
      morph_model(pruned)
      raise SystemExit("morph_model accepted a pruned model")
    except ValueError as e:
      assert "strip_pruning" in str(e), e
    # 3. sparsity-preserving morph-aware fine-tuning
    plain = sparsity.strip_pruning(pruned)
    zeros = {n: plain.get_layer(n).kernel.numpy() == 0 for n in ("a", "b")}
    tuned = morph_model(plain, "paper", precision=0.1, preserve_zeros=True)
    tuned.compile(optimizer="adam", loss="mse")
    tuned.fit(x, y, epochs=2, verbose=0)
    final = strip_morphing(tuned)
    for n, mask in zeros.items():
      assert np.array_equal(final.get_layer(n).kernel.numpy() == 0, mask), n
    print("OK")
    """)


QAT_RECIPE_SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, tempfile
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import mortar_tf
    from mortar_tf.keras import tfmot as mortar_tfmot
    from mortar_tf.keras.compat import keras
    q = tfmot.quantization.keras
    keras.utils.set_random_seed(0)
    L = keras.layers
    base = keras.Sequential([L.InputLayer((8, 8, 2)), L.Conv2D(4, 3, name="conv"),
                             L.ReLU(name="relu"), L.MaxPooling2D(name="pool"),
                             L.Flatten(name="flat"), L.Dense(4, name="fc")])
    x = np.random.default_rng(0).standard_normal((8, 8, 8, 2)).astype(np.float32)
    # the README recipe: annotate everything, the scheme morphs what holds kernels
    with mortar_tfmot.scope():
      qat = q.quantize_apply(q.quantize_annotate_model(base),
                             scheme=mortar_tfmot.MorphScheme("fewest_ones", precision=0.1))
    qat.compile(optimizer="sgd", loss="mse")
    qat.fit(x, np.zeros((8, 4), np.float32), epochs=1, verbose=0)
    plain = mortar_tfmot.strip_morph_quantization(qat)
    assert [type(l).__name__ for l in plain.layers] == [
        "Conv2D", "ReLU", "MaxPooling2D", "Flatten", "Dense"], plain.layers
    assert np.array_equal(np.asarray(plain(x)).view(np.uint32), np.asarray(qat(x)).view(np.uint32))
    for name in ("conv", "fc"):
      wrapper = qat.get_layer("quant_" + name)
      master = [v for v in wrapper.layer.weights if "kernel" in v.name][0].numpy()
      got = plain.get_layer(name).kernel.numpy()
      want = mortar_tf.morph(master, "fewest_ones", 0.1, backend="numpy")
      assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
      bias = [v for v in wrapper.layer.weights if "bias" in v.name][0].numpy()
      assert np.array_equal(plain.get_layer(name).bias.numpy(), bias)
    # a scheme without a morphing refuses annotated layers that hold kernels
    try:
      with mortar_tfmot.scope():
        q.quantize_apply(q.quantize_annotate_model(base), scheme=mortar_tfmot.MorphScheme())
      raise SystemExit("accepted")
    except ValueError as e:
      assert "MorphScheme('paper'" in str(e), e
    # masks: TFMOT's QuantizeWrapper drops them, so a masked model is refused, not mis-trained
    tokens = L.Input((6,), dtype="int32")
    seq = L.LSTM(3)(L.Embedding(9, 4, mask_zero=True, name="embed")(tokens))
    masked = keras.Model(tokens, L.Dense(2)(seq))
    try:
      with mortar_tfmot.scope():
        q.quantize_apply(q.quantize_annotate_model(masked),
                         scheme=mortar_tfmot.MorphScheme("paper", precision=0.1))
      raise SystemExit("accepted a masked model")
    except ValueError as e:
      assert "masks (embed)" in str(e) and "morph_model" in str(e), e
    # the stripped model is plain tf_keras: it loads in a process without TFMOT or mortar_tf
    path = os.path.join(tempfile.mkdtemp(), "plain.h5")
    plain.save(path)
    check = ("import sys, tf_keras; tf_keras.models.load_model(%r);"
             "assert 'mortar_tf' not in sys.modules and "
             "'tensorflow_model_optimization' not in sys.modules" % path)
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    print("OK")
    """)


def test_callback_beside_pruning_preserve_zeros_and_clear_errors():
  result = _run(PRUNE_SCRIPT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")


def test_morph_scheme_recipe_with_unannotated_layers_and_the_route_to_a_plain_model():
  result = _run(QAT_RECIPE_SCRIPT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")


def test_tfmot_module_refuses_keras3_processes():
  result = _run("import mortar_tf.keras.tfmot", legacy="0")
  assert result.returncode != 0
  assert "TF_USE_LEGACY_KERAS=1" in result.stderr


SPEC_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, %r)
    import numpy as np
    import spec_reference as ref
    import tensorflow_model_optimization as tfmot
    from mortar_tf import MorphSpec
    from mortar_tf.keras import morph_model
    from mortar_tf.keras import tfmot as mortar_tfmot
    from mortar_tf.keras.compat import keras
    q = tfmot.quantization.keras
    keras.utils.set_random_seed(0)
    L = keras.layers
    base = keras.Sequential([L.InputLayer((6, 6, 2)), L.Conv2D(3, 3, name="conv"),
                             L.Flatten(name="flat"), L.Dense(4, name="fc")])
    spec = MorphSpec("bitx", columns=6, group_size=4)
    x = np.random.default_rng(0).standard_normal((3, 6, 6, 2)).astype(np.float32)
    with mortar_tfmot.scope():
      qat = q.quantize_apply(q.quantize_annotate_model(base), scheme=mortar_tfmot.MorphScheme(spec))
    wrapped = morph_model(base, spec)
    assert np.array_equal(np.asarray(qat(x)).view(np.uint32),
                          np.asarray(wrapped(x)).view(np.uint32)), "TFMOT forward != MorphWrapper"
    plain = mortar_tfmot.strip_morph_quantization(qat)
    for name, axes in (("conv", (0, 1, 2)), ("fc", (0,))):
      want = ref.bitx(base.get_layer(name).kernel.numpy(), axes, 4, 6)
      got = plain.get_layer(name).kernel.numpy()
      assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    # configs stay flat (what TFMOT's deserialization passes back as keywords)
    config = mortar_tfmot.MorphQuantizeConfig(spec).get_config()
    assert config == {"method": "bitx", "columns": 6, "group_size": 4, "width": spec.width}, config
    assert mortar_tfmot.MorphQuantizeConfig(**config).spec == spec
    for make in (lambda: mortar_tfmot.MorphScheme(spec, precision=0.1),
                 lambda: mortar_tfmot.MorphQuantizeConfig(spec, columns=3),
                 lambda: mortar_tfmot.MorphScheme(precision=0.1)):
      try:
        make()
        raise SystemExit("accepted")
      except ValueError as e:
        assert "not both" in str(e) or "without a method" in str(e), e
    print("OK")
    """) % os.path.dirname(os.path.abspath(__file__))


def test_morph_scheme_takes_a_spec():
  result = _run(SPEC_SCRIPT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")
