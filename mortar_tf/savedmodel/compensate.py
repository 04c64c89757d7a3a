"""Compensated morphing of a SavedModel (SPEC 6): each kernel's input rows from its graph.

The numpy core (mortar_tf.compensation) needs, per kernel, the rows it
multiplies on calibration inputs. A SavedModel's compute ops sit in nested
functions; here the signature is loaded, frozen (its calls inlined, its
captured variables turned into constants, see `_freeze`) and imported into
one graph, where each supported compute op that reads a selected variable is
found by its weight operand: an Identity chain back to the constant that
replaced the signature's captured argument, which the SavedModel's object
graph names (mortar_tf.savedmodel.weight_trace.TopLevel.source); the
constant's bytes must equal the checkpoint's. The op's data input is fetched
for each calibration batch (one pruned function per chunk of kernels) and
turned into rows with the op's own attributes: MatMul / BatchMatMulV2 rows
(transpose_a / adj_x), Conv2D im2col patches in the kernel's (kh, kw, cin)
order, DepthwiseConv2dNative patches per channel (strides, SAME / VALID
padding, dilations; NHWC only). Statistics come from the ORIGINAL model (one
pass per chunk).

The mean output change is taken by the variable right after the op (SPEC 6;
a Reshape keeping the channels last in between, as Keras' Tensordot, is fine):
a BiasAdd or Add whose other operand is a [cout] variable (bias - shift), the
mean of a FusedBatchNorm(V3) in inference mode, or the moving mean of the
BatchNormalization Keras 3 exports as x*s + (beta - mean*s) (mean + shift).
Anything else keeps its bias and is named.

Compensated: Dense-like MatMul / BatchMatMulV2 (the weight second, rank 2),
Conv2D (groups 1) and DepthwiseConv2dNative, NHWC, the weight read directly
(no Reshape or Transpose between the variable and the op), one op reading
it. Every other kernel is morphed plain and named, with the reason.

Example (the converter's use; convert(..., compensate=...) is the API):
  done = compensate_targets(src, graph, targets, reader, "calib.npz", "serving_default")
  done.values        # {checkpoint key: new value}: kernels, biases, means
  print("\n".join(done.lines()))
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np
import tensorflow as tf

from mortar_tf import compensation
from mortar_tf import files
from mortar_tf import morphing
from mortar_tf.savedmodel import graph as graph_lib
from mortar_tf.savedmodel import variables as variables_lib
from mortar_tf.savedmodel import weight_trace

SUPPORTED_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "DepthwiseConv2dNative")
DEFAULT_BATCH_SIZE = 32
# H is rows² float64 per kernel: the kernels whose statistics are gathered in
# one pass over the calibration inputs hold at most this much (a bigger single
# kernel gets a pass of its own).
_STATISTICS_BYTES = 1 << 30
# Rows turned into float64 at a time (bounds the im2col temporaries).
_ROW_BYTES = 64 << 20
_BIAS_READ_OPS = ("Identity", "Reshape", "Squeeze", "ExpandDims")
KEEP_APART = ("calibration samples set the compensation: keep them apart from the samples that "
              "score the morphed model")


# --------------------------------------------------------------------------
# The calibration inputs


@dataclasses.dataclass
class CalibrationInputs:
  """The calibration inputs of a signature and the compensation settings.

  Attributes:
    data: {input name: array} (all the same length), or None when `source`
      yields the batches (a dataset).
    source: a mortar_tf.keras.Calibration when one was given (its batches()
      is used for datasets).
    error, bias, projected, damping: as mortar_tf.keras.Calibration.
    batch_size: samples per batch.
    samples: the number of calibration samples.
  """
  data: Mapping[str, np.ndarray] | None
  source: object
  error: bool
  bias: bool
  projected: bool
  damping: float
  batch_size: int
  samples: int

  def settings(self) -> dict:
    return {"error": self.error, "bias": self.bias, "projected": self.projected,
            "damping": self.damping, "statistics": "original", "samples": self.samples}

  def label(self) -> str:
    parts = [p for p, on in (("error", self.error), ("bias", self.bias)) if on]
    proj = ", projected" if self.projected else ""
    return f"compensated ({'+'.join(parts)}{proj}, {self.samples} calibration samples)"

  def batches(self, specs):
    """{input name: array} batches, checked against the signature's TensorSpecs."""
    if self.data is not None:
      for start in range(0, self.samples, self.batch_size):
        yield {k: v[start:start + self.batch_size] for k, v in self.data.items()}
      return
    for batch in self.source.batches():
      yield _named(batch, specs, "a calibration batch")


@dataclasses.dataclass(frozen=True)
class CompensationSettings:
  """Calibration inputs and settings for convert(compensate=...) without Keras.

  Args:
    data: an .npz path, {input name: array}, or an array for a one-input
      signature.
    error, bias, projected, damping: as mortar_tf.keras.Calibration.
    batch_size: samples per run of the signature.
  """
  data: object
  error: bool = True
  bias: bool = True
  projected: bool = False
  damping: float = compensation.DEFAULT_DAMPING
  batch_size: int = DEFAULT_BATCH_SIZE


