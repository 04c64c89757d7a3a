"""Precision maps {pattern: P or MorphSpec}: the one matcher every consumer uses.

A map gives each weight its morphing. Its keys are `fnmatch` patterns (case
sensitive: `*`, `?`, `[...]`), matched against every name a weight answers
to: its full name ("enc/mha/query/kernel"), each enclosing layer path ("enc",
"enc/mha", "enc/mha/query") and each layer's own name ("mha", "query"), plus
what the caller adds (a SavedModel checkpoint key, the names of the ops that
read the weight). The first entry that matches wins, in the map's order: put
specific entries before general ones. Every entry must win at least one
weight: an entry that matches nothing, or only weights that earlier entries
already take (`{"*": 0.1, "fc": 0.01}`), is an error naming it.

A value is a number, P for the call's own method ("paper" or "fewest_ones";
a number under "round" or "bitx" is an error), or a MorphSpec (or its config,
the JSON object {"method": "bitx", "columns": 8}), which gives the weights
its entry wins that method and those settings: `{"conv1": MorphSpec("bitx",
columns=8), "*": 0.1}`. A spec is whole in itself: bitx entries group with
their own group_size and width (default bits.DEFAULT_GROUP_SIZE and
DEFAULT_WIDTH), whatever the call's.

morph_model, MorphWrapper, MortarCallback, mortar-morph and mortar-estimate
--precision_map, mortar_tf.savedmodel.convert and the estimator all match
through here.

Example:
  >>> names = weight_names("enc/mha/query/kernel")
  >>> names[:4]
  ('enc/mha/query/kernel', 'enc', 'enc/mha', 'enc/mha/query')
  >>> lookup({"mha/value": 0.05, "mha": 0.1}, names)
  0.1
  >>> check({"conv1": {"method": "bitx", "columns": 8}, "*": 0.05}, "fewest_ones")["*"]
  MorphSpec('fewest_ones', precision=0.05)
"""

from __future__ import annotations

import fnmatch
import numbers
from typing import Mapping, Sequence

from mortar_tf import morphing

MAP_METHODS = ("paper", "fewest_ones")


