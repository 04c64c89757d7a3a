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
from typing import Mapping

import numpy as np

from mortar_tf import backends
from mortar_tf import bits


@dataclasses.dataclass
class Kernel:
  """One kernel variable and its original value.

  Attributes:
    layer: the path of the layer holding it ("conv", "block/mha/query").
    name: the variable's name (e.g. "conv/kernel", "sep/depthwise_kernel").
    variable: the variable (assign() and numpy()).
    original: its value before any morphing.
    axes: its reduction axes (SPEC 3).
    ones: ones of the original in every domain.
    names: every name a {pattern: P} map entry is matched against for it,
      as morph_model (Keras) or the converter (SavedModel) matches them.
    key: the shortest of those names that no other kernel answers to: the
      key a searched map gives it (its layer where the layer holds only it).
    label: a readable name for figures: the key where it is the kernel's
      layer or name; else (a SavedModel variable known by its object path,
      "variables/26") the layer of the first op that reads it.
    sizes: the original's measured compressed bytes (compression.Sizes),
      filled on first need by in_place.original_sizes; None until then.
  """
  layer: str
  name: str
  variable: object
  original: np.ndarray
  axes: tuple[int, ...]
  ones: dict
  names: tuple[str, ...] = ()
  key: str = ""
  label: str = ""
  sizes: object = dataclasses.field(default=None, repr=False, compare=False)

  def __repr__(self) -> str:
    return (f"Kernel({self.name!r}, shape={tuple(self.original.shape)}, axes={self.axes}, "
            f"key={self.key!r})")


