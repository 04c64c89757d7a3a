"""Finding the morphable kernels of a Keras model and their layouts (SPEC 3).

Example:
  >>> from mortar_tf.keras.compat import keras
  >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
  >>> [(w.name, w.layout) for w in model_weights(m)]
  [('fc/kernel', 'dense')]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

SELECTIONS = ("kernels", "all")


@dataclasses.dataclass(frozen=True)
class LayerWeight:
  """One weight of a layer.

  Attributes:
    name: "<layer path>/<weight name>", unique in the model.
    layer: the owning layer.
    variable: the Keras variable.
    layout: the SPEC 3 layout ("dense", "conv", ..., "default").
    equation: the einsum equation for layout "einsum", else None.
  """
  name: str
  layer: object
  variable: object
  layout: str
  equation: str | None = None

  def numpy(self) -> np.ndarray:
    return np.asarray(self.variable.numpy())

  def grouping(self) -> dict:
    """Keyword arguments naming this weight's grouping for count_ones/morph."""
    out = {"layout": self.layout}
    if self.equation is not None:
      out["equation"] = self.equation
    return out


def short_name(variable) -> str:
  """The variable's own name ("kernel"), in Keras 3 and tf_keras ("dense/kernel:0")."""
  return variable.name.split("/")[-1].split(":")[0]


def kernel_layouts(layer) -> dict[str, tuple[str, str | None]]:
  """{weight name: (layout, equation)} of the kernels a known layer multiplies with.

  Order matters: Conv*Transpose subclass Conv in Keras, so they are tested first.
  """
  layers = keras.layers
  transposes = tuple(getattr(layers, n) for n in ("Conv1DTranspose", "Conv2DTranspose",
                                                   "Conv3DTranspose") if hasattr(layers, n))
  depthwise = tuple(getattr(layers, n) for n in ("DepthwiseConv1D", "DepthwiseConv2D")
                    if hasattr(layers, n))
  separable = tuple(getattr(layers, n) for n in ("SeparableConv1D", "SeparableConv2D")
                    if hasattr(layers, n))
  convs = tuple(getattr(layers, n) for n in ("Conv1D", "Conv2D", "Conv3D"))
  einsum = getattr(layers, "EinsumDense", None)
  if isinstance(layer, transposes):
    return {"kernel": ("conv_transpose", None)}
  if isinstance(layer, depthwise):  # Keras 3 names it "kernel", tf_keras "depthwise_kernel"
    return {("kernel" if IS_KERAS3 else "depthwise_kernel"): ("depthwise", None)}
  if isinstance(layer, separable):
    return {"depthwise_kernel": ("separable_depthwise", None),
            "pointwise_kernel": ("separable_pointwise", None)}
  if isinstance(layer, convs):
    return {"kernel": ("conv", None)}
  if einsum is not None and isinstance(layer, einsum):
    return {"kernel": ("einsum", layer.equation)}
  if isinstance(layer, layers.Dense):
    return {"kernel": ("dense", None)}
  return {}


def _leaf_layers(layer, prefix=""):
  """(name prefix, layer) for every non-model layer, recursing into nested models and
  through wrappers (a MorphWrapper's kernels are its inner layer's, under its name)."""
  if isinstance(layer, keras.layers.Wrapper):
    yield from _leaf_layers(layer.layer, prefix)
    return
  if not isinstance(layer, keras.Model):
    yield prefix, layer
    return
  for child in layer.layers:
    child_prefix = f"{prefix}{child.name}/" if isinstance(child, keras.Model) else prefix
    yield from _leaf_layers(child, child_prefix)


def model_weights(model, select: str = "kernels") -> list[LayerWeight]:
  """The weights of a model, each once, with the layout their layer implies.

  Args:
    model: a Keras model (Sequential, Functional, nested), a layer, or a list
      of layers.
    select: "kernels" (the multiplicand kernels of known layers) or "all"
      (every weight; those of unknown role get the "default" layout).

  Raises:
    ValueError: unknown `select`.
  """
  if select not in SELECTIONS:
    raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
  roots = model if isinstance(model, (list, tuple)) else [model]
  out, seen = [], set()
  for root in roots:
    for prefix, layer in _leaf_layers(root):
      kinds = kernel_layouts(layer)
      for variable in layer.weights:
        short = short_name(variable)
        if id(variable) in seen or (short not in kinds and select == "kernels"):
          continue
        seen.add(id(variable))
        layout, equation = kinds.get(short, ("default", None))
        out.append(LayerWeight(f"{prefix}{layer.name}/{short}", layer, variable, layout,
                               equation))
  return out


def load_model(path: str):
  """Loads a .keras or .h5 model without compiling it.

  Raises:
    ValueError: the file cannot be read as a Keras model (the message names it).
  """
  try:
    return keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises many types for a bad file
    raise ValueError(f"cannot load a Keras model from {path!r}: {e}") from e
