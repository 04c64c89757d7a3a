"""Reading a SavedModel's graph protos: tensor references, saved and inferred
shapes, and the frames of the walk (one per function call).

A frame knows its function's nodes and how the caller feeds each argument,
so a reference can be followed back across calls (`source`) and constant
values and static dims read without running anything (`const_value`,
`static_int`). `traced_shapes` (and ShapeTracer, which imports the function
library once) runs TensorFlow's shape inference on one function where the
saved shapes leave a dim unknown, with hints for what TF cannot see.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import function_pb2
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import types_pb2


def parse_ref(ref: str, in_function: bool) -> tuple[str, str | None, int]:
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


def shape_of(attr_value) -> tuple[int, ...] | None:
  if attr_value.unknown_rank:
    return None
  return tuple(int(d.size) for d in attr_value.dim)


def saved_shapes(node_or_attrs) -> list[tuple[int, ...] | None] | None:
  attrs = node_or_attrs.attr
  if "_output_shapes" not in attrs:
    return None
  return [shape_of(s) for s in attrs["_output_shapes"].list.shape]


def flat_output_index(node, out_arg: str | None, index: int) -> int:
  """The position of output `out_arg:index` among all outputs of `node`.

  List-typed output arguments count their length from the node's attrs
  (number_attr or type_list_attr); unknown op types keep `index`.
  """
  if out_arg is None:
    return index
  op_def = registered_op_def(node.op)
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


def registered_op_def(op_type: str):
  # TF has no public accessor for registered OpDefs; the registry is the
  # only place that knows the output arguments of an op type.
  from tensorflow.python.framework import op_def_registry  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
  return op_def_registry.get(op_type)


def attr_value(value):
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


class Frame:
  """A function on the walk: its nodes and how its arguments are fed."""

  def __init__(self, fdef, prefix: str, parent: "Frame | None", call_inputs, given=None):
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
      shapes = [shape_of(s) for s in attrs.attr["_output_shapes"].list.shape]
      if shapes:
        return shapes[0]
    if self.parent is not None:
      return self.parent.ref_shape(self.call_inputs[index])
    return None

  def ref_shape(self, ref: str, saved_only: bool = False):
    name, out_arg, index = parse_ref(ref, True)
    if name in self.args and out_arg is None:
      return self.arg_shape(self.args[name])
    node = self.nodes.get(name)
    if node is None:
      return None
    flat = flat_output_index(node, out_arg, index)
    if self.traced is not None and name in self.traced and not saved_only:
      shapes = self.traced[name]
    else:
      shapes = saved_shapes(node)
    if not shapes or flat >= len(shapes):
      return None
    return shapes[flat]


def source(frame: Frame, ref: str):
  """(frame, node) that produces `ref`, followed back through Identity and
  function arguments; (None, None) at a signature input or a missing node."""
  for _ in range(1000):
    name, _, _ = parse_ref(ref, True)
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


def const_value(frame: Frame, ref: str):
  """The value of a Const feeding `ref` in `frame` (or its callers), or None."""
  _, node = source(frame, ref)
  if node is None or node.op != "Const":
    return None
  return tf.make_ndarray(node.attr["value"].tensor)


def static_int(frame: Frame, ref: str) -> int | None:
  """A scalar int the graph fixes without running: a Const, or one dim of a
  saved static shape read as StridedSlice(Shape(x), [k], [k + 1]) (how
  tf_keras' RNN loops take their number of steps). None otherwise."""
  frame, node = source(frame, ref)
  if node is None:
    return None
  if node.op == "Const":
    value = tf.make_ndarray(node.attr["value"].tensor)
    return int(np.ravel(value)[0]) if np.size(value) == 1 else None
  if node.op != "StridedSlice":
    return None
  shape_frame, shape_node = source(frame, node.input[0])
  begin, end = (const_value(frame, node.input[i]) for i in (1, 2))
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


def output_dtype(node, flat: int):
  """The dtype (a DataType enum) of output `flat` of `node`, or None where the
  op type is not registered."""
  op_def = registered_op_def(node.op)
  if op_def is None:
    return None
  position = 0
  for arg in op_def.output_arg:
    single = arg.type or (node.attr[arg.type_attr].type if arg.type_attr else None)
    if arg.number_attr:
      types = [single] * int(node.attr[arg.number_attr].i)
    elif arg.type_list_attr:
      types = list(node.attr[arg.type_list_attr].list.type)
    else:
      types = [single]
    if flat < position + len(types):
      return types[flat - position]
    position += len(types)
  return None


_HINT = "/_mortar_shape_hint_"


def _add_hints(fdef, hints) -> dict:
  """Puts an EnsureShape after each hinted output of `fdef` (a copy) and feeds
  its consumers from it, so shape inference downstream starts from the hint.
  Returns {hint node name: (node name, flat output index)}."""
  nodes = {n.name: n for n in fdef.node_def}
  made, refs = {}, {}
  for (name, flat), shape in sorted(hints.items()):
    node = nodes.get(name)
    dtype = output_dtype(node, flat) if node is not None else None
    if dtype is None:
      continue
    hint = fdef.node_def.add()
    hint.name = f"{name}{_HINT}{flat}"
    hint.op = "EnsureShape"
    hint.input.append(flat_ref(node, flat))
    hint.attr["T"].type = dtype
    hint.attr["shape"].shape.CopyFrom(
        tf.TensorShape([None if d < 0 else d for d in shape]).as_proto())
    made[hint.name] = (name, flat)
    refs[(name, flat)] = f"{hint.name}:output:0"
  for node in fdef.node_def:
    if node.name in made:
      continue
    for k, ref in enumerate(node.input):
      if ref.startswith("^"):
        continue
      name, out_arg, index = parse_ref(ref, True)
      if name in nodes:
        node.input[k] = refs.get((name, flat_output_index(nodes[name], out_arg, index)), ref)
  return made


def flat_ref(node, flat: int) -> str:
  """The FunctionDef reference "node:out_arg:i" of flat output `flat`."""
  op_def = registered_op_def(node.op)
  position = 0
  for arg in op_def.output_arg:
    if arg.number_attr:
      n = int(node.attr[arg.number_attr].i)
    elif arg.type_list_attr:
      n = len(node.attr[arg.type_list_attr].list.type)
    else:
      n = 1
    if flat < position + n:
      return f"{node.name}:{arg.name}:{flat - position}"
    position += n
  raise ValueError(f"{node.name} has no output {flat}")


def _variable_handles(fdef) -> None:
  """Feeds the readers of each resource argument that carries its variable's
  shape (handle_data) from a VarHandleOp of that shape: the importer gives an
  argument no handle data, so a ResourceGather (an embedding lookup) would
  have no shape. Only for shape inference: the copy never runs."""
  handles = {}
  for arg in fdef.signature.input_arg:
    if arg.type == types_pb2.DT_RESOURCE and len(arg.handle_data) == 1:
      node = fdef.node_def.add()
      node.name = f"{arg.name}{_HINT}variable"
      node.op = "VarHandleOp"
      node.attr["dtype"].type = arg.handle_data[0].dtype
      node.attr["shape"].shape.CopyFrom(arg.handle_data[0].shape)
      node.attr["shared_name"].s = node.name.encode()
      node.attr["container"].s = b""
      handles[arg.name] = f"{node.name}:resource:0"
  if not handles:
    return
  for node in fdef.node_def:
    for k, ref in enumerate(node.input):
      if ref in handles:
        node.input[k] = handles[ref]


class ShapeTracer:
  """TensorFlow's shape inference on the functions of one function library
  (imported into a graph once, for every function traced)."""

  def __init__(self, library):
    self.library = library
    self._graph = None

  def trace(self, fdef, arg_shapes, hints=None):
    """{node name: [shapes]} for `fdef` with `arg_shapes` (see traced_shapes)."""
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
    _variable_handles(fdef)
    made = _add_hints(fdef, hints) if hints else {}
    if self._graph is None:
      self._graph = tf.Graph()
      with self._graph.as_default():
        holder = graph_pb2.GraphDef()
        holder.library.CopyFrom(self.library)
        tf.graph_util.import_graph_def(holder, name="")
    with self._graph.as_default():
      shapes = [None if s is None else tf.TensorShape([None if d < 0 else d for d in s])
                for s in arg_shapes]
      func_graph = function_def_to_graph.function_def_to_graph(fdef, input_shapes=shapes)
    out = {}
    for op in func_graph.get_operations():
      out[op.name] = [None if o.shape.rank is None else
                      tuple(-1 if d is None else int(d) for d in o.shape.as_list())
                      for o in op.outputs]
    for hint, (name, flat) in made.items():  # the hinted node's output is the hint's
      if name in out and flat < len(out[name]):
        out[name][flat] = out[hint][0]
      del out[hint]
    for index, arg in enumerate(fdef.signature.input_arg):
      if arg.name in out:
        out[("", index)] = out[arg.name][0]
    return out


def traced_shapes(library, fdef, arg_shapes, hints=None):
  """{node name: [shapes]} for `fdef` by TF shape inference with `arg_shapes`.

  Uses tensorflow.python's function_def_to_graph: TF has no public way to
  build a graph from a FunctionDef. Saved shapes with unknown dims are
  dropped first (the importer would keep them). TF's inference stops at
  what it cannot see: nested calls' outputs, a While loop's TensorLists (it
  keeps neither their length nor, inside the loop body, their element
  shape). `hints` {(node name, flat output index): shape} supplies those
  from outside (the walk in graph.py infers them): each hinted output gets
  an EnsureShape with the hint, so every op downstream is inferred from it,
  and a hint that contradicts TF's inference is an error, never a guess.
  """
  return ShapeTracer(library).trace(fdef, arg_shapes, hints)
