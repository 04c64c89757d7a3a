"""Checking a morphed SavedModel against its source: same inputs, outputs compared
with tolerances that can fail.

Inputs come from an .npz of the signature's inputs, or are random normal
(integers 0/1 for integer inputs) of a shape the caller gives; a dimension
the signature leaves unknown is never invented (only the batch dimension
defaults to 1).

Example:
  >>> default_tolerance([morphing.MorphSpec.create("paper", 0.1)])
  0.2
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from mortar_tf import files
from mortar_tf import morphing


class VerificationError(ValueError):
  """Outputs differ by more than the tolerance (`verification` has the figures)."""

  def __init__(self, message: str, verification: "Verification"):
    super().__init__(message)
    self.verification = verification


@dataclasses.dataclass(frozen=True)
class Verification:
  """What a verification compared.

  Attributes:
    inputs: {input name: shape used}.
    source: "npz" (given inputs) or "random".
    outputs: {output name: compare(original, morphed)}: "max_abs" (max |a - b|),
      "max_rel" (max |a - b| / max |a|), both over the positions finite in
      both, and the counts "non_finite" (NaN/inf alike in both) and
      "non_finite_mismatches" (a failure when not 0).
    max_rel: the tolerance on max_rel; max_abs: the one on max_abs (None: none).
  """
  inputs: Mapping[str, tuple[int, ...]]
  source: str
  outputs: Mapping[str, Mapping[str, float]]
  max_rel: float
  max_abs: float | None

  def advice(self) -> str:
    """What to do about the failures: a NaN or inf that appeared or vanished
    is no matter of tolerance."""
    if any(d.get("non_finite_mismatches") for d in self.outputs.values()):
      return "a NaN or inf appeared or vanished, which no tolerance allows: morph less"
    return "raise the tolerance, or morph less"

  def failures(self) -> list[str]:
    out = []
    for name, diff in self.outputs.items():
      if diff.get("non_finite_mismatches"):
        out.append(f"{name}: {diff['non_finite_mismatches']} position(s) where one output is "
                   "NaN or inf and the other is not the same")
      if not diff["max_rel"] <= self.max_rel:  # NaN fails too
        out.append(f"{name}: max rel diff {diff['max_rel']:.3g} > {self.max_rel:.3g}")
      if self.max_abs is not None and not diff["max_abs"] <= self.max_abs:
        out.append(f"{name}: max abs diff {diff['max_abs']:.3g} > {self.max_abs:.3g}")
    return out

  @property
  def passed(self) -> bool:
    return not self.failures()

  def lines(self) -> list[str]:
    shapes = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in self.inputs.items())
    out = [f"Verified on {self.source} inputs ({shapes}); tolerance max rel {self.max_rel:.3g}"
           + (f", max abs {self.max_abs:.3g}" if self.max_abs is not None else "")]
    for name, diff in self.outputs.items():
      line = (f"  output {name}: max abs diff {diff['max_abs']:.3g}, max rel diff "
              f"{diff['max_rel']:.3g}")
      if diff.get("non_finite") or diff.get("non_finite_mismatches"):
        line += (f" (over the finite positions; {diff.get('non_finite', 0)} NaN/inf in both "
                 f"alike, {diff.get('non_finite_mismatches', 0)} not alike)")
      out.append(line)
    failures = self.failures()
    out.append("  FAILED: " + "; ".join(failures) if failures else "  passed")
    return out

  def __str__(self) -> str:
    return "\n".join(self.lines())

  def __repr__(self) -> str:
    return (f"Verification(source={self.source!r}, inputs={len(self.inputs)}, "
            f"outputs={len(self.outputs)}, max_rel={self.max_rel:.3g}, passed={self.passed})")

  def to_dict(self) -> dict:
    return {"inputs": {n: list(s) for n, s in self.inputs.items()}, "source": self.source,
            "outputs": {n: {k: files.finite_or_none(v) for k, v in d.items()}
                        for n, d in self.outputs.items()},
            "tolerance": {"max_rel": self.max_rel, "max_abs": self.max_abs},
            "passed": self.passed}


def compare(original, morphed) -> dict:
  """How far `morphed` is from `original` (same shape), as Verification.outputs holds it.

  Non-finite values are compared by position and kind: a NaN, +inf or -inf
  of the original must be the same in the morphed output, and a finite value
  must stay finite ("non_finite_mismatches" counts the positions where not).
  The finite positions of both are compared by value: "max_abs" is their
  largest |a - b|, "max_rel" that over the largest finite |a| (0 when
  nothing differs, inf when only zeros were expected); "non_finite" counts
  the positions non-finite in both alike.

  >>> compare(np.float32([1.0, np.nan]), np.float32([1.5, np.nan]))
  {'max_abs': 0.5, 'max_rel': 0.5, 'non_finite': 1, 'non_finite_mismatches': 0}
  """
  x = np.asarray(original, np.float64).ravel()
  y = np.asarray(morphed, np.float64).ravel()
  fx, fy = np.isfinite(x), np.isfinite(y)
  kind_x = np.where(np.isnan(x), 0.0, np.sign(x))  # NaN 0, +inf 1, -inf -1 where non-finite
  kind_y = np.where(np.isnan(y), 0.0, np.sign(y))
  mismatches = int(np.count_nonzero((fx != fy) | (~fx & ~fy & (kind_x != kind_y))))
  both = fx & fy
  diff = float(np.max(np.abs(x[both] - y[both]))) if both.any() else 0.0
  scale = float(np.max(np.abs(x[both]))) if both.any() else 0.0
  return {"max_abs": diff,
          "max_rel": diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf),
          "non_finite": int(np.count_nonzero(~fx & ~fy & (kind_x == kind_y))),
          "non_finite_mismatches": mismatches}


def default_tolerance(specs: Sequence[morphing.MorphSpec]) -> float:
  """Twice the largest per-weight relative error the methods allow: P for
  paper and fewest_ones, 2^-(keep_bits + 1) for round; bitx can drop a weight
  whole, so 1.0."""
  bound = 0.0
  for spec in specs:
    if spec.method in ("paper", "fewest_ones"):
      bound = max(bound, spec.precision)
    elif spec.method == "round":
      bound = max(bound, 2.0 ** -(spec.keep_bits + 1))
    else:
      bound = max(bound, 0.5)
  return round(2 * bound, 12) if bound else 1e-6


def signature_inputs(fn) -> dict:
  """{input name: TensorSpec} of a concrete signature function."""
  _, kwargs = fn.structured_input_signature
  return kwargs


def make_inputs(specs, inputs=None, input_shape=None, seed: int = 0):
  """({input name: tensor}, source) for the signature inputs `specs`.

  Args:
    specs: {name: TensorSpec}.
    inputs: an .npz path or {name: array}, or None for random inputs.
    input_shape: one shape (a single-input signature) or {name: shape}.
    seed: seeds the random inputs.

  Raises:
    ValueError: inputs that do not match, or an unknown dimension (other than
      the batch) with no shape given for it.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if isinstance(inputs, str):
    inputs = files.read_npz(inputs, "inputs file")
  if inputs is not None:
    if len(specs) == 1 and set(inputs) == {"x"} and "x" not in specs:
      # mortar-sweep's data layout (one array `x`) for a one-input signature.
      inputs = {next(iter(specs)): inputs["x"]}
    missing = sorted(set(specs) - set(inputs))
    if missing:
      raise ValueError(f"the inputs lack {missing}; the signature takes {sorted(specs)}")
    feed = {}
    for name, spec in specs.items():
      value = np.asarray(inputs[name])
      if value.ndim and value.shape[0] == 0:
        raise ValueError(f"input {name!r} is empty (shape {value.shape}): nothing to verify on")
      if not spec.shape.is_compatible_with(value.shape):
        raise ValueError(f"input {name!r} has shape {value.shape}; the signature takes "
                         f"{spec.shape}")
      feed[name] = tf.constant(value, dtype=spec.dtype)
    if input_shape is not None:  # both given: they must describe the same inputs
      for name, shape in _given_shapes(specs, input_shape).items():
        have = tuple(feed[name].shape)
        if len(have) != len(shape) or have[1:] != tuple(shape)[1:]:
          raise ValueError(f"input_shape for {name!r} is {list(shape)} but the .npz holds "
                           f"{list(have)}: give one, or make them agree")
    return feed, "npz"
  shapes = _shapes(specs, input_shape)
  rng = np.random.default_rng(seed)
  feed = {}
  for name, spec in specs.items():
    shape = shapes[name]
    if spec.dtype.is_floating:
      value = rng.standard_normal(shape)
    elif spec.dtype.is_integer:
      value = rng.integers(0, 2, shape)
    else:
      raise ValueError(f"input {name!r} is {spec.dtype.name}: give the inputs as an .npz")
    feed[name] = tf.constant(value, dtype=spec.dtype)
  return feed, "random"


