"""{pattern: P} precision maps: the one matcher every consumer uses.

A map gives one P per weight. Its keys are `fnmatch` patterns (case
sensitive: `*`, `?`, `[...]`), matched against every name a weight answers
to: its full name ("enc/mha/query/kernel"), each enclosing layer path ("enc",
"enc/mha", "enc/mha/query") and each layer's own name ("mha", "query"), plus
what the caller adds (a SavedModel checkpoint key, the names of the ops that
read the weight). The first entry that matches wins, in the map's order: put
specific entries before general ones. Every entry must win at least one
weight: an entry that matches nothing, or only weights that earlier entries
already take (`{"*": 0.1, "fc": 0.01}`), is an error naming it.

morph_model, MorphWrapper, MortarCallback, mortar-morph --precision_map,
mortar_tf.savedmodel.convert and the estimator all match through here.

Example:
  >>> names = weight_names("enc/mha/query/kernel")
  >>> names[:4]
  ('enc/mha/query/kernel', 'enc', 'enc/mha', 'enc/mha/query')
  >>> lookup({"mha/value": 0.05, "mha": 0.1}, names)
  0.1
"""

from __future__ import annotations

import fnmatch
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


def check(precision_map, method: str = "paper") -> dict[str, morphing.MorphSpec]:
  """Validates a map and returns {pattern: MorphSpec}, in the map's order.

  Raises:
    ValueError: not a Mapping, empty, a key that is not a string, a method
      that takes no P, or a bad P (the message names the entry).
  """
  if not isinstance(precision_map, Mapping):
    raise ValueError(f"a precision map must be a mapping of {{pattern: P}}, got "
                     f"{type(precision_map).__name__}")
  if method not in MAP_METHODS:
    raise ValueError(f"a precision map needs method 'paper' or 'fewest_ones', not {method!r}")
  if not precision_map:
    raise ValueError("the precision map is empty")
  specs = {}
  for pattern, value in precision_map.items():
    if not isinstance(pattern, str) or not pattern:
      raise ValueError(f"precision map keys are layer or weight name patterns (strings), got "
                       f"{pattern!r}")
    try:
      specs[pattern] = morphing.MorphSpec.create(method, value)
    except ValueError as e:
      raise ValueError(f"precision map entry {pattern!r}: {e}") from None
  return specs


def resolve(precision_map, weights: Mapping[str, Sequence[str]], method: str = "paper",
            what: str = "weight") -> dict[str, morphing.MorphSpec]:
  """{weight key: MorphSpec} for the weights some entry matches (first match wins).

  Args:
    precision_map: {pattern: P}.
    weights: {weight key: the names it answers to (weight_names(...))}.
    method: "paper" or "fewest_ones".
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
