"""The model variables of a SavedModel, read from its protos and checkpoint.

Nothing is executed: the object graph in `saved_model.pb` names the variables,
the checkpoint's object graph gives each one's key, and the values are read
with `tf.train.load_checkpoint`. Optimizer state (reached through an
`optimizer` edge, or listed as a slot) and Keras metric state are left out.
Layouts are not known without the compute graph: every variable is grouped
with the default rule (all axes but the last), which is right for dense and
conv kernels and not for depthwise or transposed ones (graph.py reads the real
axes from the compute graph).
"""

from __future__ import annotations

import collections
import contextlib
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
    name: the name every tool shows: the variable's name ("sequential/dense/kernel"),
      or "name (object path)" where several share it (display_names).
    key: its checkpoint key.
    value: its value.
  """
  name: str
  key: str
  value: np.ndarray

  def __repr__(self) -> str:
    return (f"SavedVariable({self.name!r}, key={self.key!r}, shape={self.value.shape}, "
            f"dtype={self.value.dtype})")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
  """Bit-identical (so NaN payloads and -0.0 count), for any dtype."""
  if a.shape != b.shape or a.dtype != b.dtype:
    return False
  return np.array_equal(a, b) if a.dtype == object else a.tobytes() == b.tobytes()


class SavedModelError(ValueError):
  """A path that is not a readable SavedModel; the message names the problem."""


def load_proto(saved_model_dir: str) -> saved_model_pb2.SavedModel:
  """Parses `saved_model.pb`.

  Raises:
    SavedModelError: a missing path, a directory without saved_model.pb, or a
      file that does not parse (e.g. truncated).
  """
  if not os.path.exists(saved_model_dir):
    raise SavedModelError(f"no such SavedModel: {saved_model_dir!r}")
  if not os.path.isdir(saved_model_dir):
    raise SavedModelError(f"{saved_model_dir!r} is a file; a SavedModel is a directory")
  pb_path = os.path.join(saved_model_dir, "saved_model.pb")
  if not os.path.isfile(pb_path):
    raise SavedModelError(f"{saved_model_dir!r} is not a SavedModel: it has no saved_model.pb")
  saved = saved_model_pb2.SavedModel()
  try:
    with open(pb_path, "rb") as f:
      saved.ParseFromString(f.read())
  except Exception as e:  # protobuf's DecodeError and friends
    raise SavedModelError(f"{pb_path!r} is not a valid SavedModel proto "
                          f"(truncated or corrupted?): {e}") from e
  if not saved.meta_graphs:
    raise SavedModelError(f"{pb_path!r} holds no meta graph")
  if not saved.meta_graphs[0].object_graph_def.nodes:
    raise SavedModelError(f"{pb_path!r} has no object graph (a TF1 SavedModel?); "
                          "only TF2 SavedModels are supported")
  return saved


def checkpoint_prefix(saved_model_dir: str) -> str:
  return os.path.join(saved_model_dir, "variables", "variables")


def open_checkpoint(saved_model_dir: str):
  """(reader, trackable object graph) of the SavedModel's variables.

  Raises:
    SavedModelError: missing or corrupted variables files.
  """
  prefix = checkpoint_prefix(saved_model_dir)
  if not os.path.isfile(prefix + ".index"):
    raise SavedModelError(f"{saved_model_dir!r} has no variables/variables.index: "
                          "the variables are missing")
  try:
    reader = tf.train.load_checkpoint(prefix)
    trackable = trackable_object_graph_pb2.TrackableObjectGraph()
    trackable.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
  except Exception as e:  # TF raises NotFound/DataLoss/InvalidArgument variants
    raise SavedModelError(f"cannot read the variables of {saved_model_dir!r} "
                          f"(missing or corrupted variables files): {e}") from e
  return reader, trackable


@contextlib.contextmanager
def _reading(key: str, saved_model_dir: str):
  """Turns TF's errors for bad variables data into one SavedModelError."""
  try:
    yield
  except Exception as e:  # DataLoss, NotFound, a RuntimeError wrapping either, ...
    raise SavedModelError(f"cannot read variable {key!r} of {saved_model_dir!r} (corrupted or "
                          f"missing variables data?): {e}") from e


def read_tensor(reader, key: str, saved_model_dir: str):
  """reader.get_tensor(key), with a clear error for bad data (TF checks CRCs).

  Raises:
    SavedModelError: a checksum mismatch, a missing data shard, and the like.
  """
  with _reading(key, saved_model_dir):
    return reader.get_tensor(key)


def restore_tensor(saved_model_dir: str, key: str, dtype) -> tf.Tensor:
  """One checkpoint entry as a tensor, read straight into TF's buffer (no
  numpy copy, unlike read_tensor).

  Raises:
    SavedModelError: as read_tensor.
  """
  with _reading(key, saved_model_dir):
    return tf.raw_ops.RestoreV2(prefix=checkpoint_prefix(saved_model_dir), tensor_names=[key],
                                shape_and_slices=[""], dtypes=[dtype])[0]


@dataclasses.dataclass(frozen=True)
class VariableObject:
  """A variable of the object graph.

  Attributes:
    node_id: its node in the object graph.
    name: its name (e.g. "dense/kernel").
    key: its checkpoint key.
    shape: its shape.
    dtype: its dtype name.
    role: "model" (reached from the root without an optimizer or metrics
      edge), "slot" (an optimizer slot) or "other" (optimizer or metric state).
    path: its object path from the root ("layer_with_weights-0/kernel",
      "variables/3"): unique and stable, unlike `name`, which two variables
      may share (HED's six "hed/kernel").
  """
  node_id: int
  name: str
  key: str
  shape: tuple[int, ...]
  dtype: str
  role: str
  path: str = ""