def _hint(specs) -> str:
  """graph.input_shape_hint for the TensorSpecs `specs`."""
  from mortar_tf.savedmodel import graph  # pylint: disable=import-outside-toplevel
  return graph.input_shape_hint(
      {n: None if s.shape.rank is None else [-1 if d is None else d for d in s.shape.as_list()]
       for n, s in specs.items()})


def _given_shapes(specs, input_shape) -> dict:
  """{name: shape} of input_shape: one shape names a one-input signature's
  input; a mapping must name the signature's inputs."""
  if input_shape is not None and not isinstance(input_shape, Mapping):
    if len(specs) != 1:
      raise ValueError(f"the signature takes {len(specs)} inputs ({', '.join(sorted(specs))}): "
                       f"give one shape per input, {_hint(specs)}")
    input_shape = {next(iter(specs)): input_shape}
  input_shape = dict(input_shape or {})
  unknown = sorted(set(input_shape) - set(specs))
  if unknown:
    raise ValueError(f"input_shape names {unknown}; the signature takes {sorted(specs)}")
  return {name: tuple(int(d) for d in shape) for name, shape in input_shape.items()}


def _shapes(specs, input_shape) -> dict:
  input_shape = _given_shapes(specs, input_shape)
  out = {}
  for name, spec in specs.items():
    dims = spec.shape.as_list() if spec.shape.rank is not None else None
    given = input_shape.get(name)
    if given is not None:
      if not spec.shape.is_compatible_with(given):
        raise ValueError(f"input_shape for {name!r} is {list(given)}; the signature takes "
                         f"{spec.shape}")
      out[name] = given
      continue
    if dims is None or any(d is None for d in dims[1:]):
      raise ValueError(f"input {name!r} has unknown dimensions {dims}: give the shapes, "
                       f"{_hint(specs)}, or the inputs as an .npz; none is invented")
    out[name] = tuple(1 if i == 0 and d is None else d for i, d in enumerate(dims))
  return out


