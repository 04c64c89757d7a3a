"""morph_model, strip_morphing and fold_batchnorm: wrap a model's layers, turn it
back into a plain one, fold BatchNormalization into the layers before it.

All three clone the model with a swap function (TFMOT's pattern), recursing
into nested models. morph_model's wrappers share the original layers (and so
their variables), as TFMOT's do. strip_morphing and fold_batchnorm build
fresh layers and give each the values of its source layer's variables, taken
from the same variable objects (in the order Keras creates them, its own
get_weights/set_weights contract), never matched by name; the kernels among
them (found by the registry, as objects) get their morphed or folded values.
The stripped model is the artifact to save: it holds only Keras' own classes.

Example:
  >>> from mortar_tf.keras.compat import keras
  >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
  >>> wrapped = morph_model(model, "paper", precision=0.1)
  >>> stripped = strip_morphing(wrapped)
  >>> stripped.get_config() == model.get_config()
  True
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import warnings
import weakref
from typing import Mapping

import numpy as np

from mortar_tf import backends
from mortar_tf import precision_map
from mortar_tf import table
from mortar_tf.keras import folding
from mortar_tf.keras import registry
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras
from mortar_tf.keras.wrapper import MorphWrapper
from mortar_tf.keras.wrapper import register_serializable
from mortar_tf.morphing import MorphSpec

_LOG = logging.getLogger("mortar_tf")


def all_layers(model):
  """(path, layer) for every layer of a graph model, recursing into nested models."""
  for layer in model.layers:
    yield layer.name, layer
    if isinstance(layer, keras.Model):
      for path, inner in all_layers(layer):
        yield f"{layer.name}/{path}", inner


def every_layer(root):
  """Every layer object under `root` (a model, a layer or a list), itself included."""
  stack = list(root) if isinstance(root, (list, tuple)) else [root]
  seen = set()
  while stack:
    layer = stack.pop()
    if id(layer) in seen:
      continue
    seen.add(id(layer))
    yield layer
    stack.extend(registry.sublayers(layer))
    if isinstance(layer, keras.layers.Wrapper):
      stack.append(layer.layer)


def _refuse_wrapped(root) -> None:
  """Errors for MorphWrappers (morphing twice) and unstripped TFMOT wrappers."""
  for layer in every_layer(root):
    if isinstance(layer, MorphWrapper):
      raise ValueError(f"layer {layer.name!r} is already wrapped: morphing twice would morph "
                       "morphed weights (strip_morphing gives the plain model back)")
    if registry.is_tfmot_wrapper(layer):
      kind = type(layer).__name__
      raise ValueError(
          f"layer {layer.name!r} is a TFMOT {kind}: morph_model wraps plain layers. Strip it "
          "first (tfmot.sparsity.keras.strip_pruning, strip_clustering), then morph_model; for "
          "morph-aware training through TFMOT's QAT use mortar_tf.keras.tfmot.MorphScheme. "
          "MortarCallback works beside TFMOT wrappers as they are")


def _refuse_subclassed(model, what: str) -> None:
  if isinstance(model, keras.Model) and not registry.is_graph_model(model):
    raise ValueError(
        f"{what} cannot clone {type(model).__name__} {model.name!r}: subclassed models cannot "
        "be cloned. Wrap their layers with mortar_tf.keras.MorphWrapper inside the model, or "
        "use MortarCallback, which morphs in place and saves any model")


class _SwapError(Exception):
  """An error raised by our own swap function inside clone_model (re-raised as is)."""

  def __init__(self, error):
    super().__init__(str(error))
    self.error = error


def _same_inputs(model):
  """New Input tensors named and shaped like a functional model's own (clone_model
  would otherwise rename them, and the clone's config would differ), in the
  order and structure of the model's config (one tensor, or a list even of
  one); None for Sequential models and other input structures (dicts)."""
  if isinstance(model, keras.Sequential) or not registry.is_graph_model(model):
    return None
  names = _graph_config(model).get("input_layers")
  if not isinstance(names, (list, tuple)) or not names:
    return None
  single = isinstance(names[0], str)  # [name, node, tensor]; else a list of those
  if single:
    names = [names]
  inputs = []
  for entry in names:
    if not isinstance(entry, (list, tuple)) or not isinstance(entry[0], str):
      return None
    layer = model.get_layer(entry[0])
    config = layer.get_config()
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    inputs.append(keras.Input(batch_shape=shape, dtype=layer.dtype, name=layer.name,
                              sparse=config.get("sparse", False)))
  return inputs[0] if single else inputs


def _clone(model, swap):
  def guarded(layer):
    try:
      return swap(layer)
    except _SwapError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise _SwapError(e) from e

  extra = {}
  if IS_KERAS3 and not isinstance(model, keras.Sequential):
    # A folded BN becomes an Identity, whose call takes only the inputs; Keras 3
    # would pass it the BN's recorded `training`/`mask` (tf_keras drops them).
    def call(layer, *args, **kwargs):
      if isinstance(layer, keras.layers.Identity):
        kwargs = {}
      return layer(*args, **kwargs)
    extra["call_function"] = call
  try:
    return keras.models.clone_model(model, input_tensors=_same_inputs(model),
                                    clone_function=guarded, **extra)
  except _SwapError as e:
    raise e.error from None
  except (ValueError, TypeError, NotImplementedError) as e:
    raise ValueError(f"cannot clone model {model.name!r} ({type(model).__name__}): {e}") from e


# --------------------------------------------------------------------------
# Functional subclasses (keras-hub's Backbones): a class of one's own whose
# __init__ builds a graph from its own arguments and calls
# super().__init__(inputs, outputs), with its own get_config.
#
# keras.models.clone_model (Keras 3 and tf_keras alike), given a clone
# function, builds the clone as `cls(inputs, outputs, name=...)` when the
# class's constructor takes Functional's arguments, and otherwise as a plain
# Functional, losing the class and its attributes; without a clone function
# it re-creates such a model from its config, `cls.from_config(get_config())`.
# Our copies need a clone function (fresh layers with new values), so a copy
# of a Functional subclass is made the second way, as clone_model would
# without one: the class re-creates the model from its config, and each of its
# layers, paired with the source's, gets the values the swap would have given
# a fresh layer. morph_model's wrapped clone is a plain Functional (the class
# would build plain layers); it remembers the class and config it came from,
# so strip_morphing gives the class back. A folded copy cannot be re-created
# (the class builds the BatchNormalizations the fold removes): it is a plain
# Functional, and says so with a warning.


@dataclasses.dataclass(frozen=True)
class _Source:
  """The Functional subclass a graph is (or was cloned from)."""
  cls: type
  config: dict
  folded: bool  # BNs the class builds are folded away: it cannot be re-created


# morph_model's clone -> the _Source it was made from. In memory only: a wrapped
# model saved and loaded is a plain Functional, and so is its stripped copy.
_SOURCES = weakref.WeakKeyDictionary()


_PLAIN_HINT = ("; to go on without the class, use keras.Model(model.input, model.output), "
               "a plain Functional over the same layers")


def _functional_subclass(model) -> bool:
  """True for a Functional model of a class clone_model (with a clone function)
  cannot keep: one of its own whose constructor does not take Functional's
  arguments (Keras 3: or *args and **kwargs), as each Keras decides it."""
  if isinstance(model, keras.Sequential) or not isinstance(model, keras.Model):
    return False
  functional = next((c for c in type(model).__mro__ if c.__name__ == "Functional"), None)
  if functional is None or type(model) in (functional, keras.Model):
    return False
  spec = inspect.getfullargspec(type(model).__init__)
  if spec.args[1:] == inspect.getfullargspec(functional.__init__).args[1:]:
    return False
  return not (IS_KERAS3 and spec.varargs is not None and spec.varkw is not None)


def _graph_config(model) -> dict:
  """A graph model's config as Functional writes it (layers, inbound nodes,
  inputs, outputs). A Functional subclass's get_config holds its constructor's
  arguments instead, so its graph is read from a plain Functional over the
  same tensors (which shares its layers and adds no node to them)."""
  if _functional_subclass(model):
    model = keras.Model(model.input, model.output, name=model.name)
  return model.get_config()


def _source(graph):
  """The _Source a copy of `graph` re-creates, or None (a plain graph)."""
  source = _SOURCES.get(graph)
  if source is None and _functional_subclass(graph):
    source = _Source(type(graph), graph.get_config(), folded=False)
  return source


def _graphs(model):
  """`model` and every graph model nested in it."""
  return [model] + [l for _, l in all_layers(model)
                    if isinstance(l, keras.Model) and registry.is_graph_model(l)]


def _holds_folds(graph, folded_bns) -> bool:
  """Whether a fold takes away a BN of `graph` (nested graphs included), or a
  wrapper in it folds one (its BN is an Identity in the graph)."""
  return any(id(l) in folded_bns or (isinstance(l, MorphWrapper) and l.folds_batchnorm)
             for _, l in all_layers(graph))


def _from_config(source: _Source, name: str):
  """A new model of the source's class, from its config.

  Raises:
    ValueError: the class does not take its own config back.
  """
  try:
    return source.cls.from_config(copy.deepcopy(source.config))
  except Exception as e:  # pylint: disable=broad-except  (a constructor may raise anything)
    raise ValueError(
        f"cannot re-create {source.cls.__name__} {name!r} from its config ({type(e).__name__}: "
        f"{_first_line(e)}); a copy that keeps a Functional subclass's class and attributes is made as "
        "keras.models.clone_model makes one, cls.from_config(model.get_config()), so its "
        "get_config() must hold every constructor argument" + _PLAIN_HINT) from e


def _first_line(error: BaseException) -> str:
  """The first line of an error's text, at most 200 characters (Keras nests
  whole tracebacks in its messages)."""
  text = str(error).strip()
  return table.shorten(text.splitlines()[0], 200) if text else type(error).__name__


def _inner(layer):
  """The plain layer a graph's layer stands for (a MorphWrapper's own)."""
  return layer.layer if isinstance(layer, MorphWrapper) else layer


def _is_graph(layer) -> bool:
  return isinstance(layer, keras.Model) and registry.is_graph_model(layer)


def _pairs(graph, rebuilt, source: _Source) -> list:
  """(layer of `graph`, its counterpart in `rebuilt`) for every layer but the
  inputs: by name where the names agree one to one, else by position (the
  class made both, in the same order).

  Raises:
    ValueError: the layers differ in number or kind.
  """
  src = [l for l in graph.layers if not isinstance(l, keras.layers.InputLayer)]
  dst = [l for l in rebuilt.layers if not isinstance(l, keras.layers.InputLayer)]
  names = [_inner(l).name for l in src]
  by_name = {l.name: l for l in dst}

  def differ(why):
    return ValueError(
        f"cannot re-create {source.cls.__name__} {graph.name!r} from its config: the model "
        f"its class builds from get_config() differs from this one ({why}); its get_config() "
        "must hold every constructor argument" + _PLAIN_HINT)

  if len(src) != len(dst):
    raise differ(f"{len(dst)} layers instead of {len(src)}")
  if len(by_name) == len(dst) and sorted(names) == sorted(by_name):
    pairs = [(l, by_name[n]) for l, n in zip(src, names)]
  else:
    pairs = list(zip(src, dst))
  for layer, new in pairs:
    inner = _inner(layer)
    same = (_is_graph(inner) and _is_graph(new)) if isinstance(inner, keras.Model) else (
        type(inner) is type(new))
    if not same:
      raise differ(f"{type(new).__name__} {new.name!r} where it has {type(inner).__name__} "
                   f"{inner.name!r}")
  return pairs


def _check_rebuildable(graph, source: _Source) -> None:
  """Fails now, not when a copy is made after training, for a Functional
  subclass whose class does not re-create it from its config: the new model
  must have the same layers (kinds and weight shapes) and the same config."""

  def compare(graph, rebuilt):
    for layer, new in _pairs(graph, rebuilt, source):
      if _is_graph(_inner(layer)):
        compare(layer, new)
        continue
      have = [tuple(w.shape) for w in _inner(layer).weights]
      get = [tuple(w.shape) for w in new.weights]
      if have != get:
        raise ValueError(
            f"cannot re-create {source.cls.__name__} {graph.name!r} from its config: its "
            f"layer {new.name!r} gets weights of shapes {get} instead of {have}; its "
            "get_config() must hold every constructor argument" + _PLAIN_HINT)

  rebuilt = _from_config(source, graph.name)
  compare(graph, rebuilt)
  config = rebuilt.get_config()
  if config != source.config:
    keys = sorted(k for k in set(config) | set(source.config)
                  if config.get(k, ...) != source.config.get(k, ...))
    raise ValueError(
        f"{source.cls.__name__}.from_config({graph.name!r}.get_config()) builds a model whose "
        f"get_config() differs in {keys}: a copy keeping the class would not be the model"
        + _PLAIN_HINT)


def _warn_plain_copy(what: str, graph, source: _Source) -> None:
  warnings.warn(
      f"{what}: the copy of {source.cls.__name__} {graph.name!r} is a plain Functional model, "
      f"not a {source.cls.__name__}: folding takes away BatchNormalization layers its class "
      "builds, so it cannot be re-created from its config (attributes of its own, such as "
      "layers it holds by name, are not on the copy; it loads with Keras alone)", stacklevel=3)


# --------------------------------------------------------------------------
# What to morph


def resolve_specs(plan: registry.KernelPlan, morphing) -> dict[int, MorphSpec]:
  """{id(kernel variable): MorphSpec} for the kernels `morphing` selects: every
  kernel for one MorphSpec, the kernels a checked {pattern: MorphSpec} map
  (precision_map.check_morphing) matches, each with its entry's spec.

  Raises:
    ValueError: a map entry that matches no kernel, or wins none.
  """
  if isinstance(morphing, MorphSpec):
    return {id(k.variable): morphing for k in plan.kernels}
  names = {id(k.variable): precision_map.weight_names(k.name) for k in plan.kernels}
  return precision_map.resolve(morphing, names, what="kernel")


def check_float32(plan: registry.KernelPlan, precision) -> None:
  """TypeError for kernels that are not float32 (under a map: those it names)."""
  wrong = [s for s in plan.skipped if s.code == registry.NOT_FLOAT32 and (
      not isinstance(precision, Mapping)
      or precision_map.lookup(precision, precision_map.weight_names(s.name)) is not None)]
  if wrong:
    raise TypeError("only float32 kernels are morphed: " + ", ".join(
        f"{s.name} ({s.reason.split(':')[0]})" for s in wrong) + "; under mixed precision use "
        "a 'mixed_float16'/'mixed_bfloat16' policy, whose master weights are float32")


def _graph_units(model, prefix=""):
  """(graph model, layer, name prefix) for every layer morph_model may wrap."""
  for layer in model.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue
    if isinstance(layer, keras.Model):
      if registry.is_graph_model(layer):
        yield from _graph_units(layer, f"{prefix}{layer.name}/")
        continue
    yield model, layer, prefix


def morph_model(to_wrap, method="paper", precision=None, *, keep_bits=None, columns=None,
                group_size=None, width=None, morph_forward=True, fold_batchnorm=False,
                preserve_zeros=False, embeddings=False, compensate=None):
  """Wraps the layers holding kernels (registry) in MorphWrapper.

  Args:
    to_wrap: a Sequential or Functional model (nested ones included), a
      layer, or a list of layers.
    method: a MorphSpec, or a method name with its flat settings (precision,
      keep_bits, columns, group_size, width), as MorphWrapper.
    morph_forward, preserve_zeros, embeddings: as MorphWrapper.
    precision: P for every kernel, or a {pattern: P or MorphSpec} map (any
      Mapping, matched as mortar_tf.precision_map says: kernel names such as
      "block/mha/query/kernel", layer paths, layer names): then only the
      layers holding matched kernels are wrapped, each kernel with its
      entry's morphing (a number: P for `method`; a MorphSpec: that spec,
      e.g. bitx on one conv and fewest_ones elsewhere). A wrapper whose
      kernels all share one spec gets that spec; one whose kernels differ
      gets the map of its own kernels' exact names.
    fold_batchnorm: fold each BatchNormalization that directly follows a
      wrapped conv/dense layer into it, so the forward pass morphs the folded
      kernel (as the accelerator will see it). The BN becomes an Identity; its
      gamma and beta move into the wrapper and keep training, its moving
      statistics are frozen at their current values. BNs after layers that
      are not wrapped stay as they are.
    compensate: calibration inputs (an array, a list or dict of arrays, a
      dataset; no labels) or a mortar_tf.keras.Calibration: error-compensated
      morphing with bias correction (SPEC 6, mortar_tf.keras.calibration).
      The result is then built on a copy of the model: its wrapped kernels
      hold the compensated pre-morph values (so the wrappers' morph gives the
      compensated kernels) and the corrected biases / moving means; the
      original model is left as it is. Statistics come from `to_wrap` as it
      is now: compensation belongs after training.

  Returns:
    A model (sharing the original layers' variables), a wrapper, or a list.
    What was wrapped and what was skipped (with the reasons) is logged to the
    "mortar_tf" logger at INFO level; find_kernels(model) returns the same.

  Raises:
    ValueError: bad morphing arguments, a map entry matching no kernel,
      nothing to morph, a subclassed model, a model already wrapped or
      holding TFMOT wrappers (all checked before anything is cloned).
    TypeError: kernels that are not float32.
  """
  morphing = precision_map.check_morphing(method, precision, keep_bits=keep_bits,
                                          columns=columns, group_size=group_size, width=width)
  common = dict(morph_forward=morph_forward, preserve_zeros=preserve_zeros,
                embeddings=embeddings)
  if isinstance(to_wrap, (list, tuple)):
    if not all(isinstance(l, keras.layers.Layer) for l in to_wrap):
      raise ValueError("morph_model takes a model, a layer or a list of layers")
  elif not isinstance(to_wrap, keras.layers.Layer):
    raise ValueError(f"morph_model takes a Keras model, a layer or a list of layers, got "
                     f"{type(to_wrap).__name__}")
  _refuse_wrapped(to_wrap)
  if isinstance(to_wrap, keras.Model):
    _refuse_subclassed(to_wrap, "morph_model")
    _check_recreatable(to_wrap)
    units = list(_graph_units(to_wrap))
  else:
    layers = list(to_wrap) if isinstance(to_wrap, (list, tuple)) else [to_wrap]
    units = [(None, layer, "") for layer in layers]

  # Every unit's kernels, named as in the whole model, resolved against P or the map.
  plans = {}
  kernels, skipped = [], []
  for _, layer, prefix in units:
    if id(layer) in plans:
      continue  # a shared layer
    unit_prefix = f"{prefix}{layer.name}/"
    plan = registry.find_kernels(layer, embeddings=embeddings, prefix=unit_prefix)
    plans[id(layer)] = (plan, unit_prefix)
    kernels += plan.kernels
    skipped += plan.skipped
  whole = registry.KernelPlan(tuple(kernels), tuple(skipped))
  specs = resolve_specs(whole, morphing)
  check_float32(whole, precision)
  if not specs:
    raise ValueError(f"nothing to morph in {getattr(to_wrap, 'name', 'the layers')!r}: "
                     + whole.summary())
  wanted = {id(layer) for _, layer, _ in units
            if any(id(k.variable) in specs for k in plans[id(layer)][0].kernels)}
  log_plan("morph_model", whole, [k.name for k in whole.kernels if id(k.variable) in specs])
  if compensate is not None and compensate is not False:
    return _compensated_morph_model(to_wrap, specs, compensate, fold_batchnorm,
                                    dict(method=method, precision=precision, keep_bits=keep_bits,
                                         columns=columns, group_size=group_size, width=width,
                                         **common))

  def wrapper_morphing(layer) -> dict:
    """The wrapper's morphing: one MorphSpec when every kernel of the layer
    has the same, else {kernel name within the layer (exact): MorphSpec}."""
    if isinstance(morphing, MorphSpec):
      return {"method": morphing}
    plan, unit_prefix = plans[id(layer)]
    chosen = {precision_map.literal(k.name[len(unit_prefix):]): specs[id(k.variable)]
              for k in plan.kernels if id(k.variable) in specs}
    if len(chosen) == len(plan.kernels) and len(set(chosen.values())) == 1:
      return {"method": next(iter(chosen.values()))}  # one spec for all its kernels
    return {"method": method, "precision": chosen}

  folds = {}
  if fold_batchnorm and isinstance(to_wrap, keras.Model):
    for graph in _graphs(to_wrap):
      folds.update({k: v for k, v in _batchnorm_folds(graph).items() if k in wanted})
  folded_bns = {id(bn) for bn in folds.values()}
  sources = {}  # id(graph): _Source, for the Functional subclasses the clone stands for
  if isinstance(to_wrap, keras.Model):
    for graph in _graphs(to_wrap):
      if _functional_subclass(graph):
        source = _Source(type(graph), graph.get_config(), _holds_folds(graph, folded_bns))
        if not source.folded:
          _check_rebuildable(graph, source)  # strip_morphing will re-create it
        sources[id(graph)] = source
  pending = []
  wrappers = {}

  def wrap(layer):
    if id(layer) in wrappers:  # a shared layer: one wrapper, shared too
      return wrappers[id(layer)]
    bn = folds.get(id(layer))
    wrapper = MorphWrapper(layer, **wrapper_morphing(layer), **common,
                           fold_batchnorm_epsilon=None if bn is None else bn.epsilon)
    if bn is not None:
      pending.append((wrapper, bn))
    wrappers[id(layer)] = wrapper
    return wrapper

  if not isinstance(to_wrap, keras.Model):
    if isinstance(to_wrap, (list, tuple)):
      return [wrap(layer) if id(layer) in wanted else layer for layer in to_wrap]
    return wrap(to_wrap)

  def clone_graph(graph):
    clone = _clone(graph, swap)
    if id(graph) in sources and type(clone) is not type(graph):
      _SOURCES[clone] = sources[id(graph)]  # a plain Functional: strip gives the class back
    return clone

  def swap(layer):
    if isinstance(layer, keras.Model) and registry.is_graph_model(layer):
      return clone_graph(layer)
    if id(layer) in folded_bns:
      return keras.layers.Identity(name=layer.name)
    return wrap(layer) if id(layer) in wanted else layer  # a nested subclassed model: one unit

  wrapped = clone_graph(to_wrap)
  for wrapper, bn in pending:  # built by the clone: take the BN's values over
    gamma, beta, mean, variance = folding.batchnorm_statistics(bn)
    for target, value in ((wrapper.bn_gamma, gamma), (wrapper.bn_beta, beta),
                          (wrapper.bn_moving_mean, mean), (wrapper.bn_moving_variance, variance)):
      target.assign(value)
  return wrapped


def _compensated_morph_model(to_wrap, specs, compensate, fold_batchnorm, arguments):
  """morph_model(..., compensate=...): the copy with pre-morph values, wrapped."""
  from mortar_tf.keras import calibration as calibration_lib  # pylint: disable=import-outside-toplevel
  calibration = calibration_lib.as_calibration(compensate)
  if not isinstance(to_wrap, keras.Model):
    raise ValueError("compensate needs a model: its statistics come from running the "
                     "calibration inputs through it")
  if fold_batchnorm:
    raise ValueError("compensate and fold_batchnorm do not combine here: fold first "
                     "(folded = mortar_tf.keras.fold_batchnorm(model)), then "
                     "morph_model(folded, ..., compensate=...)")
  done = calibration_lib.compensated_values(to_wrap, specs, calibration)
  given = dict(done.values)
  given.update(done.premorph)  # the wrappers morph these into the compensated kernels
  copy = _rebuild(to_wrap, None, {}, given=given, what="morph_model")
  _LOG.info("morph_model: %s", done.summary())
  return morph_model(copy, **arguments)


def find_kernels(model, embeddings: bool = False) -> registry.KernelPlan:
  """The kernels of a model (or layer, or list of layers) and the weights the
  registry leaves alone, with the reasons: what morph_model and MortarCallback
  morph by default.

  Raises:
    ValueError: not a Keras layer, model or list of layers.
  """
  items = model if isinstance(model, (list, tuple)) else [model]
  if not all(isinstance(l, keras.layers.Layer) for l in items):
    raise ValueError(f"find_kernels takes a Keras model, a layer or a list of layers, got "
                     f"{type(model).__name__}")
  return registry.find_kernels(model, embeddings=embeddings)


def log_plan(what: str, plan: registry.KernelPlan, morphed) -> None:
  if _LOG.isEnabledFor(logging.INFO):
    _LOG.info("%s: %s", what, plan.summary(morphed))
  unregistered = [s.name for s in plan.skipped if s.code == registry.UNREGISTERED]
  if unregistered:
    _LOG.warning("%s: weights of layers the kernel registry does not know were left alone: "
                 "%s (register their layers with mortar_tf.keras.register_kernels if they "
                 "multiply with them)", what, ", ".join(unregistered[:8]))


# --------------------------------------------------------------------------
# Stripping and rebuilding


def strip_morphing(model, fold_batchnorm: bool = False):
  """A plain model whose kernels are the morphed values of its MorphWrappers' kernels.

  Every other variable is copied bit for bit from the same variable object of
  the source; the source model is not changed. For a single MorphWrapper,
  returns a fresh copy of its layer. A model morph_model made from a
  Functional subclass (a keras-hub Backbone) comes back as that class, with
  its attributes and config, re-created from its config as
  keras.models.clone_model re-creates one; folded, it is a plain Functional
  (its class builds the BNs the fold takes away), with a warning. (morph_model
  keeps that link in memory: a wrapped model saved and loaded strips to a
  plain Functional.)

  Args:
    model: a model with MorphWrappers, or a MorphWrapper.
    fold_batchnorm: also fold a BatchNormalization that directly follows a
      wrapper (one not already folding it) into its kernel and bias
      (inference statistics) before morphing, as accelerators do; the BN
      becomes an Identity. BNs after other layers stay.

  Raises:
    ValueError: a subclassed model (it cannot be cloned), or a Functional
      subclass its class cannot re-create from its config.
  """
  if isinstance(model, MorphWrapper):
    by_id, bias = _wrapper_values(model)
    fresh = _fresh(model.layer, use_bias=True if bias is not None else None)
    fresh.build(_build_shape(model.layer))
    _assign(model.layer, fresh, by_id, bias)
    return fresh
  if not isinstance(model, keras.Model):
    raise ValueError(f"strip_morphing takes a Keras model or a MorphWrapper, got "
                     f"{type(model).__name__}")
  if not any(isinstance(l, MorphWrapper) for l in every_layer(model)):
    warnings.warn(f"strip_morphing: {model.name!r} holds no MorphWrapper, so the copy is not "
                  "morphed (morph_model(model, ...) wraps it)", stacklevel=2)
  return copy_and_values(model, fold_batchnorm=fold_batchnorm, what="strip_morphing")[0]


def fold_batchnorm(model):
  """A plain copy of a graph model with each foldable BatchNormalization folded
  into the conv/dense layer before it (inference statistics; the BN becomes an
  Identity), kernels not morphed; every other variable is copied bit for bit.

  A BN folds when it normalises the last axis and directly follows a Dense,
  Conv*, DepthwiseConv*, SeparableConv* or Conv*Transpose without activation
  whose output goes nowhere else. The copy of a Functional subclass (a
  keras-hub Backbone) with a BN folded is a plain Functional: its class builds
  the BNs the fold takes away (a warning says so).
  """
  _refuse_subclassed(model, "fold_batchnorm")
  _refuse_wrapped(model)
  return _rebuild(model, None, _all_folds(model), what="fold_batchnorm")


def copy_and_values(model, specs: Mapping[int, MorphSpec] | None = None,
                    fold_batchnorm: bool = False, what: str = "a morphed copy",
                    quiet: bool = False):
  """(plain copy, {id(source variable): (variable, new value)}) of a graph model.

  A model with MorphWrappers is stripped (fold_batchnorm as strip_morphing);
  an unwrapped one gets the kernels in `specs` ({id(variable): MorphSpec})
  morphed, after folding each BN that follows a layer holding one of them when
  `fold_batchnorm`. Everything else is copied bit for bit. The dict holds the
  variables whose copies differ from them (kernels, folded biases). A
  Functional subclass keeps its class unless a BN of it is folded (then
  `what` warns, unless `quiet`: check_copy warned already).
  """
  _refuse_subclassed(model, what)
  wrapped, folds = _copy_plan(model, specs, fold_batchnorm)
  record = {}
  return _rebuild(model, None if wrapped else specs, folds, record, what=what,
                  quiet=quiet), record


def check_copy(model, specs: Mapping[int, MorphSpec] | None = None,
               fold_batchnorm: bool = False, what: str = "a morphed copy") -> None:
  """Checks before any work what copy_and_values(model, specs, fold_batchnorm)
  needs: the BNs to fold can be read from the graph, every layer with
  variables and every Functional subclass to keep can be re-created from its
  config. Warns (as `what`) for a Functional subclass whose copy will be a
  plain Functional (folded).

  Raises:
    ValueError: a copy cannot be made (the message says why).
  """
  _refuse_subclassed(model, what)
  _, folds = _copy_plan(model, specs, fold_batchnorm)
  _check_recreatable(model)
  folded_bns = {id(bn) for bn in folds.values()}
  for graph in _graphs(model):
    source = _source(graph)
    if source is None:
      continue
    if source.folded or _holds_folds(graph, folded_bns):
      _warn_plain_copy(what, graph, source)
    else:
      _check_rebuildable(graph, source)


def _copy_plan(model, specs, fold_batchnorm):
  """(whether `model` holds MorphWrappers, {id(producer): BN} to fold) for copy_and_values."""
  wrapped = any(isinstance(l, MorphWrapper) for _, l in all_layers(model))
  folds = {}
  if fold_batchnorm:
    for key, bn in _all_folds(model).items():
      layer = _layer_by_id(model, key)
      if wrapped:
        take = isinstance(layer, MorphWrapper) and not layer.folds_batchnorm
      else:
        take = any(id(w) in (specs or {}) for w in layer.weights)
      if take:
        folds[key] = bn
  return wrapped, folds


def _all_folds(model) -> dict:
  folds = {}
  for graph in _graphs(model):
    folds.update(_batchnorm_folds(graph))
  return folds


def _layer_by_id(model, layer_id):
  for _, layer in all_layers(model):
    if id(layer) == layer_id:
      return layer
  raise KeyError(layer_id)


def rebuild(model, unwrap):
  """A plain copy of a graph model whose wrappers of another kind (e.g. TFMOT's)
  are replaced by fresh copies of their layers: `unwrap(layer)` returns
  (inner layer, {id(inner variable): new value}) for such a wrapper, else
  None. Every other variable is copied bit for bit."""
  _refuse_subclassed(model, "rebuild")
  return _rebuild(model, None, {}, unwrap=unwrap)


def _rebuild(model, specs, folds: dict, record: dict | None = None, unwrap=None,
             what: str = "a copy", quiet: bool = False, given: Mapping | None = None):
  """Clones `model` with fresh layers (wrappers replaced by their inner layers).

  Each fresh layer gets its source's variable values: a wrapper's kernels
  morphed as it morphs them, a plain layer's kernels morphed as `specs`
  ({id(variable): MorphSpec}, or None) says, after folding the BN in `folds`
  ({id(producer): BN}) that follows it (the BN becomes an Identity).
  A Functional subclass (or morph_model's clone of one) is re-created from
  its config instead of cloned, unless a BN of it is folded (then `what`
  warns, unless `quiet`). `record`, if given, receives {id(source variable):
  (variable, new value)}. `given` ({id(source variable): value}) sets the
  values of plain layers' variables outright (compensated kernels, corrected
  biases and moving means).
  """
  folded_bns = {id(bn) for bn in folds.values()}
  pending = []

  def values(layer):
    """(source layer, {id(its variable): new value}, folded bias or None)."""
    bn = folds.get(id(layer))
    unwrapped = None if unwrap is None else unwrap(layer)
    if unwrapped is not None:
      (source, by_id), bias = unwrapped, None
    elif isinstance(layer, MorphWrapper):
      source = layer.layer
      by_id, bias = _wrapper_values(layer, bn)
    else:
      source = layer
      by_id, bias = _plain_values(layer, specs, bn)
      if given:
        by_id.update({id(w): given[id(w)] for w in layer.weights if id(w) in given})
    return source, by_id, bias

  def swap(layer):
    if not isinstance(layer, keras.layers.Layer):
      return layer  # a Keras 3 operation (x + y in a functional model): no state
    if isinstance(layer, keras.Model):
      return copy_graph(layer)
    if id(layer) in folded_bns:
      return keras.layers.Identity(name=layer.name)
    source, by_id, bias = values(layer)
    fresh = _fresh(source, use_bias=True if bias is not None else None)
    pending.append((source, fresh, by_id, bias))
    return fresh

  def fill(graph, rebuilt, source):
    """Pairs a re-created model's layers with the graph's, for the values."""
    for layer, new in _pairs(graph, rebuilt, source):
      if _is_graph(_inner(layer)):
        fill(layer, new, source)
        continue
      inner, by_id, _ = values(layer)  # no bias: nothing in it is folded
      if new.trainable != inner.trainable:
        new.trainable = inner.trainable
      pending.append((inner, new, by_id, None))

  def copy_graph(graph):
    source = _source(graph) if registry.is_graph_model(graph) else None
    if source is None:
      return _clone(graph, swap)
    if source.folded or _holds_folds(graph, folded_bns):
      if not quiet:
        _warn_plain_copy(what, graph, source)
      return _clone(graph, swap)
    rebuilt = _from_config(source, graph.name)
    fill(graph, rebuilt, source)
    return rebuilt

  rebuilt = copy_graph(model)
  for source, fresh, by_id, bias in pending:
    _assign(source, fresh, by_id, bias)
    if record is not None:
      for w in source.weights:
        if id(w) in by_id:
          record[id(w)] = (w, by_id[id(w)])
  return rebuilt


def _wrapper_values(wrapper, bn=None):
  """({id(kernel variable): value}, folded bias or None) as the wrapper computes them."""
  if bn is not None:  # strip_morphing(fold_batchnorm=True) on a wrapper that did not fold
    plain, bias = _plain_values(wrapper.layer, None, bn)
    targets = {id(t.kernel.variable): t for t in wrapper.targets}
    out = {}
    for i, value in plain.items():
      t = targets.get(i)
      out[i] = value if t is None or t.spec is None else _morph_array(value, t.spec, t.kernel)
    for t in wrapper.targets:
      if id(t.kernel.variable) not in out and t.spec is not None:
        out[id(t.kernel.variable)] = _morph_array(t.kernel.numpy(), t.spec, t.kernel)
    return out, bias
  values = wrapper.morphed_values()
  by_id = {id(t.kernel.variable): np.asarray(values[t.name]) for t in wrapper.targets
           if t.name in values}
  bias = np.asarray(wrapper.folded_values()[1]) if wrapper.folds_batchnorm else None
  return by_id, bias


def _morph_array(value, spec, kernel):
  grouping = kernel.grouping() if spec.method == "bitx" else {}
  return backends.morph(np.asarray(value, np.float32), spec, **grouping)


def _plain_values(layer, specs, bn):
  """({id(kernel variable): value}, folded bias or None) for a plain layer: its
  kernels folded with `bn` when given, then morphed where `specs` says."""
  out, bias = {}, None
  if bn is not None:
    axes = folding.fold_axes(layer)
    kernels = {name: getattr(layer, name).numpy() for name in axes}
    old_bias = getattr(layer, "bias", None)
    folded, new_bias = folding.fold(kernels, None if old_bias is None else old_bias.numpy(),
                                    *folding.batchnorm_statistics(bn), bn.epsilon, axes)
    for name, value in folded.items():
      out[id(getattr(layer, name))] = np.asarray(value)
    bias = np.asarray(new_bias)
  if specs and any(id(w) in specs for w in layer.weights):
    for k in registry.find_kernels(layer, embeddings=True).kernels:
      spec = specs.get(id(k.variable))
      if spec is not None:
        out[id(k.variable)] = _morph_array(out.get(id(k.variable), k.numpy()), spec, k)
  return out, bias


def _assign(source, fresh, by_id: dict, bias=None) -> None:
  """Gives `fresh` the values of `source`'s variables, position by position (the
  order both were created in), with `by_id` replacing some; `bias` (a folded
  bias) goes to fresh's bias, which `source` may lack."""
  src = list(source.weights)
  dst = list(fresh.weights)
  if bias is not None:
    source_bias = getattr(source, "bias", None)
    fresh_bias = fresh.bias
    src = [w for w in src if source_bias is None or w is not source_bias]
    dst = [w for w in dst if w is not fresh_bias]
    fresh_bias.assign(np.asarray(bias, np.float32))
  if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
    raise ValueError(
        f"cannot copy the weights of {type(source).__name__} {source.name!r} into its fresh "
        f"copy: {[tuple(w.shape) for w in src]} vs {[tuple(w.shape) for w in dst]}")
  for a, b in zip(src, dst):
    value = by_id.get(id(a))
    b.assign(a.numpy() if value is None else value)


def _fresh(layer, use_bias=None):
  """A new layer from `layer`'s config (use_bias overridden if given).

  A layer Keras cannot re-create from its config (e.g. one TensorFlow revived
  from a SavedModel without its class) is returned itself when it holds no
  variables: the copy may share a stateless layer.

  Raises:
    ValueError: a layer with variables that cannot be re-created.
  """
  config = layer.get_config()
  if use_bias is not None:
    config["use_bias"] = use_bias
  try:
    return layer.__class__.from_config(config)
  except Exception as e:  # pylint: disable=broad-except  (Keras raises many kinds)
    if not layer.weights and use_bias is None:
      return layer
    raise ValueError(
        f"cannot re-create {type(layer).__name__} {layer.name!r} from its config, so no plain "
        f"copy of the model can be made ({e}). Its class must accept its own get_config() "
        "(a layer revived from a SavedModel without its class cannot)") from e


def _check_recreatable(model) -> None:
  """Fails now, not at strip time after training, for layers with variables that
  cannot be re-created from their config."""
  for _, layer in all_layers(model):
    if layer.weights and not isinstance(layer, keras.Model):
      _fresh(_inner(layer))


def _build_shape(layer):
  """The input shape a built layer was built with.

  Neither Keras exposes it publicly, so the private attribute each keeps is read
  here and only here: Keras 3's `_build_shapes_dict`, tf_keras' `_build_input_shape`.
  """
  shapes = getattr(layer, "_build_shapes_dict", None)
  if shapes:
    values = list(shapes.values())
    return values[0] if len(values) == 1 else values
  shape = getattr(layer, "_build_input_shape", None)
  if shape is None:
    raise ValueError(f"layer {layer.name!r} was never built: call the wrapper once first")
  return shape


# --------------------------------------------------------------------------
# BatchNormalization folding


@register_serializable
class FoldedBatchNorm(keras.layers.Layer):
  """The identity. Models saved by mortar_tf 0.1 put it where a BN was folded;
  kept so they still load (folds now leave a plain keras.layers.Identity)."""

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
  config = _graph_config(model)
  inputs_of = {}
  consumers = {}
  for entry in config["layers"]:
    nodes = entry.get("inbound_nodes", [])
    names = _history_names(nodes)
    inputs_of[entry.get("name") or entry["config"]["name"]] = (names, len(nodes))
    for name in names:
      consumers[name] = consumers.get(name, 0) + 1
  for name in _history_names(config.get("output_layers", [])):
    consumers[name] = consumers.get(name, 0) + 1
  calls = {name: n for name, (_, n) in inputs_of.items()}
  # A layer called more than once (shared) is never a producer to fold into.
  return {name: (names[0], consumers.get(names[0], 0))
          if len(names) == 1 and n == 1 and calls.get(names[0]) == 1 else (None, 0)
          for name, (names, n) in inputs_of.items()}


def _batchnorm_folds(model) -> dict:
  """{id(producer layer): BatchNormalization} for every BN that can be folded:
  channels-last, called once, fed by a conv/dense layer (called once) whose
  output goes nowhere else."""
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
    if folding.fold_axes(inner) is None or not inner.built:
      continue
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
    rank = len(getattr(inner, next(iter(folding.fold_axes(inner)))).shape)
    if axis in (-1, _output_rank(inner, rank) - 1):
      folds[id(producer)] = layer
  return folds


def _output_rank(layer, kernel_rank: int) -> int:
  """The rank of a foldable layer's output (batch included)."""
  if isinstance(layer, keras.layers.Dense):
    return len(_build_shape(layer))
  return kernel_rank  # conv kinds: [k..., cin, cout] -> [batch, spatial..., channels]


def morph_scope():
  """A Keras custom-object scope holding mortar_tf's Keras classes, like
  TFMOT's `quantize_scope()`: loading a model saved with MorphWrappers (an
  unstripped model, a checkpoint of morph-aware training) inside it needs no
  registration. `import mortar_tf` registers the classes anyway once Keras is
  loaded; the scope is for code that wants to say so, and for loading in a
  process that reset Keras' registry.

  Example:
    with morph_scope():
      model = keras.models.load_model("wrapped.keras")
  """
  objects = {}
  for cls in (MorphWrapper, FoldedBatchNorm):
    objects[cls.__name__] = cls
    objects[f"mortar_tf>{cls.__name__}"] = cls
  if IS_KERAS3:
    return keras.saving.custom_object_scope(objects)
  return keras.utils.custom_object_scope(objects)
