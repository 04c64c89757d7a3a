"""Control flow on the walk: which nodes of a function TensorFlow runs, and how
many times a While loop runs when the graph fixes it."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mortar_tf.savedmodel import graph_protos as protos


# Ops that read only the shape (and dtype) of their data inputs, never a value.
SHAPE_ONLY_OPS = ("Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike")


def live_nodes(fdef) -> set[str]:
  """Names of the nodes whose results reach the function's outputs (or its
  control outputs): the others are pruned when TensorFlow runs it. A result
  that reaches them only through the shape of a tensor (SHAPE_ONLY_OPS) is
  not live either: its values are never used (Keras' masked RNNs compute a
  step outside the loop only for zeros_like of its output), so no
  accelerator computes it."""
  nodes = {n.name: n for n in fdef.node_def}
  pending = [protos.parse_ref(ref.lstrip("^"), True)[0] for ref in fdef.ret.values()]
  pending += list(fdef.control_ret.values())
  live = set()
  while pending:
    name = pending.pop()
    if name in live or name not in nodes:
      continue
    live.add(name)
    node = nodes[name]
    shape_only = node.op in SHAPE_ONLY_OPS
    pending.extend(protos.parse_ref(ref.lstrip("^"), True)[0] for ref in node.input
                   if not shape_only or ref.startswith("^"))
  return live


def trip_count(cond, node, frame: protos.Frame) -> int | None:
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
      name = protos.parse_ref(ref, True)[0]
      if name in args:
        return protos.static_int(frame, inputs[args[name]]) if args[name] < len(inputs) else None
      found = nodes.get(name)
      if found is not None and found.op == "Const":
        v = tf.make_ndarray(found.attr["value"].tensor)
        return int(np.ravel(v)[0]) if np.size(v) == 1 else None
      return None

    for n in cond.node_def:
      if n.op not in ("Less", "LessEqual") or len(n.input) < 2:
        continue
      counter = protos.parse_ref(n.input[0], True)[0]
      if counter not in args:
        continue
      start, stop = value(n.input[0]), value(n.input[1])
      if start is None or stop is None:
        continue
      bounds.append(max(0, stop - start + (n.op == "LessEqual")))
  if len(inputs) > 1 and "maximum_iterations" in protos.parse_ref(inputs[1], True)[0]:
    limit = protos.static_int(frame, inputs[1])
    if limit is not None and limit >= 0:
      bounds.append(limit)
  return min(bounds) if bounds else None


# --------------------------------------------------------------------------
# TensorLists: how RNN loops carry their sequences (TF's shape inference keeps
# neither a list's length nor, inside a loop body, its element shape).

LIST_SETTERS = ("TensorListSetItem", "TensorListPushBack")
_LIST_ITEM = {"TensorListSetItem": 2, "TensorListPushBack": 1}


def merge_shapes(a, b):
  """The shape that knows what either knows (-1: unknown dim; None: unknown
  rank); `a` where they disagree (never a guess between two known dims)."""
  if a is None:
    return b
  if b is None or len(a) != len(b):
    return a
  if any(x >= 0 and y >= 0 and x != y for x, y in zip(a, b)):
    return a
  return tuple(x if x >= 0 else y for x, y in zip(a, b))


def _inputs(node) -> list[str]:
  return [i for i in node.input if not i.startswith("^")]


def _const_shape(frame: protos.Frame, ref: str):
  """An element_shape input as a shape: None for unknown rank (-1 or a
  computed value)."""
  value = protos.const_value(frame, ref)
  if value is None or np.ndim(value) != 1:
    return None
  return tuple(int(v) for v in np.ravel(value))


def list_element(frame: protos.Frame, ref: str, loop_item) -> tuple[int, ...] | None:
  """The element shape of the TensorList `ref` holds, as far as the graph
  fixes it, followed back through Identity, function arguments, items set
  into it and While loops (their output k is their input k, with the items
  the body sets: `loop_item(frame, while_node, k)` gives those) to the op
  that made it: TensorListFromTensor (the tensor's shape without its first
  dim), TensorListReserve or EmptyTensorList (their element_shape)."""
  shape = None
  for _ in range(1000):
    name, out_arg, index = protos.parse_ref(ref, True)
    if name in frame.args:
      if frame.parent is None:
        return shape
      ref, frame = frame.call_inputs[frame.args[name]], frame.parent
      continue
    node = frame.nodes.get(name)
    if node is None:
      return shape
    if node.op == "Identity":
      ref = node.input[0]
    elif node.op in LIST_SETTERS:
      shape = merge_shapes(shape, frame.ref_shape(_inputs(node)[_LIST_ITEM[node.op]]))
      ref = node.input[0]
    elif node.op in ("While", "StatelessWhile"):
      flat = protos.flat_output_index(node, out_arg, index)
      shape = merge_shapes(shape, loop_item(frame, node, flat))
      ref = _inputs(node)[flat]
    elif node.op == "TensorListFromTensor":
      tensor = frame.ref_shape(node.input[0])
      made = tuple(tensor[1:]) if tensor is not None and len(tensor) >= 1 else None
      return merge_shapes(merge_shapes(shape, made), _const_shape(frame, node.input[1]))
    elif node.op in ("TensorListReserve", "EmptyTensorList"):
      return merge_shapes(shape, _const_shape(frame, node.input[0]))
    else:
      return shape
  return shape


def list_length(frame: protos.Frame, ref: str) -> int | None:
  """How many elements the TensorList `ref` holds where the graph fixes it:
  followed back as list_element does (setting an item keeps the length) to
  TensorListFromTensor (the tensor's first dim) or TensorListReserve (its
  num_elements, a constant or a static dim). None otherwise (PushBack
  grows a list: not followed)."""
  for _ in range(1000):
    name, out_arg, index = protos.parse_ref(ref, True)
    if name in frame.args:
      if frame.parent is None:
        return None
      ref, frame = frame.call_inputs[frame.args[name]], frame.parent
      continue
    node = frame.nodes.get(name)
    if node is None:
      return None
    if node.op in ("Identity", "TensorListSetItem"):
      ref = node.input[0]
    elif node.op in ("While", "StatelessWhile"):
      ref = _inputs(node)[protos.flat_output_index(node, out_arg, index)]
    elif node.op == "TensorListFromTensor":
      tensor = frame.ref_shape(node.input[0])
      return tensor[0] if tensor and tensor[0] >= 0 else None
    elif node.op == "TensorListReserve":
      return protos.static_int(frame, node.input[1])
    else:
      return None
  return None
