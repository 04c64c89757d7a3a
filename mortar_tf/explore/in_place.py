"""Kernels of a model, morphed in place and restored.

Exploration never rebuilds a model: it assigns morphed values to the kernel
variables (models.model_kernels), evaluates, and assigns the originals back
bit for bit. This module holds the three steps every sweep point and search
candidate shares: morphing one kernel as its method groups it (bitx over the
kernel's reduction axes), the context that applies and restores values, and
the ones ratios of a set of morphed values against the originals.

Example:
  kernels = models.model_kernels(model)
  values = {0: morph(kernels[0], morphing.MorphSpec.create("paper", 0.1))}
  with Applied(kernels, values):
    score = metric(model)
  ratio, _, _ = ratios(kernels, values, 64, 24)
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mortar_tf import backends
from mortar_tf import bits
from mortar_tf import compression
from mortar_tf import morphing
from mortar_tf.explore import models


def morph(kernel: models.Kernel, spec: morphing.MorphSpec) -> np.ndarray:
  """The kernel's original value morphed by `spec` (bitx groups over the
  kernel's reduction axes); the variable is not touched."""
  grouping = {"reduction_axes": kernel.axes} if spec.method == "bitx" else {}
  return backends.morph(kernel.original, spec, **grouping)


class Applied:
  """Context: kernels set to morphed values; restored bit for bit on exit."""

  def __init__(self, kernels, values: Mapping[int, np.ndarray]):
    self.kernels, self.values = kernels, values

  def __enter__(self):
    for index, value in self.values.items():
      self.kernels[index].variable.assign(value)
    return self

  def __exit__(self, *exc):
    for index in self.values:
      self.kernels[index].variable.assign(self.kernels[index].original)
    return False


class Assigned:
  """Context: [(variable, value)] assigned; each variable's value before
  restored bit for bit on exit (kernels, and the biases compensation corrects)."""

  def __init__(self, pairs):
    self.pairs = list(pairs)
    self.saved = []

  def __enter__(self):
    try:
      for variable, value in self.pairs:
        self.saved.append((variable, np.array(variable.numpy())))
        variable.assign(value)
    except BaseException:
      self.__exit__()
      raise
    return self

  def __exit__(self, *exc):
    for variable, value in reversed(self.saved):
      variable.assign(value)
    self.saved = []
    return False


def ratios(kernels, morphed: Mapping[int, np.ndarray], group_size, width):
  """({domain: ones before / ones after}, {domain: ones before}, {domain: ones
  after}) over all `kernels`, with {kernel index: value} in `morphed` replacing
  those kernels' originals (the aligned domain at `group_size` and `width`)."""
  before = {d: sum(k.ones[d] for k in kernels) for d in bits.DOMAINS}
  after = dict(before)
  for index, value in morphed.items():
    k = kernels[index]
    now = backends.ones_by_domain(value, reduction_axes=k.axes, group_size=group_size, width=width)
    for d in bits.DOMAINS:
      after[d] += now[d] - k.ones[d]
  return {d: bits.sparsity_ratio(before[d], after[d]) for d in bits.DOMAINS}, before, after


def original_sizes(kernels) -> list[compression.Sizes]:
  """Each kernel's original compressed bytes, measured once (on parallel
  threads) and kept on the kernel for every later point."""
  missing = [k for k in kernels if k.sizes is None]
  if missing:
    with compression.Measurer() as measurer:
      for kernel, sizes in zip(missing, measurer.map([k.original for k in missing])):
        kernel.sizes = sizes
  return [k.sizes for k in kernels]


def measure(values: Mapping[int, np.ndarray]) -> dict[int, compression.Sizes]:
  """{kernel index: measured compressed bytes of its value} (parallel threads)."""
  with compression.Measurer() as measurer:
    return dict(zip(values, measurer.map(list(values.values()))))


def compressed(kernels, sizes: Mapping[int, compression.Sizes]) -> compression.CompressedSize:
  """The measured compressed bytes of all `kernels`, original against morphed,
  with {kernel index: Sizes} in `sizes` replacing those kernels' originals on
  the morphed side (the others count their original bytes on both sides, as
  `ratios` counts their ones); each kernel compressed alone, so the sum is
  exact."""
  originals = original_sizes(kernels)
  return compression.CompressedSize.total(
      compression.CompressedSize.of(original, sizes.get(i, original))
      for i, original in enumerate(originals))


