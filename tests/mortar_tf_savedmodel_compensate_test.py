"""Compensated morphing of SavedModels (SPEC 6): convert(compensate=...) and mortar-morph --compensate.

Two models: a Keras export (Conv2D -> BatchNormalization -> DepthwiseConv2D
with bias -> Dense with bias; Keras 3 exports the BatchNormalization as
x*s + (beta - mean*s), tf_keras as FusedBatchNormV3) and a tf.Module
(a dilated SAME Conv2D -> FusedBatchNormV3, a strided SAME depthwise conv
with its bias added by AddV2, a MatMul with transpose_b and an AddV2 bias).

References are independent of the code under test: SPEC 2.1's `paper` from
tests/spec_reference.py, values read back with TensorFlow's checkpoint
reader, numpy im2col, TensorFlow's conv ops and the Keras layers' own inputs.
"""

import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

import installed_tool
import spec_reference
from mortar_tf import compensation
from mortar_tf import morphing
from mortar_tf import savedmodel
from mortar_tf.keras import compat
from mortar_tf.keras.compat import keras
from mortar_tf.savedmodel import compensate as compensate_lib
from mortar_tf.savedmodel import graph as graph_lib
from mortar_tf.savedmodel import variables as variables_lib

P = 0.05


def _keras_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3), name="img")
  x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.DepthwiseConv2D(3, strides=2, name="dw")(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(4, name="fc")(x)
  model = keras.Model(inputs, outputs)
  rng = np.random.default_rng(1)
  for layer in model.layers:
    for w in layer.weights:
      value = rng.standard_normal(w.shape).astype(np.float32)
      if "variance" in w.name:
        value = np.abs(value) + 0.5
      elif "bias" in w.name or "mean" in w.name or "beta" in w.name:
        value = 0.3 * value
      w.assign(value)
  return model


class _Module(tf.Module):
  """Fused batch norm, AddV2 biases, transpose_b, strides and dilations."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(2)

    def var(shape, name, scale=1.0, shift=0.0):
      return tf.Variable((scale * rng.standard_normal(shape) + shift).astype(np.float32),
                         name=name)

    self.conv = var((3, 3, 3, 5), "conv")
    self.scale, self.offset = var((5,), "scale", 0.2, 1.0), var((5,), "offset", 0.3)
    self.mean = var((5,), "mean", 0.3)
    self.variance = tf.Variable(np.abs(rng.standard_normal(5)).astype(np.float32) + 0.5,
                                name="variance")
    self.dw = var((3, 3, 5, 2), "dw")
    self.dw_bias = var((10,), "dw_bias", 0.3)
    self.fc = var((3, 160), "fc", 0.2)  # [out, in], read with transpose_b
    self.fc_bias = var((3,), "fc_bias", 0.3)

  @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="x")])
  def __call__(self, x):
    y = tf.nn.conv2d(x, self.conv, strides=1, padding="SAME", dilations=2)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(y, self.scale, self.offset, mean=self.mean,
                                               variance=self.variance, is_training=False)
    y = tf.nn.relu(y)
    y = tf.nn.depthwise_conv2d(y, self.dw, strides=[1, 2, 2, 1], padding="SAME") + self.dw_bias
    y = tf.reshape(y, [-1, 160])
    return {"out": tf.matmul(y, self.fc, transpose_b=True) + self.fc_bias}


def _calibration(name, n, seed):
  return {name: np.random.default_rng(seed).standard_normal((n, 8, 8, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  d = tmp_path_factory.mktemp("compensate")
  model = _keras_model()
  if compat.LEGACY:  # tf_keras: its BatchNormalization exports as FusedBatchNormV3
    tf.saved_model.save(model, str(d / "keras"))
  else:
    model.export(str(d / "keras"), verbose=False)
  module = _Module()
  tf.saved_model.save(module, str(d / "module"), signatures=module.__call__)
  return {"keras": (d / "keras", model), "module": (d / "module", module)}


def _input_name(src):
  loaded = tf.saved_model.load(str(src))
  return next(iter(loaded.signatures["serving_default"].structured_input_signature[1]))


def _checkpoint(path):
  """{key: numpy value} of a SavedModel's float32 checkpoint entries."""
  reader = tf.train.load_checkpoint(os.path.join(str(path), "variables", "variables"))
  dtypes = reader.get_variable_to_dtype_map()
  return {k: reader.get_tensor(k) for k in dtypes if dtypes[k] == tf.float32}


def _outputs(path, name, x):
  fn = tf.saved_model.load(str(path)).signatures["serving_default"]
  out = fn(**{name: tf.constant(x)})
  return next(iter(out.values())).numpy().astype(np.float64)


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
  """{model: (src, plain dst, compensated dst, report)} for paper at P."""
  d = tmp_path_factory.mktemp("converted")
  out = {}
  for kind, (src, _) in models.items():
    name = _input_name(src)
    plain = savedmodel.convert(str(src), str(d / f"{kind}_plain"), "paper", P)
    report = savedmodel.convert(str(src), str(d / f"{kind}_comp"), "paper", P,
                                compensate=_calibration(name, 256, 1))
    out[kind] = (src, d / f"{kind}_plain", d / f"{kind}_comp", report, plain, name)
  return out


@pytest.mark.parametrize("kind", ["keras", "module"])
def test_every_kernel_is_compensated_and_is_the_morph_of_its_premorph(converted, kind):
  src, _, dst, report, _, _ = converted[kind]
  comp = report.compensation
  assert len(comp.kernels) == 3 and not comp.plain, comp.lines()
  before, after = _checkpoint(src), _checkpoint(dst)
  for name, entry in comp.kernels.items():
    result = comp.results[name]
    final = after[entry["key"]]
    assert final.shape == before[entry["key"]].shape
    reference = np.vectorize(lambda v: spec_reference.paper(np.float32(v), P),
                             otypes=[np.float32])(result.premorph)
    assert final.view(np.uint32).tolist() == reference.view(np.uint32).tolist(), name
    assert final.tobytes() == result.morphed.tobytes()
    # The compensation did something: pre-morph values moved, and some final
    # values lie outside the plain ball (counted as the report says).
    assert np.any(result.premorph != before[entry["key"]])
    outside = compensation.outside_ball(final, before[entry["key"]], P)
    assert entry["outside"] == int(outside.sum())
    assert entry["samples"] > 0
  # Twin copies (Keras 3 exports) carry the same values.
  for v in report.morphed:
    if v.twin_of:
      original = next(m for m in report.morphed if not m.twin_of and m.name == v.twin_of)
      assert after[v.key].tobytes() == after[original.key].tobytes()
  assert comp.calibration["samples"] == 256
  record = report.to_dict()["compensation"]
  assert record["calibration"]["samples"] == 256 and "apart" in record["note"]
  assert "calibration samples" in report.summary() and "keep them apart" in report.summary()


@pytest.mark.parametrize("kind", ["keras", "module"])
def test_output_error_on_held_out_inputs_is_smaller_than_plain(converted, tmp_path, kind):
  src, plain, dst, _, _, name = converted[kind]
  error_only = tmp_path / "error_only"
  savedmodel.convert(str(src), str(error_only), "paper", P,
                     compensate=savedmodel.CompensationSettings(_calibration(name, 256, 1),
                                                                bias=False))
  held_out = _calibration(name, 512, 99)[name]
  reference = _outputs(src, name, held_out)
  errors = {label: np.mean((_outputs(path, name, held_out) - reference) ** 2)
            for label, path in (("plain", plain), ("error+bias", dst),
                                ("error only", error_only))}
  print(f"{kind}: output MSE on 512 held-out inputs: "
        + ", ".join(f"{k} {v:.4g}" for k, v in errors.items()))
  assert errors["error+bias"] < 0.8 * errors["plain"], errors
  assert errors["error only"] < 0.9 * errors["plain"], errors


@pytest.mark.parametrize("kind", ["keras", "module"])
def test_error_off_gives_the_plain_kernels_bit_for_bit(converted, tmp_path, kind):
  src, plain, _, _, _, name = converted[kind]
  report = savedmodel.convert(str(src), str(tmp_path / "o"), "paper", P,
                              compensate=savedmodel.CompensationSettings(
                                  _calibration(name, 64, 1), error=False))
  plain_values, values = _checkpoint(plain), _checkpoint(tmp_path / "o")
  for v in report.morphed:
    assert values[v.key].tobytes() == plain_values[v.key].tobytes(), v.name
  # Only the corrected biases / means differ from the plain conversion.
  corrected = {c["key"] for c in report.compensation.corrected.values()}
  assert len(corrected) == 3
  differ = {k for k in values if values[k].tobytes() != plain_values[k].tobytes()}
  twins = {k for k in differ if k not in corrected}
  assert corrected <= differ and all(
      values[k].tobytes() in {values[c].tobytes() for c in corrected} for k in twins)


def test_the_tool_with_error_off_writes_the_plain_kernels(converted, tmp_path):
  src, plain, _, report, _, name = converted["keras"]
  np.savez(tmp_path / "cal.npz", **_calibration(name, 64, 1))
  result = installed_tool.run("mortar-morph", f"--input={src}", f"--output={tmp_path / 'o'}",
                              "--method=paper", f"--precision={P}", "--compensate",
                              f"--calibration={tmp_path / 'cal.npz'}", "--nocompensate_error")
  assert result.returncode == 0, result.stderr
  assert "calibration samples" in result.stdout and "64" in result.stdout
  plain_values, values = _checkpoint(plain), _checkpoint(tmp_path / "o")
  for v in report.morphed:
    assert values[v.key].tobytes() == plain_values[v.key].tobytes(), v.name


def _layer_inputs_keras(model, x):
  out = {}
  for layer in ("conv", "dw", "fc"):
    sub = keras.Model(model.input, model.get_layer(layer).input)
    out[layer] = np.asarray(sub(x, training=False))
  return out


def _layer_inputs_module(module, x):
  y = tf.nn.conv2d(x, module.conv, strides=1, padding="SAME", dilations=2)
  bn, _, _ = tf.compat.v1.nn.fused_batch_norm(y, module.scale, module.offset, mean=module.mean,
                                              variance=module.variance, is_training=False)
  h = tf.nn.relu(bn)
  d = tf.nn.depthwise_conv2d(h, module.dw, [1, 2, 2, 1], "SAME")
  return {"conv": x, "dw": h.numpy(), "fc": tf.reshape(d + module.dw_bias, [-1, 160]).numpy()}


def _layer_fns(kind):
  if kind == "keras":
    return {"conv": lambda x, k: tf.nn.conv2d(x, k, 1, "SAME").numpy(),
            "dw": lambda x, k: tf.nn.depthwise_conv2d(x, k, [1, 2, 2, 1], "VALID").numpy(),
            "fc": lambda x, k: x.astype(np.float64) @ k.astype(np.float64)}
  return {"conv": lambda x, k: tf.nn.conv2d(x, k, 1, "SAME", dilations=2).numpy(),
          "dw": lambda x, k: tf.nn.depthwise_conv2d(x, k, [1, 2, 2, 1], "SAME").numpy(),
          "fc": lambda x, k: x.astype(np.float64) @ k.astype(np.float64).T}


@pytest.mark.parametrize("kind", ["keras", "module"])
def test_bias_correction_zeroes_the_mean_output_change_on_the_calibration_inputs(
    models, converted, kind):
  src, plain, dst, report, _, name = converted[kind]
  x = _calibration(name, 256, 1)[name]
  inputs = (_layer_inputs_keras(models[kind][1], x) if kind == "keras"
            else _layer_inputs_module(models[kind][1], x))
  fns = _layer_fns(kind)
  before, after, plain_values = _checkpoint(src), _checkpoint(dst), _checkpoint(plain)
  comp = report.compensation
  kinds = {}
  for bias_name, c in comp.corrected.items():
    kernel = comp.kernels[c["for"]]
    layer = "conv" if kernel["op_type"] == "Conv2D" else (
        "dw" if kernel["op_type"] == "DepthwiseConv2dNative" else "fc")
    kinds[layer] = c["kind"]
    fn, xin = fns[layer], inputs[layer]
    k_old, k_new, k_plain = (v[kernel["key"]] for v in (before, after, plain_values))
    b_old, b_new = before[c["key"]].astype(np.float64), after[c["key"]].astype(np.float64)
    # The layer's output change, its bias (or BN mean) change taken into account.
    sign = 1.0 if c["kind"] == "bias" else -1.0  # out = conv + bias, or (conv - mean) * s
    shift = (fn(xin, k_new).astype(np.float64) - fn(xin, k_old)).reshape(
        -1, b_old.size).mean(axis=0) + sign * (b_new - b_old)
    plain_shift = (fn(xin, k_plain).astype(np.float64) - fn(xin, k_old)).reshape(
        -1, b_old.size).mean(axis=0)
    assert np.max(np.abs(plain_shift)) > 1e-3, (layer, plain_shift)
    assert np.max(np.abs(shift)) < 1e-4 * np.max(np.abs(plain_shift)) + 1e-6 * (
        1 + np.max(np.abs(b_old))), (layer, shift, plain_shift)
    # Bias correction changes no kernel: the corrected entry is a bias / mean.
    assert c["key"] not in {k["key"] for k in comp.kernels.values()}
  assert kinds == {"conv": "moving_mean", "dw": "bias", "fc": "bias"}


def _im2col(x, kh, kw, stride, dilation, padding):
  """Patches [n, ho, wo, kh, kw, c] by explicit loops (TF's SAME padding split)."""
  n, h, w, c = x.shape
  eh, ew = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
  if padding == "SAME":
    ho, wo = -(-h // stride), -(-w // stride)
    ph = max((ho - 1) * stride + eh - h, 0)
    pw = max((wo - 1) * stride + ew - w, 0)
    x = np.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)])
  else:
    ho, wo = (h - eh) // stride + 1, (w - ew) // stride + 1
  out = np.zeros((n, ho, wo, kh, kw, c), x.dtype)
  for i in range(ho):
    for j in range(wo):
      for a in range(kh):
        for b in range(kw):
          out[:, i, j, a, b] = x[:, i * stride + a * dilation, j * stride + b * dilation]
  return out


