"""Compensated morphing of a Keras model (SPEC 6): statistics and values.

`Calibration` holds the calibration inputs (no labels) and the settings;
`compensated_values(model, specs, calibration)` runs the inputs through the
model once, collecting each compensated layer's input statistics (im2col
rows for convolutions, per channel for depthwise ones) by hooking the
layer's `call`, and returns the new values: every kernel of `specs` morphed
(compensated where its layer allows, plain otherwise, with the reason) and
the biases or BatchNormalization moving means that take each layer's mean
output change (mortar_tf.compensation). Nothing in the model is changed
(statistics="morphed" assigns progressively and restores every value bit
for bit).

Compensated layers: Dense, Conv1D and Conv2D (channels last, groups 1),
DepthwiseConv1D/2D and SeparableConv1D/2D (the depthwise kernel, then the
pointwise kernel on the depthwise outputs). Every other kernel (attention,
recurrent, transposed convolutions, einsum, bitx maps) is morphed plain and
named in the result. A bias is corrected where the layer has one, else in the moving mean
of a BatchNormalization that directly follows a layer without activation;
layers with neither are named too (no bias is added).

Example:
  cal = Calibration(x_train[:256])
  done = compensated_values(model, specs, cal)
  print(done.summary())
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Mapping

import numpy as np

from mortar_tf import compensation
from mortar_tf import morphing
from mortar_tf.keras import registry
from mortar_tf.keras.compat import keras

_LOG = logging.getLogger("mortar_tf")
STATISTICS = ("original", "morphed")


class Calibration:
  """Calibration inputs and how compensation uses them.

  Args:
    data: the model's inputs, no labels: a numpy array, a list of arrays or a
      {name: array} dict (multi-input), or a batched tf.data.Dataset whose
      elements are inputs or (inputs, labels[, weights]) tuples. Keep these
      samples apart from the ones that score the morphed model.
    error: GPTQ-style error compensation (mortar_tf.compensation).
    bias: bias correction.
    projected: keep every final value within P of its original.
    damping: λ relative to the mean diagonal of H.
    statistics: "original" (each layer's inputs in the original model: one
      pass) or "morphed" (layers in call order, each seeing the layers before
      it already compensated: one pass per layer, far slower).
    batch_size: for array data.

  Raises:
    ValueError: empty data, both error and bias off, bad settings.
  """

  def __init__(self, data, *, error: bool = True, bias: bool = True, projected: bool = False,
               damping: float = compensation.DEFAULT_DAMPING, statistics: str = "original",
               batch_size: int = 32):
    if not (error or bias):
      raise ValueError("Calibration with error=False and bias=False compensates nothing")
    if statistics not in STATISTICS:
      raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
    if not 0 < float(damping) <= 1:
      raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    if int(batch_size) < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    self.data = data
    self.error, self.bias, self.projected = bool(error), bool(bias), bool(projected)
    self.damping, self.statistics, self.batch_size = float(damping), statistics, int(batch_size)
    self.samples = _count(data)
    if self.samples == 0:
      raise ValueError("the calibration data is empty")

  def settings(self) -> dict:
    return {"error": self.error, "bias": self.bias, "projected": self.projected,
            "damping": self.damping, "statistics": self.statistics, "samples": self.samples}

  def label(self) -> str:
    """'error+bias, 256 samples' (with ', projected' and the statistics
    when not the original's) for tables and summaries."""
    parts = [p for p, on in (("error", self.error), ("bias", self.bias)) if on]
    extra = (", projected" if self.projected else "") + (
        ", statistics of the morphed model" if self.statistics == "morphed" else "")
    return f"{'+'.join(parts)}{extra}, {self.samples} samples"

  def __repr__(self) -> str:
    return (f"Calibration({self.samples} samples, error={self.error}, bias={self.bias}, "
            f"projected={self.projected}, damping={self.damping:g}, "
            f"statistics={self.statistics!r})")

  def batches(self):
    """The input batches (numpy or tensors), as model(...) takes them."""
    if _is_dataset(self.data):
      for element in self.data:
        if isinstance(element, tuple) and len(element) in (2, 3):
          element = element[0]
        yield element
      return
    for start in range(0, self.samples, self.batch_size):
      stop = start + self.batch_size
      if isinstance(self.data, Mapping):
        yield {k: np.asarray(v)[start:stop] for k, v in self.data.items()}
      elif isinstance(self.data, (list, tuple)):
        yield [np.asarray(v)[start:stop] for v in self.data]
      else:
        yield np.asarray(self.data)[start:stop]


def _is_dataset(data) -> bool:
  return type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec")


def _count(data) -> int:
  if _is_dataset(data):
    n = 0
    for element in data:
      if isinstance(element, tuple) and len(element) in (2, 3):
        element = element[0]
      first = next(iter(element.values())) if isinstance(element, Mapping) else (
          element[0] if isinstance(element, (list, tuple)) else element)
      n += int(first.shape[0])
    return n
  if isinstance(data, Mapping):
    sizes = {len(np.asarray(v)) for v in data.values()}
  elif isinstance(data, (list, tuple)):
    sizes = {len(np.asarray(v)) for v in data}
  else:
    array = np.asarray(data)
    if array.ndim == 0:
      raise ValueError("calibration data must be an array of samples, got a scalar")
    sizes = {len(array)}
  if len(sizes) > 1:
    raise ValueError(f"calibration inputs differ in length: {sorted(sizes)}")
  return sizes.pop() if sizes else 0


def as_calibration(compensate) -> Calibration | None:
  """None for None/False; a Calibration as is; anything else is the data of one."""
  if compensate is None or compensate is False:
    return None
  if compensate is True:
    raise ValueError("compensate takes calibration inputs (an array, a dict, a dataset) or a "
                     "mortar_tf.keras.Calibration, not True")
  if isinstance(compensate, Calibration):
    return compensate
  return Calibration(compensate)


# --------------------------------------------------------------------------
# Which layers compensate, and the rows they multiply


def _kind(layer) -> tuple[str | None, str]:
  """(kind, reason): kind "dense", "conv", "depthwise" or "separable" where the
  layer compensates, else None and why not."""
  name = type(layer).__name__
  if getattr(layer, "data_format", "channels_last") != "channels_last":
    return None, "channels_first"
  if name in ("DepthwiseConv1D", "DepthwiseConv2D"):
    return "depthwise", ""
  if name in ("SeparableConv1D", "SeparableConv2D"):
    return "separable", ""
  if name == "Dense":
    return "dense", ""
  if name in ("Conv1D", "Conv2D"):
    if getattr(layer, "groups", 1) != 1:
      return None, "grouped convolution"
    return "conv", ""
  return None, (f"{name} is not compensated (Dense, Conv1D/2D, DepthwiseConv1D/2D and "
                "SeparableConv1D/2D are)")


def _kernel_attributes(layer, kind: str) -> tuple[str, ...]:
  """The attributes holding the layer's kernels, in the order they multiply."""
  if kind == "separable":
    return ("depthwise_kernel", "pointwise_kernel")
  for attribute in ("_kernel", "kernel", "depthwise_kernel"):
    if getattr(layer, attribute, None) is not None:
      return (attribute,)
  raise ValueError(f"{layer.name!r} holds no kernel")


def layer_rows(layer, kind: str, inputs):
  """The rows `layer` multiplies its kernel with, for its input tensor.

  dense: [n, d_in]; conv: im2col patches [n, k..., c_in] flattened in the
  kernel's (k..., c_in) order; depthwise and separable (its depthwise part):
  [n, channels, k...].
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  x = tf.convert_to_tensor(inputs)
  if x.dtype != tf.float32:
    x = tf.cast(x, tf.float32)
  if kind == "dense":
    return np.asarray(x).reshape(-1, int(x.shape[-1]))
  kernel_size = tuple(layer.kernel_size)
  strides = tuple(layer.strides)
  dilation = tuple(layer.dilation_rate)
  padding = layer.padding.upper()
  if kind == "conv" and set(kernel_size) == {1} and set(strides) == {1}:
    return np.asarray(x).reshape(-1, int(x.shape[-1]))  # a 1x1 conv's patches are its inputs
  if len(kernel_size) == 1:  # 1-D as a 1 x k 2-D
    if padding == "CAUSAL":
      x = tf.pad(x, [[0, 0], [dilation[0] * (kernel_size[0] - 1), 0], [0, 0]])
      padding = "VALID"
    x = x[:, None]
    kernel_size, strides, dilation = (1,) + kernel_size, (1,) + strides, (1,) + dilation
  # The same im2col as a SavedModel's Conv2D / DepthwiseConv2dNative op.
  from mortar_tf.savedmodel import compensate as savedmodel_compensate  # pylint: disable=import-outside-toplevel
  attrs = {"strides": [1, *strides, 1], "dilations": [1, *dilation, 1], "padding": padding}
  return savedmodel_compensate.op_rows(kind, attrs, x, kernel_size)


def _grouped_depthwise(kernel: np.ndarray) -> np.ndarray:
  """[k..., C, mult] -> [C, prod(k), mult]."""
  channels, mult = kernel.shape[-2], kernel.shape[-1]
  return np.moveaxis(kernel.reshape(-1, channels, mult), 1, 0)


def _depthwise_output(rows: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """A depthwise conv's output rows [n, C*mult] (channel c*mult + m) from its rows."""
  out = np.einsum("ncr,crm->ncm", rows, _grouped_depthwise(kernel).astype(np.float64))
  return out.reshape(rows.shape[0], -1)


def _new_statistics(kind: str, kernel: np.ndarray) -> compensation.Statistics:
  if kind == "depthwise":
    return compensation.Statistics(int(np.prod(kernel.shape[:-2])), groups=kernel.shape[-2])
  return compensation.Statistics(int(np.prod(kernel.shape[:-1])))


# --------------------------------------------------------------------------
# The values


@dataclasses.dataclass
class Compensated:
  """What compensated_values made of a model's kernels.

  Attributes:
    values: {id(variable): new value}: every kernel of the specs, and each
      corrected bias or moving mean.
    variables: {id(variable): variable} for the keys of `values`.
    premorph: {id(kernel variable): the values its method morphed} (equal
      to the original where not error-compensated).
    results: {kernel name: compensation.Result} of the compensated kernels.
    plain: {kernel name: why it was morphed plain}.
    corrected: {kernel name: what took its mean output change ("bias",
      "moving_mean of bn_1") or why nothing did}.
    calibration: the Calibration used.
  """
  values: dict
  variables: dict
  premorph: dict
  results: dict
  plain: dict
  corrected: dict
  calibration: Calibration

  def totals(self) -> dict:
    return compensation.summarize(self.results.values())

  def to_dict(self) -> dict:
    return {"calibration": self.calibration.settings(),
            "kernels": {name: r.to_dict() for name, r in self.results.items()},
            "plain": dict(self.plain), "corrected": dict(self.corrected),
            "totals": self.totals()}

  def summary(self) -> str:
    t = self.totals()
    n = len(self.results) + len(self.plain)
    lines = [f"Compensated ({self.calibration.label()}): {len(self.results)} of {n} kernels "
             "compensated, "
             f"{t['weights']} weights; final values from the originals: max relative "
             f"{t['max_rel']:.3g}, mean {t['mean_rel']:.3g}, {t['outside']} "
             f"({t['outside'] / max(t['weights'], 1):.1%}) outside the ball"]
    if self.plain:
      lines.append("  morphed plain: " + "; ".join(f"{k} ({v})" for k, v in self.plain.items()))
    if self.calibration.bias:
      missing = {k: v for k, v in self.corrected.items() if not v.startswith(("bias",
                                                                              "moving_mean"))}
      if missing:
        lines.append("  no bias correction: " + "; ".join(f"{k} ({v})"
                                                          for k, v in missing.items()))
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.summary()

  def __repr__(self) -> str:
    t = self.totals()
    return (f"Compensated({len(self.results)} kernels compensated, {len(self.plain)} plain, "
            f"outside={t['outside']}/{t['weights']}, mean_rel={t['mean_rel']:.3g})")


def _hooked(layers, record):
  """Context: each layer's call records (layer, first input) first."""

  class _Hooks:

    def __enter__(self):
      self.saved = []
      for layer in layers:
        original = layer.call

        def call(*args, __layer=layer, __call=original, **kwargs):
          record(__layer, args[0] if args else kwargs.get("inputs"))
          return __call(*args, **kwargs)

        self.saved.append((layer, "call" in vars(layer), vars(layer).get("call")))
        layer.call = call
      return self

    def __exit__(self, *exc):
      for layer, had, value in self.saved:
        if had:
          layer.call = value
        else:
          del layer.call
      return False

  return _Hooks()


def _run(model, calibration: Calibration, first_only: bool = False) -> None:
  with warnings.catch_warnings():  # Keras 3 on a model loaded with a list of one input
    warnings.filterwarnings("ignore", message="The structure of `inputs`")
    for batch in calibration.batches():
      model(batch, training=False)
      if first_only:
        return


def _bias_target(layer, folds: dict):
  """(variable, sign, label) that takes `layer`'s mean output change, or (None, 0, why)."""
  bias = getattr(layer, "bias", None)
  if bias is not None and getattr(layer, "use_bias", True):
    return bias, -1.0, "bias"
  bn = folds.get(id(layer))
  if bn is not None and bn.moving_mean is not None:
    return bn.moving_mean, 1.0, f"moving_mean of {bn.name}"
  return None, 0.0, "no bias and no BatchNormalization right after it"


@dataclasses.dataclass
class _Unit:
  """A layer that compensates: its kind and its kernels [(Kernel, spec) or None]
  in the order they multiply (separable: depthwise, pointwise)."""
  layer: object
  kind: str
  kernels: list


def _units(model, kernels, specs) -> tuple[dict, dict]:
  """({id(layer): _Unit}, {kernel name: why it is morphed plain})."""
  by_layer, plain = {}, {}
  for k in kernels:
    by_layer.setdefault(id(k.owner), []).append(k)
  units = {}
  for key, found in by_layer.items():
    layer = found[0].owner
    kind, why = _kind(layer)
    slots = []
    if kind is not None:
      attributes = _kernel_attributes(layer, kind)
      variables = [getattr(layer, a, None) for a in attributes]
      if any(all(k.variable is not v for v in variables) for k in found):
        kind, why = None, "not one of the layer's kernels"
      else:
        slots = [next(((k, specs[id(k.variable)]) for k in found if k.variable is v), None)
                 for v in variables]
    methods = sorted({specs[id(k.variable)].method for k in found} - set(compensation.METHODS))
    if kind is not None and methods:
      kind, why = None, f"{methods[0]} decides per group"
    if kind is None:
      plain.update({k.name: why for k in found})
    else:
      units[key] = _Unit(layer, kind, slots)
  return units, plain


class Compensator:
  """Statistics of a model's compensated layers, collected once from the
  original model; compensated values for any specs, cached per layer and spec.

  What compensated_values(model, specs, calibration) computes with
  statistics="original", for many specs at the statistics' cost of one: the
  search calls values() for every candidate map.

  Args:
    model: the Keras model (not changed).
    variables: the kernel variables that may be morphed (ids are the keys).
    calibration: a Calibration (statistics "original").
  """

  def __init__(self, model, variables, calibration: Calibration):
    from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
    from mortar_tf.keras import wrapper as wrapper_lib  # pylint: disable=import-outside-toplevel
    if any(isinstance(l, wrapper_lib.MorphWrapper) for _, l in apply.all_layers(model)):
      raise ValueError("compensation morphs a plain model once; this one holds MorphWrappers "
                       "(morph-aware training): strip_morphing first, or compensate the model "
                       "before wrapping it")
    self.calibration = calibration
    wanted = {id(v) for v in variables}
    plan = registry.find_kernels(model, embeddings=True)
    self.kernels = [k for k in plan.kernels if id(k.variable) in wanted]
    self.folds = (apply._all_folds(model)  # pylint: disable=protected-access
                  if isinstance(model, keras.Model) else {})
    every = {id(k.variable): morphing.MorphSpec("fewest_ones", 0.5) for k in self.kernels}
    self.units, self.plain = _units(model, self.kernels, every)
    self.unit_of = {id(e[0].variable): key for key, u in self.units.items()
                    for e in u.kernels if e is not None}
    self.originals = {id(k.variable): k.numpy() for k in self.kernels}
    self.statistics: dict[tuple, compensation.Statistics] = {}
    self._cache: dict = {}
    layers = [u.layer for u in self.units.values()]
    with _hooked(layers, self._record):
      _run(model, calibration)
    for key, unit in list(self.units.items()):
      if (key, 0) not in self.statistics:
        self.plain.update({e[0].name: "not called on the calibration inputs"
                           for e in unit.kernels if e is not None})
        del self.units[key]

  def _record(self, layer, inputs):
    unit = self.units[id(layer)]
    if unit.kind == "separable":
      rows = layer_rows(layer, "depthwise", inputs)
      dw = self.originals.get(id(layer.depthwise_kernel), layer.depthwise_kernel.numpy())
      parts = ((0, "depthwise", rows, dw), (1, "dense", _depthwise_output(rows, dw),
                                           layer.pointwise_kernel.numpy()))
    else:
      kernel = unit.kernels[0][0].numpy()
      parts = ((0, unit.kind, layer_rows(layer, unit.kind, inputs), kernel),)
    for slot, kind, rows, kernel in parts:
      stats = self.statistics.get((id(layer), slot))
      if stats is None:
        stats = self.statistics[(id(layer), slot)] = _new_statistics(kind, kernel)
      stats.add(rows)

  def _kernel(self, unit, slot, k, spec) -> compensation.Result:
    key = (id(k.variable), spec)
    if key not in self._cache:
      depthwise = unit.kind == "depthwise" or (unit.kind == "separable" and slot == 0)
      c = self.calibration
      self._cache[key] = compensation.compensate(
          self.originals[id(k.variable)], self.statistics[(id(unit.layer), slot)], spec,
          error=c.error, bias=True, projected=c.projected, damping=c.damping,
          depthwise=depthwise)
    return self._cache[key]

  def _unit(self, unit, specs) -> tuple[list, np.ndarray]:
    """([Result or None per slot], the unit's mean output shift)."""
    finals = []
    for slot, entry in enumerate(unit.kernels):
      spec = None if entry is None else specs.get(id(entry[0].variable))
      finals.append(None if spec is None else self._kernel(unit, slot, entry[0], spec))
    if unit.kind == "separable":  # the depthwise change reaches the output through the pointwise
      pointwise = (finals[1].morphed if finals[1] is not None
                   else unit.layer.pointwise_kernel.numpy())
      pointwise = pointwise.reshape(-1, pointwise.shape[-1]).astype(np.float64)
      shift = (finals[1].bias_shift if finals[1] is not None else 0.0) + (
          finals[0].bias_shift @ pointwise if finals[0] is not None else 0.0)
    else:
      shift = finals[0].bias_shift if finals[0] is not None else 0.0
    return finals, shift

  def values(self, specs: Mapping[int, morphing.MorphSpec]) -> Compensated:
    """Compensated(...) for {id(kernel variable): MorphSpec}: kernels of
    layers that do not compensate (and bitx specs) are morphed plain."""
    from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
    values, variables, premorph, results, corrected = {}, {}, {}, {}, {}
    plain = {k.name: why for k in self.kernels if id(k.variable) in specs
             for name, why in self.plain.items() if name == k.name}
    for key, unit in self.units.items():
      mine = {id(e[0].variable): specs[id(e[0].variable)] for e in unit.kernels
              if e is not None and id(e[0].variable) in specs}
      if not mine:
        continue
      methods = sorted({s.method for s in mine.values()} - set(compensation.METHODS))
      if methods:
        plain.update({e[0].name: f"{methods[0]} decides per group" for e in unit.kernels
                      if e is not None and id(e[0].variable) in mine})
        continue
      finals, shift = self._unit(unit, mine)
      for entry, result in zip(unit.kernels, finals):
        if result is None:
          continue
        k = entry[0]
        results[k.name] = result
        values[id(k.variable)], variables[id(k.variable)] = result.morphed, k.variable
        premorph[id(k.variable)] = result.premorph
      if self.calibration.bias:
        target, sign, label = _bias_target(unit.layer, self.folds)
        corrected.update({e[0].name: label for e in unit.kernels
                          if e is not None and id(e[0].variable) in mine})
        if target is not None:
          old = self.originals.setdefault(id(target), np.asarray(target.numpy()))
          values[id(target)] = (old.astype(np.float64) + sign * shift).astype(np.float32)
          variables[id(target)] = target
    for k in self.kernels:
      spec = specs.get(id(k.variable))
      if spec is not None and id(k.variable) not in values:
        values[id(k.variable)] = apply._morph_array(self.originals[id(k.variable)], spec, k)  # pylint: disable=protected-access
        variables[id(k.variable)] = k.variable
        premorph[id(k.variable)] = self.originals[id(k.variable)]
    return Compensated(values, variables, premorph, results, plain, corrected, self.calibration)


def compensated_values(model, specs: Mapping[int, morphing.MorphSpec],
                       calibration: Calibration) -> Compensated:
  """The compensated kernels and corrected biases of `model` (module docstring).

  Args:
    model: a Keras model (graph models: BNs after a layer are found through
      its graph) or a layer.
    specs: {id(kernel variable): MorphSpec}, as morph_model resolves them.
    calibration: the Calibration.

  Raises:
    ValueError: the model holds MorphWrappers (compensation morphs a plain
      model once), non-finite calibration activations or weights.
  """
  plan = registry.find_kernels(model, embeddings=True)
  kernels = [k for k in plan.kernels if id(k.variable) in specs]
  if calibration.statistics == "original":
    done = Compensator(model, [k.variable for k in kernels], calibration).values(specs)
  else:
    done = _sequential(model, kernels, specs, calibration)
  if done.plain:
    shown = list(done.plain.items())
    more = f"; and {len(shown) - 6} more" if len(shown) > 6 else ""
    warnings.warn(f"compensation: {len(done.plain)} of {len(kernels)} kernels morphed plain: "
                  + "; ".join(f"{k} ({v})" for k, v in shown[:6]) + more, RuntimeWarning,
                  stacklevel=3)
  if not done.results:
    raise ValueError("no kernel could be compensated: " + "; ".join(
        f"{k} ({v})" for k, v in list(done.plain.items())[:6]) + (
            "" if len(done.plain) <= 6 else f"; and {len(done.plain) - 6} more"))
  return done


def _sequential(model, kernels, specs, calibration: Calibration) -> Compensated:
  """statistics="morphed": each layer in call order, its statistics from the
  model with the layers before it compensated (assigned, restored at the end)."""
  order = []
  units, unit_plain = _units(model, kernels, specs)
  variables = {}
  values = {}
  originals = {}
  try:
    probe = Calibration(next(iter(calibration.batches())))
    layers = [u.layer for u in units.values()]
    with _hooked(layers, lambda layer, _: None if id(layer) in order else order.append(id(layer))):
      _run(model, probe, first_only=True)
    merged = None
    for key in order:
      unit = units[key]
      mine = [e[0].variable for e in unit.kernels if e is not None]
      done = Compensator(model, mine, calibration).values({id(v): specs[id(v)] for v in mine})
      if merged is None:
        merged = done
      else:
        for field in ("values", "variables", "premorph", "results", "plain", "corrected"):
          getattr(merged, field).update(getattr(done, field))
      for i, value in done.values.items():  # the layers so far, as compensated
        originals.setdefault(i, np.asarray(done.variables[i].numpy()))
        variables[i] = done.variables[i]
        values[i] = value
        variables[i].assign(value)
  finally:
    for i, variable in variables.items():
      variable.assign(originals[i])
  rest = [k for k in kernels if merged is None or id(k.variable) not in merged.values]
  from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
  if merged is None:
    merged = Compensated({}, {}, {}, {}, {}, {}, calibration)
  for k in rest:
    merged.values[id(k.variable)] = apply._morph_array(k.numpy(), specs[id(k.variable)], k)  # pylint: disable=protected-access
    merged.variables[id(k.variable)] = k.variable
    merged.premorph[id(k.variable)] = k.numpy()
    merged.plain.setdefault(k.name, unit_plain.get(k.name, "not called on the calibration inputs"))
  merged.calibration = calibration
  return merged


def compensate_model(model, method="fewest_ones", precision=None, *, calibration,
                     keep_bits=None, columns=None, group_size=None, width=None,
                     embeddings: bool = False):
  """(plain copy, Compensated): `model` with its kernels morphed compensated.

  The copy holds the final kernels and the corrected biases / moving means;
  every other variable is copied bit for bit from the same variable of
  `model`, which is left as it is. morph_model(..., compensate=...) followed
  by strip_morphing gives the same values.

  Args:
    model: a Sequential or Functional Keras model.
    method, precision, keep_bits, columns, group_size, width: as morph_model
      (precision may be a {pattern: P or MorphSpec} map).
    calibration: calibration inputs or a Calibration.
    embeddings: also morph Embedding tables (plain).

  Example:
    plain, done = compensate_model(model, "fewest_ones", 0.01, calibration=x[:256])
    print(done.summary())
  """
  from mortar_tf import precision_map  # pylint: disable=import-outside-toplevel
  from mortar_tf.keras import apply  # pylint: disable=import-outside-toplevel
  calibration = as_calibration(calibration)
  if calibration is None:
    raise ValueError("compensate_model needs calibration inputs")
  morphing_ = precision_map.check_morphing(method, precision, keep_bits=keep_bits,
                                           columns=columns, group_size=group_size, width=width)
  if not isinstance(model, keras.Model):
    raise ValueError(f"compensate_model takes a Keras model, got {type(model).__name__}")
  plan = registry.find_kernels(model, embeddings=embeddings)
  specs = apply.resolve_specs(plan, morphing_)
  apply.check_float32(plan, precision)
  if not specs:
    raise ValueError(f"nothing to morph in {model.name!r}: " + plan.summary())
  done = compensated_values(model, specs, calibration)
  copy = apply._rebuild(model, None, {}, given=done.values, what="compensate_model")  # pylint: disable=protected-access
  return copy, done
