"""morph_model and strip_morphing: wrap a model's layers, and turn it back into a plain one.

Both clone the model with a swap function (TFMOT's pattern), recursing into
nested models. morph_model's wrappers share the original layers (and so their
variables), as TFMOT's do; strip_morphing builds fresh layers whose kernels are
the morphed values and whose other weights are copies, so the stripped model is
the artifact to save.

Example:
  >>> from mortar_tf.keras.compat import keras
  >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
  >>> wrapped = morph_model(model, "paper", precision=0.1)
  >>> stripped = strip_morphing(wrapped)
  >>> stripped.get_config() == model.get_config()
  True
"""

from __future__ import annotations


from mortar_tf import morphing
from mortar_tf.keras import folding
from mortar_tf.keras import weights as weights_lib
from mortar_tf.keras.compat import keras
from mortar_tf.keras.wrapper import MorphWrapper
from mortar_tf.keras.wrapper import register_serializable
from mortar_tf.keras.wrapper import morph_targets_of
from mortar_tf.morphing import MorphSpec


def _same_inputs(model):
  """New Input tensors named and shaped like a functional model's own (clone_model
  would otherwise rename them, and the clone's config would differ).

  No public API lists a functional model's InputLayers in order; both Keras
  flavours keep them in `_input_layers`, read here and only here.
  """
  if isinstance(model, keras.Sequential) or not hasattr(model, "_input_layers"):
    return None
  inputs = []
  for layer in model._input_layers:  # pylint: disable=protected-access
    shape = getattr(layer, "batch_shape", None) or layer.get_config()["batch_input_shape"]
    inputs.append(keras.Input(batch_shape=shape, dtype=layer.dtype, name=layer.name))
  return inputs if len(inputs) > 1 else inputs[0]


def _clone(model, clone_function):
  try:
    return keras.models.clone_model(model, input_tensors=_same_inputs(model),
                                    clone_function=clone_function)
  except (ValueError, TypeError, NotImplementedError) as e:
    raise ValueError(
        f"cannot clone model {model.name!r} ({type(model).__name__}): {e}. Subclassed models "
        "cannot be cloned; wrap their layers with mortar_tf.keras.MorphWrapper in the model "
        "itself") from e


def morph_model(to_wrap, method="paper", precision=None, *, keep_bits=None, columns=None,
                group_size=None, width=None, morph_forward=True, fold_batchnorm=False):
  """Wraps the supported layers of a model (or a layer, or a list of layers) in MorphWrapper.

  Args:
    to_wrap: a Sequential or Functional model (nested models included), a
      layer, or a list of layers.
    method, keep_bits, columns, group_size, width, morph_forward: as MorphWrapper.
    precision: P for every supported layer, or {layer name: P}: then only the
      named layers are wrapped, each with its own P.
    fold_batchnorm: fold each BatchNormalization that directly follows a
      wrapped conv/dense layer into it, so the forward pass morphs the folded
      kernel (as the accelerator will see it). The BN becomes a
      FoldedBatchNorm (identity); its gamma and beta move into the wrapper and
      keep training, its moving statistics are frozen at their current values.

  Returns:
    A model (sharing the original layers' variables), a wrapper, or a list.

  Raises:
    ValueError: a subclassed model, a named layer that does not exist or
      cannot be morphed, or bad morphing arguments.
  """
  common = dict(method=method, keep_bits=keep_bits, columns=columns, group_size=group_size,
                width=width, morph_forward=morph_forward)
  per_layer = dict(precision) if isinstance(precision, dict) else None

  folds = {}
  if fold_batchnorm and isinstance(to_wrap, keras.Model):
    for submodel in [to_wrap] + [l for _, l in all_layers(to_wrap) if isinstance(l, keras.Model)]:
      folds.update(_batchnorm_folds(submodel))
  pending = []

  def wrap(layer):
    bn = folds.get(id(layer))
    p = precision if per_layer is None else per_layer[layer.name]
    wrapper = MorphWrapper(layer, precision=p, **common,
                           fold_batchnorm_epsilon=None if bn is None else bn.epsilon)
    if bn is not None:
      pending.append((wrapper, bn))
    return wrapper

  if isinstance(to_wrap, (list, tuple)):
    return [morph_model(layer, method, precision, **{k: v for k, v in common.items()
                                                      if k != "method"})
            for layer in to_wrap]
  if not isinstance(to_wrap, keras.Model):
    return wrap(to_wrap)

  if per_layer is not None:
    names = {layer.name: layer for _, layer in all_layers(to_wrap)}
    unknown = sorted(set(per_layer) - set(names))
    if unknown:
      raise ValueError(f"precision names layers that {to_wrap.name!r} does not have: {unknown}")
    unsupported = sorted(n for n in per_layer if not _targets_or_none(names[n]))
    if unsupported:
      morph_targets_of(names[unsupported[0]])  # raises with the explanation

  folded_bns = {id(bn) for bn in folds.values()}

  def swap(layer):
    if isinstance(layer, keras.Model):
      return _morph_nested(layer)
    if id(layer) in folded_bns:
      return FoldedBatchNorm(name=layer.name)
    if isinstance(layer, MorphWrapper):
      raise ValueError(f"layer {layer.name!r} is already wrapped: morphing twice would morph "
                       "morphed weights")
    wanted = bool(_targets_or_none(layer)) if per_layer is None else layer.name in per_layer
    return wrap(layer) if wanted else layer

  def _morph_nested(nested):
    return _clone(nested, swap)

  wrapped = _clone(to_wrap, swap)
  for wrapper, bn in pending:  # built by the clone: take the BN's values over
    gamma, beta, mean, variance = folding.batchnorm_statistics(bn)
    for target, value in ((wrapper.bn_gamma, gamma), (wrapper.bn_beta, beta),
                          (wrapper.bn_moving_mean, mean), (wrapper.bn_moving_variance, variance)):
      target.assign(value)
  return wrapped