@pytest.mark.parametrize("stride,dilation,padding", [(1, 1, "SAME"), (2, 1, "SAME"),
                                                     (1, 2, "SAME"), (2, 1, "VALID"),
                                                     (1, 2, "VALID")])
def test_rows_are_im2col_and_reproduce_the_ops_outputs(stride, dilation, padding):
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
  attrs = {"strides": [1, stride, stride, 1], "dilations": [1, dilation, dilation, 1],
           "padding": padding}
  patches = _im2col(x, 3, 2, stride, dilation, padding)
  kernel = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
  rows = compensate_lib.op_rows("conv", attrs, x, kernel.shape)
  assert np.array_equal(rows, patches.reshape(-1, 3 * 2 * 3))
  conv = tf.nn.conv2d(x, kernel, stride, padding, dilations=dilation).numpy()
  np.testing.assert_allclose(rows @ kernel.reshape(-1, 4), conv.reshape(-1, 4), atol=1e-4)
  dw_kernel = rng.standard_normal((3, 2, 3, 2)).astype(np.float32)
  dw_rows = compensate_lib.op_rows("depthwise", attrs, x, dw_kernel.shape)  # [n, C, kh*kw]
  assert np.array_equal(dw_rows, patches.reshape(-1, 6, 3).transpose(0, 2, 1))
  dw = tf.nn.depthwise_conv2d(x, dw_kernel, [1, stride, stride, 1], padding,
                              dilations=[dilation, dilation]).numpy().reshape(-1, 3, 2)
  per_channel = np.einsum("ncr,rcm->ncm", dw_rows, dw_kernel.reshape(6, 3, 2))
  np.testing.assert_allclose(per_channel, dw, atol=1e-4)
  a = rng.standard_normal((5, 4)).astype(np.float32)
  assert np.array_equal(compensate_lib.op_rows("matmul", {"transpose": True}, a.T, (5, 2)), a)


