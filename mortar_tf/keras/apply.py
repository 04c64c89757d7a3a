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
from mortar_tf.keras import weights as weights_lib
from mortar_tf.keras.compat import keras
from mortar_tf.keras.wrapper import MorphWrapper
from mortar_tf.keras.wrapper import morph_targets_of
from mortar_tf.morphing import MorphSpec


def _is_supported(layer) -> bool:
  try:
    morph_targets_of(layer)
  except ValueError:
    return False
  return True


def _same_inputs(model):
  """New Input tensors named and shaped like a functional model's own (clone_model
  would otherwise rename them, and the clone's config would differ)."""
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
                group_size=None, width=None, morph_forward=True):
  """Wraps the supported layers of a model (or a layer, or a list of layers) in MorphWrapper.

  Args:
    to_wrap: a Sequential or Functional model (nested models included), a
      layer, or a list of layers.
    method, keep_bits, columns, group_size, width, morph_forward: as MorphWrapper.
    precision: P for every supported layer, or {layer name: P}: then only the
      named layers are wrapped, each with its own P.

  Returns:
    A model (sharing the original layers' variables), a wrapper, or a list.

  Raises:
    ValueError: a subclassed model, a named layer that does not exist or
      cannot be morphed, or bad morphing arguments.
  """
  common = dict(method=method, keep_bits=keep_bits, columns=columns, group_size=group_size,
                width=width, morph_forward=morph_forward)
  per_layer = dict(precision) if isinstance(precision, dict) else None

  def wrap(layer):
    if per_layer is None:
      return MorphWrapper(layer, precision=precision, **common)
    return MorphWrapper(layer, precision=per_layer[layer.name], **common)

  if isinstance(to_wrap, (list, tuple)):
    return [morph_model(layer, method, precision, **{k: v for k, v in common.items()
                                                      if k != "method"})
            for layer in to_wrap]
  if not isinstance(to_wrap, keras.Model):
    return wrap(to_wrap)

  if per_layer is not None:
    names = {layer.name: layer for _, layer in _all_layers(to_wrap)}
    unknown = sorted(set(per_layer) - set(names))
    if unknown:
      raise ValueError(f"precision names layers that {to_wrap.name!r} does not have: {unknown}")
    unsupported = sorted(n for n in per_layer if not _is_supported(names[n]))
    if unsupported:
      morph_targets_of(names[unsupported[0]])  # raises with the explanation

  def swap(layer):
    if isinstance(layer, keras.Model):
      return _morph_nested(layer)
    if isinstance(layer, MorphWrapper):
      raise ValueError(f"layer {layer.name!r} is already wrapped: morphing twice would morph "
                       "morphed weights")
    wanted = _is_supported(layer) if per_layer is None else layer.name in per_layer
    return wrap(layer) if wanted else layer

  def _morph_nested(nested):
    return _clone(nested, swap)

  return _clone(to_wrap, swap)


def _all_layers(model):
  """(path, layer) for every layer, recursing into nested models."""
  for layer in model.layers:
    yield layer.name, layer
    if isinstance(layer, keras.Model):
      for path, inner in _all_layers(layer):
        yield f"{layer.name}/{path}", inner


def strip_morphing(model):
  """A plain model whose kernels are the morphed values of its MorphWrappers' kernels.

  Every other weight is copied bit for bit; the original model is not changed.
  For a single MorphWrapper, returns a fresh copy of its layer.

  Raises:
    ValueError: a subclassed model (it cannot be cloned).
  """
  if isinstance(model, MorphWrapper):
    fresh = _fresh(model.layer)
    fresh.build(_build_shape(model.layer))
    fresh.set_weights(_stripped_weights(model))
    return fresh
  return rebuild(model, lambda layer: _stripped_weights(layer)
                 if isinstance(layer, MorphWrapper) else layer.get_weights())


def morphed_copy(model, spec: MorphSpec):
  """A plain copy of an unwrapped model with its supported kernels morphed by `spec`.

  The same result as strip_morphing(morph_model(model, ...)), in one clone and
  with the array backends (the C++ op when built) instead of tracing wrappers.
  """
  def values(layer):
    targets = {name: grouping for name, _, grouping in _targets_or_none(layer)}
    out = []
    for variable in layer.weights:
      value = variable.numpy()
      grouping = targets.get(weights_lib.short_name(variable))
      if grouping is not None:
        value = morphing.morph(value, spec.method, **spec.settings(),
                               **(grouping if spec.method == "bitx" else {}))
      out.append(value)
    return out
  return rebuild(model, values)


def _targets_or_none(layer):
  try:
    return morph_targets_of(layer)
  except ValueError:
    return []


def rebuild(model, values_of):
  """Clones `model` with fresh layers (wrappers replaced by their inner layers),
  then gives each fresh layer the weights `values_of(original layer)` returns.
  Nested models are rebuilt the same way."""
  pending = []

  def swap(layer):
    if isinstance(layer, keras.Model):
      return rebuild(layer, values_of)
    source = layer.layer if isinstance(layer, MorphWrapper) else layer
    fresh = _fresh(source)
    pending.append((fresh, layer))
    return fresh

  rebuilt = _clone(model, swap)
  for fresh, layer in pending:
    fresh.set_weights(values_of(layer))
  return rebuilt


def _fresh(layer):
  return layer.__class__.from_config(layer.get_config())


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


def _stripped_weights(wrapper: MorphWrapper) -> list:
  """The inner layer's weights in order, kernels replaced by their morphed values."""
  morphed = wrapper.morphed_values()
  return [morphed[weights_lib.short_name(v)].numpy() if weights_lib.short_name(v) in morphed
          else v.numpy() for v in wrapper.layer.weights]