def compensator(model, kernels, compensate):
  """A mortar_tf.keras.calibration.Compensator over `kernels` (statistics
  collected now, from the model as it is), or None without `compensate`."""
  if compensate is None or compensate is False:
    return None
  if isinstance(model, models.LoadedSavedModel):
    return SavedModelCompensator(model, kernels, compensate)
  from mortar_tf.keras import calibration as calibration_lib  # pylint: disable=import-outside-toplevel
  cal = calibration_lib.as_calibration(compensate)
  if cal.statistics != "original":
    raise ValueError("the search caches each kernel's compensation from the original model's "
                     "statistics: it needs Calibration(statistics='original')")
  return calibration_lib.Compensator(model, [k.variable for k in kernels], cal)


class _Values:
  """SavedModelCompensator.values' answer, shaped as mortar_tf.keras.calibration's
  Compensated (values and variables by id(variable))."""

  def __init__(self, values, variables, done):
    self.values, self.variables = values, variables
    self.results, self.plain, self.corrected = done.results, done.plain, done.corrected
    self.totals = done.totals


class SavedModelCompensator:
  """The Keras Compensator's interface over a LoadedSavedModel: statistics
  from its frozen signature (mortar_tf.savedmodel.compensate.Compensator),
  values by id(variable) of the loaded model's variables, kernels that do not
  compensate morphed plain.

  Attributes:
    calibration: the CalibrationInputs (settings(), label(), data).
  """

  def __init__(self, model, kernels, compensate):
    from mortar_tf.savedmodel import compensate as compensate_lib  # pylint: disable=import-outside-toplevel
    self.kernels = {id(k.variable): k for k in kernels}
    self.objects = {}  # checkpoint key: the loaded model's variable
    key_of = {}
    for var in model.graph.variables:
      found = models._at_path(model.loaded, var.path)  # pylint: disable=protected-access
      if found is not None:
        self.objects[var.key] = found
        key_of[id(found)] = var.key
    self.key_of = {i: key_of[i] for i in self.kernels if i in key_of}
    self.core = compensate_lib.Compensator(model.path, model.signature, model.graph,
                                           list(self.key_of.values()), compensate)
    self.calibration = self.core.calibration

  def values(self, specs: Mapping[int, morphing.MorphSpec]) -> _Values:
    """For {id(kernel variable): MorphSpec}: {id(variable): value} of every
    kernel of the specs and each corrected bias / mean."""
    done = self.core.values({self.key_of[i]: s for i, s in specs.items() if i in self.key_of})
    values, variables = {}, {}
    for key, value in done.values.items():
      variable = self.objects[key]
      values[id(variable)], variables[id(variable)] = value, variable
    for i, spec in specs.items():
      if i not in values:
        values[i], variables[i] = morph(self.kernels[i], spec), self.kernels[i].variable
    return _Values(values, variables, done)


def _calibration_rows(data):
  """The calibration inputs as one array, where they are one (a one-input
  SavedModel's {name: array} too), else None."""
  if isinstance(data, Mapping) and len(data) == 1:
    data = next(iter(data.values()))
  return data if isinstance(data, np.ndarray) and data.ndim >= 1 else None


def check_disjoint(compensator, *metrics) -> None:
  """Refuses calibration samples that a metric also scores (SPEC 6: they are
  disjoint), found by their bytes; data that is not an array is not checked.

  Raises:
    ValueError: naming how many of which metric's samples calibrate too.
  """
  if compensator is None:
    return
  data = _calibration_rows(compensator.calibration.data)
  if data is None:
    return
  seen = {np.ascontiguousarray(row).tobytes() for row in data}
  for what, metric in zip(("the metric's", "held_out's"), metrics):
    inputs = getattr(metric, "inputs", None)
    if not isinstance(inputs, np.ndarray) or inputs.shape[1:] != data.shape[1:]:
      continue
    shared = sum(np.ascontiguousarray(row).tobytes() in seen for row in inputs)
    if shared:
      raise ValueError(f"{shared} of {what} {len(inputs)} samples are calibration samples too: "
                       "calibration and scoring samples must be disjoint (SPEC 6), or the "
                       "score flatters the compensated morph")
