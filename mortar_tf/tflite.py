"""The weights a .tflite file ships: the constant operands its multiply-accumulate
ops read, in TFLite's own layouts.

TFLite stores a Conv2D filter as [out, h, w, in], a depthwise filter as
[1, h, w, channels x multiplier], a fully-connected weight as [out, in], a
transposed-conv filter as [out, h, w, in] and a Conv3D filter as TF does
([d, h, w, in, out]); the reduction axes (SPEC 3) follow from that. Only
float32 constants are returned (a quantized model's int8 weights are reported
as skipped, with their dtype).

`quantized_weights` returns the int8 constants a quantized file ships instead
(dynamic-range or full-integer quantization), with their scales.

Example:
  weights, skipped = read_weights("model.tflite")
  for w in weights:
    print(w.name, w.op, w.value.shape, w.reduction_axes)
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

# op name -> (weight operand index, reduction axes for the weight's rank)
_WEIGHT_OPS = {
    "CONV_2D": (1, lambda rank: tuple(range(1, rank))),
    "DEPTHWISE_CONV_2D": (1, lambda rank: tuple(range(1, rank - 1))),
    "FULLY_CONNECTED": (1, lambda rank: (rank - 1,)),
    "TRANSPOSE_CONV": (1, lambda rank: (rank - 1,)),
    "CONV_3D": (1, lambda rank: tuple(range(rank - 1))),
    "CONV_3D_TRANSPOSE": (1, lambda rank: (rank - 1,)),
    "BATCH_MATMUL": (1, lambda rank: (rank - 2,)),
}


@dataclasses.dataclass(frozen=True)
class ShippedWeight:
  """One constant weight of a .tflite model.

  Attributes:
    name: the tensor's name in the file (unique: "#2" added on a clash).
    op: the op that reads it (e.g. "CONV_2D").
    value: its float32 value, in TFLite's layout.
    reduction_axes: its reduction axes in that layout.
  """
  name: str
  op: str
  value: np.ndarray
  reduction_axes: tuple[int, ...]

  def __repr__(self) -> str:
    return (f"ShippedWeight({self.name!r}, op={self.op!r}, shape={self.value.shape}, "
            f"reduction_axes={self.reduction_axes})")


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
  """One int8 constant of a .tflite model, as the file stores it.

  Attributes:
    name: the tensor's name in the file.
    op: the first op that reads it (CONV_2D for a hybrid kernel, DEQUANTIZE
      where TFLite widens it back to float before use).
    value: its int8 values.
    scales: its float32 scales (one, or one per channel of
      `quantized_dimension`); zero_points alike (int64, as TFLite reports them).
  """
  name: str
  op: str
  value: np.ndarray
  scales: np.ndarray
  zero_points: np.ndarray
  quantized_dimension: int

  def __repr__(self) -> str:
    return (f"QuantizedWeight({self.name!r}, op={self.op!r}, shape={self.value.shape}, "
            f"scales={self.scales.size})")


def _ops(interpreter):
  """The interpreter's op list. TF has no public API for it; `_get_ops_details`
  is what tf.lite's own tools use, read here and only here."""
  return interpreter._get_ops_details()  # pylint: disable=protected-access


def _interpreter(path: str):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    with warnings.catch_warnings():  # tf.lite.Interpreter's notice of its move to LiteRT
      warnings.simplefilter("ignore", UserWarning)
      interpreter = tf.lite.Interpreter(
          model_path=path,
          experimental_op_resolver_type=tf.lite.experimental.OpResolverType
          .BUILTIN_WITHOUT_DEFAULT_DELEGATES)  # delegates would hide the ops
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"cannot read {path!r} as a TFLite model: {e}") from e
  try:
    interpreter.allocate_tensors()
  except Exception:  # pylint: disable=broad-except
    # An input with unknown dims (a fully convolutional model, saved at 1x1)
    # may not prepare at its placeholder size; constants are read from the
    # file's buffers without it.
    pass
  return interpreter


@dataclasses.dataclass(frozen=True)
class _Opened:
  """A file's interpreter, {index: tensor details}, ops, and its constants:
  the tensor indices no op writes and the caller does not feed."""
  interpreter: object
  details: dict
  ops: list
  constants: set


def _open(path: str) -> _Opened:
  interpreter = _interpreter(path)
  details = {int(t["index"]): t for t in interpreter.get_tensor_details()}
  ops = _ops(interpreter)
  computed = {int(i) for op in ops for i in op["outputs"]}
  computed |= {int(t["index"]) for t in interpreter.get_input_details()}
  return _Opened(interpreter, details, ops, set(details) - computed)


def quantized_weights(path: str) -> list[QuantizedWeight]:
  """Every int8 constant any op of the file reads, once each, in op order.

  Raises:
    ValueError: a file TFLite cannot read (the message names it).
  """
  opened = _open(path)
  out, seen = [], set()
  for op in opened.ops:
    for index in (int(i) for i in op["inputs"]):
      if index < 0 or index in seen or index not in opened.constants:
        continue
      tensor = opened.details[index]
      if np.dtype(tensor["dtype"]) != np.int8:
        continue
      seen.add(index)
      q = tensor["quantization_parameters"]
      out.append(QuantizedWeight(tensor["name"], op["op_name"],
                                 np.asarray(opened.interpreter.get_tensor(index)),
                                 np.asarray(q["scales"], np.float32),
                                 np.asarray(q["zero_points"]), int(q["quantized_dimension"])))
  return out


def has_variables(path: str) -> bool:
  """Whether the file keeps state in resource variables (VAR_HANDLE ops):
  a SavedModel whose variables the converter did not freeze. The plain
  interpreter does not initialise them."""
  return any(op["op_name"] == "VAR_HANDLE" for op in _ops(_interpreter(path)))


def read_weights(path: str) -> tuple[list[ShippedWeight], list[tuple[str, str]]]:
  """(float32 weights the multiply-accumulate ops read, [(name, reason)] others).

  Raises:
    ValueError: a file TFLite cannot read (the message names it).
  """
  opened = _open(path)
  weights, skipped, seen, names = [], [], set(), set()
  for op in opened.ops:
    found = _WEIGHT_OPS.get(op["op_name"])
    inputs = [int(i) for i in op["inputs"]]
    if found is None or found[0] >= len(inputs) or inputs[found[0]] < 0:
      continue
    index = inputs[found[0]]
    if index in seen or index not in opened.constants:
      continue
    seen.add(index)
    tensor = opened.details[index]
    name = tensor["name"]
    value = np.asarray(opened.interpreter.get_tensor(index))
    if value.dtype != np.float32:
      skipped.append((name, f"{value.dtype.name}, not float32 (a quantized weight)"))
      continue
    unique, n = name, 1
    while unique in names:
      n += 1
      unique = f"{name}#{n}"
    names.add(unique)
    weights.append(ShippedWeight(unique, op["op_name"], value, found[1](value.ndim)))
  return weights, skipped