def test_statistics_are_those_of_the_layers_own_inputs(models):
  """The rows fetched from the frozen graph are the layers' inputs (Keras), as im2col."""
  src, model = models["keras"]
  name = _input_name(src)
  data = _calibration(name, 40, 3)
  graph = graph_lib.read_graph(str(src))
  from mortar_tf.savedmodel import selection  # pylint: disable=import-outside-toplevel
  targets, _ = selection.select_targets(graph, savedmodel.converter._morphing(  # pylint: disable=protected-access
      "paper", P, None, None, None, None)[0])
  reader, _ = variables_lib.open_checkpoint(str(src))
  frozen = compensate_lib.Frozen(str(src), "serving_default", reader)
  plans, plain = compensate_lib.plan_kernels(graph, targets, frozen.graph, frozen.const_keys)
  assert not plain
  stats = frozen.collect(plans, compensate_lib.calibration_inputs(
      compensate_lib.CompensationSettings(data, batch_size=16), frozen.specs))
  inputs = _layer_inputs_keras(model, data[name])
  for plan in plans:
    layer = {"Conv2D": "conv", "DepthwiseConv2dNative": "dw", "MatMul": "fc"}[plan.op_type]
    x = inputs[layer].astype(np.float64)
    if layer == "fc":
      rows = x.reshape(len(x), -1)[:, None]
    elif layer == "conv":
      rows = _im2col(x, 3, 3, 1, 1, "SAME").reshape(-1, 1, 27)
    else:
      rows = _im2col(x, 3, 3, 2, 1, "VALID").reshape(-1, 9, 6).transpose(0, 2, 1)
    gram = np.einsum("ngi,ngj->gij", rows, rows)
    # Keras computes the layer inputs in its own order of float32 operations.
    np.testing.assert_allclose(stats[plan.key].gram, gram, rtol=1e-4, atol=1e-4)
    assert stats[plan.key].count == len(rows)


