"""The registry of morphable kernels: which variables of a Keras layer are
multiply-accumulate weights, and how each is laid out (SPEC 3).

Every Keras entry point (MorphWrapper, morph_model, strip_morphing,
MortarCallback, exploration, mortar-analyze) finds kernels here, by walking a
model: a registered layer class names the attributes holding its kernels and
their layouts; a layer holding other layers (MultiHeadAttention,
Bidirectional, TimeDistributed, RNN and its cell, your own blocks, nested
models) is walked into; a MorphWrapper or a TFMOT wrapper is looked through.
Each kernel is found as a variable object, never matched by name, and named by
its layer path ("block/mha/query/kernel"; the root's own name is left out).

Registered by default (Keras 3 and tf_keras, and their subclasses):

  Dense, EinsumDense, Conv1D/2D/3D, Conv1D/2D/3DTranspose,
  DepthwiseConv1D/2D, SeparableConv1D/2D (both kernels), the cells of
  SimpleRNN, GRU, LSTM and ConvLSTM1D/2D/3D (kernel and recurrent kernel).
  Embedding is a lookup, not a multiply-accumulate weight: found only when
  asked for (`embeddings=True`). Normalization layers have no kernels.

Everything else is reported as skipped, with the reason; an unregistered layer
holding a weight of rank >= 2 is also warned about, since it may well be a
kernel: register it with `register_kernels`.

Example:
  >>> from mortar_tf.keras.compat import keras
  >>> m = keras.Sequential([keras.Input((3, 4)),
  ...                       keras.layers.Bidirectional(keras.layers.LSTM(2), name="bi")])
  >>> [(k.name, k.layout) for k in find_kernels(m).kernels][:2]  # doctest: +ELLIPSIS
  [('bi/forward_lstm.../lstm_cell/kernel', 'dense'), ('bi/forward_lstm.../lstm_cell/recurrent_kernel', 'dense')]
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Callable, Mapping

import numpy as np

from mortar_tf import bits
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras

SELECTIONS = ("kernels", "all")

# Reasons a weight is left alone (Skipped.code).
NOT_FLOAT32 = "dtype"
NOT_A_KERNEL = "not_a_kernel"
LOOKUP = "lookup"
UNREGISTERED = "unregistered"
WRAPPER_STATE = "wrapper_state"
LORA = "lora"


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One weight of a model, found as a variable object.

  Attributes:
    name: "<layer path>/<attribute>", unique within the walk.
    variable: the variable (the float32 master under mixed precision).
    layout: its SPEC 3 layout ("dense", "conv", ..., "default").
    equation: the einsum equation for layout "einsum", else None.
    owner: the layer that holds the variable.
    attribute: the owner's attribute holding it (e.g. "kernel", or Keras 3's
      "_kernel"), or None where it was found among the owner's weights.
    top: the layer of the walked model (or the walked layer) it belongs to:
      what morph_model wraps.
    lookup: an embedding table (found only when asked for).
  """
  name: str
  variable: object
  layout: str
  equation: str | None = None
  owner: object = None
  attribute: str | None = None
  top: object = None
  lookup: bool = False

  @property
  def layer(self):
    """The layer holding the variable (alias of `owner`)."""
    return self.owner

  @property
  def layer_path(self) -> str:
    """The name without the variable's own part ("block/conv")."""
    return self.name.rsplit("/", 1)[0] if "/" in self.name else ""

  def numpy(self) -> np.ndarray:
    return np.asarray(self.variable.numpy())

  def grouping(self) -> dict:
    """Keyword arguments naming this kernel's grouping for count_ones/morph."""
    out = {"layout": self.layout}
    if self.equation is not None:
      out["equation"] = self.equation
    return out

  def reduction_axes(self) -> tuple[int, ...]:
    return bits.resolve_reduction_axes(tuple(self.variable.shape), **self.grouping())

  def __repr__(self) -> str:
    equation = f", equation={self.equation!r}" if self.equation is not None else ""
    return (f"Kernel({self.name!r}, shape={tuple(self.variable.shape)}, "
            f"layout={self.layout!r}{equation})")


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A weight left alone, and why (`code` is one of the module's reason codes)."""
  name: str
  code: str
  reason: str
  variable: object = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class KernelPlan:
  """What a walk found: the kernels and the weights it leaves alone."""
  kernels: tuple[Kernel, ...]
  skipped: tuple[Skipped, ...]

  def by_id(self) -> dict[int, Kernel]:
    return {id(k.variable): k for k in self.kernels}

  def __str__(self) -> str:
    return self.summary()

  def __repr__(self) -> str:
    return f"KernelPlan(kernels={len(self.kernels)}, skipped={len(self.skipped)})"

  def summary(self, morphed=None) -> str:
    """A few lines: the kernels (or `morphed`, a subset of names) and the skipped
    weights grouped by reason."""
    names = [k.name for k in self.kernels] if morphed is None else list(morphed)
    lines = [f"{len(names)} kernel{'s' if len(names) != 1 else ''} morphed"
             + (f": {_short_list(names)}" if names else "")]
    by_reason: dict[str, list[str]] = {}
    for s in self.skipped:
      by_reason.setdefault(s.reason, []).append(s.name)
    for reason, skipped in by_reason.items():
      lines.append(f"skipped {len(skipped)} ({reason}): {_short_list(skipped)}")
    return "\n".join(lines)


def _short_list(names, limit: int = 6) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------
# The registry


@dataclasses.dataclass(frozen=True)
class _Entry:
  kernels: Callable  # layer -> {attribute: layout or ("einsum", equation)}
  lookup: bool = False
  reason: str | None = None  # why the layer's other weights are not kernels


_REGISTRY: dict[type, _Entry] = {}
# Keras classes neither flavour exports (registered by their own name).
_KERAS_INTERNAL = {
    "ConvLSTMCell": _Entry(lambda layer: {"kernel": "conv", "recurrent_kernel": "conv"},
                           reason="bias"),
}


def register_kernels(layer_class: type, kernels, *, lookup: bool = False,
                     reason: str | None = None) -> None:
  """Registers the kernels of a layer class (and of its subclasses).

  Args:
    layer_class: a Keras layer class.
    kernels: {attribute: layout} naming the attributes that hold the layer's
      own multiply-accumulate weights, the layout being one of
      mortar_tf.bits.LAYOUTS or ("einsum", equation); or a function
      layer -> such a dict (when the layout depends on the instance). An
      empty dict declares a layer without kernels (its weights are skipped
      as `reason` says). Layers held by the layer are walked into anyway:
      register only the variables the layer itself holds.
    lookup: the kernels are lookup tables (like Embedding's): found only
      when the caller asks for embeddings.
    reason: why the layer's other weights are not kernels (for reports).

  Raises:
    ValueError: not a layer class, or an unknown layout.

  Example:
    register_kernels(MyAttention, {"wq": "dense", "wk": "dense", "wo": "dense"})
  """
  if not (inspect.isclass(layer_class) and issubclass(layer_class, keras.layers.Layer)):
    raise ValueError(f"register_kernels takes a Keras layer class, got {layer_class!r}")
  if isinstance(kernels, Mapping):
    for attribute, layout in kernels.items():
      _check_layout(layer_class.__name__, attribute, layout)
    fixed = dict(kernels)
    kernels_fn = lambda layer: fixed  # pylint: disable=unnecessary-lambda-assignment
  elif callable(kernels):
    kernels_fn = kernels
  else:
    raise ValueError(f"kernels must be a {{attribute: layout}} dict or a function of the "
                     f"layer, got {type(kernels).__name__}")
  _REGISTRY[layer_class] = _Entry(kernels_fn, lookup, reason)


def _check_layout(owner: str, attribute: str, layout) -> None:
  name = layout[0] if isinstance(layout, tuple) else layout
  if name not in bits.LAYOUTS:
    raise ValueError(f"{owner}.{attribute}: unknown layout {layout!r}; expected one of "
                     f"{', '.join(bits.LAYOUTS)} or ('einsum', equation)")


def registered(layer) -> _Entry | None:
  """The entry of the nearest registered class in the layer's MRO, or None."""
  for cls in type(layer).__mro__:
    entry = _REGISTRY.get(cls)
    if entry is None and cls.__module__.startswith(("keras.", "tf_keras.")):
      entry = _KERAS_INTERNAL.get(cls.__name__)
    if entry is not None:
      return entry
  return None


def _classes(*names):
  return [getattr(keras.layers, n) for n in names if hasattr(keras.layers, n)]


def _register_defaults():
  layers = keras.layers
  for cls in _classes("Dense"):
    register_kernels(cls, {"kernel": "dense"}, reason="bias")
  register_kernels(layers.EinsumDense,
                   lambda layer: {"kernel": ("einsum", layer.equation)}, reason="bias")
  for cls in _classes("Conv1D", "Conv2D", "Conv3D"):
    register_kernels(cls, {"kernel": "conv"}, reason="bias")
  # tf_keras' transposed convs subclass Conv*D: their own entries come first in the MRO.
  for cls in _classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
    register_kernels(cls, {"kernel": "conv_transpose"}, reason="bias")
  depthwise = "kernel" if IS_KERAS3 else "depthwise_kernel"
  for cls in _classes("DepthwiseConv1D", "DepthwiseConv2D"):
    register_kernels(cls, {depthwise: "depthwise"}, reason="bias")
  for cls in _classes("SeparableConv1D", "SeparableConv2D"):
    register_kernels(cls, {"depthwise_kernel": "separable_depthwise",
                           "pointwise_kernel": "separable_pointwise"}, reason="bias")
  for cls in _classes("SimpleRNNCell", "GRUCell", "LSTMCell"):
    register_kernels(cls, {"kernel": "dense", "recurrent_kernel": "dense"}, reason="bias")
  register_kernels(layers.Embedding, {"embeddings": "dense"}, lookup=True)
  for cls in _classes("BatchNormalization", "LayerNormalization", "GroupNormalization",
                      "UnitNormalization", "RMSNormalization", "Normalization",
                      "SpectralNormalization", "PReLU"):
    register_kernels(cls, {}, reason="elementwise scale, shift or statistics, not a "
                     "multiply-accumulate weight")


_register_defaults()


# --------------------------------------------------------------------------
# Walking a model


def is_mortar_wrapper(layer) -> bool:
  return type(layer).__name__ == "MorphWrapper" and hasattr(layer, "morph_targets")


def is_tfmot_wrapper(layer) -> bool:
  """A TFMOT wrapper (pruning, QAT, clustering): looked through, its state left alone."""
  return (isinstance(layer, keras.layers.Wrapper)
          and type(layer).__module__.startswith("tensorflow_model_optimization"))


def sublayers(layer) -> list:
  """The layers a layer holds directly (tracked attributes), in tracking order.

  Neither Keras has a public API for a layer's direct sublayers; both keep
  `_flatten_layers(include_self=False, recursive=False)`, used here and only
  here.
  """
  if isinstance(layer, keras.Model) and is_graph_model(layer):
    return list(layer.layers)
  # pylint: disable-next=protected-access
  return list(layer._flatten_layers(include_self=False, recursive=False))


def is_graph_model(model) -> bool:
  return any(cls.__name__ in ("Functional", "Sequential") for cls in type(model).__mro__)


def _is_variable(value) -> bool:
  return hasattr(value, "assign") and hasattr(value, "dtype") and hasattr(value, "shape")


def _own_attribute_variable(owner, attribute, own_ids):
  """(variable, real attribute) held at `attribute` (or Keras 3's `_attribute`)."""
  for name in (attribute, f"_{attribute}"):
    value = owner.__dict__.get(name) if hasattr(owner, "__dict__") else None
    if value is None:
      try:
        value = getattr(owner, name, None)
      except Exception:  # pylint: disable=broad-except  (a property may raise)
        value = None
    if _is_variable(value) and id(value) in own_ids:
      return value, name
  return None, None


def _short(variable) -> str:
  return variable.name.split("/")[-1].split(":")[0]


class _Walk:
  """One walk over a model, a layer or a list of layers."""

  def __init__(self, embeddings: bool):
    self.embeddings = embeddings
    self.kernels: list[Kernel] = []
    self.skipped: list[Skipped] = []
    self.seen: set[int] = set()
    self.names: set[str] = set()
    self.warned: list[str] = []

  def unique(self, name: str) -> str:
    out, n = name, 1
    while out in self.names:
      n += 1
      out = f"{name}#{n}"
    self.names.add(out)
    return out

  def skip(self, name, code, reason, variable):
    self.skipped.append(Skipped(self.unique(name), code, reason, variable))

  def visit(self, layer, prefix: str, top, own_name: bool = True):
    if isinstance(layer, keras.layers.InputLayer):
      return
    if is_mortar_wrapper(layer) or is_tfmot_wrapper(layer):
      inner_ids = {id(w) for w in layer.layer.weights}
      self.visit(layer.layer, prefix, top, own_name)
      for w in layer.weights:
        if id(w) not in inner_ids and id(w) not in self.seen:
          self.seen.add(id(w))
          self.skip(f"{prefix}{layer.name}/{_short(w)}", WRAPPER_STATE,
                    f"state of {type(layer).__name__}, not a weight of the model's arithmetic", w)
      return
    path = f"{prefix}{layer.name}/" if own_name else prefix
    children = sublayers(layer)
    for child in children:
      self.visit(child, path, top if top is not None else child)
    child_ids = {id(w) for child in children for w in child.weights}
    own = [w for w in layer.weights if id(w) not in child_ids and id(w) not in self.seen]
    if not own:
      return
    own_ids = {id(w) for w in own}
    entry = registered(layer)
    if entry is None and hasattr(layer, "get_morphable_weights"):
      entry = _protocol_entry(layer)
    kinds = {} if entry is None else dict(entry.kernels(layer))
    found = {}
    for attribute, layout in kinds.items():
      variable, real = _own_attribute_variable(layer, attribute, own_ids)
      if variable is None:  # TFMOT's QAT leaves a tensor in the attribute after a call
        matches = [w for w in own if _short(w) == attribute]
        variable = matches[0] if len(matches) == 1 else None
        real = next((n for n in (attribute, f"_{attribute}")
                     if n in getattr(layer, "__dict__", {})), None)
      if variable is None:
        held = ", ".join(_short(w) for w in own)
        raise ValueError(
            f"the kernel registry names attribute {attribute!r} of {type(layer).__name__} "
            f"{layer.name!r}, which holds no variable of that layer (its variables: {held}); "
            "fix the register_kernels / get_morphable_weights entry")
      found[id(variable)] = (attribute, real, layout)
    for w in own:
      self.seen.add(id(w))
      if id(w) not in found:
        self._skip_other(w, path, layer, entry)
        continue
      attribute, real, layout = found[id(w)]
      name = f"{path}{attribute}"
      if entry.lookup and not self.embeddings:
        self.skip(name, LOOKUP, "a lookup table, not a multiply-accumulate weight (ask for "
                  "embeddings=True to morph it)", w)
        continue
      if getattr(layer, "lora_enabled", False):
        self.skip(name, LORA, "LoRA is enabled: the layer multiplies with kernel + "
                  "lora_a @ lora_b; merge or disable LoRA first", w)
        continue
      dtype = _dtype_name(w)
      if dtype != "float32":
        self.skip(name, NOT_FLOAT32, f"dtype {dtype}: only float32 weights are morphed", w)
        continue
      equation = None
      if isinstance(layout, tuple):
        layout, equation = layout
      self.kernels.append(Kernel(self.unique(name), w, layout, equation, layer, real,
                                 top if top is not None else layer, entry.lookup))

  def _skip_other(self, w, path, layer, entry):
    name = f"{path}{_short(w)}"
    cls = type(layer).__name__
    if entry is not None:
      self.skip(name, NOT_A_KERNEL, f"{entry.reason or 'not a kernel'} of {cls}", w)
    elif len(w.shape) <= 1:
      self.skip(name, NOT_A_KERNEL, "a vector: scales or shifts elementwise, not a "
                "multiply-accumulate weight", w)
    else:
      self.skip(name, UNREGISTERED, f"{cls} is not in the kernel registry (register it "
                "with mortar_tf.keras.register_kernels if it multiplies with this weight)", w)
      self.warned.append(name)


def _protocol_entry(layer) -> _Entry:
  """An entry from a MorphableLayer's get_morphable_weights() [(name, layout)]."""
  def kernels(l):
    out = {}
    for name, layout in l.get_morphable_weights():
      _check_layout(type(l).__name__, name, layout)
      out[name] = tuple(layout) if isinstance(layout, (tuple, list)) else layout
    return out
  return _Entry(kernels, reason="not listed by get_morphable_weights()")


def _dtype_name(variable) -> str:
  dtype = variable.dtype
  return getattr(dtype, "name", None) or str(dtype)


def find_kernels(root, embeddings: bool = False, warn: bool = False,
                 prefix: str = "") -> KernelPlan:
  """Walks a model, a layer or a list of layers and returns its kernels.

  Args:
    root: a Keras model (any kind: Sequential, Functional, nested,
      subclassed), a layer, or a list of layers.
    embeddings: also take Embedding tables (lookups, off by default).
    warn: warn once about weights of rank >= 2 in unregistered layers.
    prefix: put before every name (e.g. a wrapped layer's own name).

  Returns:
    A KernelPlan; each variable appears once (shared layers too). The root's
    own name is not part of the names; a list's layers' names are.
  """
  walk = _Walk(embeddings)
  if isinstance(root, (list, tuple)):
    for layer in root:
      walk.visit(layer, prefix, layer)
  else:
    walk.visit(root, prefix, None, own_name=False)
  if warn and walk.warned:
    warnings.warn(f"mortar_tf: weights of unregistered layers were not morphed: "
                  f"{_short_list(walk.warned)}; register their layers' kernels with "
                  "mortar_tf.keras.register_kernels if they multiply with them", stacklevel=3)
  return KernelPlan(tuple(walk.kernels), tuple(walk.skipped))


def model_weights(model, select: str = "kernels", embeddings: bool = False) -> list[Kernel]:
  """The weights of a model, each once, with their layouts.

  Args:
    model: a Keras model, a layer, or a list of layers.
    select: "kernels" (the registry's kernels, float32 only) or "all" (every
      weight; those that are not kernels get the "default" layout).
    embeddings: include Embedding tables among the kernels.

  Raises:
    ValueError: unknown `select`.
  """
  if select not in SELECTIONS:
    raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
  plan = find_kernels(model, embeddings=embeddings)
  out = list(plan.kernels)
  if select == "all":
    out += [Kernel(s.name, s.variable, "default") for s in plan.skipped]
  return out
