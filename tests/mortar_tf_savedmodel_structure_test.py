"""SavedModels whose structure defeats names: tied weights, variables sharing a
name (HED's VGG has six "hed/kernel"), and twins that are twins only by name.

References: the numpy mortar_tf.morph of values read with TensorFlow's own
checkpoint reader, and numpy aligned counts on the axes each op reads.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mortar_tf
from mortar_tf import bits
from mortar_tf import estimator
from mortar_tf import savedmodel
from mortar_tf.explore import models
from mortar_tf.savedmodel import graph as graph_lib

import installed_tool


def _checkpoint(path):
  reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def _u32(a):
  return np.asarray(a, np.float32).view(np.uint32)


class TiedAutoencoder(tf.Module):
  """encode with W, decode with W^T: one variable, two readers, two axes."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(0)
    self.w = tf.Variable(rng.standard_normal((8, 3)).astype(np.float32), name="w")

  @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
  def __call__(self, x):
    return tf.matmul(tf.matmul(x, self.w), self.w, transpose_b=True)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
  d = tmp_path_factory.mktemp("tied")
  module = TiedAutoencoder()
  tf.saved_model.save(module, str(d / "m"), signatures=module.__call__)
  return d / "m"


def test_a_tied_weight_is_morphed_once_and_counted_per_reading_op(tied, tmp_path):
  graph = graph_lib.read_graph(str(tied))
  assert sorted(op.reduction_axes for op in graph.mapped) == [(0,), (1,)]
  report = savedmodel.convert(str(tied), str(tmp_path / "o"), "fewest_ones", 0.2)
  (record,) = report.morphed
  before, after = _checkpoint(tied), _checkpoint(tmp_path / "o")
  w = before[record.key]
  np.testing.assert_array_equal(_u32(after[record.key]),
                                _u32(mortar_tf.morph(w, "fewest_ones", 0.2, backend="numpy")))
  (other,) = record.other_readers
  axes = other[1]
  assert {tuple(record.reduction_axes), axes} == {(0,), (1,)}
  want_before = bits.count_ones(w, "aligned", reduction_axes=axes)
  want_after = bits.count_ones(after[record.key], "aligned", reduction_axes=axes)
  assert other[2:] == (want_before, want_after)
  assert "also read by" in report.summary()
  with pytest.raises(ValueError, match="bitx .* tied weight"):
    savedmodel.convert(str(tied), str(tmp_path / "b"), "bitx", columns=8)
  assert not (tmp_path / "b").exists()


def test_the_estimator_groups_a_tied_weight_per_op(tied):
  result = estimator.estimate(str(tied), input_shape=(2, 8), precision=0.1)
  assert len(result.mapped) == 2
  # [8, 3] read along axis 0 (3 columns of 8 lanes) and along axis 1 (8 rows
  # of 3 lanes): at G=64, 3 groups and 8 groups
  assert sorted(layer.reduction_axes for layer in result.mapped) == [(0,), (1,)]
  assert sorted(set(layer.n_groups.values()) for layer in result.mapped) == [{3}, {8}]


def _blocks_named_alike():
  """Three modules, each with a [4, 4] kernel variable named "hed/kernel"."""
  blocks = []
  for i in range(3):
    block = tf.Module()
    block.kernel = tf.Variable(np.random.default_rng(i).standard_normal((4, 4))
                               .astype(np.float32), name="hed/kernel")
    blocks.append(block)
  return blocks


class Repeated(tf.Module):
  """Blocks whose variables all share one name; an offset too, with the first's value."""

  def __init__(self):
    super().__init__()
    self.blocks = _blocks_named_alike()
    self.offset = tf.Variable(self.blocks[0].kernel.numpy(), name="hed/kernel")

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def __call__(self, x):
    for block in self.blocks:
      x = tf.matmul(x, block.kernel)
    return x + self.offset[0]


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
  d = tmp_path_factory.mktemp("repeated")
  module = Repeated()
  tf.saved_model.save(module, str(d / "m"), signatures=module.__call__)
  return d / "m"