def test_unsupported_kernels_are_morphed_plain_and_named(models, tmp_path):
  src, _ = models["keras"]
  name = _input_name(src)
  data = _calibration(name, 64, 1)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    report = savedmodel.convert(str(src), str(tmp_path / "o"), "paper",
                                {"fc*": {"method": "bitx", "columns": 8}, "*": P},
                                compensate=data)
  plain = report.compensation.plain
  assert list(plain) == ["fc/kernel"] and "bitx" in plain["fc/kernel"]
  assert any("morphed plain" in str(w.message) and "fc/kernel" in str(w.message)
             for w in caught)
  assert "morphed plain: fc/kernel" in report.summary()
  with pytest.raises(ValueError, match="no kernel of this SavedModel can be compensated"):
    savedmodel.convert(str(src), str(tmp_path / "o2"), "bitx", columns=8, compensate=data)
  assert not os.path.exists(tmp_path / "o2")


def test_calibration_samples_must_stay_apart_from_verification_samples(models, tmp_path):
  src, _ = models["keras"]
  name = _input_name(src)
  data = _calibration(name, 32, 1)
  with pytest.raises(ValueError, match="4 verification sample.*calibration samples too"):
    savedmodel.convert(str(src), str(tmp_path / "o"), "paper", P, compensate=data,
                       verify=True, verify_inputs={name: data[name][10:14]},
                       verify_max_rel=1.0)
  assert not os.path.exists(tmp_path / "o")