def all_layers(model):
  """(path, layer) for every layer, recursing into nested models."""
  for layer in model.layers:
    yield layer.name, layer
    if isinstance(layer, keras.Model):
      for path, inner in all_layers(layer):
        yield f"{layer.name}/{path}", inner


def strip_morphing(model, fold_batchnorm: bool = False):
  """A plain model whose kernels are the morphed values of its MorphWrappers' kernels.

  Every other weight is copied bit for bit; the original model is not changed.
  For a single MorphWrapper, returns a fresh copy of its layer.

  Args:
    model: a model with MorphWrappers, or a MorphWrapper.
    fold_batchnorm: fold each BatchNormalization that directly follows a
      conv/dense layer into that layer's kernel and bias first (inference
      statistics), as accelerators do, then morph the folded kernel; the BN
      layer becomes an Identity of the same name.

  Raises:
    ValueError: a subclassed model (it cannot be cloned).
  """
  if isinstance(model, MorphWrapper):
    fresh = _fresh(model.layer)
    fresh.build(_build_shape(model.layer))
    fresh.set_weights(_values(model, model.spec, None, fresh))
    return fresh
  return rebuild(model, lambda layer: layer.spec if isinstance(layer, MorphWrapper) else None,
                 fold_batchnorm)


def morphed_copy(model, spec: MorphSpec, fold_batchnorm: bool = False):
  """A plain copy of an unwrapped model with its supported kernels morphed by `spec`.

  The same result as strip_morphing(morph_model(model, ...)), in one clone and
  with the array backends (the C++ op when built) instead of tracing wrappers.
  fold_batchnorm as in strip_morphing.
  """
  return rebuild(model, lambda layer: spec if _targets_or_none(layer) else None, fold_batchnorm)


def _targets_or_none(layer):
  try:
    return morph_targets_of(layer)
  except ValueError:
    return []


def rebuild(model, spec_of, fold_batchnorm: bool = False):
  """Clones `model` with fresh layers (wrappers replaced by their inner layers).

  Each fresh layer gets its source's weights, kernels morphed with
  `spec_of(source layer)` when that is not None, after folding a following
  BatchNormalization in when `fold_batchnorm` (the BN becomes an Identity).
  Nested models are rebuilt the same way.
  """
  folds = _batchnorm_folds(model) if fold_batchnorm else {}
  folded_bns = {id(bn) for bn in folds.values()}
  pending = []

  def swap(layer):
    if isinstance(layer, keras.Model):
      return rebuild(layer, spec_of, fold_batchnorm)
    if id(layer) in folded_bns:
      return FoldedBatchNorm(name=layer.name)
    source = layer.layer if isinstance(layer, MorphWrapper) else layer
    bn = folds.get(id(layer))
    folds_in = bn is not None or (isinstance(layer, MorphWrapper) and layer.folds_batchnorm)
    fresh = _fresh(source, use_bias=True if folds_in else None)
    pending.append((fresh, layer, bn))
    return fresh

  rebuilt = _clone(model, swap)
  for fresh, layer, bn in pending:
    fresh.set_weights(_values(layer, spec_of(layer), bn, fresh))
  return rebuilt


