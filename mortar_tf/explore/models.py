"""What exploration morphs: the kernels of a Keras model or of a loaded SavedModel.

A Keras model's kernels come from the kernel registry (mortar_tf.keras.registry); a
SavedModel's from its graph (mortar_tf.savedmodel.read_graph: the variables
compute ops read, with their reduction axes), matched by name to the
variables its signature function captures. Either way, exploration assigns
morphed values to those variables and restores the originals afterwards.

Example:
  model = LoadedSavedModel("exported_model")   # predict() runs the signature
  print([k.name for k in model_kernels(model)])
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mortar_tf import bits


@dataclasses.dataclass
class Kernel:
  """One kernel variable and its original value.

  Attributes:
    layer: the path of the layer holding it ("conv", "block/mha/query"), a
      name {pattern: P} maps match.
    name: the variable's name (e.g. "conv/kernel").
    variable: the variable (assign() and numpy()).
    original: its value before any morphing.
    axes: its reduction axes (SPEC 3).
    ones: ones of the original in every domain.
  """
  layer: str
  name: str
  variable: object
  original: np.ndarray
  axes: tuple[int, ...]
  ones: dict


class LoadedSavedModel:
  """A SavedModel loaded for exploration.

  Attributes:
    path: the directory; signature: the signature called by predict().
    input_name: the signature's (single) input; input_shape: the shape the
      estimator and the graph reader use (unknown dims 1 unless given).
  """

  def __init__(self, path: str, signature: str = "serving_default", input_shape=None):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from mortar_tf.savedmodel import graph as graph_lib  # pylint: disable=import-outside-toplevel
    self.path = path
    self.signature = signature
    self.graph = graph_lib.read_graph(path, input_shape=input_shape, signature=signature)
    if len(self.graph.inputs) != 1:
      raise ValueError(f"{path!r}: exploration needs a signature with one input, "
                       f"{signature!r} has {sorted(self.graph.inputs)}")
    (self.input_name, shape), = self.graph.inputs.items()
    self.input_shape = tuple(1 if d < 0 else d for d in shape) if shape else None
    try:
      self.loaded = tf.saved_model.load(path)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"cannot load the SavedModel {path!r}: {e}") from e
    self.fn = self.loaded.signatures[signature]
    self._tf = tf

  def predict(self, x, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
    """The signature's output on `x` (its first output, by name, if several)."""
    del verbose
    parts = []
    for start in range(0, len(x), batch_size):
      out = self.fn(**{self.input_name: self._tf.constant(x[start:start + batch_size])})
      parts.append(np.asarray(out[sorted(out)[0]]))
    return np.concatenate(parts) if parts else np.zeros((0,))

  def kernels(self):
    """[(layer, variable name, variable, reduction axes)] of the weights ops read."""
    captured = {}
    for variable in self.fn.variables:
      captured.setdefault(variable.name.split(":")[0], []).append(variable)
    out, seen = [], set()
    for op in self.graph.mapped:
      if op.weight.kind != "variable" or op.weight.name in seen:
        continue
      seen.add(op.weight.name)
      found = captured.get(op.weight.name, [])
      if len(found) != 1:
        raise ValueError(f"{self.path!r}: cannot tell which variable of the loaded model is "
                         f"{op.weight.name!r} ({len(found)} captured variables have that name)")
      parts = op.weight.name.split("/")
      layer = parts[-2] if len(parts) > 1 else parts[0]
      out.append((layer, op.weight.name, found[0], op.reduction_axes))
    return out


def load(path: str, signature: str = "serving_default", input_shape=None):
  """A Keras model (.keras/.h5 file) or a LoadedSavedModel (directory).

  Raises:
    ValueError: a missing path or one that is neither.
  """
  if os.path.isdir(path):
    return LoadedSavedModel(path, signature, input_shape)
  from mortar_tf.keras import saving  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise ValueError(f"no such model: {path!r}")
  return saving.load_model(path)


def model_kernels(model, group_size: int = bits.DEFAULT_GROUP_SIZE,
                  width: int = bits.DEFAULT_WIDTH) -> list[Kernel]:
  """The float32 kernels of a Keras model or LoadedSavedModel.

  Raises:
    ValueError: none found.
  """
  if isinstance(model, LoadedSavedModel):
    found = [(layer, name, var, tuple(axes)) for layer, name, var, axes in model.kernels()]
  else:
    from mortar_tf.keras import apply, registry  # pylint: disable=import-outside-toplevel
    plan = registry.find_kernels(model)
    apply.log_plan("exploration", plan, [k.name for k in plan.kernels])
    found = [(k.layer_path, k.name, k.variable, k.reduction_axes()) for k in plan.kernels]
  out = []
  for layer, name, variable, axes in found:
    value = np.array(variable.numpy())
    if value.dtype != np.float32:
      continue
    out.append(Kernel(layer, name, variable, value, axes,
                      bits.ones_by_domain(value, reduction_axes=axes, group_size=group_size,
                                          width=width)))
  if not out:
    raise ValueError("the model has no float32 kernels to morph")
  return out