def test_the_tool_refuses_bad_calibration_inputs_clearly(models, tmp_path):
  src, _ = models["keras"]
  name = _input_name(src)
  good = _calibration(name, 8, 1)[name]
  np.savez(tmp_path / "names.npz", wrong=good)
  np.savez(tmp_path / "dtype.npz", **{name: good.astype(np.float64)})
  np.savez(tmp_path / "good.npz", **{name: good})
  cases = [
      (["--compensate", f"--calibration={tmp_path / 'names.npz'}"],
       f"lack ['{name}'] and name ['wrong']"),
      (["--compensate", f"--calibration={tmp_path / 'dtype.npz'}"],
       f"calibration input '{name}' is float64; the signature takes float32"),
      ([f"--calibration={tmp_path / 'good.npz'}"], "--calibration is for --compensate"),
      (["--compensate"], "--compensate needs --calibration"),
      (["--compensate_projected"], "--compensate_projected is for --compensate"),
  ]
  for args, message in cases:
    result = installed_tool.run("mortar-morph", f"--input={src}", f"--output={tmp_path / 'o'}",
                                *args)
    assert result.returncode == 1, (args, result.stderr)
    assert message in result.stderr, (args, result.stderr)
    assert not os.path.exists(tmp_path / "o")


def test_a_transformer_compensates_its_dense_layers_and_names_the_attention(tmp_path):
  """keras_zoo's transformer: Dense over a sequence (Tensordot: MatMul, then a
  Reshape before the BiasAdd) takes its bias correction; the attention's kernels
  (read through a Reshape, or by Einsum) are morphed plain and named."""
  import keras_zoo  # pylint: disable=import-outside-toplevel
  model = keras_zoo.build("transformer")
  src = tmp_path / "src"
  if compat.LEGACY:
    tf.saved_model.save(model, str(src))
  else:
    model.export(str(src), verbose=False)
  name = _input_name(src)
  tokens = keras_zoo.inputs(model, batch=128, seed=1)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    report = savedmodel.convert(str(src), str(tmp_path / "o"), "paper", P,
                                compensate={name: tokens})
  comp = report.compensation
  assert len(comp.plain) == 4 and all(k.startswith("mha/") for k in comp.plain), comp.plain
  assert any("morphed plain" in str(w.message) for w in caught)
  before, after = _checkpoint(src), _checkpoint(tmp_path / "o")
  assert len(comp.kernels) == 3  # ffn's up and down, the head
  down = next(k for k in comp.kernels.values() if before[k["key"]].shape == (32, 16))
  assert down["bias"].startswith("bias "), down
  bias_key = next(c["key"] for c in comp.corrected.values() if c["key"] and
                  before[c["key"]].shape == (16,))
  # The mean output change of ffn/down on the calibration inputs is gone.
  ln1 = keras.Model(model.input, model.get_layer("ln1").output)(tokens, training=False)
  hidden = np.asarray(model.get_layer("ffn").up(ln1)).reshape(-1, 32).astype(np.float64)
  change = (hidden @ after[down["key"]] - hidden @ before[down["key"]]).mean(axis=0) + (
      after[bias_key].astype(np.float64) - before[bias_key])
  plain_change = (hidden @ np.vectorize(lambda v: spec_reference.paper(np.float32(v), P),
                                        otypes=[np.float32])(before[down["key"]])
                  - hidden @ before[down["key"]]).mean(axis=0)
  assert np.max(np.abs(change)) < 1e-3 * np.max(np.abs(plain_change)), (change, plain_change)