def _is_calibration(value) -> bool:
  """A mortar_tf.keras.Calibration (checked by its interface: savedmodel never imports keras)."""
  return all(hasattr(value, a) for a in ("batches", "settings", "error", "bias", "projected",
                                         "damping", "statistics", "data"))


def _is_dataset(data) -> bool:
  return type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec")


def _named(batch, specs, what: str) -> dict:
  """{input name: numpy array} of one batch (a dict, or an array for a one-input signature)."""
  if isinstance(batch, Mapping):
    out = {k: np.asarray(v) for k, v in batch.items()}
  elif isinstance(batch, (list, tuple)):
    raise ValueError(f"{what} is a list of {len(batch)} arrays: give the calibration inputs as "
                     f"{{input name: array}} (the signature takes {sorted(specs)})")
  else:
    if len(specs) != 1:
      raise ValueError(f"{what} is one array but the signature takes {len(specs)} inputs "
                       f"({', '.join(sorted(specs))}): give {{input name: array}}")
    out = {next(iter(specs)): np.asarray(batch)}
  if len(specs) == 1 and set(out) == {"x"} and "x" not in specs:  # mortar-sweep's layout
    out = {next(iter(specs)): out["x"]}
  missing, unknown = sorted(set(specs) - set(out)), sorted(set(out) - set(specs))
  if missing or unknown:
    parts = ([f"lack {missing}"] if missing else []) + ([f"name {unknown}, which it does not "
                                                         "take"] if unknown else [])
    raise ValueError(f"{what} {' and '.join(parts)}; the signature takes {sorted(specs)}")
  sizes = set()
  for name, spec in specs.items():
    value = out[name]
    want = spec.dtype.as_numpy_dtype
    if value.dtype != want:
      raise ValueError(f"calibration input {name!r} is {value.dtype}; the signature takes "
                       f"{spec.dtype.name} (convert it, nothing is cast silently)")
    if value.ndim == 0 or not spec.shape.is_compatible_with(value.shape):
      raise ValueError(f"calibration input {name!r} has shape {value.shape}; the signature "
                       f"takes {spec.shape}")
    sizes.add(value.shape[0])
  if len(sizes) > 1:
    raise ValueError(f"the calibration inputs differ in length: {sorted(sizes)}")
  if sizes == {0}:
    raise ValueError("the calibration inputs are empty")
  return out


def data_path(compensate):
  """The calibration file `compensate` names (an input path), or None."""
  data = getattr(compensate, "data", compensate)
  return data if isinstance(data, (str, os.PathLike)) else None


def calibration_inputs(compensate, specs) -> CalibrationInputs:
  """The CalibrationInputs for `convert(compensate=...)`.

  Args:
    compensate: a mortar_tf.keras.Calibration (its data a {input name:
      array} dict, an array for a one-input signature, or a dataset of
      those), or that data itself, or the path of an .npz of the inputs.
    specs: {input name: TensorSpec} of the signature.

  Raises:
    ValueError: inputs that do not fit the signature (names, dtypes,
      shapes, lengths), statistics="morphed", empty inputs.
  """
  if compensate is True:
    raise ValueError("compensate takes calibration inputs (an .npz path, {input name: array}) "
                     "or a mortar_tf.keras.Calibration, not True")
  settings = dict(error=True, bias=True, projected=False, damping=compensation.DEFAULT_DAMPING,
                  batch_size=DEFAULT_BATCH_SIZE)
  source, data = None, compensate
  if isinstance(compensate, CompensationSettings):
    data = compensate.data
    settings.update(error=compensate.error, bias=compensate.bias,
                    projected=compensate.projected, damping=compensate.damping,
                    batch_size=compensate.batch_size)
  elif _is_calibration(compensate):
    if compensate.statistics != "original":
      raise ValueError(f"a SavedModel is compensated with statistics from the original model; "
                       f"statistics={compensate.statistics!r} is for Keras models only")
    source, data = compensate, compensate.data
    settings.update(error=compensate.error, bias=compensate.bias,
                    projected=compensate.projected, damping=compensate.damping,
                    batch_size=getattr(compensate, "batch_size", DEFAULT_BATCH_SIZE))
  if not (settings["error"] or settings["bias"]):
    raise ValueError("compensation with error=False and bias=False compensates nothing")
  if not 0 < float(settings["damping"]) <= 1:
    raise ValueError(f"damping must be in (0, 1], got {settings['damping']!r}")
  if int(settings["batch_size"]) < 1:
    raise ValueError(f"batch_size must be >= 1, got {settings['batch_size']!r}")
  if isinstance(data, os.PathLike):
    data = os.fspath(data)
  if isinstance(data, str):
    data = files.read_npz(data, "calibration file")
  if source is not None and _is_dataset(data):
    samples = int(getattr(source, "samples", 0))
    return CalibrationInputs(None, source, samples=samples, **settings)
  if _is_dataset(data):
    raise ValueError("wrap a dataset in mortar_tf.keras.Calibration(dataset) to compensate with it")
  named = _named(data, specs, "the calibration inputs")
  samples = len(next(iter(named.values())))
  return CalibrationInputs(named, source, samples=samples, **settings)


