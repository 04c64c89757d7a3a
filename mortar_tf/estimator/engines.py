"""Accelerator engines: the weight-serial cycle models of SPEC 4 (v3) as configs.

An engine is hardware only: the estimator evaluates each one on the original
and on the morphed weights (the matrix engines x weights). An Engine is a
small immutable config: which cycle model, how many lanes per
PE (`group_size`, the G of the weight groups), the aligned window `width`, the
Bitlet `window`, how many PEs, and the clock, power and area where a source
gives them. Every constant carries its source; a figure with no source is
None, and what depends on it (time, energy, iso-area speedup) is reported as
unknown. These are models, not the papers' RTL: Stripes and Pragmatic
serialise activations in their papers; here, as for Bitlet and Mortar, the
weight side is serialised.

Example:
  >>> engine = Engine("bitlet", "bitlet", group_size=4, width=4, window=2)
  >>> engine.group_cycles(n_groups=1, lane_sum=2, bitlet_sum=3)
  3
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Mapping, Sequence

from mortar_tf import backends
from mortar_tf import bits

MODELS = ("fp32", "stripes", "pragmatic", "bitlet", "mortar")
# The largest G: the C++ kernels' (kMaxGroupSize in mortar_tf/cc/kernels.h,
# through backends), whose per-column counters hold a group's G lanes plus G
# all-zero windows in 16 bits. Per-group figures of a larger G would run in
# numpy, far slower, for a PE wider than any design.
MAX_GROUP_SIZE = backends.MAX_KERNEL_GROUP_SIZE
_BITLET_RTL = "Bitlet-PE public RTL defaults (64 lanes, 24 columns, 8-lane window)"
# The default engines' geometry (Bitlet-PE RTL): what aligned figures shown
# next to their estimates use. bits holds the one default of the package; the
# engines' is that one.
DEFAULT_GROUP_SIZE = bits.DEFAULT_GROUP_SIZE
DEFAULT_WIDTH = bits.DEFAULT_WIDTH


@dataclasses.dataclass(frozen=True)
class Engine:
  """One accelerator engine.

  Attributes:
    name: how reports name it (unique in an estimate).
    model: the cycle model, one of MODELS. "mortar" is our reading of the
      paper's accelerator, which the paper does not specify: it computes only
      the 1 bits of exponent-matched weights with the lanes of a group in
      step, i.e. the pragmatic rule, with Mortar's power and area.
    group_size: lanes per PE, the G of the weight groups (1..MAX_GROUP_SIZE,
      16384).
    width: aligned window width in columns (1..64).
    window: lanes per Bitlet window (>= 1).
    num_pes: processing elements working in parallel (>= 1).
    frequency_hz: clock, or None (unknown: no time or energy).
    power_w: power in watts, or None (unknown: no energy).
    area_mm2: area per PE in mm², or None (unknown: no iso-area speedup).
    sources: (field, where the figure comes from) pairs.
  """
  name: str
  model: str
  group_size: int = DEFAULT_GROUP_SIZE
  width: int = DEFAULT_WIDTH
  window: int = 8
  num_pes: int = 1
  frequency_hz: float | None = None
  power_w: float | None = None
  area_mm2: float | None = None
  sources: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"engine name must be a non-empty string, got {self.name!r}")
    if self.model not in MODELS:
      raise ValueError(f"engine {self.name!r}: unknown model {self.model!r}; expected one of "
                       f"{', '.join(MODELS)}")
    _check_int(self.name, "group_size (lanes)", self.group_size, 1, MAX_GROUP_SIZE)
    _check_int(self.name, "width", self.width, 1, 64)
    _check_int(self.name, "window", self.window, 1, None)
    _check_int(self.name, "num_pes", self.num_pes, 1, None)
    _check_positive(self.name, "frequency_hz", self.frequency_hz, allow_zero=False)
    _check_positive(self.name, "power_w", self.power_w, allow_zero=True)
    _check_positive(self.name, "area_mm2", self.area_mm2, allow_zero=False)
    if isinstance(self.sources, Mapping):
      object.__setattr__(self, "sources", tuple(sorted(self.sources.items())))
    fields = {f.name for f in dataclasses.fields(self)}
    for entry in self.sources:
      if len(entry) != 2 or entry[0] not in fields or not isinstance(entry[1], str):
        raise ValueError(f"engine {self.name!r}: a source must be (field, text) for one of its "
                         f"fields, got {entry!r}")

  @property
  def geometry(self) -> tuple[int, int, int]:
    """(group_size, width, window): what its per-group figures depend on."""
    return (self.group_size, self.width, self.window)

  def source(self, field: str) -> str | None:
    return dict(self.sources).get(field)

  def group_cycles(self, n_groups: int, lane_sum: int, bitlet_sum: int) -> int:
    """Sum over a layer's groups of cycles(g) (SPEC 4).

    Args:
      n_groups: number of groups.
      lane_sum: sum over groups of max(most ones in one lane, 1).
      bitlet_sum: sum over groups of Bitlet's column cost (each >= 1).
    """
    if self.model == "fp32":
      return n_groups
    if self.model == "stripes":
      return self.width * n_groups
    if self.model in ("pragmatic", "mortar"):
      return lane_sum
    return bitlet_sum

  def layer_cycles(self, n_pos: int, group_cycles: int) -> int:
    """ceil(N_pos * sum_g cycles(g) / num_pes), exactly (integers)."""
    return -(-(n_pos * group_cycles) // self.num_pes)

  def seconds(self, cycles: int) -> float | None:
    return None if self.frequency_hz is None else cycles / self.frequency_hz

  def joules(self, cycles: int) -> float | None:
    seconds = self.seconds(cycles)
    return None if seconds is None or self.power_w is None else self.power_w * seconds

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["sources"] = dict(self.sources)
    return out

  @classmethod
  def from_dict(cls, data: Mapping) -> "Engine":
    """Builds an Engine from a dict (e.g. parsed JSON), naming unknown keys."""
    if not isinstance(data, Mapping):
      raise ValueError(f"an engine config must be a JSON object, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
      raise ValueError(f"engine config {data.get('name', '?')!r}: unknown keys {unknown}; "
                       f"known: {sorted(fields)}")
    missing = [k for k in ("name", "model") if k not in data]
    if missing:
      raise ValueError(f"engine config needs {missing}")
    return cls(**dict(data))


def with_geometry(engines: Sequence[Engine], group_size: int | None = None,
                  width: int | None = None) -> tuple[Engine, ...]:
  """The engines with their lanes per PE and/or aligned width replaced (what
  `mortar-estimate --group_size/--width` does); the source says so."""
  out = []
  for engine in engines:
    changes, sources = {}, dict(engine.sources)
    for field, value in (("group_size", group_size), ("width", width)):
      if value is not None:
        changes[field] = value
        sources[field] = "set by the user"
    out.append(dataclasses.replace(engine, **changes, sources=tuple(sorted(sources.items())))
               if changes else engine)
  return tuple(out)


def _check_int(name, what, value, low, high):
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"engine {name!r}: {what} must be an integer, got {value!r}")
  if value < low or (high is not None and value > high):
    bound = f"{low}..{high}" if high is not None else f">= {low}"
    raise ValueError(f"engine {name!r}: {what} must be {bound}, got {value}")


def _check_positive(name, what, value, allow_zero):
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise ValueError(f"engine {name!r}: {what} must be a finite number or null, got {value!r}")
  if value < 0 or (value == 0 and not allow_zero):
    raise ValueError(f"engine {name!r}: {what} must be {'>= 0' if allow_zero else '> 0'}, "
                     f"got {value}")


def default_engines() -> tuple[Engine, ...]:
  """The five engines of SPEC 4 with the figures that have a source.

  All use the Bitlet-PE RTL's lanes, columns and window so their cycles
  compare layer for layer; clocks are unknown (no time or energy unless a
  config gives one). Mortar's power and area are the paper's.
  """
  geometry = (("group_size", _BITLET_RTL), ("width", _BITLET_RTL), ("window", _BITLET_RTL))
  unsourced = "no published figure for this model"
  return (
      Engine("fp32", "fp32", sources=geometry + (("power_w", unsourced),)),
      Engine("stripes", "stripes", sources=geometry + (("power_w", unsourced),)),
      Engine("pragmatic", "pragmatic", sources=geometry + (("power_w", unsourced),)),
      Engine("bitlet", "bitlet", sources=geometry + (("power_w", unsourced),)),
      Engine("mortar", "mortar", power_w=0.06858, area_mm2=0.031,
             sources=geometry + (("power_w", "Mortar paper (ASP-DAC 2023): 68.58 mW"),
                                 ("area_mm2", "Mortar paper (ASP-DAC 2023): 0.031 mm²"))),
  )


# Figures with a source that no default engine uses: BitX (ICPP 2021 abstract).
BITX_FIGURES = {"power_w": 0.06862, "area_mm2": 0.039,
                "source": "BitX abstract (ICPP 2021): 68.62 mW, 0.039 mm²"}


def load_engines(path: str) -> tuple[Engine, ...]:
  """Engines from a JSON file: a list of engine objects, or {"engines": [...]}.

  Raises:
    ValueError: a missing or unreadable file, bad JSON, or a bad engine.
  """
  if not os.path.isfile(path):
    raise ValueError(f"no such engine config: {path!r}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except ValueError as e:
    raise ValueError(f"engine config {path!r} is not valid JSON: {e}") from e
  if isinstance(data, Mapping):
    data = data.get("engines")
  if not isinstance(data, list) or not data:
    raise ValueError(f"engine config {path!r} must be a non-empty list of engines "
                     '(or {"engines": [...]})')
  return check_engines([Engine.from_dict(entry) for entry in data])


def check_engines(engines: Sequence[Engine]) -> tuple[Engine, ...]:
  engines = tuple(engines)
  if not engines:
    raise ValueError("no engines given")
  for engine in engines:
    if not isinstance(engine, Engine):
      raise TypeError(f"expected Engine objects, got {type(engine).__name__}")
  names = [e.name for e in engines]
  duplicated = sorted({n for n in names if names.count(n) > 1})
  if duplicated:
    raise ValueError(f"engine names must be unique; repeated: {duplicated}")
  return engines