def variable_objects(saved_model_dir: str, saved=None, checkpoint=None) -> list[VariableObject]:
  """Every variable of a SavedModel that the checkpoint holds, in node order.

  Args:
    saved_model_dir: the SavedModel.
    saved, checkpoint: its parsed proto and open_checkpoint() result, when
      the caller has them already (else they are read here).

  Raises:
    SavedModelError: not a readable SavedModel.
  """
  saved = saved if saved is not None else load_proto(saved_model_dir)
  reader, trackable = checkpoint if checkpoint is not None else open_checkpoint(saved_model_dir)
  saved_nodes = saved.meta_graphs[0].object_graph_def.nodes
  slots = {s.slot_variable_node_id for n in trackable.nodes for s in n.slot_variables}
  model = set(_model_order(trackable))
  paths = object_paths(trackable)
  dtypes = reader.get_variable_to_dtype_map()
  out = []
  for node_id, node in enumerate(trackable.nodes):
    if node_id >= len(saved_nodes) or saved_nodes[node_id].WhichOneof("kind") != "variable":
      continue
    keys = [a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"]
    if not keys or keys[0] not in dtypes:
      continue
    variable = saved_nodes[node_id].variable
    role = "slot" if node_id in slots else "model" if node_id in model else "other"
    out.append(VariableObject(node_id, variable.name.split(":")[0] or keys[0], keys[0],
                              tuple(int(d.size) for d in variable.shape.dim),
                              dtypes[keys[0]].name, role, paths.get(node_id, keys[0])))
  return out


def object_paths(trackable) -> dict[int, str]:
  """{node id: its shortest object path from the root} ("a/b/0"), breadth first;
  paths through model edges win over paths through optimizer or metric edges."""
  paths = {0: ""}
  for skip in (_SKIPPED_EDGES, ()):
    queue = collections.deque(paths)
    while queue:
      node_id = queue.popleft()
      for child in trackable.nodes[node_id].children:
        if child.node_id in paths or child.local_name in skip:
          continue
        base = paths[node_id]
        paths[child.node_id] = f"{base}/{child.local_name}" if base else child.local_name
        queue.append(child.node_id)
  return paths


def display_names(variables, twins: dict[int, int] | None = None) -> dict[str, str]:
  """{checkpoint key: a name to show}: the variable's name, or "name (path)"
  where several variables share that name (a pair of structural twins counts
  once)."""
  twins = twins or {}
  count = collections.Counter(v.name for v in variables
                              if twins.get(v.node_id, v.node_id) >= v.node_id)
  return {v.key: v.name if count[v.name] <= 1 else f"{v.name} ({v.path})" for v in variables}


# Keras 3's model.export tracks each variable twice, as two variable objects
# under the root: in `variables` (also `trainable_variables` and
# `non_trainable_variables`) and in `_all_variables`.
_TWIN_LISTS = ("variables", "_all_variables")


def structural_twins(saved, trackable) -> dict[int, int]:
  """{node id: its twin's node id} for Keras 3 exports' double-tracked variables.

  Twins are found by structure, not by name: the k-th variable of a given
  name, shape and dtype in the root's `variables` list pairs with the k-th
  one in its `_all_variables` list (and the other way round). Anything else
  (a tf.Module with two variables of one name and value) has no twin.
  """
  nodes = saved.meta_graphs[0].object_graph_def.nodes
  root = {c.local_name: c.node_id for c in trackable.nodes[0].children} if trackable.nodes else {}
  if not all(name in root for name in _TWIN_LISTS):
    return {}

  def listed(name):
    out = {}
    for child in trackable.nodes[root[name]].children:
      node = nodes[child.node_id] if child.node_id < len(nodes) else None
      if node is None or node.WhichOneof("kind") != "variable":
        continue
      v = node.variable
      sig = (v.name.split(":")[0], tuple(int(d.size) for d in v.shape.dim), v.dtype)
      out.setdefault(sig, []).append(child.node_id)
    return out

  first, second = (listed(name) for name in _TWIN_LISTS)
  twins = {}
  for sig, ids in first.items():
    for a, b in zip(ids, second.get(sig, [])):
      if a != b:
        twins[a], twins[b] = b, a
  return twins


def _model_order(trackable) -> list[int]:
  """Node ids reached from the root without optimizer or metrics edges, breadth first."""
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
  return order


def read_variables(saved_model_dir: str, min_rank: int = 0) -> list[SavedVariable]:
  """The model variables of a SavedModel, each once, in object-graph order.

  Args:
    saved_model_dir: a SavedModel directory.
    min_rank: leave out variables of lower rank (2 keeps matrices and kernels).

  Raises:
    SavedModelError: the directory is not a readable SavedModel (names what is wrong).
  """
  saved = load_proto(saved_model_dir)
  reader, trackable = open_checkpoint(saved_model_dir)
  by_node = {v.node_id: v for v in variable_objects(saved_model_dir, saved, (reader, trackable))}
  twins = structural_twins(saved, trackable)
  # The names every tool shows: "name (object path)" where names repeat.
  display = display_names([v for v in by_node.values() if v.role == "model"], twins)
  out, taken = [], {}
  for node_id in _model_order(trackable):
    found = by_node.get(node_id)
    if found is None or found.role != "model" or len(found.shape) < min_rank:
      continue
    value = np.asarray(read_tensor(reader, found.key, saved_model_dir))
    twin = twins.get(node_id)
    if twin in taken and _same(taken[twin], value):
      continue  # the second copy of a Keras 3 export's variable
    taken[node_id] = value
    out.append(SavedVariable(display.get(found.key, found.name), found.key, value))
  return out