def shared_samples(calibration: CalibrationInputs, inputs) -> int:
  """How many samples of `inputs` ({name: array}) are also calibration samples."""
  if calibration.data is None or not isinstance(inputs, Mapping):
    return 0
  names = sorted(calibration.data)
  if set(names) - set(inputs):
    return 0

  def rows(data):
    n = len(data[names[0]])
    return {b"".join(np.ascontiguousarray(np.asarray(data[k])[i]).tobytes() for k in names)
            for i in range(n)}

  try:
    return len(rows(calibration.data) & rows(inputs))
  except (IndexError, TypeError):
    return 0


# --------------------------------------------------------------------------
# The frozen graph


def _freeze(src: str, signature: str):
  """(signature ConcreteFunction, frozen ConcreteFunction) of a SavedModel."""
  try:
    loaded = tf.saved_model.load(src)
  except Exception as e:  # pylint: disable=broad-except
    raise variables_lib.SavedModelError(f"cannot load {src!r} to compensate it: {e}") from e
  if signature not in loaded.signatures:
    raise variables_lib.SavedModelError(f"{src!r} has no signature {signature!r}")
  fn = loaded.signatures[signature]
  try:
    # TensorFlow has no public API that inlines a function's calls and turns
    # its captured variables into constants; this is what TF's own graph
    # freezing (and the TFLite converter) calls. If it moves, compensation
    # says so and nothing is written.
    from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
    frozen = convert_to_constants.convert_variables_to_constants_v2(fn)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"cannot freeze signature {signature!r} of {src!r} to read its "
                     f"activations ({type(e).__name__}: {e}); compensation needs it") from e
  return loaded, fn, frozen


def _capture_keys(src: str, signature: str, fn) -> dict[str, str]:
  """{name of a captured argument of the signature function: checkpoint key}."""
  saved = variables_lib.load_proto(src)
  checkpoint = variables_lib.open_checkpoint(src)
  variables = {v.node_id: v for v in variables_lib.variable_objects(src, saved, checkpoint)}
  meta_graph = saved.meta_graphs[0]
  _, calls = graph_lib._signature_calls(meta_graph, signature)  # pylint: disable=protected-access
  top = weight_trace.TopLevel(saved, meta_graph.graph_def, variables)
  functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
  found: dict[str, set] = {}
  for call in calls:
    fdef = functions.get(call.attr["f"].func.name)
    if fdef is None:
      continue
    args = [a.name for a in fdef.signature.input_arg]
    for i, name in enumerate(args):
      _, weight, _ = top.source(call, fdef.signature.name, i, len(args))
      if weight is not None and weight.kind == "variable":
        found.setdefault(name, set()).add(weight.key)
  captured = {t.op.name for t in fn.graph.internal_captures}
  return {name: keys.pop() for name, keys in found.items() if len(keys) == 1 and name in captured}


def _source_const(tensor, through=("Identity",)):
  """The Const `tensor` is read from through `through` ops, or None."""
  for _ in range(1000):
    op = tensor.op
    if op.type == "Const":
      return op
    if op.type not in through or not op.inputs:
      return None
    tensor = op.inputs[0]
  return None


def _depends_on(tensor, placeholders) -> bool:
  """Whether `tensor` depends on any of the graph's input placeholders."""
  pending, seen = [tensor.op], set()
  while pending:
    op = pending.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    if op.type == "Placeholder" and op.name in placeholders:
      return True
    pending.extend(t.op for t in op.inputs)
  return False


# --------------------------------------------------------------------------
# The rows each op multiplies its weight with


def op_rows(kind: str, attrs: Mapping[str, object], activation, kernel_shape) -> np.ndarray:
  """The rows an op multiplies its (kernel-form) weight with, for one input batch.

  Args:
    kind: "matmul", "conv" or "depthwise".
    attrs: the op's attributes: transpose ("matmul": whether the data
      operand is transposed, transpose_a / adj_x), strides and dilations
      ([1, h, w, 1]), padding ("SAME" or "VALID").
    activation: the op's data input (numpy or tensor).
    kernel_shape: the kernel-form shape ([rows, out] for matmul, the filter's
      for convolutions).

  Returns:
    matmul: [n, in]; conv: [n, kh*kw*cin] in the kernel's (kh, kw, cin)
    order; depthwise: [n, channels, kh*kw].
  """
  x = tf.convert_to_tensor(activation)
  if kind == "matmul":
    if attrs["transpose"]:
      x = tf.linalg.matrix_transpose(x)
    return np.asarray(x).reshape(-1, int(x.shape[-1]))  # a tensor read without a copy
  kh, kw = int(kernel_shape[0]), int(kernel_shape[1])
  strides, dilations = list(attrs["strides"]), list(attrs["dilations"])
  patches = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=strides, rates=dilations,
                                     padding=attrs["padding"])
  channels = int(x.shape[-1])
  rows = np.asarray(patches).reshape(-1, kh * kw * channels)
  if kind == "conv":
    return rows
  return rows.reshape(-1, kh * kw, channels).transpose(0, 2, 1)