def test_variables_sharing_a_name_are_told_apart_by_their_object_paths(repeated, tmp_path):
  report = savedmodel.convert(str(repeated), str(tmp_path / "o"), "paper", 0.1)
  names = [v.display for v in report.morphed]
  assert names == ["hed/kernel (blocks/0/kernel)", "hed/kernel (blocks/1/kernel)",
                   "hed/kernel (blocks/2/kernel)"]
  assert len({v.path for v in report.morphed}) == 3
  table = report.summary()
  assert all(name in table for name in names)
  # the offset has the first kernel's name and value but no op multiplies with it: no twin
  before, after = _checkpoint(repeated), _checkpoint(tmp_path / "o")
  offset_key = next(k for k in before if k.startswith("offset/"))
  assert after[offset_key].tobytes() == before[offset_key].tobytes()
  # a map can address one of them by its object path
  mapped = savedmodel.convert(str(repeated), str(tmp_path / "p"), "paper",
                              {"blocks/1/kernel": 0.3})
  assert [v.path for v in mapped.morphed] == ["blocks/1/kernel"]


def test_exploration_finds_each_variable_by_its_path(repeated):
  loaded = models.LoadedSavedModel(str(repeated))
  kernels = models.model_kernels(loaded)
  assert [k.name for k in kernels] == ["hed/kernel (blocks/0/kernel)",
                                       "hed/kernel (blocks/1/kernel)",
                                       "hed/kernel (blocks/2/kernel)"]
  for i, k in enumerate(kernels):  # the very variable the signature multiplies with
    assert k.variable is loaded.loaded.blocks[i].kernel


class ScopedRepeated(tf.Module):
  """Blocks whose kernels share one name, each read by a matmul in its own name scope."""

  def __init__(self):
    super().__init__()
    self.blocks = _blocks_named_alike()

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def __call__(self, x):
    for i, block in enumerate(self.blocks):
      with tf.name_scope(f"stage{i}"):
        x = tf.matmul(x, block.kernel)
    return x


def test_a_kernel_known_by_its_object_path_is_labelled_by_the_layer_that_reads_it(tmp_path):
  """Figures name a kernel whose only unique name is its object path
  ("blocks/1/kernel", HED's "variables/26") by the op that reads it; a Keras
  kernel by its layer, its map key."""
  module = ScopedRepeated()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  kernels = models.model_kernels(models.LoadedSavedModel(str(tmp_path / "m")))
  assert [k.key for k in kernels] == ["blocks/0/kernel", "blocks/1/kernel", "blocks/2/kernel"]
  assert [k.label for k in kernels] == ["stage0", "stage1", "stage2"]
  keras_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="first"),
                                  keras.layers.Dense(2, name="second")])
  assert [(k.key, k.label) for k in models.model_kernels(keras_model)] == [
      ("first", "first"), ("second", "second")]


