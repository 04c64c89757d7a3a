"""The model variables of a SavedModel, read from its protos and checkpoint.

Nothing is executed: the object graph in `saved_model.pb` names the variables,
the checkpoint's object graph gives each one's key, and the values are read
with `tf.train.load_checkpoint`. Optimizer state (reached through an
`optimizer` edge, or listed as a slot) and Keras metric state are left out.
Layouts are not known without the compute graph: every variable is grouped
with the default rule (all axes but the last), which is right for dense and
conv kernels and not for depthwise or transposed ones.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.core.protobuf import trackable_object_graph_pb2

_SKIPPED_EDGES = ("optimizer", "keras_api")
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclasses.dataclass(frozen=True)
class SavedVariable:
  """One model variable of a SavedModel.

  Attributes:
    name: the variable's name (e.g. "sequential/dense/kernel"), made unique.
    key: its checkpoint key.
    value: its value.
  """
  name: str
  key: str
  value: np.ndarray


def _same(a: np.ndarray, b: np.ndarray) -> bool:
  """Bit-identical (so NaN payloads and -0.0 count), for any dtype."""
  if a.shape != b.shape or a.dtype != b.dtype:
    return False
  return np.array_equal(a, b) if a.dtype == object else a.tobytes() == b.tobytes()


def read_variables(saved_model_dir: str, min_rank: int = 0) -> list[SavedVariable]:
  """The model variables of a SavedModel, each once, in object-graph order.

  Args:
    saved_model_dir: a SavedModel directory.
    min_rank: leave out variables of lower rank (2 keeps matrices and kernels).

  Raises:
    ValueError: the directory is not a readable SavedModel (names what is wrong).
  """
  pb_path = os.path.join(saved_model_dir, "saved_model.pb")
  prefix = os.path.join(saved_model_dir, "variables", "variables")
  if not os.path.isfile(pb_path):
    raise ValueError(f"{saved_model_dir!r} is not a SavedModel: no saved_model.pb")
  saved = saved_model_pb2.SavedModel()
  try:
    with open(pb_path, "rb") as f:
      saved.ParseFromString(f.read())
  except Exception as e:  # protobuf's DecodeError and friends
    raise ValueError(f"{pb_path!r} is not a valid SavedModel proto: {e}") from e
  if not saved.meta_graphs:
    raise ValueError(f"{pb_path!r} holds no meta graph")
  try:
    reader = tf.train.load_checkpoint(prefix)
    trackable = trackable_object_graph_pb2.TrackableObjectGraph()
    trackable.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
  except Exception as e:  # TF raises NotFound/DataLoss/InvalidArgument variants
    raise ValueError(f"cannot read the variables of {saved_model_dir!r}: {e}") from e

  saved_nodes = saved.meta_graphs[0].object_graph_def.nodes
  slots = {s.slot_variable_node_id for n in trackable.nodes for s in n.slot_variables}
  order, seen = [], {0}
  queue = collections.deque([0])
  while queue:  # breadth first: the shortest path names each node
    node_id = queue.popleft()
    order.append(node_id)
    for child in trackable.nodes[node_id].children:
      if child.local_name in _SKIPPED_EDGES or child.node_id in seen:
        continue
      seen.add(child.node_id)
      queue.append(child.node_id)

  out, by_name = [], collections.defaultdict(list)
  for node_id in order:
    if node_id in slots or node_id >= len(saved_nodes):
      continue
    saved_node = saved_nodes[node_id]
    if saved_node.WhichOneof("kind") != "variable":
      continue
    keys = [a.checkpoint_key for a in trackable.nodes[node_id].attributes
            if a.name == "VARIABLE_VALUE"]
    if not keys or len(saved_node.variable.shape.dim) < min_rank:
      continue
    value = np.asarray(reader.get_tensor(keys[0]))
    name = saved_node.variable.name.split(":")[0] or keys[0]
    twins = by_name[name]
    if any(_same(t.value, value) for t in twins):
      continue  # Keras 3 exports track each variable under two lists
    unique = name if not twins else f"{name}#{len(twins) + 1}"
    variable = SavedVariable(unique, keys[0], value)
    twins.append(variable)
    out.append(variable)
  return out
