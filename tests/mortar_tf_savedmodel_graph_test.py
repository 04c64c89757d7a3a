"""The SavedModel graph reader against what Keras reports for the same models.

Three export routes: Keras 3 `model.export`, `tf.saved_model.save` of a Keras 3
model, and tf_keras `model.save` (a subprocess, since TFMOT-free tf_keras still
needs its own process to save the legacy format). Expected reduction axes are
SPEC 3's rules written out here per layer kind, not taken from the reader.
"""

import json
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mortar_tf.savedmodel import SavedModelError
from mortar_tf.savedmodel import graph as graph_lib

import installed_tool

BATCH = 2

# The model, written once for both Keras flavours (`keras` is either module).
MODEL_CODE = textwrap.dedent("""
    def build(keras):
      inputs = keras.Input((8, 8, 3), name="image")
      x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
      x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
      x = keras.layers.Conv2DTranspose(2, 3, strides=2, name="tconv")(x)
      x = keras.layers.Reshape((9, 3, 3, 2))(x)
      x = keras.layers.Conv3D(3, 2, name="conv3d")(x)
      x = keras.layers.Reshape((8 * 2 * 2, 3))(x)
      x = keras.layers.Conv1D(5, 3, name="c1")(x)
      x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
      x = keras.layers.Flatten()(x)
      outputs = keras.layers.Dense(6, name="fc")(x)
      return keras.Model(inputs, outputs)

    def keras_facts(model, batch):
      # {variable path: [kernel shape, output shape of its layer]} as Keras reports them.
      facts = {}
      for layer in model.layers:
        for w in layer.weights:
          path = w.path if hasattr(w, "path") else w.name.split(":")[0]
          if len(w.shape) < 2:
            continue
          shape = [int(d) for d in layer.output.shape[1:]] if not layer.name == "mha" else None
          facts[path] = [list(map(int, w.shape)), [batch] + shape if shape else None]
      return facts
""")

TF_KERAS_SAVE = MODEL_CODE + textwrap.dedent("""
    import json, sys
    import numpy as np
    import tf_keras
    model = build(tf_keras)
    model.compile("adam", "mse")
    model.fit(np.zeros((4, 8, 8, 3)), np.zeros((4, 6)), verbose=0)  # optimizer slots
    model.save(sys.argv[1])
    json.dump(keras_facts(model, int(sys.argv[2])), open(sys.argv[1] + ".json", "w"))
""")

