"""Control flow on the walk: which nodes of a function TensorFlow runs, and how
many times a While loop runs when the graph fixes it."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mortar_tf.savedmodel import graph_protos as protos


def live_nodes(fdef) -> set[str]:
  """Names of the nodes whose results reach the function's outputs (or its
  control outputs): the others are pruned when TensorFlow runs it."""
  nodes = {n.name: n for n in fdef.node_def}
  pending = [protos.parse_ref(ref.lstrip("^"), True)[0] for ref in fdef.ret.values()]
  pending += list(fdef.control_ret.values())
  live = set()
  while pending:
    name = pending.pop()
    if name in live or name not in nodes:
      continue
    live.add(name)
    pending.extend(protos.parse_ref(ref.lstrip("^"), True)[0] for ref in nodes[name].input)
  return live


def trip_count(cond, node, frame: protos.Frame) -> int | None:
  """How many times a While loop runs, when the graph fixes it: the loop stops
  when `counter < bound` fails, for a counter with a constant start and a
  bound that is a constant or a static dim (Keras' RNN loops: `time < steps`),
  or at a constant maximum_iterations (input 1 of a v2 while loop; -1 means
  none). None if nothing fixes it."""
  inputs = [i for i in node.input if not i.startswith("^")]
  bounds = []
  if cond is not None:
    args = {a.name: i for i, a in enumerate(cond.signature.input_arg)}
    nodes = {n.name: n for n in cond.node_def}

    def value(ref):  # a cond input, resolved in the frame that runs the loop
      name = protos.parse_ref(ref, True)[0]
      if name in args:
        return protos.static_int(frame, inputs[args[name]]) if args[name] < len(inputs) else None
      found = nodes.get(name)
      if found is not None and found.op == "Const":
        v = tf.make_ndarray(found.attr["value"].tensor)
        return int(np.ravel(v)[0]) if np.size(v) == 1 else None
      return None

    for n in cond.node_def:
      if n.op not in ("Less", "LessEqual") or len(n.input) < 2:
        continue
      counter = protos.parse_ref(n.input[0], True)[0]
      if counter not in args:
        continue
      start, stop = value(n.input[0]), value(n.input[1])
      if start is None or stop is None:
        continue
      bounds.append(max(0, stop - start + (n.op == "LessEqual")))
  if len(inputs) > 1 and "maximum_iterations" in protos.parse_ref(inputs[1], True)[0]:
    limit = protos.static_int(frame, inputs[1])
    if limit is not None and limit >= 0:
      bounds.append(limit)
  return min(bounds) if bounds else None
