"""A real SavedModel no one here made: basic-pitch's note model (tf_keras era).

scripts/fetch_models.sh takes it from the basic-pitch 0.4.0 wheel on PyPI
(downloaded at test-setup time, never installed). It has optimizer slot
variables, an int64 `optimizer/iter`, batch norms, and a CQT front end whose
filters are graph constants. It loads only because tf_keras is installed.
"""

import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import savedmodel
from mortar_tf.savedmodel import variables

MODEL = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "models" / "basic_pitch_nmp"
SAMPLE_RATE = 22050
SAMPLES = 43844  # the model's fixed input window
# The layers that hold the model's trained kernels (Conv2D), by variable name.
KERNELS = {"conv2d_1/kernel", "conv2d_2/kernel", "conv2d_3/kernel", "conv2d_4/kernel",
           "conv2d_5/kernel", "contours-reduced/kernel"}


@pytest.fixture(scope="module")
def model_dir():
  assert (MODEL / "saved_model.pb").is_file(), (
      f"{MODEL} is missing: run `bash scripts/fetch_models.sh` (scripts/test.sh does)")
  return str(MODEL)


def _tone(hz):
  t = np.arange(SAMPLES) / SAMPLE_RATE
  return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32).reshape(1, SAMPLES, 1)


def test_reader_lists_the_models_ops(model_dir):
  graph = savedmodel.read_graph(model_dir)
  variable_ops = [op for op in graph.mapped if op.weight.kind == "variable"]
  assert {op.weight.name for op in variable_ops} == KERNELS
  assert all(op.type == "Conv2D" and op.reduction_axes == (0, 1, 2) for op in variable_ops)
  by_name = {op.weight.name: op for op in variable_ops}
  assert by_name["conv2d_1/kernel"].weight.shape == (3, 39, 8, 8)
  assert by_name["conv2d_1/kernel"].output_shape == (1, 172, 264, 8)
  # The CQT filters are constants, transposed and expanded before their Conv2D.
  constants = [op for op in graph.mapped if op.weight.kind == "constant"]
  assert constants and all(op.weight.path[-2:] == ("Transpose", "ExpandDims") for op in constants)
  assert all("StridedSlice" in op.unmapped for op in graph.unmapped)
  # The model has slots for these kernels; none is read as a weight.
  slots = [v for v in variables.variable_objects(model_dir) if v.role == "slot"]
  assert any("conv2d_1/kernel" in v.name for v in slots)


def test_converter_morphs_only_kernels_and_the_model_still_hears_a4(model_dir, tmp_path):
  dst = tmp_path / "nmp"
  report = savedmodel.convert(model_dir, str(dst), "paper", 0.1)
  assert {v.name for v in report.morphed} == KERNELS
  src_reader = tf.train.load_checkpoint(os.path.join(model_dir, "variables", "variables"))
  dst_reader = tf.train.load_checkpoint(str(dst / "variables" / "variables"))
  morphed = {v.key for v in report.morphed}
  dtypes = src_reader.get_variable_to_dtype_map()
  assert "int64" in {d.name for d in dtypes.values()}  # optimizer/iter, copied
  for key in src_reader.get_variable_to_shape_map():
    a, b = src_reader.get_tensor(key), dst_reader.get_tensor(key)
    if key in morphed:
      expected = mortar_tf.morph(a, "paper", precision=0.1, backend="numpy")
      np.testing.assert_array_equal(b.view(np.uint32), expected.view(np.uint32))
    else:
      assert (a if isinstance(a, bytes) else a.tobytes()) == (
          b if isinstance(b, bytes) else b.tobytes()), key

  tone = _tone(440.0)  # A4, MIDI 69
  original = tf.saved_model.load(model_dir)
  converted = tf.saved_model.load(str(dst))
  a = original.signatures["serving_default"](input_2=tf.constant(tone))
  b = converted.signatures["serving_default"](input_2=tf.constant(tone))
  assert set(a) == set(b) == {"note", "onset", "contour"}
  for name in a:
    x, y = a[name].numpy(), b[name].numpy()
    assert np.abs(x - y).max() < 0.1, name  # activations are probabilities in [0, 1]
    assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.97, name
  # Both hear the same note: the strongest pitch bin (88 keys from MIDI 21) is A4.
  notes_a = a["note"].numpy()[0].sum(axis=0)
  notes_b = b["note"].numpy()[0].sum(axis=0)
  assert int(np.argmax(notes_a)) + 21 == 69
  assert int(np.argmax(notes_b)) + 21 == 69


def test_the_estimator_morphs_exactly_what_the_converter_writes(model_dir, tmp_path):
  from mortar_tf import estimator  # pylint: disable=import-outside-toplevel
  result = estimator.estimate(model_dir, precision=0.1)
  morphed = {layer.weight for layer in result.mapped if layer.precision is not None}
  assert morphed == KERNELS  # the CQT constants are estimated on their original weights
  constant_layers = [layer for layer in result.mapped if layer.weight not in KERNELS]
  assert constant_layers and all(layer.precision is None for layer in constant_layers)
  # every engine's morphed cell sees them as they are
  assert all(cells["morphed"] == cells["original"]
             for layer in constant_layers for cells in layer.cycles.values())
  assert all(layer.cycles["mortar"]["morphed"] < layer.cycles["mortar"]["original"]
             for layer in result.mapped if layer.weight in KERNELS)
  # What it misses (the README's figure): the CQT convolutions whose filters
  # are cut by StridedSlice, weight ops with known shapes, so the fraction is
  # of MACs.
  coverage = result.coverage()
  assert (coverage.estimated_ops, coverage.ops, coverage.basis) == (24, 32, "MACs")
  assert all(layer.op == "Conv2D" and "StridedSlice" in why for layer, why in zip(
      result.unmapped, (why for _, why in coverage.missing)))
  assert coverage.short() == "97.9% of the weight MACs"
  report = savedmodel.convert(model_dir, str(tmp_path / "o"), "paper", 0.1)
  assert {v.name for v in report.morphed} == morphed
  # and a map entry that matches nothing is refused by both
  with pytest.raises(ValueError, match=r"\['nothing'\] match no"):
    estimator.estimate(model_dir, precision={"conv2d_1": 0.1, "nothing": 0.2})
  with pytest.raises(ValueError, match=r"\['nothing'\] match no"):
    savedmodel.convert(model_dir, str(tmp_path / "p"), "paper",
                       {"conv2d_1": 0.1, "nothing": 0.2})