def weight_names(weight_name: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
  """Every name a map entry may use for the weight `weight_name`.

  Args:
    weight_name: "<layer path>/<variable>", e.g. "block/conv/kernel".
    extra: further names (a checkpoint key, op names).
  """
  parts = weight_name.split("/")
  prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
  own = [p for p in parts[:-1] if p not in prefixes]
  names = [weight_name, *prefixes, *own, *extra]
  return tuple(dict.fromkeys(n for n in names if n))


def literal(name: str) -> str:
  """A pattern that matches `name` only (fnmatch's `*`, `?` and `[` escaped)."""
  return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _hits(pattern: str, names: Sequence[str]) -> bool:
  return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def lookup(precision_map: Mapping, names: Sequence[str]):
  """The value of the first entry whose pattern matches one of `names`, or None."""
  return next((value for pattern, value in precision_map.items() if _hits(pattern, names)),
              None)


def _entry_spec(pattern: str, value, method: str) -> morphing.MorphSpec:
  """The MorphSpec of one map value: a spec or its config as it is, a number as P."""
  try:
    if isinstance(value, morphing.MorphSpec):
      return value
    if isinstance(value, Mapping):
      return morphing.MorphSpec.from_config(value)
  except ValueError as e:
    raise ValueError(f"precision map entry {pattern!r}: {e}") from None
  if method not in MAP_METHODS:
    raise ValueError(
        f"precision map entry {pattern!r} is a number, a P, which needs method 'paper' or "
        f"'fewest_ones', not {method!r}: give the entry a MorphSpec (or its config, e.g. "
        "{'method': 'round', 'keep_bits': 7}) instead")
  try:
    return morphing.MorphSpec(method, value)
  except ValueError as e:
    hint = "" if isinstance(value, numbers.Real) else (
        " (a value is P, a MorphSpec, or a MorphSpec config such as "
        "{'method': 'bitx', 'columns': 8})")
    raise ValueError(f"precision map entry {pattern!r}: {e}{hint}") from None


def check(precision_map, method: str = "paper") -> dict[str, morphing.MorphSpec]:
  """Validates a map and returns {pattern: MorphSpec}, in the map's order.

  Args:
    precision_map: {pattern: P, MorphSpec or MorphSpec config}.
    method: the method name whose P the number entries give.

  Raises:
    ValueError: not a Mapping, empty, a key that is not a string, an unknown
      method, a number entry under a method that takes no P, a bad P or a bad
      spec (the message names the entry).
  """
  if isinstance(method, morphing.MorphSpec):
    raise ValueError(
        f"a precision map and a MorphSpec ({method!r}) as the method: the map's numbers are P "
        "for a method given by name ('paper' or 'fewest_ones'); put the spec into the map "
        "instead, e.g. {..., '*': spec}")
  if not isinstance(method, str) or method not in morphing.METHODS:
    raise ValueError(f"unknown morphing method {method!r}; expected one of "
                     f"{', '.join(morphing.METHODS)}")
  if not isinstance(precision_map, Mapping):
    raise ValueError(f"a precision map must be a mapping of {{pattern: P or MorphSpec}}, got "
                     f"{type(precision_map).__name__}")
  if not precision_map:
    raise ValueError("the precision map is empty")
  specs = {}
  for pattern, value in precision_map.items():
    if not isinstance(pattern, str) or not pattern:
      raise ValueError(f"precision map keys are layer or weight name patterns (strings), got "
                       f"{pattern!r}")
    specs[pattern] = _entry_spec(pattern, value, method)
  return specs


def check_morphing(method="paper", precision=None, *, keep_bits=None, columns=None,
                   group_size=None, width=None):
  """A call's morphing arguments, validated: a MorphSpec, or {pattern:
  MorphSpec} when `precision` is a map (then `method` names the method of its
  number entries, and no flat setting may be given).

  Raises:
    ValueError: as morphing.as_spec and `check`; flat settings with a map.
  """
  if not isinstance(precision, Mapping):
    return morphing.as_spec(method, precision, keep_bits=keep_bits, columns=columns,
                            group_size=group_size, width=width)
  flat = [k for k, v in dict(keep_bits=keep_bits, columns=columns, group_size=group_size,
                             width=width).items() if v is not None]
  if flat:
    raise ValueError(f"a {{pattern: P}} precision map takes no keep_bits, columns, group_size "
                     f"or width (got {', '.join(flat)}): give the entries that need them a "
                     "MorphSpec, e.g. {'conv1': MorphSpec('bitx', columns=8)}")
  return check(precision, method)


def to_json(precision_map, method: str | None = None) -> dict:
  """A checked map as JSON: numbers as floats, specs as their configs (a spec
  of `method` itself, when given and it takes P, as its P: the same map)."""
  def entry(value):
    if isinstance(value, Mapping) and not isinstance(value, morphing.MorphSpec):
      value = morphing.MorphSpec.from_config(value)
    if not isinstance(value, morphing.MorphSpec):
      return float(value)
    if value.method == method and method in MAP_METHODS:
      return value.precision
    return value.to_config()

  return {pattern: entry(value) for pattern, value in precision_map.items()}


def resolve(precision_map, weights: Mapping[str, Sequence[str]], method: str = "paper",
            what: str = "weight") -> dict[str, morphing.MorphSpec]:
  """{weight key: MorphSpec} for the weights some entry matches (first match wins).

  Args:
    precision_map: {pattern: P, MorphSpec or MorphSpec config}.
    weights: {weight key: the names it answers to (weight_names(...))}.
    method: the method of the number entries ("paper" or "fewest_ones").
    what: how the error message calls the weights ("kernel", "variable").

  Raises:
    ValueError: as `check`; an entry that matches no weight (a typo guard;
      the message lists the weights' names); an entry that matches weights
      but wins none, every one of them taken by earlier entries (the
      message names the entries that shadow it).
  """
  specs = check(precision_map, method)
  unused = [p for p in specs if not any(_hits(p, names) for names in weights.values())]
  if unused:
    listed = ", ".join(sorted(names[0] for names in weights.values() if names)) or "(none)"
    raise ValueError(f"precision map entries {unused} match no {what}; the {what}s are: "
                     f"{listed}")
  out, winner = {}, {}
  for key, names in weights.items():
    pattern = next((p for p in specs if _hits(p, names)), None)
    if pattern is not None:
      out[key] = specs[pattern]
      winner[key] = pattern
  won = set(winner.values())
  for pattern in specs:
    if pattern in won:
      continue
    matched = [key for key, names in weights.items() if _hits(pattern, names)]
    shown = [weights[key][0] if weights[key] else str(key) for key in matched]
    before = list(dict.fromkeys(winner[key] for key in matched))
    raise ValueError(
        f"precision map entry {pattern!r} never applies: every {what} it matches "
        f"({', '.join(shown[:4])}{', ...' if len(shown) > 4 else ''}) is matched first by "
        f"the earlier {'entry' if len(before) == 1 else 'entries'} "
        f"{', '.join(repr(p) for p in before)} (the first matching entry wins); put "
        f"{pattern!r} before {'it' if len(before) == 1 else 'them'}, or remove it")
  return out
