"""The compute ops of a SavedModel and the weights they read, from its protos.

Nothing is executed. The reader starts at a signature (default
"serving_default"), follows the call nodes from there into nested functions
(never the whole function library: tf_keras SavedModels hold each layer
twice), and lists every compute op it meets (CONV_OPS and MATMUL_OPS) with
its attributes, shapes and weight, and every op it does not model that
multiplies with weights (UNMODELLED_OPS), unmapped. A weight operand is
followed back through Identity, Cast, ReadVariableOp, ExpandDims, Reshape and
Transpose (also across function arguments) to a variable, named with its
checkpoint key through the object graph, or to a constant.

The weight's reduction axes (SPEC 3) are those of the op, mapped back to the
stored variable's layout: Transpose permutes them, ExpandDims drops the
inserted axis, and a Reshape keeps them where it only splits or merges axes
of one kind. A Reshape that merges a reduction axis with an output axis makes
the op unmapped, with that reason, as does a weight made by any other op. A
MatMul-like op both of whose operands depend on a model input multiplies two
activations (attention scores): unmapped, and marked `activation_op`.

Control flow is entered: a While/StatelessWhile body (how RNN layers export
their time loop) like a call whose arguments are the loop's inputs, so a
kernel captured by the loop traces back to its variable; each op there
carries the loop's trip count (`repeats`), read from the loop condition
(`counter < constant`, with the counter's constant start) or the loop's
constant maximum_iterations, None when neither is constant. If/StatelessIf
branches are entered too, their ops marked with the branch (`branch`). Ops
whose results reach no output of their function are left out: TensorFlow
prunes them (Keras' RNNs compute one step outside the loop only for its
shapes); so are those whose results are used only through their shape
(control_flow.SHAPE_ONLY_OPS: a masked Keras RNN's step outside the loop
feeds only zeros_like).

Shapes come from the nodes' `_output_shapes`. Where a compute op's saved
shapes leave a dim unknown, its function is traced with TensorFlow's shape
inference from the signature's input shapes (their leading dim, the batch,
from `input_shape`, else 1; other dims from `input_shape` or as declared):
a MatMul behind a reshape that folds the sequence into the batch (Keras'
Tensordot) then gets batch x sequence, and a dim nothing fixes stays -1
(unknown), never guessed. Without tracing, only a convolution's leading -1
is read as the batch. TF infers one function at a time, and loses what
crosses a call or a loop; the walk carries it (see _Walker's shape flow): a
function is traced with its arguments' shapes and the element shapes of the
TensorLists it is given (an RNN loop body's time step), with hints for a
loop's stacked output, a call's results and resource arguments' variable
shapes, until no hint adds a dim.

The parts live beside this module: graph_protos (references, shapes, frames),
weight_trace (weights and their axes), control_flow (live nodes, trip counts,
TensorLists).

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
from tensorflow.core.framework import types_pb2

from mortar_tf import table
from mortar_tf.savedmodel import control_flow
from mortar_tf.savedmodel import graph_protos as protos
from mortar_tf.savedmodel import variables as variables_lib
from mortar_tf.savedmodel import weight_trace
from mortar_tf.savedmodel.variables import SavedModelError

CONV_OPS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput",
            "Conv3DBackpropInputV2")
MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum")
COMPUTE_OPS = CONV_OPS + MATMUL_OPS
# Ops that multiply-accumulate with a weight but that the reader does not
# model (fused, quantized, sparse, cuDNN RNN and XLA ops): listed, unmapped,
# so an estimate says what it misses instead of leaving them out unseen.
UNMODELLED_OPS = ("Conv", "Conv3DBackpropInput", "DepthwiseConv2dNativeBackpropInput",
                  "CudnnRNN", "CudnnRNNV2", "CudnnRNNV3", "BlockLSTM", "BlockLSTMV2",
                  "LSTMBlockCell", "GRUBlockCell", "SparseMatMul", "SparseTensorDenseMatMul",
                  "QuantizedConv2D", "QuantizedMatMul", "QuantizedBatchMatMul",
                  "QuantizedDepthwiseConv2D", "_FusedConv2D", "_FusedMatMul",
                  "_FusedBatchMatMulV2", "FusedPadConv2D", "FusedResizeAndPadConv2D",
                  "XlaConv", "XlaConvV2", "XlaDot", "XlaDotV2", "XlaEinsum")
PASS_THROUGH_OPS = weight_trace.PASS_THROUGH_OPS
Weight = weight_trace.Weight
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
    activation_op: both operands depend on a model input (attention scores,
      attention x values): the op multiplies two activations and reads no
      stored weight (unmapped, and not a weight op).
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
  activation_op: bool = False

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
  trace_error: str | None = None  # why shape inference failed somewhere, if it did

  def __repr__(self) -> str:
    return (f"SavedModelGraph({self.saved_model_dir!r}, signature={self.signature!r}, "
            f"ops={len(self.ops)}, mapped={len(self.mapped)}, variables={len(self.variables)})")

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


def _substitute(shape, batch: int):
  if shape is None or not shape or shape[0] != -1:
    return shape
  return (batch,) + tuple(shape[1:])


def _has_unknown(shape) -> bool:
  return shape is None or -1 in shape


class _Walker:
  """Walks the functions reached from one signature call and collects ops."""

  def __init__(self, top: weight_trace.TopLevel, library, batch: int, input_shapes, trace: bool):
    self.top = top
    self.library = library
    self.functions = {f.signature.name: f for f in library.function}
    self.batch = batch
    self.input_shapes = input_shapes
    self.trace = trace
    self.ops: list[ComputeOp] = []
    self.traced_any = False
    self.trace_error = None
    self.stack: list[str] = []
    self.tracer = protos.ShapeTracer(library)
    self._traces = {}  # (function, argument shapes, lists, constants) -> traced shapes
    self._tracing: set[str] = set()  # functions being traced (recursion guard)
    self._live = {}
    self._loops = {}

  def walk(self, fdef, prefix: str, parent, call_inputs, arg_shapes=None, repeats=1,
           branch=None, lists=None):
    if fdef.signature.name in self.stack:
      return  # recursion through a function library (never in Keras exports)
    self.stack.append(fdef.signature.name)
    frame = self._frame(fdef, prefix, parent, call_inputs, arg_shapes, lists)
    frame.repeats, frame.branch = repeats, branch
    live = self._live_nodes(fdef)
    if self.trace and arg_shapes is not None and self._needs_trace(frame):
      self._trace(frame)
    for node in fdef.node_def:
      if node.name not in live:
        continue  # its result reaches no output (Keras' RNNs run a step only for shapes)
      if node.op in _CALL_OPS and "f" in node.attr:
        callee = self.functions.get(node.attr["f"].func.name)
        if callee is None:
          continue
        inputs, shapes, lists = self._arguments(frame, node, callee)
        # The model's own function keeps its names; deeper calls get a prefix.
        sub = prefix if parent is None else f"{prefix}{node.name}/"
        self.walk(callee, sub, frame, inputs, shapes, repeats, branch, lists)
      elif node.op in _WHILE_OPS and "body" in node.attr:
        body = self.functions.get(node.attr["body"].func.name)
        if body is None:
          continue
        inputs, shapes, lists = self._arguments(frame, node, body)
        cond = self.functions.get(node.attr["cond"].func.name)
        trips = control_flow.trip_count(cond, node, frame)
        total = None if trips is None or repeats is None else repeats * trips
        # Keras names a loop body's nodes after the loop already ("while/MatMul").
        named = all(n.name.startswith(f"{node.name}/") for n in body.node_def)
        self.walk(body, prefix if named else f"{prefix}{node.name}/", frame, inputs, shapes,
                  total, branch, lists)
      elif node.op in _IF_OPS:
        for attr, label in (("then_branch", "then"), ("else_branch", "else")):
          callee = self.functions.get(node.attr[attr].func.name) if attr in node.attr else None
          if callee is not None:
            inputs, shapes, lists = self._arguments(frame, node, callee, skip=1)  # 0: predicate
            self.walk(callee, f"{prefix}{node.name}/{label}/", frame, inputs, shapes, repeats,
                      f"{frame.prefix}{node.name}:{label}", lists)
      elif node.op in COMPUTE_OPS:
        self.ops.append(self._compute_op(frame, node))
      elif node.op in UNMODELLED_OPS:
        self.ops.append(self._unmodelled_op(frame, node))
    self.stack.pop()

  def _resolved(self, shape):
    return _substitute(shape, self.batch)

  # ------------------------------------------------------------ shape flow
  # TF's shape inference runs on one function at a time and loses what a
  # call returns and what a While loop's TensorLists hold. The walk carries
  # those across: a function is traced with its arguments' shapes and the
  # element shapes of the TensorLists it is given (how an RNN loop body gets
  # its time step), and with hints (graph_protos.traced_shapes) for what TF
  # cannot see in it: a TensorList's items, a loop's stacked output
  # ([steps] + item) and the outputs of a call that holds a loop. Each hint
  # only fills unknown dims; tracing repeats until no hint adds anything.

  def _frame(self, fdef, prefix, parent, call_inputs, arg_shapes, lists) -> protos.Frame:
    frame = protos.Frame(fdef, prefix, parent, call_inputs, arg_shapes)
    frame.arg_shapes, frame.lists = arg_shapes, dict(lists or {})
    return frame

  def _live_nodes(self, fdef) -> set[str]:
    name = fdef.signature.name
    if name not in self._live:
      self._live[name] = control_flow.live_nodes(fdef)
    return self._live[name]

  def _arguments(self, frame: protos.Frame, node, callee, skip: int = 0):
    """(inputs, shapes, {argument index: TensorList element shape}) of a call,
    loop or branch (`skip` leading inputs are not arguments: an If's predicate)."""
    inputs = [i for i in node.input if not i.startswith("^")][skip:]
    shapes = [self._resolved(frame.ref_shape(i)) for i in inputs]
    lists = {}
    args = callee.signature.input_arg
    for k, ref in enumerate(inputs):
      if k < len(args) and args[k].type == types_pb2.DT_VARIANT:
        element = control_flow.list_element(frame, ref, self._loop_item)
        if element is not None:
          lists[k] = element
    return inputs, shapes, lists

  def _has_loop(self, name: str, seen=()) -> bool:
    """Whether function `name` runs a While loop, itself or in what it calls."""
    if name not in self._loops:
      fdef = self.functions.get(name)
      found = False
      if fdef is not None and name not in seen:
        for node in fdef.node_def:
          if node.op in _WHILE_OPS:
            found = True
          elif node.op in _CALL_OPS + _IF_OPS:
            for attr in ("f", "then_branch", "else_branch"):
              if attr in node.attr and self._has_loop(node.attr[attr].func.name,
                                                      seen + (name,)):
                found = True
          if found:
            break
      self._loops[name] = found
    return self._loops[name]

  def _needs_trace(self, frame: protos.Frame) -> bool:
    """Whether a compute op's saved shapes leave a dim unknown (the batch too:
    a leading -1 is the batch only where nothing reshaped it, e.g. not after
    Keras' Tensordot, which folds the sequence into it), or the function runs
    a loop (its steps and the loop's inputs are read from the shapes)."""
    if frame.lists or self._has_loop(frame.fdef.signature.name):
      return True
    for node in frame.fdef.node_def:
      if node.op in COMPUTE_OPS:
        shapes = protos.saved_shapes(node)
        if not shapes or any(_has_unknown(s) for s in shapes[:1]):
          return True
        inputs = [frame.ref_shape(i) for i in node.input if not i.startswith("^")]
        if any(_has_unknown(s) for s in inputs):
          return True
    return False

  def _trace_key(self, frame: protos.Frame):
    constants = ()
    if frame.parent is not None:  # a loop bound passed in as an argument
      constants = tuple(protos.static_int(frame.parent, ref) if shape == () else None
                        for ref, shape in zip(frame.call_inputs, frame.arg_shapes))
    return (frame.fdef.signature.name, tuple(frame.arg_shapes),
            tuple(sorted(frame.lists.items())), constants)

  def _trace(self, frame: protos.Frame) -> None:
    """Sets frame.traced: TF's shape inference with the hints that add to it
    (None, keeping the saved shapes, where inference fails)."""
    key = self._trace_key(frame)
    if key in self._traces:
      frame.traced = self._traces[key]
      return
    name = frame.fdef.signature.name
    if name in self._tracing:
      return
    self._tracing.add(name)
    hints = {}
    try:
      for _ in range(10_000):  # each round adds known dims: it ends
        frame.traced = self.tracer.trace(frame.fdef, frame.arg_shapes, hints)
        self.traced_any = True
        new = self._hints(frame)
        if not new:
          break
        hints.update(new)
    except (ValueError, TypeError, tf.errors.OpError) as e:
      if not hints:
        frame.traced = None  # keep the saved shapes
      # else: the last trace that worked stays
      if self.trace_error is None:  # say why, e.g. an input too small for the model
        text = str(e).strip().splitlines()
        self.trace_error = table.shorten(text[0], 300) if text else type(e).__name__
    finally:
      self._tracing.discard(name)
    self._traces[key] = frame.traced

  def _hints(self, frame: protos.Frame) -> dict:
    """{(node, output index): shape} that knows more than frame.traced: the
    TensorLists read in this function (an item, a stacked list) and the
    outputs of calls to functions that run a loop."""
    hints = {}

    def offer(name, flat, shape):
      current = frame.traced.get(name)
      if current is None or flat >= len(current):
        return
      merged = control_flow.merge_shapes(current[flat], shape)
      if merged != current[flat]:
        hints[(name, flat)] = merged

    for node in frame.fdef.node_def:
      if node.name not in self._live_nodes(frame.fdef):
        continue
      if node.op == "TensorListGetItem":
        offer(node.name, 0, control_flow.list_element(frame, node.input[0], self._loop_item))
      elif node.op == "TensorListStack":
        element = control_flow.list_element(frame, node.input[0], self._loop_item)
        length = control_flow.list_length(frame, node.input[0])
        if element is not None:
          offer(node.name, 0, (-1 if length is None else length,) + tuple(element))
      elif node.op in _CALL_OPS and "f" in node.attr:
        callee = self.functions.get(node.attr["f"].func.name)
        outputs = frame.traced.get(node.name) or []
        # A call's outputs matter where it runs a loop, or where a dim other
        # than the batch is unknown (a free sequence or image size).
        if callee is None or not (self._has_loop(callee.signature.name) or any(
            s is None or -1 in s[1:] for s in outputs)):
          continue
        inputs, shapes, lists = self._arguments(frame, node, callee)
        child = self._frame(callee, "", frame, inputs, shapes, lists)
        self._trace(child)
        if child.traced is None:
          continue
        for k, out in enumerate(callee.signature.output_arg):
          if out.name in callee.ret:
            offer(node.name, k, child.ref_shape(callee.ret[out.name]))
    return hints

  def _loop_item(self, frame: protos.Frame, node, k: int):
    """The element shape the body of While `node` (in `frame`) sets in the
    TensorList it carries as loop variable k, or None."""
    body = self.functions.get(node.attr["body"].func.name) if "body" in node.attr else None
    if body is None or k >= len(body.signature.output_arg):
      return None
    ret = body.ret.get(body.signature.output_arg[k].name)
    if ret is None:
      return None
    inputs, shapes, lists = self._arguments(frame, node, body)
    child = self._frame(body, "", frame, inputs, shapes, lists)
    self._trace(child)
    if child.traced is None:
      return None
    name = protos.parse_ref(ret, True)[0]
    if name in child.args:
      return None  # passed through unchanged: the caller follows its input
    return control_flow.list_element(child, ret, lambda *_: None)

  def _op_shape(self, frame: protos.Frame, node, shape):
    """A compute op's shape: traced shapes as they are; saved shapes with a
    leading -1 read as the batch only for convolutions (always batch-first
    there); a MatMul's leading -1 may hold batch x sequence: left unknown."""
    if frame.traced is not None or node.op not in CONV_OPS:
      return shape
    return self._resolved(shape)

  def _unmodelled_op(self, frame: protos.Frame, node) -> ComputeOp:
    inputs = [i for i in node.input if not i.startswith("^")]
    shapes = (frame.traced or {}).get(node.name) or protos.saved_shapes(node) or [None]
    output = shapes[0]
    return ComputeOp(frame.prefix + node.name, node.op, {},
                     tuple(frame.ref_shape(i) for i in inputs), output,
                     unmapped=f"{node.op} is an op the reader does not model (its MACs are "
                     "unknown)", repeats=getattr(frame, "repeats", 1),
                     branch=getattr(frame, "branch", None))

  def _compute_op(self, frame: protos.Frame, node) -> ComputeOp:
    attrs = {k: protos.attr_value(node.attr[k]) for k in _ATTRS if k in node.attr}
    inputs = [i for i in node.input if not i.startswith("^")]
    input_shapes = tuple(self._op_shape(frame, node, frame.ref_shape(i)) for i in inputs)
    output_shape = self._op_shape(frame, node, frame.ref_shape(f"{node.name}:output:0"))
    if frame.traced is not None and node.name in frame.traced:
      output_shape = frame.traced[node.name][0]
    elif protos.saved_shapes(node):
      output_shape = self._op_shape(frame, node, protos.saved_shapes(node)[0])
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
      weight, steps, why = weight_trace.trace(self.top, frame, inputs[operand])
      if weight is not None:
        found.append((operand, weight, steps))
      else:
        reasons.append((operand, why))
    if not found:
      if node.op in _FILTER_OPERAND:
        why = reasons[0][1] if reasons else "no filter input"
        return ComputeOp(**base, unmapped=f"weight not found: the filter comes from {why}")
      if all(weight_trace.reads_input(self.top, frame, inputs[k]) for k in (0, 1)
             if k < len(inputs)):
        return ComputeOp(**base, unmapped="multiplies two activations (no stored weight)",
                         activation_op=True)
      made = [why for _, why in reasons if why != "activation"] or ["a computed tensor"]
      return ComputeOp(**base, unmapped="weight not found: the weight operand comes from "
                       + "; ".join(made))
    # Prefer a variable over a constant, then the second operand.
    operand, weight, steps = sorted(found, key=lambda f: f[1].kind != "variable")[0]
    path = tuple(s.op for s in reversed(steps))
    weight = dataclasses.replace(weight, path=path)
    rank = input_shapes[operand]
    rank = len(rank) if rank is not None else None
    try:
      shapes = weight_trace.forward_shapes(weight, steps)
      rank = len(shapes[0]) if shapes else len(weight.shape)
      op_axes = weight_trace.operand_axes(node.op, attrs, operand, rank)
      axes = weight_trace.map_back(weight, steps, op_axes, rank)
    except weight_trace.Unmappable as e:
      return ComputeOp(**base, weight=weight, weight_operand=operand, unmapped=str(e))
    return ComputeOp(**base, weight=weight, weight_operand=operand, reduction_axes=axes)


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


def input_shape_hint(declared: Mapping[str, Sequence[int] | None]) -> str:
  """How to give one shape per input, in both syntaxes, from the declared
  shapes ("?" where the signature leaves a dim to the caller; the batch as 1):
  "--input_shape='a:1,?;b:1,?' on the command line, input_shape={'a': (1, ?),
  'b': (1, ?)} in Python"."""
  def dims(shape):
    if shape is None:
      return ["..."]
    return ["1" if i == 0 and d < 0 else "?" if d < 0 else str(d) for i, d in enumerate(shape)]
  shown = {n: dims(declared[n]) for n in sorted(declared)}
  cli = ";".join(f"{n}:{','.join(d)}" for n, d in shown.items())
  python = ", ".join(f"{n!r}: ({', '.join(d)}{',' if d in (['1'], ['?']) else ''})"
                     for n, d in shown.items())
  return f"--input_shape='{cli}' on the command line, input_shape={{{python}}} in Python"


def _input_shapes(sig, input_shape) -> tuple[dict, int]:
  """{name: shape} of the signature's inputs with the user's shapes, and the batch."""
  declared = {k: protos.shape_of(v.tensor_shape) for k, v in sig.inputs.items()}
  if input_shape is None:
    return declared, 1
  if isinstance(input_shape, Mapping):
    given = dict(input_shape)
  elif len(declared) == 1:
    given = {next(iter(declared)): input_shape}
  else:
    raise ValueError(f"the signature has {len(declared)} inputs ({', '.join(sorted(declared))}):"
                     f" give one shape per input, {input_shape_hint(declared)}")
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
  left = sorted(n for n, d in declared.items() if n not in given and (d is None or any(
      x < 0 for x in d[1:])))
  if left:  # a shape for some inputs only: the others' unknown dims would stay unknown
    raise ValueError(f"input_shape gives {', '.join(sorted(given))} but not {', '.join(left)}, "
                     "whose shape the signature leaves unknown; give every input, "
                     f"{input_shape_hint({**declared, **given})}")
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
  top = weight_trace.TopLevel(saved, meta_graph.graph_def, variables)
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
                         twins, walker.trace_error)


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