def verify_outputs(src: str, dst: str, signature: str, inputs=None, input_shape=None,
                   seed: int = 0, max_rel: float = 1e-6,
                   max_abs: float | None = None) -> Verification:
  """Runs both SavedModels' signature on the same inputs and compares outputs.

  Raises:
    SavedModelError: a model that does not load or lacks the signature.
    ValueError: inputs that do not match the signature (see make_inputs).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mortar_tf.savedmodel.variables import SavedModelError  # pylint: disable=import-outside-toplevel
  fns = []
  for path in (src, dst):
    try:
      model = tf.saved_model.load(path)
    except Exception as e:  # pylint: disable=broad-except
      raise SavedModelError(f"cannot load {path!r} to verify it: {e}") from e
    if signature not in model.signatures:
      raise SavedModelError(f"{path!r} has no signature {signature!r}")
    fns.append(model.signatures[signature])
  feed, source = make_inputs(signature_inputs(fns[0]), inputs, input_shape, seed)
  try:
    a, b = fns[0](**feed), fns[1](**feed)
  except (tf.errors.OpError, ValueError, TypeError) as e:
    shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in feed.items())
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"the model does not run on the verification inputs ({shapes}): "
                     f"{first}; give inputs it takes (--input_shape or an .npz)") from None
  outputs = {name: compare(a[name], b[name]) for name in sorted(a)}
  return Verification({n: tuple(t.shape) for n, t in feed.items()}, source, outputs, max_rel,
                      max_abs)