def test_a_keras_calibration_brings_its_settings_and_projection_keeps_the_ball(models, tmp_path):
  from mortar_tf.keras import calibration as calibration_lib  # pylint: disable=import-outside-toplevel
  src, _ = models["module"]
  name = _input_name(src)
  data = _calibration(name, 96, 1)
  dataset = tf.data.Dataset.from_tensor_slices(data).batch(32)
  report = savedmodel.convert(
      str(src), str(tmp_path / "o"), "paper", P, report_path=str(tmp_path / "r.json"),
      compensate=calibration_lib.Calibration(dataset, projected=True, damping=0.05))
  comp = report.compensation
  assert comp.calibration["samples"] == 96 and comp.calibration["projected"]
  before, after = _checkpoint(src), _checkpoint(tmp_path / "o")
  for name_, entry in comp.kernels.items():
    # SPEC 6: the projected variant keeps every final value within P.
    assert entry["outside"] == 0 and entry["damping"] >= 0.05, name_
    assert not compensation.outside_ball(after[entry["key"]], before[entry["key"]], P).any()
  assert sum(e["fallbacks"] for e in comp.kernels.values()) > 0
  import json  # pylint: disable=import-outside-toplevel
  record = json.loads((tmp_path / "r.json").read_text())["compensation"]
  assert record["calibration"]["samples"] == 96 and "keep them apart" in record["note"]
  assert set(record["kernels"]) == set(comp.kernels) and len(record["corrected"]) == 3
  with pytest.raises(ValueError, match="statistics from the original model"):
    savedmodel.convert(str(src), str(tmp_path / "o2"), "paper", P,
                       compensate=calibration_lib.Calibration(data, statistics="morphed"))


