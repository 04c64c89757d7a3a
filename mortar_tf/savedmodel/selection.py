"""What the converter morphs in a SavedModel, and with which settings: one truth
for the converter and the estimator.

The selection "kernels" is every float32 model variable a compute op of the
signature reads as its weight (graph constants are never rewritten: they live
in saved_model.pb, which is copied as it is); "all" is every float32 model
variable; or a list of names. A {pattern: P or MorphSpec} map is matched
through mortar_tf.precision_map (an entry matching no selected variable is an
error); each variable gets its entry's spec.
A variable several ops read with different axes (a tied weight) is morphed
once; Keras 3 exports' second copy of each variable (a structural twin) is
morphed alike.

Example:
  targets, skipped = select_targets(graph, MorphSpec("paper", 0.1))
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from mortar_tf import bits
from mortar_tf import morphing
from mortar_tf import precision_map
from mortar_tf.savedmodel import bundle
from mortar_tf.savedmodel import variables as variables_lib

SELECTIONS = ("kernels", "all")


@dataclasses.dataclass(frozen=True)
class Target:
  """One variable to morph: how it is grouped, with what, and why."""
  var: variables_lib.VariableObject
  axes: tuple[int, ...]
  spec: morphing.MorphSpec
  twin_of: str | None = None
  other_readers: tuple = ()  # ((op name, axes), ...) reading it with other axes
  display: str = ""


def map_names(variable_name: str, key: str | None = None,
              op_names: Sequence[str] = (), path: str | None = None) -> tuple[str, ...]:
  """What a {pattern: P} map entry is matched against for one weight: its
  variable name, layer paths and names (mortar_tf.precision_map), object
  path, checkpoint key and the ops that read it."""
  extra = tuple(x for x in (path, key) if x)
  return precision_map.weight_names(variable_name, (*extra, *op_names))


def _specs_for(candidates, spec_or_map):
  """{key: MorphSpec} for each candidate under one MorphSpec or a {pattern: MorphSpec} map."""
  if isinstance(spec_or_map, morphing.MorphSpec):
    return {var.key: spec_or_map for var, _, _ in candidates}, []
  names = {var.key: map_names(var.name, var.key, ops, var.path) for var, _, ops in candidates}
  specs = precision_map.resolve(spec_or_map, names, what="selected variable")
  return specs, [var for var, _, _ in candidates if var.key not in specs]


def _select(graph, variables, select):
  """[(variable, reduction axes, op names)] to morph, and [(name, reason)] left alone."""
  by_key = {v.key: v for v in variables}
  reads: dict[str, list] = {}
  for op in graph.mapped:
    if op.weight.kind == "variable":
      reads.setdefault(op.weight.key, []).append(op)
  skipped, constants = [], {}
  for op in graph.ops:
    if op.mapped and op.weight.kind == "constant":
      constants.setdefault(op.weight.name, []).append(op.name)
    elif not op.mapped:
      skipped.append((op.name, f"unmapped: {op.unmapped}"))
  for name, ops in constants.items():
    skipped.append((f"constant {name} (read by {len(ops)} op{'s' if len(ops) > 1 else ''}, "
                    f"e.g. {ops[0]})", "a graph constant, not a variable: saved_model.pb is "
                    "copied unchanged"))

  def _axes(var):
    found = reads.get(var.key)
    if found:
      return found[0].reduction_axes
    return bits.resolve_reduction_axes(var.shape) if var.shape else ()

  def _ops(var):
    return [op.name for op in reads.get(var.key, [])]

  if isinstance(select, str):
    if select not in SELECTIONS:
      raise ValueError(f"select must be one of {SELECTIONS} or a list of variable names, "
                       f"got {select!r}")
    if select == "kernels":
      chosen = [by_key[k] for k in reads if k in by_key]
    else:
      chosen = [v for v in variables if v.role == "model"]
    picked = []
    for var in chosen:
      if var.dtype != "float32":
        skipped.append((var.name, f"{var.dtype}, not float32 (copied unchanged)"))
      else:
        picked.append((var, _axes(var), _ops(var)))
    return picked, skipped

  picked = []
  for name in select:
    hits = [v for v in variables if name in (v.name, v.key, v.path)]
    if not hits:
      names = dict.fromkeys(v.name for v in variables if v.role == "model")  # twins once
      raise ValueError(f"unknown variable {name!r}; the model variables are: "
                       f"{', '.join(names)}")
    for var in hits:
      if var.role != "model":
        raise ValueError(f"variable {name!r} is optimizer or metric state ({var.role}); "
                         "only model variables are morphed")
      if var.dtype != "float32":
        raise ValueError(f"variable {name!r} is {var.dtype}; only float32 variables can be "
                         "morphed")
      if all(p[0].key != var.key for p in picked):
        picked.append((var, _axes(var), _ops(var)))
  return picked, skipped


def _readers(graph):
  """{checkpoint key: [(op name, reduction axes)]} of the variables ops read."""
  out: dict[str, list] = {}
  for op in graph.mapped:
    if op.weight.kind == "variable":
      out.setdefault(op.weight.key, []).append((op.name, tuple(op.reduction_axes)))
  return out


def _effective(axes, shape) -> tuple[int, ...]:
  return tuple(a for a in axes if shape[a] > 1)


def _tied(target: Target, readers) -> Target:
  """The target with the ops that read it with other (effective) axes noted.

  Raises:
    ValueError: bitx on such a weight (its groups would differ per op).
  """
  found = readers.get(target.var.key, [])
  shape = target.var.shape
  others, seen = [], {_effective(target.axes, shape)}
  for op, axes in found:
    if _effective(axes, shape) not in seen:
      seen.add(_effective(axes, shape))
      others.append((op, axes))
  if others and target.spec.method == "bitx":
    first = found[0][0] if found else "?"
    raise ValueError(
        f"bitx groups {target.var.name!r} along its reduction axes, but {first} reads it with "
        f"axes {list(target.axes)} and {others[0][0]} with {list(others[0][1])} (a tied "
        "weight): bitx cannot prune it for both; leave it out of the selection or use a "
        "per-weight method (paper, fewest_ones, round)")
  return dataclasses.replace(target, other_readers=tuple(others))


_COMPARE_BYTES = 8 << 20


def _same_bytes(index: bundle.Index, prefix: str, a: str, b: str) -> bool | None:
  """Whether checkpoint entries a and b hold the same bytes, compared a few
  MiB at a time from the data files (a Keras 3 export's two copies of a
  kernel: never both held whole); None where the index cannot say (a sliced
  or missing entry). Differing stored checksums answer False unread: a copy
  whose bytes fail its checksum is caught where it is read or copied."""
  ea, eb = index.entries.get(a), index.entries.get(b)
  if ea is None or eb is None or ea.sliced or eb.sliced:
    return None
  if (ea.dtype, ea.shape, ea.size, ea.crc32c) != (eb.dtype, eb.shape, eb.size, eb.crc32c):
    return False
  with open(index.data_path(prefix, ea.shard_id), "rb", buffering=0) as fa, \
      open(index.data_path(prefix, eb.shard_id), "rb", buffering=0) as fb:
    done = 0
    while done < ea.size:
      n = min(_COMPARE_BYTES, ea.size - done)
      x = os.pread(fa.fileno(), n, ea.offset + done)
      y = os.pread(fb.fileno(), n, eb.offset + done)
      if len(x) != n or x != y:
        return False
      done += n
  return True


def twins(targets, pairs, reader, src, variables):
  """Keras 3 exports hold each variable twice (under `variables` and
  `_all_variables`); the functions read one. The other copy, found by the
  object graph's structure (variables_lib.structural_twins), is morphed alike
  so the two never disagree, if its value is bit-identical; among the targets
  themselves (select="all"), the second copy is marked as the twin."""
  by_node = {v.node_id: v for v in variables}
  chosen = {t.var.node_id: t for t in targets}
  index = []  # the bundle's index, read once if any pair is compared

  def _same(a, b):
    if a.shape != b.shape:
      return False
    if not index:
      try:
        index.append(bundle.Index.read(variables_lib.checkpoint_prefix(src)))
      except (bundle.BundleError, OSError):
        index.append(None)
    if index[0] is not None:
      same = _same_bytes(index[0], variables_lib.checkpoint_prefix(src), a.key, b.key)
      if same is not None:
        return same
    return (variables_lib.read_tensor(reader, a.key, src).tobytes() ==
            variables_lib.read_tensor(reader, b.key, src).tobytes())

  out, done = [], set()
  for target in targets:
    node = target.var.node_id
    twin = by_node.get(pairs.get(node))
    if node in done:
      continue
    out.append(target)
    done.add(node)
    if twin is None or twin.node_id in done or not _same(twin, target.var):
      continue
    done.add(twin.node_id)
    if twin.node_id in chosen:
      out.append(dataclasses.replace(chosen[twin.node_id], twin_of=target.var.name))
    else:
      out.append(dataclasses.replace(target, var=twin, twin_of=target.var.name))
  return out


def _check_map_dtypes(precision, candidates, graph) -> None:
  """A map entry that names only weights of another dtype than float32 is an
  error that says so (precision_map.resolve would say it matches nothing)."""
  read = {op.weight.key: op.name for op in graph.mapped if op.weight.kind == "variable"}
  chosen = {var.key for var, _, _ in candidates}
  others = [v for v in graph.variables
            if v.key in read and v.key not in chosen and v.dtype != "float32"]
  if not others:
    return
  names = [map_names(var.name, var.key, ops, var.path) for var, _, ops in candidates]
  for pattern in precision:
    if not isinstance(pattern, str) or precision_map.lookup({pattern: True}, (
        n for names_ in names for n in names_)):
      continue
    hits = [v for v in others
            if precision_map.lookup({pattern: True}, map_names(v.name, v.key, (read[v.key],),
                                                               v.path))]
    if hits:
      listed = ", ".join(f"{v.name} ({v.dtype})" for v in hits[:4])
      raise ValueError(f"precision map entry {pattern!r} matches only {listed}: only float32 "
                       "weights are morphed")


def select_targets(graph, spec_or_map, select="kernels"):
  """([Target], [(name, reason)] left alone) for a graph read by read_graph.

  Args:
    graph: what graph.read_graph returns.
    spec_or_map: a MorphSpec for every selected variable, or a checked
      {pattern: MorphSpec} map (precision_map.check_morphing).
    select: "kernels", "all" or a list of variable names or keys.

  Raises:
    ValueError: an unknown selection or variable, a map entry matching
      nothing, bitx on a tied weight.
  """
  candidates, skipped = _select(graph, graph.variables, select)
  if not isinstance(spec_or_map, morphing.MorphSpec):
    _check_map_dtypes(spec_or_map, candidates, graph)
  specs, uncovered = _specs_for(candidates, spec_or_map)
  skipped += [(var.name, "not covered by the precision map") for var in uncovered]
  display = graph.display_names()
  readers = _readers(graph)
  targets = [_tied(Target(var, tuple(axes), specs[var.key], display=display.get(var.key, "")),
                   readers)
             for var, axes, _ in candidates if var.key in specs]
  return targets, skipped