class LoadedSavedModel:
  """A SavedModel loaded for exploration.

  Attributes:
    path: the directory; signature: the signature called by predict().
    input_name: the signature's (single) input; input_shape: the shape the
      estimator and the graph reader use (unknown dims 1 unless given).
  """

  def __init__(self, path: str, signature: str = "serving_default", input_shape=None,
               output: str | None = None):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from mortar_tf.savedmodel import graph as graph_lib  # pylint: disable=import-outside-toplevel
    self.path = path
    self.signature = signature
    try:
      self.loaded = tf.saved_model.load(path)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"cannot load the SavedModel {path!r}: {e}") from e
    if signature not in self.loaded.signatures:
      raise ValueError(f"{path!r} has no signature {signature!r}; it has "
                       f"{sorted(self.loaded.signatures)}")
    self.fn = self.loaded.signatures[signature]
    specs = self.fn.structured_input_signature[1]
    if len(specs) != 1:  # before the graph reader, whose advice is the converter's
      raise ValueError(f"{path!r}: exploration needs a signature with one input, "
                       f"{signature!r} has {sorted(specs)}")
    self.input_dtype = next(iter(specs.values())).dtype.as_numpy_dtype
    self.graph = graph_lib.read_graph(path, input_shape=input_shape, signature=signature)
    (self.input_name, shape), = self.graph.inputs.items()
    self.input_shape = tuple(1 if d < 0 else d for d in shape) if shape else None
    self._tf = tf
    outputs = sorted(self.fn.structured_outputs)
    if output is not None and output not in outputs:
      raise ValueError(f"{path!r}: signature {signature!r} has no output {output!r}; its "
                       f"outputs are {outputs}")
    self.outputs = outputs
    self.output = output if output is not None else outputs[0]

  def predict(self, x, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
    """The signature's scored output on `x` (`output`, or the first by name)."""
    del verbose
    x = np.asarray(x)
    if x.dtype != self.input_dtype:
      raise ValueError(f"the inputs are {x.dtype}, but {self.path!r}'s signature "
                       f"{self.signature!r} takes {np.dtype(self.input_dtype).name} (nothing is "
                       f"cast silently: convert the data, e.g. x.astype(np.float32))")
    parts = []
    for start in range(0, len(x), batch_size):
      out = self.fn(**{self.input_name: self._tf.constant(x[start:start + batch_size])})
      parts.append(np.asarray(out[self.output]))
    return np.concatenate(parts) if parts else np.zeros((0,))

  def forward(self, batch):
    """The scored output on one batch (a tensor): for tf.distribute replicas."""
    return self.fn(**{self.input_name: batch})[self.output]

  def scored(self) -> str:
    """Which output the metric scores, for summaries."""
    if len(self.outputs) == 1:
      return f"output {self.output!r}"
    return f"output {self.output!r} of {self.outputs}"

  def kernels(self):
    """[(layer, unique name, variable, reduction axes, map names, reader's
    layer)] of the variables ops read (the reader: the layer part of the
    first op's name that reads it).

    Each is found in the loaded object by its object path (unique), not by its
    name (which several variables may share); the unique name is the
    variable's name, or "name (path)" where names repeat.
    """
    from mortar_tf.savedmodel import selection  # pylint: disable=import-outside-toplevel
    by_key = {v.key: v for v in self.graph.variables}
    display = self.graph.display_names()
    readers = {}
    for op in self.graph.mapped:
      if op.weight.kind == "variable":
        readers.setdefault(op.weight.key, []).append(op.name)
    out, seen = [], set()
    for op in self.graph.mapped:
      if op.weight.kind != "variable" or op.weight.key in seen:
        continue
      seen.add(op.weight.key)
      var = by_key[op.weight.key]
      found = _at_path(self.loaded, var.path)
      if found is None:
        raise ValueError(f"{self.path!r}: the loaded model has no variable at object path "
                         f"{var.path!r} ({var.name})")
      name = display.get(var.key, var.name)
      parts = var.name.split("/")
      layer = "/".join(parts[:-1]) if len(parts) > 1 else parts[0]
      names = selection.map_names(var.name, var.key, readers[var.key], var.path)
      reader = readers[var.key][0]
      out.append((layer if name == var.name else name, name, found, op.reduction_axes, names,
                  reader.rsplit("/", 1)[0] if "/" in reader else reader))
    return out


def _at_path(obj, path: str):
  """The object at an object-graph path ("layer_with_weights-0/kernel",
  "variables/3") of a loaded SavedModel, or None."""
  for part in path.split("/") if path else []:
    child = getattr(obj, part, None)
    if child is None and part.isdigit():
      try:
        child = obj[int(part)]
      except (TypeError, IndexError, KeyError):
        child = None
    if child is None:
      return None
    obj = child
  return obj


def load(path: str, signature: str = "serving_default", input_shape=None,
         output: str | None = None):
  """A Keras model (.keras/.h5 file) or a LoadedSavedModel (directory; `output`
  names the scored output of a multi-output signature).

  Raises:
    ValueError: a missing path or one that is neither, or `output` for a
      Keras model.
  """
  if os.path.isdir(path):
    return LoadedSavedModel(path, signature, input_shape, output)
  if output is not None:
    raise ValueError("output picks an output of a SavedModel signature; a Keras model "
                     "file is scored on its (single) output")
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
  from mortar_tf import precision_map  # pylint: disable=import-outside-toplevel
  if isinstance(model, LoadedSavedModel):
    found = [(layer, name, var, tuple(axes), names, reader)
             for layer, name, var, axes, names, reader in model.kernels()]
  else:
    from mortar_tf.keras import apply, registry  # pylint: disable=import-outside-toplevel
    plan = registry.find_kernels(model)
    apply.log_plan("exploration", plan, [k.name for k in plan.kernels])
    found = [(k.layer_path, k.name, k.variable, k.reduction_axes(),
              precision_map.weight_names(k.name), "") for k in plan.kernels]
  out, readers = [], []
  for layer, name, variable, axes, names, reader in found:
    value = np.array(variable.numpy())
    if value.dtype != np.float32:
      continue
    out.append(Kernel(layer, name, variable, value, axes,
                      backends.ones_by_domain(value, reduction_axes=axes, group_size=group_size,
                                              width=width), tuple(names)))
    readers.append(reader)
  if not out:
    raise ValueError("the model has no float32 kernels to morph")
  for kernel, reader in zip(out, readers):
    kernel.key = _unique_key(kernel, out)
    kernel.label = (kernel.key if kernel.key in (kernel.layer, kernel.name) or not reader
                    else reader)
  return out


def column_profile(kernels, method: str | None = None,
                   precisions: Mapping[int, float] | None = None,
                   group_size: int = bits.DEFAULT_GROUP_SIZE,
                   width: int = bits.DEFAULT_WIDTH) -> np.ndarray:
  """Ones per aligned column summed over `kernels` (the "arched" profile),
  with kernel i morphed by `method` at precisions[i] where given and the
  others as they are; one morphed copy at a time."""
  total = np.zeros(width, np.int64)
  for i, k in enumerate(kernels):
    w = (k.original if not precisions or i not in precisions else
         backends.morph(k.original, method, precisions[i]))
    total += backends.bit_histogram(w, "aligned", reduction_axes=k.axes, group_size=group_size,
                                    width=width)
  return total


def _unique_key(kernel: Kernel, kernels) -> str:
  """The first of (layer, name, its other names) that, as a literal map entry,
  matches this kernel and no other: a layer holding two kernels (a
  SeparableConv) is never a key, its kernels' full names are."""
  from mortar_tf import precision_map  # pylint: disable=import-outside-toplevel
  for candidate in (kernel.layer, kernel.name, *kernel.names):
    pattern = precision_map.literal(candidate)
    hits = [k for k in kernels if precision_map.lookup({pattern: True}, k.names)]
    if hits == [kernel]:
      return candidate
  raise ValueError(f"no map entry can name the kernel {kernel.name!r} alone")