def _values(layer, spec, bn, fresh) -> list:
  """Weights for `fresh`, in its order: `layer`'s (inner layer's, for a wrapper),
  folded with `bn` if given, kernels morphed with `spec` if given."""
  inner = layer.layer if isinstance(layer, MorphWrapper) else layer
  values = {weights_lib.short_name(v): v.numpy() for v in inner.weights}
  folded = None
  if isinstance(layer, MorphWrapper) and layer.folds_batchnorm:
    folded = layer.folded_values()
  elif bn is not None:
    axes = folding.fold_axes(inner)
    folded = folding.fold({name: values[name] for name in axes}, values.get("bias"),
                          *folding.batchnorm_statistics(bn), bn.epsilon, axes)
  if folded is not None:
    values.update({name: kernel.numpy() for name, kernel in folded[0].items()})
    values["bias"] = folded[1].numpy()
  if spec is not None:
    for name, _, grouping in morph_targets_of(inner):
      values[name] = morphing.morph(values[name], spec.method, **spec.settings(),
                                    **(grouping if spec.method == "bitx" else {}))
  return [values[weights_lib.short_name(v)] for v in fresh.weights]


# --------------------------------------------------------------------------
# BatchNormalization folding


@register_serializable
class FoldedBatchNorm(keras.layers.Layer):
  """Stands where a BatchNormalization was folded into the layer before it: the identity.

  Unlike keras.layers.Identity it accepts the call arguments a
  BatchNormalization was called with (training, mask), which cloning passes on.
  """

  def call(self, inputs, *args, **kwargs):  # pylint: disable=unused-argument
    return inputs

  def compute_output_shape(self, input_shape):
    return input_shape


def _history_names(structure):
  """Producer layer names in a serialized inbound node (Keras 3 or tf_keras form)."""
  if isinstance(structure, dict):
    history = structure.get("config", {}).get("keras_history") if "config" in structure else None
    if history:
      return [history[0]]
    return [n for value in structure.values() for n in _history_names(value)]
  if isinstance(structure, (list, tuple)):
    if len(structure) >= 3 and isinstance(structure[0], str) and isinstance(structure[1], int):
      return [structure[0]]  # tf_keras: [name, node index, tensor index, kwargs]
    return [n for item in structure for n in _history_names(item)]
  return []


def _producers(model) -> dict:
  """{layer name: (producer name or None, number of consumers of that producer)}.

  Read from the model's own config, not from the layers: morph_model's clones
  share layers with the original model, so a layer's `input` may belong to the
  other graph.
  """
  if isinstance(model, keras.Sequential):
    names = [l.name for l in model.layers]
    return {name: (previous, 1) for previous, name in zip(names, names[1:])}
  config = model.get_config()
  inputs_of = {}
  consumers = {}
  for entry in config["layers"]:
    names = _history_names(entry.get("inbound_nodes", []))
    inputs_of[entry.get("name") or entry["config"]["name"]] = names
    for name in names:
      consumers[name] = consumers.get(name, 0) + 1
  for name in _history_names(config.get("output_layers", [])):
    consumers[name] = consumers.get(name, 0) + 1
  return {name: (names[0], consumers.get(names[0], 0)) if len(names) == 1 else (None, 0)
          for name, names in inputs_of.items()}


def _batchnorm_folds(model) -> dict:
  """{id(producer layer): BatchNormalization} for every BN that can be folded:
  channels-last, fed by a conv/dense layer whose output goes nowhere else."""
  folds = {}
  producers = _producers(model)
  by_name = {layer.name: layer for layer in model.layers}
  for layer in model.layers:
    if not isinstance(layer, keras.layers.BatchNormalization):
      continue
    producer_name, consumers = producers.get(layer.name, (None, 0))
    producer = by_name.get(producer_name)
    if producer is None or consumers != 1:
      continue
    inner = producer.layer if isinstance(producer, MorphWrapper) else producer
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
    if folding.fold_axes(inner) is not None and axis in (-1, len(_build_shape(inner)) - 1):
      folds[id(producer)] = layer
  return folds


def _fresh(layer, use_bias=None):
  config = layer.get_config()
  if use_bias is not None:
    config["use_bias"] = use_bias
  return layer.__class__.from_config(config)


def _build_shape(layer):
  """The input shape a built layer was built with.

  Neither Keras exposes it publicly, so the private attribute each keeps is read
  here and only here: Keras 3's `_build_shapes_dict`, tf_keras' `_build_input_shape`.
  """
  shapes = getattr(layer, "_build_shapes_dict", None)
  if shapes:
    return next(iter(shapes.values()))
  shape = getattr(layer, "_build_input_shape", None)
  if shape is None:
    raise ValueError(f"layer {layer.name!r} was never built: call the wrapper once first")
  return shape
