"""Following a compute op's weight operand back to the tensor the SavedModel
stores, and mapping the op's reduction axes (SPEC 3) to that tensor's layout.

A weight operand is followed back through PASS_THROUGH_OPS (also across
function arguments) to a variable, named with its checkpoint key through the
object graph, or to a constant. Transpose permutes the axes, ExpandDims drops
the inserted one, and a Reshape keeps them where it only splits or merges
axes of one kind; anything else raises Unmappable with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from mortar_tf.savedmodel import graph_protos as protos

# Ops a weight is followed back through.
PASS_THROUGH_OPS = ("Identity", "Cast", "ReadVariableOp", "ExpandDims", "Reshape", "Transpose")


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


class TopLevel:
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
      return "weight", constant(node, name), None
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


def constant(node, name: str) -> Weight:
  tensor = node.attr["value"].tensor
  shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
  return Weight("constant", name, None, shape, tf.dtypes.as_dtype(tensor.dtype).name,
                tensor=tensor)


@dataclasses.dataclass
class Step:
  op: str
  node: object  # NodeDef
  frame: protos.Frame


def trace(top: TopLevel, frame: protos.Frame, ref: str):
  """Follows `ref` back through PASS_THROUGH_OPS and function arguments.

  Returns:
    (Weight or None, steps from the compute op towards the source, reason):
    reason is None for a weight, "activation" for a model input, else why
    the operand is not a stored tensor.
  """
  steps = []
  for _ in range(10_000):  # a bound, not a limit any real graph meets
    name, _, _ = protos.parse_ref(ref.lstrip("^"), True)
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
      return constant(node, frame.prefix + name), steps, None
    if node.op in PASS_THROUGH_OPS:
      steps.append(Step(node.op, node, frame))
      ref = node.input[0]
      continue
    return None, steps, f"{node.op} {frame.prefix + name!r}"
  return None, steps, "a cycle"


def reads_input(top: TopLevel, frame: protos.Frame, ref: str) -> bool:
  """Whether the tensor `ref` depends on a model input (is an activation):
  followed back through every op, function argument, call and loop (a call's
  or loop's result is taken to depend on all its inputs). A weight computed
  from variables and constants alone (a slice, a scaled kernel) does not."""
  pending, seen = [(frame, ref)], set()
  while pending:
    frame, ref = pending.pop()
    name = protos.parse_ref(ref, True)[0]
    if (id(frame), name) in seen:
      continue
    seen.add((id(frame), name))
    if name in frame.args:
      index = frame.args[name]
      if frame.parent is not None:
        pending.append((frame.parent, frame.call_inputs[index]))
      elif top.source(frame.call_inputs, frame.fdef.signature.name, index,
                      len(frame.args))[0] == "activation":
        return True
      continue
    node = frame.nodes.get(name)
    if node is not None:
      pending.extend((frame, i) for i in node.input if not i.startswith("^"))
  return False


class Unmappable(Exception):
  pass


def forward_shapes(weight: Weight, steps: list[Step]) -> list[tuple[int, ...]]:
  """The shape after each step, from the stored tensor towards the op."""
  shapes = []
  shape = weight.shape
  for step in reversed(steps):
    node, frame = step.node, step.frame
    if step.op == "Transpose":
      perm = protos.const_value(frame, node.input[1])
      if perm is None:
        raise Unmappable(f"Transpose {frame.prefix + node.name!r} has a computed permutation")
      perm = [int(p) % len(shape) for p in np.ravel(perm)]
      shape = tuple(shape[p] for p in perm)
    elif step.op == "ExpandDims":
      dim = protos.const_value(frame, node.input[1])
      if dim is None:
        raise Unmappable(f"ExpandDims {frame.prefix + node.name!r} has a computed axis")
      axis = int(np.ravel(dim)[0])
      axis = axis + len(shape) + 1 if axis < 0 else axis
      shape = shape[:axis] + (1,) + shape[axis:]
    elif step.op == "Reshape":
      saved = protos.saved_shapes(node)
      target = saved[0] if saved and saved[0] is not None else None
      if target is None or -1 in target:
        value = protos.const_value(frame, node.input[1])
        if value is None:
          raise Unmappable(f"Reshape {frame.prefix + node.name!r} has a computed shape")
        target = tuple(int(v) for v in np.ravel(value))
      if -1 in target:
        known = int(np.prod([t for t in target if t != -1]))
        total = int(np.prod(shape))
        target = tuple(total // known if t == -1 else t for t in target)
      shape = tuple(target)
    shapes.append(shape)
  return shapes[::-1]  # shapes[i] is the output of steps[i]


def reshape_labels(in_shape, out_shape, out_labels, where: str) -> list[bool]:
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
        raise Unmappable(f"Reshape {where} changes the number of elements")
    kinds = {out_labels[k] for k in range(j0, min(j, len(out_shape))) if out_shape[k] > 1}
    if len(kinds) > 1:
      raise Unmappable(f"Reshape {where} merges reduction and output axes")
    label = kinds.pop() if kinds else False
    for k in range(i0, min(i, len(in_shape))):
      in_labels[k] = label
  return in_labels


def map_back(weight: Weight, steps: list[Step], op_axes: Sequence[int],
              op_rank: int) -> tuple[int, ...]:
  """The op's reduction axes on its weight operand, mapped to the stored layout."""
  shapes = forward_shapes(weight, steps)
  if steps and len(shapes[0]) != op_rank:
    raise Unmappable(f"the weight operand has rank {len(shapes[0])}, expected {op_rank}")
  labels = [k in op_axes for k in range(op_rank)]
  for index, step in enumerate(steps):
    in_shape = shapes[index + 1] if index + 1 < len(shapes) else weight.shape
    node, frame = step.node, step.frame
    if step.op == "Transpose":
      perm = [int(p) % len(in_shape) for p in np.ravel(protos.const_value(frame, node.input[1]))]
      new = [False] * len(in_shape)
      for out_axis, in_axis in enumerate(perm):
        new[in_axis] = labels[out_axis]
      labels = new
    elif step.op == "ExpandDims":
      out_shape = shapes[index]
      axis = int(np.ravel(protos.const_value(frame, node.input[1]))[0])
      axis = axis + len(out_shape) if axis < 0 else axis
      labels = labels[:axis] + labels[axis + 1:]
    elif step.op == "Reshape":
      labels = reshape_labels(in_shape, shapes[index], labels, repr(frame.prefix + node.name))
  return tuple(k for k, label in enumerate(labels) if label)


def einsum_axes(equation: str, operand: int, rank: int) -> tuple[int, ...]:
  lhs, out = equation.replace(" ", "").split("->", 1)
  labels = lhs.split(",")[operand]
  if "..." in labels:
    before, after = labels.split("...")
    labels = before + "." * (rank - len(before) - len(after)) + after
  return tuple(k for k, label in enumerate(labels) if label != "." and label not in out)


def operand_axes(op_type: str, attrs: Mapping, operand: int, rank: int) -> tuple[int, ...]:
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
    return einsum_axes(attrs["equation"], operand, rank)
  raise ValueError(f"not a compute op: {op_type}")