def _add_rows(stats: compensation.Statistics, plan, activation) -> None:
  """Adds one batch's rows to `stats`, a few samples at a time (bounded temporaries)."""
  x = np.asarray(activation)
  if plan.kind == "matmul" or x.ndim == 0 or len(x) == 0:
    per = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * 8)
  else:
    kh, kw = plan.kernel_form_shape[:2]
    per = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * kh * kw * 8)
  step = max(1, _ROW_BYTES // per)
  if plan.kind == "matmul" and plan.attrs["transpose"] and x.ndim == 2:
    step = len(x)  # rows are its columns: one piece
  for start in range(0, max(len(x), 1), step):
    stats.add(op_rows(plan.kind, plan.attrs, x[start:start + step], plan.kernel_form_shape))


# --------------------------------------------------------------------------
# Which kernels compensate, and where their mean output change goes


@dataclasses.dataclass
class KernelPlan:
  """How one selected kernel is compensated.

  Attributes:
    name: the kernel's display name; key: its checkpoint key (twins: keys).
    op: the frozen graph's op name; op_type its type.
    kind: "matmul", "conv" or "depthwise".
    attrs: what op_rows needs.
    transposed: the stored kernel is the transpose of the kernel form
      ([rows, out]): MatMul with transpose_b / adj_y.
    kernel_form_shape: the shape compensation works on.
    bias: (checkpoint key, sign, label) of what takes the mean output
      change, or None; bias_reason: why none.
  """
  name: str
  key: str
  keys: tuple[str, ...]
  spec: morphing.MorphSpec
  op: str
  op_type: str
  kind: str
  attrs: dict
  transposed: bool
  kernel_form_shape: tuple[int, ...]
  bias: tuple[str, float, str] | None
  bias_reason: str
  data: object = dataclasses.field(default=None, repr=False)  # the data input tensor


def _plain_reason(op_types: list[str], spec, path) -> str | None:
  if spec.method not in compensation.METHODS:
    return f"{spec.method} decides per group, so it is not compensated row by row"
  if not op_types:
    return "no compute op of the signature reads it as a weight (not a kernel)"
  if len(op_types) > 1:
    return f"read by {len(op_types)} ops (a shared or tied weight)"
  if op_types[0] not in SUPPORTED_OPS:
    return (f"op kind not supported: {op_types[0]} (compensated: MatMul, BatchMatMulV2, Conv2D, "
            "DepthwiseConv2dNative)")
  other = [step for step in path if step not in ("ReadVariableOp", "Identity")]
  if other:
    return f"the kernel reaches its op through {', '.join(other)}"
  return None


def _op_form(op, kernel_shape):
  """(kind, attrs, transposed, kernel-form shape, data tensor) of a frozen op, or a reason str."""
  t = op.type
  if t == "MatMul" or t.startswith("BatchMatMul"):
    ta, tb = ("transpose_a", "transpose_b") if t == "MatMul" else ("adj_x", "adj_y")
    if len(kernel_shape) != 2:
      return f"{t} with a rank-{len(kernel_shape)} weight"
    transposed = bool(op.get_attr(tb))
    form = tuple(kernel_shape[::-1]) if transposed else tuple(kernel_shape)
    return "matmul", {"transpose": bool(op.get_attr(ta))}, transposed, form, op.inputs[0]
  if op.get_attr("data_format") not in (b"NHWC", "NHWC"):
    return f"data format {op.get_attr('data_format').decode()} (NHWC only)"
  padding = op.get_attr("padding")
  padding = padding.decode() if isinstance(padding, bytes) else padding
  if padding not in ("SAME", "VALID"):
    return f"{padding} padding (SAME and VALID only)"
  attrs = {"strides": list(op.get_attr("strides")), "dilations": list(op.get_attr("dilations")),
           "padding": padding}
  data = op.inputs[0]
  channels = data.shape[-1]
  if t == "Conv2D":
    if channels is not None and channels != kernel_shape[2]:
      return "grouped convolution"
    return "conv", attrs, False, tuple(kernel_shape), data
  return "depthwise", attrs, False, tuple(kernel_shape), data


def _variable_behind(tensor, const_keys, through=_BIAS_READ_OPS):
  const = _source_const(tensor, through)
  return None if const is None else const_keys.get(const.name)


def _bias_target(op, outputs: int, const_keys, by_key, placeholders):
  """((key, sign, label) or None, reason) for the op's mean output change."""
  y = op.outputs[0]
  for _ in range(100):
    consumers = y.consumers()
    if len(consumers) != 1:
      return None, (f"its output is read by {len(consumers)} ops, so no single bias takes its "
                    "mean change" if consumers else "its output is read by nothing")
    c = consumers[0]
    # A Reshape that keeps the channels last (Keras' Tensordot) keeps the mean.
    shape = c.outputs[0].shape if c.type == "Reshape" else None
    if shape is None or shape.rank is None or shape[-1] != outputs or c.inputs[0] is not y:
      break
    y = c.outputs[0]

  def vector(tensor):
    key = _variable_behind(tensor, const_keys)
    var = by_key.get(key)
    if var is None or var.dtype != "float32" or int(np.prod(var.shape)) != outputs:
      return None
    shape = tensor.shape
    if shape.rank is None or any(d != 1 for d in shape.as_list()[:-1]):
      return None
    return var

  if c.type in ("BiasAdd", "BiasAddV1") and c.inputs[0] is y:
    fmt = c.get_attr("data_format") if c.type == "BiasAdd" else b"NHWC"
    var = vector(c.inputs[1]) if fmt in (b"NHWC", "NHWC") else None
    if var is not None:
      return (var.key, -1.0, f"bias {var.name}"), ""
  if c.type in ("AddV2", "Add"):
    other = c.inputs[1] if c.inputs[0] is y else c.inputs[0]
    var = vector(other)
    if var is not None:
      return (var.key, -1.0, f"bias {var.name}"), ""
  if c.type in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3") and c.inputs[0] is y:
    fmt = c.get_attr("data_format")
    if not c.get_attr("is_training") and fmt in (b"NHWC", "NHWC"):
      var = by_key.get(_variable_behind(c.inputs[3], const_keys))
      if var is not None and var.dtype == "float32" and var.shape == (outputs,):
        return (var.key, 1.0, f"moving mean {var.name} of {c.type} {c.name}"), ""
  if c.type == "Mul":
    # Keras 3 exports BatchNormalization as x * s + (beta - mean * s).
    scale = c.inputs[1] if c.inputs[0] is y else c.inputs[0]
    after = c.outputs[0].consumers()
    if not _depends_on(scale, placeholders) and len(after) == 1 and after[0].type == "AddV2":
      add = after[0]
      shift = add.inputs[1] if add.inputs[0] is c.outputs[0] else add.inputs[0]
      if shift.op.type == "Sub" and shift.op.inputs[1].op.type == "Mul":
        m = shift.op.inputs[1].op
        mean = m.inputs[0] if m.inputs[1] is scale else (m.inputs[1] if m.inputs[0] is scale
                                                          else None)
        var = None if mean is None else by_key.get(_variable_behind(mean, const_keys))
        if var is not None and var.dtype == "float32" and var.shape == (outputs,):
          return (var.key, 1.0, f"moving mean {var.name} of the BatchNormalization "
                  f"{add.name.rsplit('/', 1)[0]}"), ""
  return None, (f"{c.type} {c.name} follows it (a mean output change is taken only by a "
                "bias added right after, or the mean of a BatchNormalization right after)")


def plan_kernels(graph, targets, frozen_graph, const_keys):
  """([KernelPlan], {display name: why plain}) for the targets (twins go with theirs).

  Args:
    graph: the SavedModelGraph; targets: selection.Target list.
    frozen_graph: the imported frozen graph.
    const_keys: {frozen Const name: checkpoint key} (checked by value).
  """
  by_key = {v.key: v for v in graph.variables}
  readers: dict[str, list] = {}
  for op in graph.mapped:
    if op.weight.kind == "variable":
      readers.setdefault(op.weight.key, []).append(op)
  frozen_ops: dict[str, list] = {}
  placeholders = {op.name for op in frozen_graph.get_operations() if op.type == "Placeholder"}
  for op in frozen_graph.get_operations():
    if op.type in SUPPORTED_OPS and len(op.inputs) > 1:
      key = _variable_behind(op.inputs[1], const_keys, ("Identity",))
      if key is not None:
        frozen_ops.setdefault(key, []).append(op)
  groups = _twin_groups(targets, graph)
  target_keys = {k for _, keys in groups for k in keys}
  plans, plain = [], {}
  for target, keys in groups:
    name = target.display or target.var.name
    read_by = [k for k in keys if k in readers]
    ops = [op for k in read_by for op in readers[k]]
    reason = _plain_reason([op.type for op in ops], target.spec,
                           ops[0].weight.path if ops else ())
    if reason is None and ops[0].weight_operand != 1:
      reason = f"the weight is operand {ops[0].weight_operand} of {ops[0].type} (the second only)"
    found = [op for k in read_by for op in frozen_ops.get(k, [])]
    if reason is None and len(found) != 1:
      reason = ("no activations found: the op is not in the frozen graph (inside a loop or "
                "a conditional?)" if not found else
                f"no activations found: {len(found)} ops of the frozen graph read it")
    if reason is not None:
      plain[name] = reason
      continue
    op = found[0]
    key = read_by[0]
    form = _op_form(op, by_key[key].shape)
    if isinstance(form, str):
      plain[name] = f"op kind not supported: {form}"
      continue
    kind, attrs, transposed, kernel_form_shape, data = form
    outputs = kernel_form_shape[-1] * (kernel_form_shape[-2] if kind == "depthwise" else 1)
    bias, why = _bias_target(op, outputs, const_keys, by_key, placeholders)
    if bias is not None and bias[0] in target_keys:
      bias, why = None, f"{by_key[bias[0]].name} is morphed itself (a selected variable)"
    plans.append(KernelPlan(name, key, tuple(keys), target.spec, op.name, op.type, kind, attrs,
                            transposed, kernel_form_shape, bias, why, data))
  return plans, plain


def _twin_groups(targets, graph):
  """[(target, [checkpoint keys morphed alike])]: each non-twin target with its twins."""
  out, index = [], {}
  for target in targets:
    if target.twin_of is None:
      index[target.var.node_id] = len(out)
      out.append((target, [target.var.key]))
  for target in targets:
    if target.twin_of is not None:
      partner = graph.twins.get(target.var.node_id)
      if partner in index:
        out[index[partner]][1].append(target.var.key)
  return out


# --------------------------------------------------------------------------
# The statistics and the values


@dataclasses.dataclass
class Compensation:
  """What compensation did to a SavedModel's kernels (the report's part).

  Attributes:
    calibration: the settings (CalibrationInputs.settings()).
    kernels: {kernel name: {"key", "op", "op_type", "bias", and
      compensation.Result.to_dict()'s distances}} of the compensated ones.
    plain: {kernel name: why it was morphed plain}.
    corrected: {bias or mean name: {"key", "for" (the kernel), "kind",
      "max_abs_change"}}.
    results: {kernel name: compensation.Result} (with premorph: the values
      morphed; the stored kernel layout).
    values: {checkpoint key: new value}: compensated kernels (twins too) and
      corrected biases / means.
  """
  calibration: Mapping[str, object]
  kernels: dict
  plain: dict
  corrected: dict
  results: dict = dataclasses.field(repr=False, default_factory=dict)
  values: dict = dataclasses.field(repr=False, default_factory=dict)

  def totals(self) -> dict:
    return compensation.summarize(self.results.values())

  def to_dict(self) -> dict:
    return {"calibration": dict(self.calibration), "note": KEEP_APART,
            "kernels": self.kernels, "plain": dict(self.plain), "corrected": self.corrected,
            "totals": self.totals()}

  def lines(self) -> list[str]:
    t = self.totals()
    s = self.calibration
    parts = [p for p in ("error", "bias") if s.get(p)]
    head = (f"Compensated ({'+'.join(parts)}{', projected' if s.get('projected') else ''}, "
            f"statistics of the original model on {s['samples']} calibration samples; "
            f"{KEEP_APART}): {len(self.kernels)} of {len(self.kernels) + len(self.plain)} "
            f"kernels, {t['weights']} weights; final values from the originals: max relative "
            f"{t['max_rel']:.3g}, mean {t['mean_rel']:.3g}, {t['outside']} "
            f"({t['outside'] / max(t['weights'], 1):.1%}) outside the ball, {t['fallbacks']} "
            "projection fallbacks")
    out = [head]
    for name, k in self.kernels.items():
      out.append(f"  compensated {name} ({k['op_type']}): max rel {k['max_rel']:.3g}, mean rel "
                 f"{k['mean_rel']:.3g}, {k['outside']} outside, {k['fallbacks']} fallbacks; "
                 f"mean output change: {k['bias']}")
    for name, why in self.plain.items():
      out.append(f"  morphed plain: {name}: {why}")
    return out


def _statistics_chunks(plans):
  chunk, size = [], 0
  for plan in plans:
    rows = int(np.prod(plan.kernel_form_shape[:-1 if plan.kind != "depthwise" else -2]))
    groups = plan.kernel_form_shape[-2] if plan.kind == "depthwise" else 1
    need = rows * rows * groups * 8
    if chunk and size + need > _STATISTICS_BYTES:
      yield chunk
      chunk, size = [], 0
    chunk.append(plan)
    size += need
  if chunk:
    yield chunk


def _new_statistics(plan) -> compensation.Statistics:
  if plan.kind == "depthwise":
    kh, kw, channels = plan.kernel_form_shape[:3]
    return compensation.Statistics(kh * kw, groups=channels)
  return compensation.Statistics(int(np.prod(plan.kernel_form_shape[:-1])))


class Frozen:
  """A SavedModel's signature, frozen and imported into one graph (module docstring).

  Attributes:
    graph: the imported graph; specs: {input name: TensorSpec};
    feeds: {input name: placeholder tensor}; const_keys: {Const name:
    checkpoint key} (checked against the checkpoint's bytes).
  """

  def __init__(self, src: str, signature: str, reader):
    self.loaded, fn, frozen = _freeze(src, signature)
    graph_def = frozen.graph.as_graph_def()

    def _import():
      tf.compat.v1.import_graph_def(graph_def, name="")

    self.wrapped = tf.compat.v1.wrap_function(_import, [])
    self.graph = self.wrapped.graph
    _, kwargs = fn.structured_input_signature
    self.specs = dict(kwargs)
    self.feeds = {}
    for name, spec in self.specs.items():
      placeholder = spec.name or name
      try:
        self.feeds[name] = self.graph.get_tensor_by_name(f"{placeholder}:0")
      except (KeyError, ValueError) as e:
        raise ValueError(f"the frozen signature has no input placeholder {placeholder!r} for "
                         f"input {name!r}; compensation cannot feed it") from e
    self.const_keys = {}
    for name, key in _capture_keys(src, signature, fn).items():
      try:
        op = self.graph.get_operation_by_name(name)
      except (KeyError, ValueError):
        continue
      if op.type != "Const":
        continue
      value = tf.make_ndarray(op.get_attr("value"))
      stored = np.asarray(variables_lib.read_tensor(reader, key, src))
      if value.shape == stored.shape and value.tobytes() == stored.tobytes():
        self.const_keys[name] = key

  def collect(self, plans, calibration: CalibrationInputs) -> dict:
    """{plan key: Statistics} over the calibration inputs (one pass)."""
    feeds = [self.feeds[n] for n in sorted(self.feeds)]
    fn = self.wrapped.prune(feeds=feeds, fetches=[p.data for p in plans])
    stats = {p.key: _new_statistics(p) for p in plans}
    for batch in calibration.batches(self.specs):
      acts = fn(*[tf.constant(batch[n]) for n in sorted(self.feeds)])
      for plan, act in zip(plans, acts):
        _add_rows(stats[plan.key], plan, act.numpy())
    return stats


def compensate_targets(src: str, graph, targets, reader, compensate, signature: str,
                       scoring=None) -> Compensation:
  """The Compensation of `targets` (selection.Target list, twins included).

  Args:
    src, graph, targets, reader: the SavedModel, its graph, what is morphed
      and its checkpoint reader.
    compensate: what calibration_inputs takes.
    signature: the signature whose graph runs.
    scoring: the inputs that will score the result (verify's .npz path or
      {name: array}), which must share no sample with the calibration inputs.

  Raises:
    ValueError: no kernel can be compensated (with every reason), bad
      calibration inputs, calibration samples among the scoring ones,
      non-finite activations or weights.
    SavedModelError: a SavedModel that does not load.
  """
  frozen = Frozen(src, signature, reader)
  calibration = calibration_inputs(compensate, frozen.specs)
  if isinstance(scoring, str):
    scoring = files.read_npz(scoring, "inputs file")
  if scoring is not None:
    if len(frozen.specs) == 1 and set(scoring) == {"x"} and "x" not in frozen.specs:
      scoring = {next(iter(frozen.specs)): scoring["x"]}
    shared = shared_samples(calibration, scoring)
    if shared:
      raise ValueError(f"{shared} verification sample(s) are calibration samples too: "
                       f"{KEEP_APART}")
  plans, plain = plan_kernels(graph, targets, frozen.graph, frozen.const_keys)
  if not plans:
    raise ValueError("no kernel of this SavedModel can be compensated: "
                     + "; ".join(f"{n}: {why}" for n, why in plain.items()))
  by_key = {v.key: v for v in graph.variables}
  kernels, corrected, results, values = {}, {}, {}, {}
  for chunk in _statistics_chunks(plans):
    stats = frozen.collect(chunk, calibration)
    for plan in chunk:
      original = np.asarray(variables_lib.read_tensor(reader, plan.key, src))
      form = original.T if plan.transposed else original
      result = compensation.compensate(
          np.ascontiguousarray(form), stats[plan.key], plan.spec, error=calibration.error,
          bias=calibration.bias, projected=calibration.projected, damping=calibration.damping,
          depthwise=plan.kind == "depthwise")
      if plan.transposed:
        result = dataclasses.replace(result, morphed=np.ascontiguousarray(result.morphed.T),
                                     premorph=np.ascontiguousarray(result.premorph.T))
      results[plan.name] = result
      for key in plan.keys:
        values[key] = result.morphed
      if not calibration.bias:
        label = "bias correction off"
      elif plan.bias is None:
        label = f"none: {plan.bias_reason}"
      else:
        key, sign, label = plan.bias
        old = np.asarray(variables_lib.read_tensor(reader, key, src))
        new = (old.astype(np.float64) + sign * result.bias_shift.reshape(old.shape)).astype(
            np.float32)
        for k in [key] + _bias_twins(key, graph, reader, src, by_key):
          values[k] = new
        corrected[by_key[key].name] = {
            "key": key, "for": plan.name, "kind": "bias" if sign < 0 else "moving_mean",
            "max_abs_change": float(np.max(np.abs(new.astype(np.float64) - old)))}
      kernels[plan.name] = {"key": plan.key, "op": plan.op, "op_type": plan.op_type,
                            "bias": label, **result.to_dict()}
    del stats
  return Compensation(calibration.settings(), kernels, plain, corrected, results, values)


def _bias_twins(key, graph, reader, src, by_key) -> list[str]:
  """The structural twin of a corrected variable (Keras 3 exports), if bit-identical."""
  var = by_key[key]
  twin_id = graph.twins.get(var.node_id)
  twin = next((v for v in graph.variables if v.node_id == twin_id), None)
  if twin is None or twin.shape != var.shape:
    return []
  same = (np.asarray(variables_lib.read_tensor(reader, twin.key, src)).tobytes()
          == np.asarray(variables_lib.read_tensor(reader, key, src)).tobytes())
  return [twin.key] if same else []


# --------------------------------------------------------------------------
# Exploration: one statistics pass, values for many specs


@dataclasses.dataclass
class Values:
  """What Compensator.values made of a SavedModel's kernels (by checkpoint key).

  Attributes:
    values: {checkpoint key: new value}: the compensated kernels, and the
      biases / means that took their mean output change.
    results: {kernel name: compensation.Result} of the compensated kernels.
    plain: {kernel name: why it is morphed plain} (of the specs given).
    corrected: {kernel name: what took its mean output change, or why nothing did}.
  """
  values: dict
  results: dict
  plain: dict
  corrected: dict

  def totals(self) -> dict:
    return compensation.summarize(self.results.values())


class Compensator:
  """A SavedModel's statistics, collected once from the original model;
  compensated values for any {checkpoint key: MorphSpec}, cached per kernel
  and spec: what compensate_targets computes, for the exploration's many
  candidate maps at the statistics' cost of one.

  Every statistic is held at once (rows² float64 per kernel; depthwise:
  (kh·kw)² per channel): HED's 19 kernels take about 1 GB.

  Args:
    src: the SavedModel directory; signature: the signature that runs.
    graph: its SavedModelGraph (mortar_tf.savedmodel.read_graph).
    keys: the checkpoint keys of the kernels that may be morphed (as the
      graph names them: the variables its compute ops read).
    compensate: what calibration_inputs takes (an array for a one-input
      signature, {input name: array}, an .npz path, a Calibration).

  Raises:
    ValueError: no kernel can be compensated (with every reason), bad
      calibration inputs, non-finite activations.
    SavedModelError: a SavedModel that does not load.
  """

  def __init__(self, src: str, signature: str, graph, keys, compensate):
    from mortar_tf.savedmodel import selection  # pylint: disable=import-outside-toplevel
    reader, _ = variables_lib.open_checkpoint(src)
    frozen = Frozen(src, signature, reader)
    self.calibration = calibration_inputs(compensate, frozen.specs)
    by_key = {v.key: v for v in graph.variables}
    display = graph.display_names()
    placeholder = morphing.MorphSpec("fewest_ones", 0.5)  # any compensating method: plans only
    targets = [selection.Target(by_key[k], (), placeholder, display=display.get(k, by_key[k].name))
               for k in keys]
    plans, self.plain = plan_kernels(graph, targets, frozen.graph, frozen.const_keys)
    if not plans:
      raise ValueError("no kernel of this SavedModel can be compensated: "
                       + "; ".join(f"{n}: {why}" for n, why in self.plain.items()))
    self.plans = {p.key: p for p in plans}
    self.names = {t.var.key: t.display or t.var.name for t in targets}
    self.originals = {p.key: np.asarray(variables_lib.read_tensor(reader, p.key, src))
                      for p in plans}
    self.biases = {p.bias[0]: np.asarray(variables_lib.read_tensor(reader, p.bias[0], src))
                   for p in plans if p.bias is not None}
    self.statistics = {}
    for chunk in _statistics_chunks(plans):
      self.statistics.update(frozen.collect(chunk, self.calibration))
    del frozen
    self._cache: dict = {}

  def _result(self, plan, spec) -> compensation.Result:
    key = (plan.key, spec)
    if key not in self._cache:
      c = self.calibration
      original = self.originals[plan.key]
      form = original.T if plan.transposed else original
      result = compensation.compensate(
          np.ascontiguousarray(form), self.statistics[plan.key], spec, error=c.error, bias=True,
          projected=c.projected, damping=c.damping, depthwise=plan.kind == "depthwise")
      if plan.transposed:
        result = dataclasses.replace(result, morphed=np.ascontiguousarray(result.morphed.T),
                                     premorph=np.ascontiguousarray(result.premorph.T))
      self._cache[key] = result
    return self._cache[key]

  def values(self, specs: Mapping[str, morphing.MorphSpec]) -> Values:
    """Values for {checkpoint key: MorphSpec}: keys whose kernel does not
    compensate (and bitx specs) are left out of `values` (the caller morphs
    them plain) and named in `plain`."""
    values, results, corrected, plain = {}, {}, {}, {}
    shifts: dict[str, np.ndarray] = {}
    for key, spec in specs.items():
      plan = self.plans.get(key)
      if plan is None:
        name = self.names.get(key, key)
        plain[name] = self.plain.get(name, "not among the kernels compensated")
        continue
      if spec.method not in compensation.METHODS:
        plain[plan.name] = f"{spec.method} decides per group"
        continue
      result = self._result(plan, spec)
      results[plan.name] = result
      values[key] = result.morphed
      if not self.calibration.bias:
        corrected[plan.name] = "bias correction off"
      elif plan.bias is None:
        corrected[plan.name] = f"none: {plan.bias_reason}"
      else:
        target, sign, label = plan.bias
        shift = sign * result.bias_shift.reshape(self.biases[target].shape)
        shifts[target] = shifts.get(target, 0.0) + shift
        corrected[plan.name] = label
    for target, shift in shifts.items():
      values[target] = (self.biases[target].astype(np.float64) + shift).astype(np.float32)
    return Values(values, results, plain, corrected)