class TwoHeads(tf.Module):
  """One input, two outputs: the metric scores the one the user names."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(3)
    self.a = tf.Variable(rng.standard_normal((4, 3)).astype(np.float32), name="a/kernel")
    self.b = tf.Variable(rng.standard_normal((4, 2)).astype(np.float32), name="b/kernel")

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
  def __call__(self, x):
    return {"cls": tf.matmul(x, self.a), "reg": tf.matmul(x, self.b)}


def test_a_multi_output_signature_is_scored_on_the_named_output(tmp_path):
  module = TwoHeads()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  x = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
  default = models.LoadedSavedModel(str(tmp_path / "m"))
  assert default.output == "cls" and "'cls' of ['cls', 'reg']" in default.scored()
  chosen = models.LoadedSavedModel(str(tmp_path / "m"), output="reg")
  np.testing.assert_allclose(chosen.predict(x), x @ module.b.numpy(), rtol=1e-6)
  with pytest.raises(ValueError, match="has no output 'nope'.*'cls', 'reg'"):
    models.LoadedSavedModel(str(tmp_path / "m"), output="nope")


RNN_SAVE = """
import os, sys
import numpy as np
import tensorflow as tf
import tf_keras as keras
keras.utils.set_random_seed(0)
inp = keras.Input((7, 4))
x = keras.layers.LSTM(5, return_sequences=True, name="lstm")(inp)
# the inner layer is named: an unnamed GRU takes "gru_N" from a counter other tests advance
x = keras.layers.Bidirectional(keras.layers.GRU(3, name="gru"), name="bi")(x)
model = keras.Model(inp, keras.layers.Dense(2, name="fc")(x))
model.save(sys.argv[1])
np.savez(sys.argv[1] + ".npz", *model.get_weights())
"""


def _keras3_rnn():
  import keras  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  inp = keras.Input((7, 4))
  x = keras.layers.LSTM(5, return_sequences=True, name="lstm")(inp)
  x = keras.layers.Bidirectional(keras.layers.GRU(3, name="gru"), name="bi")(x)  # see RNN_SAVE
  return keras.Model(inp, keras.layers.Dense(2, name="fc")(x))


@pytest.fixture(scope="module", params=["keras3", "tf_keras"])
def rnn(request, tmp_path_factory):
  d = tmp_path_factory.mktemp(request.param)
  if request.param == "keras3":
    model = _keras3_rnn()
    model.export(str(d / "m"), verbose=False)
    return d / "m", [np.asarray(w) for w in model.get_weights()]
  result = installed_tool.python("-c", RNN_SAVE, str(d / "m"), timeout=600,
                                 env=dict(installed_tool.ENV, TF_USE_LEGACY_KERAS="1"))
  assert result.returncode == 0, result.stderr[-3000:]
  saved = np.load(str(d / "m") + ".npz")
  return d / "m", [saved[f"arr_{i}"] for i in range(len(saved.files))]


RNN_KERNELS = {"lstm/lstm_cell/kernel", "lstm/lstm_cell/recurrent_kernel",
               "bi/forward_gru/gru_cell/kernel", "bi/forward_gru/gru_cell/recurrent_kernel",
               "bi/backward_gru/gru_cell/kernel", "bi/backward_gru/gru_cell/recurrent_kernel",
               "fc/kernel"}


def test_loop_bodies_are_read_with_their_trip_counts(rnn):
  path, _ = rnn
  graph = graph_lib.read_graph(str(path))
  loops = [op for op in graph.mapped if op.repeats != 1]
  assert {op.weight.name for op in graph.mapped} == RNN_KERNELS
  assert {op.weight.name for op in loops} == RNN_KERNELS - {"fc/kernel"}
  assert all(op.repeats == 7 for op in loops)  # one per time step
  # the step Keras computes outside the loop only for its shapes is pruned: not listed
  assert len(loops) == 6 and len(graph.mapped) == 7


def test_the_estimator_counts_every_time_step(rnn):
  path, _ = rnn
  result = estimator.estimate(str(path), input_shape=(2, 7, 4), precision=0.1)
  for layer in result.mapped:
    steps = 1 if layer.weight == "fc/kernel" else 7
    assert layer.n_pos == 2 * steps, layer.name  # batch x time steps
    assert layer.macs == layer.n_pos * layer.weights


def test_recurrent_kernels_are_morphed_and_the_model_serves_them(rnn, tmp_path):
  path, weights = rnn
  report = savedmodel.convert(str(path), str(tmp_path / "o"), "fewest_ones", 0.1, verify=True,
                              input_shape=(3, 7, 4))
  assert {v.name for v in report.morphed if not v.twin_of} == RNN_KERNELS
  before, after = _checkpoint(path), _checkpoint(tmp_path / "o")
  for v in report.morphed:
    np.testing.assert_array_equal(_u32(after[v.key]), _u32(mortar_tf.morph(
        before[v.key], "fewest_ones", 0.1, backend="numpy")))
  # an independent reference: the Keras model itself with morphed kernels
  import keras  # pylint: disable=import-outside-toplevel
  reference = _keras3_rnn()
  reference.set_weights(weights)
  for w in reference.weights:  # Keras' own names say which are kernels
    if w.name.endswith("kernel"):
      w.assign(mortar_tf.morph(np.asarray(w.numpy()), "fewest_ones", 0.1, backend="numpy"))
  x = np.random.default_rng(1).standard_normal((3, 7, 4)).astype(np.float32)
  loaded = tf.saved_model.load(str(tmp_path / "o"))
  fn = loaded.signatures["serving_default"]
  (name,) = fn.structured_input_signature[1]
  (out,) = fn(**{name: tf.constant(x)}).values()
  np.testing.assert_allclose(np.asarray(out), np.asarray(reference(x)), rtol=1e-5, atol=1e-5)
  del keras


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  """Two named inputs (BERT-style) and Dense layers on sequences (Keras' Tensordot)."""
  import keras  # pylint: disable=import-outside-toplevel
  d = tmp_path_factory.mktemp("encoder")
  tokens = keras.Input((16,), dtype="int32", name="token_ids")
  mask = keras.Input((16,), name="padding_mask")
  x = keras.layers.Embedding(50, 8, name="embed")(tokens)
  x = keras.layers.Dense(12, name="ff")(x) * keras.ops.expand_dims(mask, -1)
  model = keras.Model([tokens, mask], keras.layers.Dense(3, name="out")(x))
  model.export(str(d / "m"), verbose=False)
  return d / "m"


def test_sequence_positions_are_counted_with_or_without_shapes(encoder):
  plain = estimator.estimate(str(encoder))
  by_weight = {layer.weight: layer for layer in plain.mapped}
  assert by_weight["ff/kernel"].n_pos == 16  # batch 1 x 16 positions, never 1
  given = estimator.estimate(str(encoder), input_shape={"token_ids": (2, 16),
                                                        "padding_mask": (2, 16)})
  assert {layer.weight: layer.n_pos for layer in given.mapped} == {"ff/kernel": 32,
                                                                   "out/kernel": 32}


def test_per_input_shapes_on_the_command_line(encoder, tmp_path):
  import installed_tool  # pylint: disable=import-outside-toplevel
  ok = installed_tool.run("mortar-estimate", f"--saved_model={encoder}",
                          "--input_shape=token_ids:2,16;padding_mask:2,16",
                          f"--json={tmp_path / 'e.json'}")
  assert ok.returncode == 0, ok.stderr
  import json  # pylint: disable=import-outside-toplevel
  layers = json.loads((tmp_path / "e.json").read_text())["layers"]
  assert sorted(layer["n_pos"] for layer in layers) == [32, 32]
  bad = installed_tool.run("mortar-estimate", f"--saved_model={encoder}",
                           "--input_shape=token_ids:2,x")
  assert bad.returncode != 0 and "name:1,128;name2:1,128" in bad.stderr
  wrong = installed_tool.run("mortar-estimate", f"--saved_model={encoder}",
                             "--input_shape=2,16")
  assert wrong.returncode == 1 and "token_ids" in wrong.stderr


# --------------------------------------------------------------------------
# Recurrent layers over a free time dimension, stacked (keras_zoo.free_time_rnn)

ZOO_SAVE = """
import sys
sys.path.insert(0, sys.argv[3])
import keras_zoo  # tf_keras: the caller sets TF_USE_LEGACY_KERAS
name = sys.argv[4]
model = keras_zoo.free_time_rnn() if name == "free_time_rnn" else keras_zoo.build(name)
if sys.argv[2] == "save":
  model.save(sys.argv[1])
else:
  model.export(sys.argv[1])
"""

# Hand-computed MACs of one sample and one time step, per kernel, from the
# layer sizes of keras_zoo.free_time_rnn (inputs 8 features): an LSTM(u) on
# `in` features multiplies in x 4u (input kernel) and u x 4u (recurrent), a
# GRU 3u, a SimpleRNN u; the Bidirectional GRU's two directions alike; the
# Dense head runs once per sample.
FREE_RNN_STEP_MACS = {
    ("lstm/", "kernel"): 8 * 4 * 4, ("lstm/", "recurrent_kernel"): 4 * 4 * 4,
    ("forward_gru", "kernel"): 4 * 3 * 3, ("forward_gru", "recurrent_kernel"): 3 * 3 * 3,
    ("backward_gru", "kernel"): 4 * 3 * 3, ("backward_gru", "recurrent_kernel"): 3 * 3 * 3,
    ("rnn/", "kernel"): 6 * 5, ("rnn/", "recurrent_kernel"): 5 * 5}
FREE_RNN_HEAD_MACS = 5 * 2


FC = ("fc/", "kernel")


def _free_rnn_kernel(weight: str):
  """The FREE_RNN_STEP_MACS key of an estimated layer's weight name, or FC."""
  if weight.startswith("fc/"):
    return FC
  kind = "recurrent_kernel" if weight.endswith("recurrent_kernel") else "kernel"
  found = [key for key in FREE_RNN_STEP_MACS if key[1] == kind and (
      key[0] in weight if key[0].endswith("gru") else weight.startswith(key[0]))]
  assert len(found) == 1, (weight, found)
  return found[0]


def _export_zoo(name: str, route: str, path):
  """Saves keras_zoo model `name` by `route`: keras3_export, keras3_tf_saved_model
  (here), tf_keras_save or tf_keras_export (tf_keras in a subprocess)."""
  import os  # pylint: disable=import-outside-toplevel
  import keras_zoo  # pylint: disable=import-outside-toplevel
  if route.startswith("keras3"):
    model = keras_zoo.free_time_rnn() if name == "free_time_rnn" else keras_zoo.build(name)
    if route == "keras3_export":
      model.export(str(path), verbose=False)
    else:
      tf.saved_model.save(model, str(path))
    return path
  result = installed_tool.python("-c", ZOO_SAVE, str(path), route.split("_")[-1],
                                 os.path.dirname(os.path.abspath(__file__)), name, timeout=600,
                                 env=dict(installed_tool.ENV, TF_USE_LEGACY_KERAS="1"))
  assert result.returncode == 0, result.stderr[-3000:]
  return path


@pytest.fixture(scope="module", params=["keras3_export", "keras3_tf_saved_model",
                                        "tf_keras_save", "tf_keras_export"])
def free_rnn(request, tmp_path_factory):
  return _export_zoo("free_time_rnn", request.param,
                     tmp_path_factory.mktemp(request.param) / "m")


@pytest.mark.parametrize("batch,steps", [(2, 7), (1, 11)])
def test_free_time_rnn_every_kernel_is_estimated_at_every_step(free_rnn, batch, steps):
  result = estimator.estimate(str(free_rnn), input_shape=(batch, steps, 8), precision=0.1)
  assert not result.unmapped, [(layer.name, layer.unmapped) for layer in result.unmapped]
  kernels = sorted(_free_rnn_kernel(layer.weight) for layer in result.layers)
  assert kernels == sorted(list(FREE_RNN_STEP_MACS) + [FC])  # each kernel once
  for layer in result.layers:
    key = _free_rnn_kernel(layer.weight)
    if key == FC:
      assert (layer.n_pos, layer.macs) == (batch, batch * FREE_RNN_HEAD_MACS)
    else:  # a loop body: once per time step
      assert layer.n_pos == batch * steps, layer.name
      assert layer.macs == batch * steps * FREE_RNN_STEP_MACS[key], layer.name
    assert layer.shape_macs == layer.macs  # the second count, from the op's own shapes
  total = batch * (steps * sum(FREE_RNN_STEP_MACS.values()) + FREE_RNN_HEAD_MACS)
  coverage = result.coverage()
  assert coverage.complete and (coverage.estimated_macs, coverage.macs) == (total, total)
  assert result.total_macs() == total


def test_free_time_rnn_without_the_time_length_says_what_it_misses(free_rnn):
  result = estimator.estimate(str(free_rnn))  # no input_shape: the loops' steps are unknown
  assert [_free_rnn_kernel(layer.weight) for layer in result.mapped] == [FC]
  assert all("give input_shape" in layer.unmapped for layer in result.unmapped)
  coverage = result.coverage()
  assert not coverage.complete and coverage.macs is None and coverage.basis == "weights"
  # Every kernel's weights, by hand: the MACs of one step are the weights.
  weights = sum(FREE_RNN_STEP_MACS.values()) + FREE_RNN_HEAD_MACS
  assert (coverage.estimated_weights, coverage.weights) == (FREE_RNN_HEAD_MACS, weights)
  assert (coverage.estimated_ops, coverage.ops) == (1, 9)
  assert "give input_shape" in coverage.warning()


def test_free_time_rnn_kernels_are_morphed_bit_exactly(free_rnn, tmp_path):
  report = savedmodel.convert(str(free_rnn), str(tmp_path / "o"), "fewest_ones", 0.1,
                              input_shape=(2, 7, 8))
  morphed = [v for v in report.morphed if not v.twin_of]
  assert sorted(_free_rnn_kernel(v.name) for v in morphed) == sorted(
      list(FREE_RNN_STEP_MACS) + [FC])
  before, after = _checkpoint(free_rnn), _checkpoint(tmp_path / "o")
  for v in report.morphed:
    np.testing.assert_array_equal(_u32(after[v.key]), _u32(mortar_tf.morph(
        before[v.key], "fewest_ones", 0.1, backend="numpy")))


@pytest.mark.parametrize("route", ["keras3_export", "tf_keras_save"])
def test_the_zoo_bilstm_with_its_mask_is_estimated_step_by_step(route, tmp_path):
  """keras_zoo.bilstm: Embedding(mask_zero) -> Bidirectional(LSTM(6)) ->
  TimeDistributed(Dense(5)) -> Bidirectional(LSTM(4)) -> Dense(2), 10 tokens.
  With a mask, Keras also runs a step outside the loop, only for zeros_like
  of its output: not computed by any accelerator, not counted."""
  path = _export_zoo("bilstm", route, tmp_path / "m")
  result = estimator.estimate(str(path), input_shape=(2, 10))
  assert result.coverage().complete, result.coverage().warning()
  macs = {}
  for layer in result.layers:  # by layer, direction and kernel (names differ per route)
    top = layer.weight.split("/")[0]
    direction = next((d for d in ("forward", "backward") if d in layer.weight), "")
    kind = "recurrent" if "recurrent_kernel" in layer.weight else "kernel"
    macs[(top, direction, kind)] = macs.get((top, direction, kind), 0) + layer.macs
  # By hand, 2 samples x 10 steps: LSTM(6) on 12 features, 12 x 24 and 6 x 24
  # per step and direction; the TimeDistributed Dense 12 x 5 per step; LSTM(4)
  # on 5 features, 5 x 16 and 4 x 16; the head 8 x 2 once per sample.
  steps = 2 * 10
  expected = {("td", "", "kernel"): steps * 12 * 5, ("head", "", "kernel"): 2 * 8 * 2}
  for direction in ("forward", "backward"):
    expected[("bi", direction, "kernel")] = steps * 12 * 24
    expected[("bi", direction, "recurrent")] = steps * 6 * 24
    expected[("bi2", direction, "kernel")] = steps * 5 * 16
    expected[("bi2", direction, "recurrent")] = steps * 4 * 16
  assert macs == expected
  assert result.coverage().macs == sum(expected.values()) == 2 * 12136