# SPEC 3, per layer kind, on the stored layout.
EXPECTED_AXES = {
    "conv/kernel": (0, 1, 2),
    "dw/kernel": (0, 1), "dw/depthwise_kernel": (0, 1),
    "tconv/kernel": (3,),
    "conv3d/kernel": (0, 1, 2, 3),
    "c1/kernel": (0, 1),
    "mha/query/kernel": (0,), "mha/key/kernel": (0,), "mha/value/kernel": (0,),
    "mha/attention_output/kernel": (0, 1),
    "fc/kernel": (0,),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  import keras  # pylint: disable=import-outside-toplevel
  namespace = {}
  exec(MODEL_CODE, namespace)  # pylint: disable=exec-used
  d = tmp_path_factory.mktemp("graph")
  model = namespace["build"](keras)
  rng = np.random.default_rng(0)
  model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
  model.export(str(d / "k3"), verbose=False)
  tf.saved_model.save(model, str(d / "tfsave"))
  facts = namespace["keras_facts"](model, BATCH)
  result = installed_tool.python("-c", TF_KERAS_SAVE, str(d / "tfk"), str(BATCH),
                                 env=dict(installed_tool.ENV, TF_USE_LEGACY_KERAS="1"))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(d / "tfk.json", encoding="utf-8") as f:
    tfk_facts = json.load(f)
  return {"k3": (d / "k3", facts), "tfsave": (d / "tfsave", facts),
          "tfk": (d / "tfk", tfk_facts)}


@pytest.mark.parametrize("route", ["k3", "tfsave", "tfk"])
def test_ops_weights_axes_and_shapes_match_keras(exports, route):
  path, facts = exports[route]
  graph = graph_lib.read_graph(str(path), input_shape=(BATCH, 8, 8, 3))
  by_weight = {op.weight.name: op for op in graph.mapped}
  kernels = {k: v for k, v in facts.items() if "kernel" in k}
  assert sorted(by_weight) == sorted(kernels)
  for name, (kernel_shape, layer_output) in kernels.items():
    op = by_weight[name]
    assert op.weight.kind == "variable" and op.weight.key
    assert op.weight.shape == tuple(kernel_shape), name
    assert op.reduction_axes == EXPECTED_AXES[name], (name, op.reduction_axes)
    if layer_output is not None:
      # Conv1D runs as Conv2D on an inserted axis: same elements, one more dim.
      assert np.prod(op.output_shape) == np.prod(layer_output), (name, op.output_shape)
      if not name.startswith("c1/"):
        assert op.output_shape == tuple(layer_output), name
  types = {name.split("/")[0]: by_weight[name].type for name in by_weight}
  assert types["conv"] == "Conv2D" and types["conv3d"] == "Conv3D"
  assert types["dw"] == "DepthwiseConv2dNative" and types["tconv"] == "Conv2DBackpropInput"
  assert types["fc"] == "MatMul"
  assert by_weight["conv/kernel"].activation_shape == (BATCH, 8, 8, 3)
  assert by_weight["conv/kernel"].attrs["strides"] == (1, 1, 1, 1)
  assert by_weight["tconv/kernel"].attrs["strides"] == (1, 2, 2, 1)
  # The attention scores multiply two activations: listed, with the reason.
  unmapped = graph.unmapped
  assert len(unmapped) == 2 and all(op.activation_op for op in unmapped)
  assert {op.unmapped for op in unmapped} == {"multiplies two activations (no stored weight)"}


def test_optimizer_state_is_never_a_weight(exports):
  path, _ = exports["tfk"]
  from mortar_tf.savedmodel import variables  # pylint: disable=import-outside-toplevel
  objects = variables.variable_objects(str(path))
  state = [v for v in objects if v.role != "model"]
  # tf_keras 2.21 keeps Adam's moments as optimizer variables named after the kernel.
  moments = [v for v in state if v.name in ("Adam/m/conv/kernel", "Adam/v/conv/kernel")]
  assert len(moments) == 2 and all(v.shape == (3, 3, 3, 4) for v in moments)
  read = set(graph_lib.read_graph(str(path)).variable_weights())
  assert not read & {v.key for v in state}


def test_unknown_dims_are_traced_from_the_input_shape(tmp_path):
  import keras  # pylint: disable=import-outside-toplevel
  inputs = keras.Input((None, None, 3))
  x = keras.layers.Conv2D(4, 3, name="a")(inputs)
  x = keras.layers.Conv2D(2, 3, strides=2, name="b")(x)
  keras.Model(inputs, x).export(str(tmp_path / "m"), verbose=False)
  saved = graph_lib.read_graph(str(tmp_path / "m"))
  assert saved.ops[0].output_shape == (1, -1, -1, 4)  # batch 1 by default, rest unknown
  traced = graph_lib.read_graph(str(tmp_path / "m"), input_shape=(3, 20, 24, 3))
  assert traced.shape_source == "traced"
  # Valid padding: (20 - 2, 24 - 2), then stride 2: ((18 - 3) // 2 + 1, (22 - 3) // 2 + 1).
  assert [op.output_shape for op in traced.ops] == [(3, 18, 22, 4), (3, 8, 10, 2)]


class _Module(tf.Module):
  """A plain tf.Module: a transposed matmul weight and Reshapes of a 3-D weight."""

  def __init__(self, conflict: bool):
    super().__init__()
    self.conflict = conflict
    self.w = tf.Variable(tf.ones([5, 4]), name="w")  # used as w^T: reduction axis 1
    self.mixed = tf.Variable(tf.ones([2, 3, 4]), name="mixed")

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def __call__(self, x):
    y = tf.matmul(x, self.w, transpose_b=True)  # [b, 5]
    m = tf.matmul(tf.ones([1, 6]), tf.reshape(self.mixed, [6, 4]))  # reduces stored (0, 1)
    if not self.conflict:
      return y, m
    # [2,3,4] -> [2,12] -> [12,2] as operand 0: reduces [2,12]'s axis 0 = stored (0,).
    z = tf.matmul(tf.transpose(tf.reshape(self.mixed, [2, 12])), tf.ones([2, 1]))
    return y, m, z


def test_transposed_matmul_and_merging_reshape(tmp_path):
  module = _Module(conflict=False)
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  graph = graph_lib.read_graph(str(tmp_path / "m"))
  mapped = {op.weight.name: op for op in graph.mapped}
  assert mapped["w"].reduction_axes == (1,)  # transpose_b: the contracted axis is 1
  assert mapped["w"].attrs["transpose_b"] is True
  assert mapped["mixed"].reduction_axes == (0, 1)  # [6,4] operand 1: axis 0 = stored 0 and 1
  assert mapped["mixed"].weight.path == ("ReadVariableOp", "Reshape")


def test_two_ops_reading_one_variable_differently_each_keep_their_axes(tmp_path):
  module = _Module(conflict=True)
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  graph = graph_lib.read_graph(str(tmp_path / "m"))
  axes = sorted(op.reduction_axes for op in graph.mapped if op.weight.name == "mixed")
  assert axes == [(0,), (0, 1)]  # a tied weight: listed per reading op


def test_reshape_that_merges_reduction_and_output_axes_is_unmapped(tmp_path):
  class Mixing(tf.Module):

    def __init__(self):
      super().__init__()
      self.v = tf.Variable(tf.ones([4, 3]), name="v")

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def __call__(self, x):
      return tf.matmul(x, tf.reshape(self.v, [2, 6]))  # rows mix in- and out-axes

  module = Mixing()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  (op,) = graph_lib.read_graph(str(tmp_path / "m")).ops
  assert not op.mapped and "merges reduction and output axes" in op.unmapped
  assert op.weight.name == "v"


def test_bad_inputs(tmp_path, exports):
  with pytest.raises(SavedModelError, match="no such SavedModel"):
    graph_lib.read_graph(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(SavedModelError, match="no saved_model.pb"):
    graph_lib.read_graph(str(tmp_path / "empty"))
  path, _ = exports["k3"]
  with pytest.raises(SavedModelError, match="unknown signature 'nope'.*serving_default"):
    graph_lib.read_graph(str(path), signature="nope")
  with pytest.raises(ValueError, match="does not fit"):
    graph_lib.read_graph(str(path), input_shape=(1, 9, 9, 3))


def test_transpose_then_reshape_maps_back_to_the_stored_axis(tmp_path):
  class Permuted(tf.Module):

    def __init__(self):
      super().__init__()
      self.v = tf.Variable(tf.ones([3, 4, 5]), name="v")

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
    def __call__(self, x):
      # [3,4,5] -> [5,3,4] -> [5,12]: x contracts with the stored axis 2 (size 5).
      return tf.matmul(x, tf.reshape(tf.transpose(self.v, [2, 0, 1]), [5, 12]))

  module = Permuted()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  (op,) = graph_lib.read_graph(str(tmp_path / "m"), input_shape=(7, 5)).ops
  assert op.reduction_axes == (2,)
  assert op.weight.path == ("ReadVariableOp", "Transpose", "Reshape")
  assert op.output_shape == (7, 12)


class _TwoLoops(tf.Module):
  """Two hand-written recurrences over a free time dimension (TensorArrays in
  tf.while_loop, no Keras): h = tanh(x_t w + h u), then g = tanh(h_t v)."""

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(tf.ones([5, 3]), name="w")
    self.u = tf.Variable(tf.ones([3, 3]), name="u")
    self.v = tf.Variable(tf.ones([3, 2]), name="v")

  def _scan(self, xs, step, units):  # xs: [T, B, features]
    steps, batch = tf.shape(xs)[0], tf.shape(xs)[1]
    items = tf.TensorArray(tf.float32, size=steps).unstack(xs)
    out = tf.TensorArray(tf.float32, size=steps)

    def body(t, h, out):
      h = step(items.read(t), h)
      return t + 1, h, out.write(t, h)

    _, _, out = tf.while_loop(lambda t, *_: t < steps, body,
                              (tf.constant(0), tf.zeros([batch, units]), out))
    return out.stack()

  @tf.function(input_signature=[tf.TensorSpec([None, None, 5], tf.float32)])
  def __call__(self, x):  # [B, T, 5]
    hs = self._scan(tf.transpose(x, [1, 0, 2]),
                    lambda x_t, h: tf.tanh(tf.matmul(x_t, self.w) + tf.matmul(h, self.u)), 3)
    gs = self._scan(hs, lambda h_t, g: tf.tanh(tf.matmul(h_t, self.v)), 2)
    return tf.transpose(gs, [1, 0, 2])


def test_loop_bodies_get_their_step_shapes_through_tensor_lists(tmp_path):
  module = _TwoLoops()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  graph = graph_lib.read_graph(str(tmp_path / "m"), input_shape=(2, 9, 5))
  by_weight = {op.weight.name: op for op in graph.mapped}
  assert sorted(by_weight) == ["u", "v", "w"] and not graph.unmapped
  # Each step multiplies one time step of the batch: [2, in] x [in, out], 9 times.
  for name, (features, units) in {"w": (5, 3), "u": (3, 3), "v": (3, 2)}.items():
    op = by_weight[name]
    assert (op.activation_shape, op.output_shape, op.repeats) == ((2, features), (2, units), 9)
  # Without the time length the second loop's steps (the first's stacked
  # output) are unknown, never guessed.
  free = graph_lib.read_graph(str(tmp_path / "m"))
  assert {op.weight.name: op.repeats for op in free.mapped} == {"w": None, "u": None, "v": None}


class _Unmodelled(tf.Module):
  """A generic `Conv` op (which the reader does not model) beside a MatMul."""

  def __init__(self):
    super().__init__()
    self.filt = tf.Variable(tf.ones([3, 3, 2, 4]), name="filt")
    self.w = tf.Variable(tf.ones([2, 5]), name="w")

  @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 2], tf.float32)])
  def __call__(self, x):
    conv = tf.raw_ops.Conv(input=x, filter=self.filt, strides=[1, 1, 1, 1], padding="VALID")
    return conv, tf.matmul(tf.reshape(x, [-1, 2]), self.w)


def test_an_op_the_reader_does_not_model_is_listed_and_counts_as_missed(tmp_path):
  from mortar_tf import estimator  # pylint: disable=import-outside-toplevel
  module = _Unmodelled()
  tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.__call__)
  graph = graph_lib.read_graph(str(tmp_path / "m"), input_shape=(1, 6, 6, 2))
  (conv,) = graph.unmapped
  assert conv.type == "Conv" and "does not model" in conv.unmapped and not conv.activation_op
  coverage = estimator.estimate(str(tmp_path / "m"), input_shape=(1, 6, 6, 2)).coverage()
  # Its MACs and weight are unknown to the reader: coverage falls back to ops.
  assert (coverage.basis, coverage.estimated_ops, coverage.ops) == ("ops", 1, 2)
  assert not coverage.complete and "Conv is an op the reader does not model" in (
      coverage.warning())