@pytest.mark.parametrize("kind", ["keras", "module"])
def test_exploration_compensates_a_savedmodel_as_the_converter_writes_it(converted, kind):
  """The search and sweep's compensator over a loaded SavedModel assigns the
  same kernels, biases and means, bit for bit, as convert(compensate=) writes
  with the same calibration inputs; the sweep's compensated row scores the
  converted model's outputs; every variable is restored afterwards."""
  from mortar_tf import explore  # pylint: disable=import-outside-toplevel
  from mortar_tf.explore import in_place  # pylint: disable=import-outside-toplevel
  src, _, dst, _, _, name = converted[kind]
  model = explore.models.load(str(src))
  kernels = explore.models.model_kernels(model)
  calibration = _calibration(name, 256, 1)[name]
  compensator = in_place.compensator(model, kernels, calibration)
  spec = morphing.MorphSpec.create("paper", P)
  done = compensator.values({id(k.variable): spec for k in kernels})
  written = _checkpoint(dst)
  before = _checkpoint(src)
  keys = {id(v): k for k, v in compensator.objects.items()}
  changed = {k for k in written if written[k].tobytes() != before[k].tobytes()}
  assigned = {keys[i] for i in done.values}
  # Every value the converter changed is assigned (a Keras 3 twin is read by
  # no op: its partner stands for it), and each assigned value is the written one.
  for key in assigned:
    assert done.values[id(compensator.objects[key])].tobytes() == written[key].tobytes(), key
  twins = changed - assigned
  assert all(any(written[t].tobytes() == written[a].tobytes() for a in assigned) for t in twins)
  assert len(done.results) == 3 and not done.plain
  x = np.random.default_rng(5).standard_normal((40, 8, 8, 3)).astype(np.float32)
  expected = _outputs(dst, name, x)
  original = _outputs(src, name, x)

  def mse(m):
    return float(np.mean((m.predict(x).astype(np.float64) - original) ** 2))

  swept = explore.sweep(model, explore.Metric("mse", mse, higher_is_better=False),
                        {"paper": [P]}, compensate=calibration, estimate_speedup=False)
  row = next(p for p in swept.points if p.settings.get("compensated"))
  assert row.metric == pytest.approx(float(np.mean((expected - original) ** 2)), rel=1e-6)
  assert all(k.variable.numpy().tobytes() == k.original.tobytes() for k in kernels)
  for key, variable in compensator.objects.items():
    assert variable.numpy().tobytes() == before[key].tobytes(), key


def test_a_compensated_sweep_row_of_a_savedmodel_is_estimated_on_its_own_values(converted):
  """Bias correction alone leaves the kernels plain: the compensated row's
  estimate (the loaded SavedModel saved again with the values assigned) must
  equal the plain row's, which the estimator morphs itself."""
  from mortar_tf import explore  # pylint: disable=import-outside-toplevel
  from mortar_tf.keras import Calibration  # pylint: disable=import-outside-toplevel
  src, _, _, _, _, name = converted["module"]
  model = explore.models.load(str(src))
  x = np.random.default_rng(6).standard_normal((16, 8, 8, 3)).astype(np.float32)
  metric = explore.Metric("mse", lambda m: float(np.mean(m.predict(x) ** 2)),
                          higher_is_better=False)
  bias_only = Calibration(_calibration(name, 64, 1)[name], error=False, bias=True)
  swept = explore.sweep(model, metric, {"paper": [P, 0.3]}, compensate=bias_only)
  for p in (P, 0.3):
    plain, comp = [r for r in swept.points if r.settings["precision"] == p]
    assert comp.settings.get("compensated") and not plain.settings.get("compensated")
    assert comp.speedup == pytest.approx(plain.speedup, rel=1e-12)
    assert comp.speedup_unmorphed == pytest.approx(plain.speedup_unmorphed, rel=1e-12)
    assert comp.ratio == plain.ratio
  assert swept.points[0].speedup > 1
