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


def compensator(model, kernels, compensate):
  """A mortar_tf.keras.calibration.Compensator over `kernels` (statistics
  collected now, from the model as it is), or None without `compensate`."""
  if compensate is None or compensate is False:
    return None
  if isinstance(model, models.LoadedSavedModel):
    raise ValueError("exploration compensates Keras models only (their layers' inputs are "
                     "hooked to collect the statistics); give the .keras/.h5 model")
  from mortar_tf.keras import calibration as calibration_lib  # pylint: disable=import-outside-toplevel
  cal = calibration_lib.as_calibration(compensate)
  if cal.statistics != "original":
    raise ValueError("the search caches each kernel's compensation from the original model's "
                     "statistics: it needs Calibration(statistics='original')")
  return calibration_lib.Compensator(model, [k.variable for k in kernels], cal)


def check_disjoint(compensator, *metrics) -> None:
  """Refuses calibration samples that a metric also scores (SPEC 6: they are
  disjoint), found by their bytes; data that is not an array is not checked.

  Raises:
    ValueError: naming how many of which metric's samples calibrate too.
  """
  if compensator is None:
    return
  data = compensator.calibration.data
  if not isinstance(data, np.ndarray) or data.ndim < 1:
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
