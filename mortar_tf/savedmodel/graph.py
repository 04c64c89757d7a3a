"""The compute ops of a SavedModel and the weights they read, from its protos.

Nothing is executed. The reader starts at a signature (default
"serving_default"), follows the call nodes from there into nested functions
(never the whole function library: tf_keras SavedModels hold each layer
twice), and lists every compute op it meets (CONV_OPS and MATMUL_OPS) with
its attributes, shapes and weight. A weight operand is followed back through
Identity, Cast, ReadVariableOp, ExpandDims, Reshape and Transpose (also across
function arguments) to a variable, named with its checkpoint key through the
object graph, or to a constant.

The weight's reduction axes (SPEC 3) are those of the op, mapped back to the
stored variable's layout: Transpose permutes them, ExpandDims drops the
inserted axis, and a Reshape keeps them where it only splits or merges axes
of one kind. A Reshape that merges a reduction axis with an output axis makes
the op unmapped, with that reason, as does a weight made by any other op.

Control flow is entered: a While/StatelessWhile body (how RNN layers export
their time loop) like a call whose arguments are the loop's inputs, so a
kernel captured by the loop traces back to its variable; each op there
carries the loop's trip count (`repeats`), read from the loop condition
(`counter < constant`, with the counter's constant start) or the loop's
constant maximum_iterations, None when neither is constant. If/StatelessIf
branches are entered too, their ops marked with the branch (`branch`). Ops
whose results reach no output of their function are left out: TensorFlow
prunes them (Keras' RNNs compute one step outside the loop only for its
shapes).

Shapes come from the nodes' `_output_shapes`. Where a compute op's saved
shapes leave a dim unknown, its function is traced with TensorFlow's shape
inference from the signature's input shapes (their leading dim, the batch,
from `input_shape`, else 1; other dims from `input_shape` or as declared):
a MatMul behind a reshape that folds the sequence into the batch (Keras'
Tensordot) then gets batch x sequence, and a dim nothing fixes stays -1
(unknown), never guessed. Without tracing, only a convolution's leading -1
is read as the batch.

Example:
  graph = read_graph("exported_model", input_shape=(1, 224, 224, 3))
  for op in graph.ops:
    print(op.name, op.type, op.output_shape, op.weight and op.weight.name, op.reduction_axes)
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import function_pb2
from tensorflow.core.framework import graph_pb2

from mortar_tf.savedmodel import variables as variables_lib
from mortar_tf.savedmodel.variables import SavedModelError

CONV_OPS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput",
            "Conv3DBackpropInputV2")
MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum")
COMPUTE_OPS = CONV_OPS + MATMUL_OPS
# Ops a weight is followed back through.
PASS_THROUGH_OPS = ("Identity", "Cast", "ReadVariableOp", "ExpandDims", "Reshape", "Transpose")
_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
_WHILE_OPS = ("While", "StatelessWhile")
_IF_OPS = ("If", "StatelessIf")
# The operand that holds the filter, for ops whose weight position is fixed.
_FILTER_OPERAND = {"Conv2D": 1, "Conv3D": 1, "DepthwiseConv2dNative": 1,
                   "Conv2DBackpropInput": 1, "Conv3DBackpropInputV2": 1}
_ATTRS = ("strides", "padding", "dilations", "data_format", "explicit_paddings",
          "transpose_a", "transpose_b", "adj_x", "adj_y", "equation")
DEFAULT_SIGNATURE = "serving_default"


@dataclasses.dataclass(frozen=True)
class Weight:
  """The tensor a compute op reads as its weight.

  Attributes:
    kind: "variable" or "constant".
    name: the variable's name (e.g. "conv/kernel") or the constant's node.
    key: the variable's checkpoint key (None for a constant).
    shape: the stored shape.
    dtype: the stored dtype name.
    path: the ops between the stored tensor and the compute op, stored end
      first (e.g. ("ReadVariableOp", "Reshape")).
    tensor: a constant's TensorProto (None for a variable).
  """
  kind: str
  name: str
  key: str | None
  shape: tuple[int, ...]
  dtype: str
  path: tuple[str, ...] = ()
  tensor: object = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class ComputeOp:
  """One compute op of the graph.

  Attributes:
    name: the node's name, prefixed by the call nodes that lead to it when it
      sits in a nested function below the model's.
    type: the op type (e.g. "Conv2D").
    attrs: strides, padding, dilations, data_format, transpose/adjoint flags
      or equation, where the op has them.
    input_shapes: one shape per input (None for an unknown rank; -1 for an
      unknown dim).
    output_shape: the shape of the first output.
    weight: what the weight operand reads, or None (unmapped).
    weight_operand: the index of the weight operand, or None.
    reduction_axes: the weight's reduction axes on its stored layout, or None.
    unmapped: why the op could not be mapped to a weight, or None.
    repeats: how many times the op runs per call: 1, a loop's trip count
      (the product over nested loops), or None where a loop's count is unknown.
    branch: "<If node>:then" / ":else" for an op in a conditional branch.
  """
  name: str
  type: str
  attrs: Mapping[str, object]
  input_shapes: tuple[tuple[int, ...] | None, ...]
  output_shape: tuple[int, ...] | None
  weight: Weight | None = None
  weight_operand: int | None = None
  reduction_axes: tuple[int, ...] | None = None
  unmapped: str | None = None
  repeats: int | None = 1
  branch: str | None = None

  @property
  def mapped(self) -> bool:
    return self.unmapped is None

  @property
  def activation_shape(self) -> tuple[int, ...] | None:
    """The shape of the input the weight multiplies (the op's data input)."""
    if self.type in ("Conv2DBackpropInput", "Conv3DBackpropInputV2"):
      index = 2
    elif self.type in _FILTER_OPERAND:
      index = 0
    else:
      index = 1 - self.weight_operand if self.weight_operand is not None else 0
    return self.input_shapes[index] if index < len(self.input_shapes) else None


@dataclasses.dataclass(frozen=True)
class SavedModelGraph:
  """The compute ops reached from one signature of a SavedModel.

  Attributes:
    saved_model_dir: the directory read.
    signature: the signature walked.
    inputs: {input name: shape} after substitution.
    ops: every compute op, in graph order (mapped and unmapped).
    shape_source: "saved shapes" or "traced" (TF shape inference).
    variables: every variable of the SavedModel (read on the way, so callers
      need not parse the protos again).
  """
  saved_model_dir: str
  signature: str
  inputs: Mapping[str, tuple[int, ...] | None]
  ops: tuple[ComputeOp, ...]
  shape_source: str = "saved shapes"
  variables: tuple[variables_lib.VariableObject, ...] = dataclasses.field(default=(),
                                                                         repr=False)
  twins: Mapping[int, int] = dataclasses.field(default_factory=dict, repr=False)

  def display_names(self) -> dict[str, str]:
    """{checkpoint key: name to show} of the model variables (variables_lib.display_names)."""
    return variables_lib.display_names([v for v in self.variables if v.role == "model"],
                                       self.twins)

  @property
  def mapped(self) -> tuple[ComputeOp, ...]:
    return tuple(op for op in self.ops if op.mapped)

  @property
  def unmapped(self) -> tuple[ComputeOp, ...]:
    return tuple(op for op in self.ops if not op.mapped)

  def variable_weights(self) -> dict[str, tuple[int, ...]]:
    """{checkpoint key: reduction axes} of every variable read as a weight (the
    first reader's, for a weight several ops read: a tied weight)."""
    out = {}
    for op in self.mapped:
      if op.weight.kind == "variable":
        out.setdefault(op.weight.key, op.reduction_axes)
    return out


# --------------------------------------------------------------------------
# Tensor references and shapes


def _parse_ref(ref: str, in_function: bool) -> tuple[str, str | None, int]:
  """("node", output arg or None, index) of an input reference.

  FunctionDef inputs read "node:out_arg:i" (or a bare argument name);
  GraphDef inputs read "node:i" (or "node" for output 0).
  """
  parts = ref.split(":")
  if in_function:
    if len(parts) == 1:
      return parts[0], None, 0
    return parts[0], parts[1], int(parts[2])
  return parts[0], None, int(parts[1]) if len(parts) > 1 else 0


def _shape_of(attr_value) -> tuple[int, ...] | None:
  if attr_value.unknown_rank:
    return None
  return tuple(int(d.size) for d in attr_value.dim)


def _saved_shapes(node_or_attrs) -> list[tuple[int, ...] | None] | None:
  attrs = node_or_attrs.attr
  if "_output_shapes" not in attrs:
    return None
  return [_shape_of(s) for s in attrs["_output_shapes"].list.shape]


def _flat_output_index(node, out_arg: str | None, index: int) -> int:
  """The position of output `out_arg:index` among all outputs of `node`.

  List-typed output arguments count their length from the node's attrs
  (number_attr or type_list_attr); unknown op types keep `index`.
  """
  if out_arg is None:
    return index
  op_def = _op_def(node.op)
  if op_def is None:
    return index
  flat = 0
  for arg in op_def.output_arg:
    if arg.name == out_arg:
      return flat + index
    if arg.number_attr:
      flat += int(node.attr[arg.number_attr].i)
    elif arg.type_list_attr:
      flat += len(node.attr[arg.type_list_attr].list.type)
    else:
      flat += 1
  return index


def _op_def(op_type: str):
  # TF has no public accessor for registered OpDefs; the registry is the
  # only place that knows the output arguments of an op type.
  from tensorflow.python.framework import op_def_registry  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
  return op_def_registry.get(op_type)


def _attr_value(value):
  which = value.WhichOneof("value")
  if which == "list":
    if value.list.i:
      return tuple(int(i) for i in value.list.i)
    if value.list.s:
      return tuple(s.decode() for s in value.list.s)
    return ()
  if which == "s":
    return value.s.decode()
  if which in ("b", "i", "f"):
    return getattr(value, which)
  return None


# --------------------------------------------------------------------------
# Frames: one per function call on the walk


class _Frame:
  """A function on the walk: its nodes and how its arguments are fed."""

  def __init__(self, fdef, prefix: str, parent: "_Frame | None", call_inputs, given=None):
    self.fdef = fdef
    self.given = given or []  # argument shapes known from the caller (or the user)
    self.prefix = prefix
    self.parent = parent
    self.call_inputs = call_inputs  # refs in the parent feeding each argument
    self.nodes = {n.name: n for n in fdef.node_def}
    self.args = {a.name: i for i, a in enumerate(fdef.signature.input_arg)}
    self.traced = None  # {node name: [shapes]} from shape inference

  def arg_shape(self, index: int):
    if index < len(self.given) and self.given[index] is not None and -1 not in self.given[index]:
      return self.given[index]
    attrs = self.fdef.arg_attr.get(index)
    if self.traced is not None and ("", index) in self.traced:
      return self.traced[("", index)]
    if attrs is not None and "_output_shapes" in attrs.attr:
      shapes = [_shape_of(s) for s in attrs.attr["_output_shapes"].list.shape]
      if shapes:
        return shapes[0]
    if self.parent is not None:
      return self.parent.ref_shape(self.call_inputs[index])
    return None

  def ref_shape(self, ref: str, saved_only: bool = False):
    name, out_arg, index = _parse_ref(ref, True)
    if name in self.args and out_arg is None:
      return self.arg_shape(self.args[name])
    node = self.nodes.get(name)
    if node is None:
      return None
    flat = _flat_output_index(node, out_arg, index)
    if self.traced is not None and name in self.traced and not saved_only:
      shapes = self.traced[name]
    else:
      shapes = _saved_shapes(node)
    if not shapes or flat >= len(shapes):
      return None
    return shapes[flat]


class _TopLevel:
  """The SavedModel's graph_def: the signature's call node and its captures."""

  def __init__(self, saved, graph_def, variables):
    self.graph_def = graph_def
    self.nodes = {n.name: n for n in graph_def.node}
    self.concrete = saved.meta_graphs[0].object_graph_def.concrete_functions
    self.variables = variables

  def source(self, call_node, fn_name: str, arg_index: int, n_args: int):
    """(kind, Weight or None, reason) for argument `arg_index` of the signature call."""
    if arg_index >= len(call_node.input):
      return "unknown", None, "an argument the call does not feed"
    name = call_node.input[arg_index].split(":")[0].lstrip("^")
    node = self.nodes.get(name)
    if node is None:
      return "unknown", None, f"input {name!r} is not in the graph"
    if node.op == "Const":
      return "weight", _constant(node, name), None
    if node.op in ("VarHandleOp", "Placeholder") and fn_name in self.concrete:
      bound = list(self.concrete[fn_name].bound_inputs)
      first = n_args - len(bound)
      if arg_index >= first:
        node_id = bound[arg_index - first]
        var = self.variables.get(node_id)
        if var is not None:
          return "weight", Weight("variable", var.name, var.key, var.shape, var.dtype), None
        return "unknown", None, f"captured object {node_id} is not a variable"
    if node.op == "VarHandleOp":
      return "unknown", None, f"variable handle {name!r} has no object in the object graph"
    return "activation", None, None


def _constant(node, name: str) -> Weight:
  tensor = node.attr["value"].tensor
  shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
  return Weight("constant", name, None, shape, tf.dtypes.as_dtype(tensor.dtype).name,
                tensor=tensor)


# --------------------------------------------------------------------------
# Following a weight operand back to the stored tensor


@dataclasses.dataclass
class _Step:
  op: str
  node: object  # NodeDef
  frame: _Frame


def _trace(top: _TopLevel, frame: _Frame, ref: str):
  """Follows `ref` back through PASS_THROUGH_OPS and function arguments.

  Returns:
    (Weight or None, steps from the compute op towards the source, reason):
    reason is None for a weight, "activation" for a model input, else why
    the operand is not a stored tensor.
  """
  steps = []
  for _ in range(10_000):  # a bound, not a limit any real graph meets
    name, _, _ = _parse_ref(ref.lstrip("^"), True)
    if name in frame.args:
      index = frame.args[name]
      if frame.parent is None:
        kind, weight, why = top.source(frame.call_inputs, frame.fdef.signature.name, index,
                                       len(frame.args))
        if kind == "weight":
          return weight, steps, None
        return None, steps, "activation" if kind == "activation" else why
      ref, frame = frame.call_inputs[index], frame.parent
      continue
    node = frame.nodes.get(name)
    if node is None:
      return None, steps, f"input {name!r} is not in function {frame.fdef.signature.name}"
    if node.op == "Const":
      return _constant(node, frame.prefix + name), steps, None
    if node.op in PASS_THROUGH_OPS:
      steps.append(_Step(node.op, node, frame))
      ref = node.input[0]
      continue
    return None, steps, f"{node.op} {frame.prefix + name!r}"
  return None, steps, "a cycle"


class _Unmappable(Exception):
  pass


def _source(frame: _Frame, ref: str):
  """(frame, node) that produces `ref`, followed back through Identity and
  function arguments; (None, None) at a signature input or a missing node."""
  for _ in range(1000):
    name, _, _ = _parse_ref(ref, True)
    if name in frame.args:
      if frame.parent is None:
        return None, None
      ref, frame = frame.call_inputs[frame.args[name]], frame.parent
      continue
    node = frame.nodes.get(name)
    if node is None or node.op != "Identity":
      return frame, node
    ref = node.input[0]
  return None, None


def _const_value(frame: _Frame, ref: str):
  """The value of a Const feeding `ref` in `frame` (or its callers), or None."""
  _, node = _source(frame, ref)
  if node is None or node.op != "Const":
    return None
  return tf.make_ndarray(node.attr["value"].tensor)


def _forward_shapes(weight: Weight, steps: list[_Step]) -> list[tuple[int, ...]]:
  """The shape after each step, from the stored tensor towards the op."""
  shapes = []
  shape = weight.shape
  for step in reversed(steps):
    node, frame = step.node, step.frame
    if step.op == "Transpose":
      perm = _const_value(frame, node.input[1])
      if perm is None:
        raise _Unmappable(f"Transpose {frame.prefix + node.name!r} has a computed permutation")
      perm = [int(p) % len(shape) for p in np.ravel(perm)]
      shape = tuple(shape[p] for p in perm)
    elif step.op == "ExpandDims":
      dim = _const_value(frame, node.input[1])
      if dim is None:
        raise _Unmappable(f"ExpandDims {frame.prefix + node.name!r} has a computed axis")
      axis = int(np.ravel(dim)[0])
      axis = axis + len(shape) + 1 if axis < 0 else axis
      shape = shape[:axis] + (1,) + shape[axis:]
    elif step.op == "Reshape":
      saved = _saved_shapes(node)
      target = saved[0] if saved and saved[0] is not None else None
      if target is None or -1 in target:
        value = _const_value(frame, node.input[1])
        if value is None:
          raise _Unmappable(f"Reshape {frame.prefix + node.name!r} has a computed shape")
        target = tuple(int(v) for v in np.ravel(value))
      if -1 in target:
        known = int(np.prod([t for t in target if t != -1]))
        total = int(np.prod(shape))
        target = tuple(total // known if t == -1 else t for t in target)
      shape = tuple(target)
    shapes.append(shape)
  return shapes[::-1]  # shapes[i] is the output of steps[i]


def _reshape_labels(in_shape, out_shape, out_labels, where: str) -> list[bool]:
  """Maps reduction labels through a reshape that splits or merges axes.

  Axes are cut into the smallest blocks whose sizes multiply to the same
  number on both sides; a block's out axes (size > 1) must all be reduction
  axes or all output axes, and its in axes take that label.
  """
  in_labels = [False] * len(in_shape)
  i = j = 0
  while i < len(in_shape) or j < len(out_shape):
    i0, j0 = i, j
    p_in = in_shape[i] if i < len(in_shape) else 1
    p_out = out_shape[j] if j < len(out_shape) else 1
    i, j = i + 1, j + 1
    while p_in != p_out:
      if p_in < p_out and i < len(in_shape):
        p_in *= in_shape[i]
        i += 1
      elif j < len(out_shape):
        p_out *= out_shape[j]
        j += 1
      else:
        raise _Unmappable(f"Reshape {where} changes the number of elements")
    kinds = {out_labels[k] for k in range(j0, min(j, len(out_shape))) if out_shape[k] > 1}
    if len(kinds) > 1:
      raise _Unmappable(f"Reshape {where} merges reduction and output axes")
    label = kinds.pop() if kinds else False
    for k in range(i0, min(i, len(in_shape))):
      in_labels[k] = label
  return in_labels


def _map_back(weight: Weight, steps: list[_Step], op_axes: Sequence[int],
              op_rank: int) -> tuple[int, ...]:
  """The op's reduction axes on its weight operand, mapped to the stored layout."""
  shapes = _forward_shapes(weight, steps)
  if steps and len(shapes[0]) != op_rank:
    raise _Unmappable(f"the weight operand has rank {len(shapes[0])}, expected {op_rank}")
  labels = [k in op_axes for k in range(op_rank)]
  for index, step in enumerate(steps):
    in_shape = shapes[index + 1] if index + 1 < len(shapes) else weight.shape
    node, frame = step.node, step.frame
    if step.op == "Transpose":
      perm = [int(p) % len(in_shape) for p in np.ravel(_const_value(frame, node.input[1]))]
      new = [False] * len(in_shape)
      for out_axis, in_axis in enumerate(perm):
        new[in_axis] = labels[out_axis]
      labels = new
    elif step.op == "ExpandDims":
      out_shape = shapes[index]
      axis = int(np.ravel(_const_value(frame, node.input[1]))[0])
      axis = axis + len(out_shape) if axis < 0 else axis
      labels = labels[:axis] + labels[axis + 1:]
    elif step.op == "Reshape":
      labels = _reshape_labels(in_shape, shapes[index], labels, repr(frame.prefix + node.name))
  return tuple(k for k, label in enumerate(labels) if label)


# --------------------------------------------------------------------------
# Reduction axes of each compute op on its operands


def _einsum_axes(equation: str, operand: int, rank: int) -> tuple[int, ...]:
  lhs, out = equation.replace(" ", "").split("->", 1)
  labels = lhs.split(",")[operand]
  if "..." in labels:
    before, after = labels.split("...")
    labels = before + "." * (rank - len(before) - len(after)) + after
  return tuple(k for k, label in enumerate(labels) if label != "." and label not in out)


def _operand_axes(op_type: str, attrs: Mapping, operand: int, rank: int) -> tuple[int, ...]:
  """Reduction axes of `operand` as the op sees it (SPEC 3)."""
  if op_type in ("Conv2D", "Conv3D"):
    return tuple(range(rank - 1))
  if op_type == "DepthwiseConv2dNative":
    return tuple(range(rank - 2))
  if op_type in ("Conv2DBackpropInput", "Conv3DBackpropInputV2"):
    return (rank - 1,)
  if op_type == "MatMul":
    if operand == 1:
      return (1,) if attrs.get("transpose_b") else (0,)
    return (0,) if attrs.get("transpose_a") else (1,)
  if op_type.startswith("BatchMatMul"):
    if operand == 1:
      return (rank - 1,) if attrs.get("adj_y") else (rank - 2,)
    return (rank - 2,) if attrs.get("adj_x") else (rank - 1,)
  if op_type == "Einsum":
    return _einsum_axes(attrs["equation"], operand, rank)
  raise ValueError(f"not a compute op: {op_type}")


# --------------------------------------------------------------------------
# The walk


def _traced_shapes(library, fdef, arg_shapes):
  """{node name: [shapes]} for `fdef` by TF shape inference with `arg_shapes`.

  Uses tensorflow.python's function_def_to_graph: TF has no public way to
  build a graph from a FunctionDef. Saved shapes with unknown dims are
  dropped first (the importer would keep them); nested calls' outputs stay
  unknown.
  """
  from tensorflow.python.framework import function_def_to_graph  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
  fdef = function_pb2.FunctionDef.FromString(fdef.SerializeToString())

  def _known(value):
    return all(not s.unknown_rank and all(d.size >= 0 for d in s.dim)
               for s in value.list.shape)

  for node in fdef.node_def:
    if "_output_shapes" in node.attr and not _known(node.attr["_output_shapes"]):
      del node.attr["_output_shapes"]
  for index, attrs in fdef.arg_attr.items():
    if "_output_shapes" in attrs.attr and (arg_shapes[index] is not None
                                           or not _known(attrs.attr["_output_shapes"])):
      del attrs.attr["_output_shapes"]
  graph = tf.Graph()
  with graph.as_default():
    holder = graph_pb2.GraphDef()
    holder.library.CopyFrom(library)
    tf.graph_util.import_graph_def(holder, name="")
    shapes = [None if s is None else tf.TensorShape([None if d < 0 else d for d in s])
              for s in arg_shapes]
    func_graph = function_def_to_graph.function_def_to_graph(fdef, input_shapes=shapes)
  out = {}
  for op in func_graph.get_operations():
    out[op.name] = [None if o.shape.rank is None else
                    tuple(-1 if d is None else int(d) for d in o.shape.as_list())
                    for o in op.outputs]
  for index, arg in enumerate(fdef.signature.input_arg):
    if arg.name in out:
      out[("", index)] = out[arg.name][0]
  return out


def _substitute(shape, batch: int):
  if shape is None or not shape or shape[0] != -1:
    return shape
  return (batch,) + tuple(shape[1:])


def _has_unknown(shape) -> bool:
  return shape is None or -1 in shape


class _Walker:
  """Walks the functions reached from one signature call and collects ops."""

  def __init__(self, top: _TopLevel, library, batch: int, input_shapes, trace: bool):
    self.top = top
    self.library = library
    self.functions = {f.signature.name: f for f in library.function}
    self.batch = batch
    self.input_shapes = input_shapes
    self.trace = trace
    self.ops: list[ComputeOp] = []
    self.traced_any = False
    self.stack: list[str] = []

  def walk(self, fdef, prefix: str, parent, call_inputs, arg_shapes=None, repeats=1,
           branch=None):
    if fdef.signature.name in self.stack:
      return  # recursion through a function library (never in Keras exports)
    self.stack.append(fdef.signature.name)
    frame = _Frame(fdef, prefix, parent, call_inputs, arg_shapes)
    frame.repeats, frame.branch = repeats, branch
    live = _live_nodes(fdef)
    if self.trace and arg_shapes is not None and self._needs_trace(frame):
      try:
        frame.traced = _traced_shapes(self.library, fdef, arg_shapes)
        self.traced_any = True
      except (ValueError, TypeError, tf.errors.OpError):
        frame.traced = None  # keep the saved shapes
    for node in fdef.node_def:
      if node.name not in live:
        continue  # its result reaches no output (Keras' RNNs run a step only for shapes)
      if node.op in _CALL_OPS and "f" in node.attr:
        callee = self.functions.get(node.attr["f"].func.name)
        if callee is None:
          continue
        shapes = [self._resolved(frame.ref_shape(i)) for i in node.input if not i.startswith("^")]
        inputs = [i for i in node.input if not i.startswith("^")]
        # The model's own function keeps its names; deeper calls get a prefix.
        sub = prefix if parent is None else f"{prefix}{node.name}/"
        self.walk(callee, sub, frame, inputs, shapes, repeats, branch)
      elif node.op in _WHILE_OPS and "body" in node.attr:
        body = self.functions.get(node.attr["body"].func.name)
        if body is None:
          continue
        inputs = [i for i in node.input if not i.startswith("^")]
        shapes = [self._resolved(frame.ref_shape(i)) for i in inputs]
        trips = _trip_count(self.functions.get(node.attr["cond"].func.name), node, frame)
        total = None if trips is None or repeats is None else repeats * trips
        # Keras names a loop body's nodes after the loop already ("while/MatMul").
        named = all(n.name.startswith(f"{node.name}/") for n in body.node_def)
        self.walk(body, prefix if named else f"{prefix}{node.name}/", frame, inputs, shapes,
                  total, branch)
      elif node.op in _IF_OPS:
        inputs = [i for i in node.input if not i.startswith("^")][1:]  # 0: the predicate
        shapes = [self._resolved(frame.ref_shape(i)) for i in inputs]
        for attr, label in (("then_branch", "then"), ("else_branch", "else")):
          callee = self.functions.get(node.attr[attr].func.name) if attr in node.attr else None
          if callee is not None:
            self.walk(callee, f"{prefix}{node.name}/{label}/", frame, inputs, shapes, repeats,
                      f"{frame.prefix}{node.name}:{label}")
      elif node.op in COMPUTE_OPS:
        self.ops.append(self._compute_op(frame, node))
    self.stack.pop()

  def _resolved(self, shape):
    return _substitute(shape, self.batch)

  def _needs_trace(self, frame: _Frame) -> bool:
    """Whether a compute op's saved shapes leave a dim unknown (the batch too:
    a leading -1 is the batch only where nothing reshaped it, e.g. not after
    Keras' Tensordot, which folds the sequence into it)."""
    for node in frame.fdef.node_def:
      if node.op in COMPUTE_OPS:
        shapes = _saved_shapes(node)
        if not shapes or any(_has_unknown(s) for s in shapes[:1]):
          return True
        inputs = [frame.ref_shape(i) for i in node.input if not i.startswith("^")]
        if any(_has_unknown(s) for s in inputs):
          return True
    return False

  def _op_shape(self, frame: _Frame, node, shape):
    """A compute op's shape: traced shapes as they are; saved shapes with a
    leading -1 read as the batch only for convolutions (always batch-first
    there); a MatMul's leading -1 may hold batch x sequence: left unknown."""
    if frame.traced is not None or node.op not in CONV_OPS:
      return shape
    return self._resolved(shape)

  def _compute_op(self, frame: _Frame, node) -> ComputeOp:
    attrs = {k: _attr_value(node.attr[k]) for k in _ATTRS if k in node.attr}
    inputs = [i for i in node.input if not i.startswith("^")]
    input_shapes = tuple(self._op_shape(frame, node, frame.ref_shape(i)) for i in inputs)
    output_shape = self._op_shape(frame, node, frame.ref_shape(f"{node.name}:output:0"))
    if frame.traced is not None and node.name in frame.traced:
      output_shape = frame.traced[node.name][0]
    elif _saved_shapes(node):
      output_shape = self._op_shape(frame, node, _saved_shapes(node)[0])
    base = dict(name=frame.prefix + node.name, type=node.op, attrs=attrs,
                input_shapes=input_shapes, output_shape=output_shape,
                repeats=getattr(frame, "repeats", 1), branch=getattr(frame, "branch", None))

    if node.op in _FILTER_OPERAND:
      candidates = [_FILTER_OPERAND[node.op]]
    else:
      candidates = [1, 0]  # the weight is usually the second operand
    found, reasons = [], []
    for operand in candidates:
      if operand >= len(inputs):
        continue
      weight, steps, why = _trace(self.top, frame, inputs[operand])
      if weight is not None:
        found.append((operand, weight, steps))
      else:
        reasons.append((operand, why))
    if not found:
      if node.op in _FILTER_OPERAND:
        why = reasons[0][1] if reasons else "no filter input"
        return ComputeOp(**base, unmapped=f"weight not found: the filter comes from {why}")
      return ComputeOp(**base, unmapped="weight not found: both operands are computed tensors")
    # Prefer a variable over a constant, then the second operand.
    operand, weight, steps = sorted(found, key=lambda f: f[1].kind != "variable")[0]
    path = tuple(s.op for s in reversed(steps))
    weight = dataclasses.replace(weight, path=path)
    rank = input_shapes[operand]
    rank = len(rank) if rank is not None else None
    try:
      shapes = _forward_shapes(weight, steps)
      rank = len(shapes[0]) if shapes else len(weight.shape)
      op_axes = _operand_axes(node.op, attrs, operand, rank)
      axes = _map_back(weight, steps, op_axes, rank)
    except _Unmappable as e:
      return ComputeOp(**base, weight=weight, weight_operand=operand, unmapped=str(e))
    return ComputeOp(**base, weight=weight, weight_operand=operand, reduction_axes=axes)


def _live_nodes(fdef) -> set[str]:
  """Names of the nodes whose results reach the function's outputs (or its
  control outputs): the others are pruned when TensorFlow runs it."""
  nodes = {n.name: n for n in fdef.node_def}
  pending = [_parse_ref(ref.lstrip("^"), True)[0] for ref in fdef.ret.values()]
  pending += list(fdef.control_ret.values())
  live = set()
  while pending:
    name = pending.pop()
    if name in live or name not in nodes:
      continue
    live.add(name)
    pending.extend(_parse_ref(ref.lstrip("^"), True)[0] for ref in nodes[name].input)
  return live


def _static_int(frame: _Frame, ref: str) -> int | None:
  """A scalar int the graph fixes without running: a Const, or one dim of a
  saved static shape read as StridedSlice(Shape(x), [k], [k + 1]) (how
  tf_keras' RNN loops take their number of steps). None otherwise."""
  frame, node = _source(frame, ref)
  if node is None:
    return None
  if node.op == "Const":
    value = tf.make_ndarray(node.attr["value"].tensor)
    return int(np.ravel(value)[0]) if np.size(value) == 1 else None
  if node.op != "StridedSlice":
    return None
  shape_frame, shape_node = _source(frame, node.input[0])
  begin, end = (_const_value(frame, node.input[i]) for i in (1, 2))
  if shape_node is None or shape_node.op != "Shape" or begin is None or end is None:
    return None
  k = int(np.ravel(begin)[0])
  if int(np.ravel(end)[0]) != k + 1:
    return None
  for saved_only in (False, True):  # a traced shape may know less than the saved one
    shape = shape_frame.ref_shape(shape_node.input[0], saved_only)
    if shape is not None and -len(shape) <= k < len(shape) and shape[k] >= 0:
      return int(shape[k])
  return None


def _trip_count(cond, node, frame: _Frame) -> int | None:
  """How many times a While loop runs, when the graph fixes it: the loop stops
  when `counter < bound` fails, for a counter with a constant start and a
  bound that is a constant or a static dim (Keras' RNN loops: `time < steps`),
  or at a constant maximum_iterations (input 1 of a v2 while loop; -1 means
  none). None if nothing fixes it."""
  inputs = [i for i in node.input if not i.startswith("^")]
  bounds = []
  if cond is not None:
    args = {a.name: i for i, a in enumerate(cond.signature.input_arg)}
    nodes = {n.name: n for n in cond.node_def}

    def value(ref):  # a cond input, resolved in the frame that runs the loop
      name = _parse_ref(ref, True)[0]
      if name in args:
        return _static_int(frame, inputs[args[name]]) if args[name] < len(inputs) else None
      found = nodes.get(name)
      if found is not None and found.op == "Const":
        v = tf.make_ndarray(found.attr["value"].tensor)
        return int(np.ravel(v)[0]) if np.size(v) == 1 else None
      return None

    for n in cond.node_def:
      if n.op not in ("Less", "LessEqual") or len(n.input) < 2:
        continue
      counter = _parse_ref(n.input[0], True)[0]
      if counter not in args:
        continue
      start, stop = value(n.input[0]), value(n.input[1])
      if start is None or stop is None:
        continue
      bounds.append(max(0, stop - start + (n.op == "LessEqual")))
  if len(inputs) > 1 and "maximum_iterations" in _parse_ref(inputs[1], True)[0]:
    limit = _static_int(frame, inputs[1])
    if limit is not None and limit >= 0:
      bounds.append(limit)
  return min(bounds) if bounds else None


def _signature_calls(meta_graph, signature: str):
  """The top-level call nodes that compute the signature's outputs."""
  sigs = meta_graph.signature_def
  if signature not in sigs:
    names = ", ".join(sorted(k for k in sigs if not k.startswith("__"))) or "none"
    raise SavedModelError(f"unknown signature {signature!r}; this SavedModel has: {names}")
  nodes = {n.name: n for n in meta_graph.graph_def.node}
  calls, seen = [], set()
  pending = [t.name.split(":")[0] for t in sigs[signature].outputs.values()]
  while pending:  # back from the outputs to the first call nodes
    name = pending.pop()
    if name in seen or name not in nodes:
      continue
    seen.add(name)
    node = nodes[name]
    if node.op in _CALL_OPS and "f" in node.attr:
      calls.append(node)
      continue
    pending.extend(i.split(":")[0].lstrip("^") for i in node.input)
  calls.sort(key=lambda n: n.name)
  return sigs[signature], calls


def _input_shapes(sig, input_shape) -> tuple[dict, int]:
  """{name: shape} of the signature's inputs with the user's shapes, and the batch."""
  declared = {k: _shape_of(v.tensor_shape) for k, v in sig.inputs.items()}
  if input_shape is None:
    return declared, 1
  if isinstance(input_shape, Mapping):
    given = dict(input_shape)
  elif len(declared) == 1:
    given = {next(iter(declared)): input_shape}
  else:
    raise ValueError(f"the signature has inputs {sorted(declared)}: give input_shape as a "
                     "{name: shape} dict")
  unknown = sorted(set(given) - set(declared))
  if unknown:
    raise ValueError(f"input_shape names {unknown}; the signature's inputs are {sorted(declared)}")
  out, batch = dict(declared), None
  for name, shape in given.items():
    shape = tuple(int(d) for d in shape)
    if any(d < 1 for d in shape):
      raise ValueError(f"input_shape for {name!r} must be positive dims, got {shape}")
    want = declared[name]
    if want is not None and (len(want) != len(shape) or
                             any(w not in (-1, s) for w, s in zip(want, shape))):
      raise ValueError(f"input_shape {shape} for {name!r} does not fit its declared shape "
                       f"{tuple(None if d < 0 else d for d in want)}")
    out[name] = shape
    batch = shape[0] if batch is None and shape else batch
  return out, batch or 1


def read_graph(saved_model_dir: str, input_shape=None,
               signature: str = DEFAULT_SIGNATURE) -> SavedModelGraph:
  """Lists the compute ops reached from `signature` and the weights they read.

  Args:
    saved_model_dir: a SavedModel directory.
    input_shape: the full shape of the input (a tuple) or of each input
      ({name: shape}), batch included; None: batch 1 and the declared shapes.
    signature: the signature to walk.

  Returns:
    A SavedModelGraph.

  Raises:
    SavedModelError: not a readable SavedModel, or an unknown signature.
    ValueError: a bad input_shape.
  """
  saved = variables_lib.load_proto(saved_model_dir)
  checkpoint = variables_lib.open_checkpoint(saved_model_dir)
  all_variables = tuple(variables_lib.variable_objects(saved_model_dir, saved, checkpoint))
  twins = variables_lib.structural_twins(saved, checkpoint[1])
  variables = {v.node_id: v for v in all_variables}
  meta_graph = saved.meta_graphs[0]
  sig, calls = _signature_calls(meta_graph, signature)
  inputs, batch = _input_shapes(sig, input_shape)
  top = _TopLevel(saved, meta_graph.graph_def, variables)
  walker = _Walker(top, meta_graph.graph_def.library, batch, inputs,
                   trace=True)
  placeholders = {v.name.split(":")[0]: k for k, v in sig.inputs.items()}
  for call in calls:
    fdef = walker.functions.get(call.attr["f"].func.name)
    if fdef is None:
      raise SavedModelError(f"{saved_model_dir!r}: signature {signature!r} calls "
                            f"{call.attr['f'].func.name!r}, which is not in the function library")
    arg_shapes = []
    for ref in call.input:
      name = ref.split(":")[0]
      # A signature input's leading unknown dim is its batch (Keras exports' convention).
      arg_shapes.append(_substitute(inputs.get(placeholders.get(name)), batch)
                        if name in placeholders else None)
    walker.walk(fdef, "", None, call, arg_shapes)
  ops = tuple(walker.ops)
  return SavedModelGraph(saved_model_dir, signature, inputs, ops,
                         "traced" if walker.traced_any else "saved shapes", all_variables,
                         twins)


def weight_value(saved_model_dir: str, weight: Weight, reader=None) -> np.ndarray:
  """The stored value of a weight: a constant from the graph, a variable from
  the checkpoint (pass `reader` to reuse one).

  Raises:
    SavedModelError: unreadable variables.
  """
  if weight.kind == "constant":
    return tf.make_ndarray(weight.tensor)
  if reader is None:
    reader, _ = variables_lib.open_checkpoint(saved_model_dir)
  return np.asarray(variables_lib.read_tensor(reader, weight.key, saved_model_dir))


def format_graph(graph: SavedModelGraph) -> str:
  """A table of the ops: name, type, shapes, weight and reduction axes."""
  from mortar_tf import table  # pylint: disable=import-outside-toplevel

  def _shape(s):
    return "?" if s is None else "x".join("?" if d < 0 else str(d) for d in s)

  rows = []
  for op in graph.ops:
    rows.append([op.name, op.type, _shape(op.activation_shape), _shape(op.output_shape),
                 op.weight.name if op.weight else "-",
                 _shape(op.weight.shape) if op.weight else "-",
                 ",".join(map(str, op.reduction_axes)) if op.mapped else op.unmapped])
  return table.format_table(["op", "type", "input", "output", "weight", "weight shape",
                             "reduction axes / why unmapped"], rows)
