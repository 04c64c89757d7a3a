"""MorphWrapper: morph-aware training of a layer's kernels, in Keras 3 and tf_keras.

The wrapped layer keeps its float32 master kernels and trains them; its forward
pass multiplies with the morphed kernels (SPEC 2), and the gradient passes
straight through the morphing to the master kernels. The morph is the C++ op
(mortar_tf.ops) where a graph cannot leave this process: eagerly, and in a
training step traced without XLA on a machine without GPUs; everywhere else
(jit_compile=True, inference and serving graphs, SavedModel export, GPUs, no op
library) it is made of TF ops only (mortar_tf.morph_tf), so exported models need
nothing of ours. Both give the same bits (tested). The kernels are the registry's
(mortar_tf.keras.registry): a Dense has one, a SeparableConv two, a
MultiHeadAttention four, a Bidirectional(LSTM) four; a block of your own
holding such layers has all of theirs. `strip_morphing` (apply.py) turns a
wrapped model back into a plain one whose kernels are the morphed values.

Example:
  >>> from mortar_tf.keras.compat import keras
  >>> layer = MorphWrapper(keras.layers.Dense(2), "fewest_ones", precision=0.1)
  >>> y = layer(np.ones((1, 3), np.float32))
  >>> [name for name, _, _ in layer.morph_targets]
  ['kernel']
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import threading
from typing import Protocol
from typing import runtime_checkable

import tensorflow as tf

from mortar_tf import backends
from mortar_tf import morph_tf
from mortar_tf import precision_map
from mortar_tf.keras import folding
from mortar_tf.keras import registry
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras
from mortar_tf.morphing import MorphSpec


@runtime_checkable
class MorphableLayer(Protocol):
  """A layer of your own that MorphWrapper can morph (or use register_kernels).

  `get_morphable_weights()` returns [(attribute, layout)] pairs, the layout
  being one of mortar_tf.bits.LAYOUTS or ("einsum", equation); each attribute
  names the layer's own variable (as in `self.w = self.add_weight(...)`).
  """

  def get_morphable_weights(self) -> list:
    ...


def register_serializable(cls):
  """Registers a class for (de)serialization under the "mortar_tf" package."""
  if IS_KERAS3:
    return keras.saving.register_keras_serializable(package="mortar_tf")(cls)
  return keras.utils.register_keras_serializable(package="mortar_tf")(cls)


@dataclasses.dataclass(frozen=True)
class Target:
  """One kernel a MorphWrapper morphs.

  Attributes:
    name: its name within the wrapped layer ("kernel", "query/kernel").
    kernel: the registry's Kernel (variable, layout, owner).
    spec: its MorphSpec, or None when a precision map leaves it out.
  """
  name: str
  kernel: registry.Kernel
  spec: MorphSpec | None


def kernels_of(layer, embeddings: bool = False) -> registry.KernelPlan:
  """The registry's kernels of a built layer, named relative to it.

  Raises:
    TypeError: kernels that are not float32.
    ValueError: the layer has none (the message says what it holds instead).
  """
  plan = registry.find_kernels(layer, embeddings=embeddings)
  wrong = [s for s in plan.skipped if s.code == registry.NOT_FLOAT32]
  if wrong:
    raise TypeError(
        f"MorphWrapper morphs float32 master kernels; in {layer.name!r} "
        + ", ".join(f"{s.name} is {s.reason.split(':')[0][len('dtype '):]}" for s in wrong)
        + " (under mixed precision use a 'mixed_float16'/'mixed_bfloat16' policy, whose "
        "master weights are float32)")
  if not plan.kernels:
    held = "; ".join(f"{s.name}: {s.reason}" for s in plan.skipped[:4]) or "no weights"
    raise ValueError(
        f"MorphWrapper cannot morph {type(layer).__name__} {layer.name!r}: it holds no kernel "
        f"the registry knows ({held}). Kernels are registered for Dense, EinsumDense, Conv*, "
        "DepthwiseConv*, SeparableConv*, Conv*Transpose, the RNN cells and the layers "
        "holding them (MultiHeadAttention, Bidirectional, TimeDistributed, ...); register "
        "your own with mortar_tf.keras.register_kernels or get_morphable_weights()")
  return plan


def morph_targets_of(layer) -> list[tuple[str, object, dict]]:
  """[(name, variable, grouping kwargs)] of the kernels MorphWrapper morphs in `layer`.

  Raises:
    ValueError: the layer holds no registered kernel.
  """
  return [(k.name, k.variable, k.grouping()) for k in kernels_of(layer).kernels]


_LOCAL = threading.local()


@contextlib.contextmanager
def tf_ops_only():
  """Within it, MorphWrapper morphs with TF ops only (mortar_tf.morph_tf), as it
  does under XLA and when exporting: a graph traced here needs no op library."""
  before = getattr(_LOCAL, "tf_ops_only", False)
  _LOCAL.tf_ops_only = True
  try:
    yield
  finally:
    _LOCAL.tf_ops_only = before


@functools.lru_cache(maxsize=None)
def _gpus_visible() -> bool:
  """The op runs on CPU only: with GPUs, the morph stays on them (TF ops)."""
  return bool(tf.config.list_logical_devices("GPU"))


def _in_xla_or_saving() -> bool:
  """True while tracing under jit_compile=True or for a SavedModel."""
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from tensorflow.python.ops import control_flow_util
  from tensorflow.python.saved_model import save_context
  return (save_context.in_save_context()
          or control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def op_for_morph(spec: MorphSpec, training=None) -> bool:
  """True when the C++ op may morph with `spec` here (see the module doc):
  eagerly, or in a graph traced for training (training=True) outside XLA and
  SavedModel export, on a machine without GPUs; never within tf_ops_only(),
  without the library, nor for a spec the op cannot run (backends.op_morphs)."""
  if getattr(_LOCAL, "tf_ops_only", False):
    return False
  if not tf.executing_eagerly():
    if training is not True or _in_xla_or_saving():
      return False
  return backends.op_morphs(spec) and not _gpus_visible()


@tf.custom_gradient
def _straight_through(value, morphed):
  """Returns `morphed` with the gradient of the identity on `value` (and none on morphed)."""
  def grad(upstream):
    return upstream, tf.zeros_like(upstream)
  return tf.identity(morphed), grad


def _read_float32(variable) -> tf.Tensor:
  """The float32 master value (the wrapper computes in float32, so no autocast applies)."""
  value = tf.convert_to_tensor(variable)
  if value.dtype != tf.float32:
    raise TypeError(f"MorphWrapper morphs float32 master kernels; {variable.name} reads as "
                    f"{value.dtype.name}")
  return value


@register_serializable
class MorphWrapper(keras.layers.Wrapper):
  """Morphs a layer's kernels in its forward pass (TFMOT-style wrapper).

  Args:
    layer: any layer holding registered kernels (Dense, Conv*, MultiHead-
      Attention, LSTM, Bidirectional, your own blocks, ...; see
      mortar_tf.keras.registry), built or not.
    method: a MorphSpec, or a method name with its settings (precision,
      keep_bits, columns, group_size, width; keyword-only but precision), as
      for mortar_tf.morph (bitx groups along each kernel's reduction axes).
    precision: P for every kernel, or a {pattern: P or MorphSpec} map over
      the kernels' names as mortar_tf.precision_map matches them
      ("mha/query/kernel", "query", "mha", ...; the layer's own name first):
      a number is P for `method` (a name), a MorphSpec gives its kernels its
      own method and settings; kernels no entry matches keep their values.
    morph_forward: False runs the layer with its master kernels (the wrapper
      then only marks what strip_morphing morphs).
    fold_batchnorm_epsilon: set (by morph_model(fold_batchnorm=True)) when a
      BatchNormalization was folded into this layer: its statistics then live
      in the wrapper's bn_* weights and the forward pass folds them in first.
    preserve_zeros: keep the kernels' exact zeros at zero while training (a
      pruned model stays as sparse as it was; TFMOT's pruning-preserving QAT
      does the same): a mask taken when the wrapper is built multiplies the
      master kernels before morphing, so zeros get no gradient either.
    embeddings: also morph Embedding tables inside the layer.
    **kwargs: Keras layer arguments (name, ...). The wrapper itself computes
      in float32 (it reads the float32 masters); the wrapped layer keeps its
      own dtype policy and gets the morphed kernels in its compute dtype.

  Raises:
    ValueError: a layer without registered kernels, bad morphing arguments.
    TypeError: kernels that are not float32 (use a mixed policy, whose
      master weights are float32).
  """

  def __init__(self, layer, method="paper", precision=None, *, keep_bits=None, columns=None,
               group_size=None, width=None, morph_forward=True, fold_batchnorm_epsilon=None,
               preserve_zeros=False, embeddings=False, **kwargs):
    if not isinstance(layer, keras.layers.Layer):
      raise ValueError(f"MorphWrapper wraps a Keras layer, got {type(layer).__name__}")
    entry = registry.registered(layer)
    if entry is not None and not layer.weights and not registry.sublayers(layer) and \
        not dict(entry.kernels(layer)):
      kernels_of(layer)  # a normalization layer: raises "holds no kernel"
    if registry.is_mortar_wrapper(layer):
      raise ValueError(f"layer {layer.name!r} is already a MorphWrapper: morphing twice would "
                       "morph morphed weights")
    morphing = precision_map.check_morphing(method, precision, keep_bits=keep_bits,
                                            columns=columns, group_size=group_size, width=width)
    if isinstance(morphing, MorphSpec):
      self._map_specs = None
      self.spec = morphing
      self.method = morphing.method
      self.precision = morphing.precision
    else:
      self._map_specs = morphing
      self.spec = None
      self.method = method
      self.precision = dict(precision)
    kwargs.setdefault("name", f"morph_{layer.name}")
    kwargs["dtype"] = "float32"  # see _read_float32
    kwargs.pop("autocast", None)
    super().__init__(layer, autocast=False, **kwargs)
    self.morph_forward = bool(morph_forward)
    self.fold_batchnorm_epsilon = (None if fold_batchnorm_epsilon is None
                                   else float(fold_batchnorm_epsilon))
    self.preserve_zeros = bool(preserve_zeros)
    self.embeddings = bool(embeddings)
    self._targets = None
    if self.folds_batchnorm and folding.fold_axes(layer) is None:
      raise ValueError(f"cannot fold a BatchNormalization into {type(layer).__name__} "
                       f"{layer.name!r} (an activation inside, or no per-channel kernel)")
    if layer.built:
      self._resolve()  # fail at wrap time, not at the first call

  # -- what is morphed

  def _resolve(self) -> list[Target]:
    if self._targets is not None:
      return self._targets
    kernels = kernels_of(self.layer, self.embeddings).kernels
    if self._map_specs is None:
      specs = {k.name: self.spec for k in kernels}
    else:
      names = {k.name: precision_map.weight_names(f"{self.layer.name}/{k.name}", (k.name,))
               for k in kernels}
      try:
        # the checked specs: tf_keras wraps a dict attribute's dict values in
        # trackable wrappers that are no Mapping
        specs = precision_map.resolve(dict(self._map_specs), names, what="kernel")
      except ValueError as e:
        raise ValueError(f"MorphWrapper of {self.layer.name!r}: {e} (a wrapper matches its map "
                         "against its own layer's kernels only; morph_model, the callback and "
                         "the converter take a map for the whole model)") from None
    self._targets = tuple(Target(k.name, k, specs.get(k.name)) for k in kernels)
    if not IS_KERAS3:
      for t in self._targets:
        if t.kernel.attribute is None:
          raise ValueError(f"cannot find the attribute of {t.kernel.owner.name!r} that holds "
                           f"its {t.name!r}")
    return self._targets

  @property
  def targets(self) -> list[Target]:
    """The kernels and their specs (after the layer is built)."""
    return self._resolve()

  @property
  def morph_targets(self) -> list[tuple[str, object, dict]]:
    """[(name, master variable, grouping)] of the morphed kernels."""
    return [(t.name, t.kernel.variable, t.kernel.grouping())
            for t in self._resolve() if t.spec is not None]

  def build(self, input_shape=None):
    # tf_keras leaves `built` False after a direct build() call; a layer that
    # already has weights must not be built again (that would replace them).
    if not self.layer.built and not self.layer.weights:
      try:
        self.layer.build(input_shape)
        self.layer.built = True
      except (TypeError, ValueError):
        pass  # built by its first call instead (e.g. MultiHeadAttention needs two shapes)
    if self.layer.weights:
      self.layer.built = True
      self._build_own_weights()
    super(keras.layers.Wrapper, self).build(input_shape)  # pylint: disable=bad-super-call

  def _build_own_weights(self):
    if getattr(self, "_own_built", False):
      return
    self._own_built = True
    targets = self._resolve()
    if self.folds_batchnorm:
      # The folded BN's statistics live in the wrapper (TFMOT keeps state in
      # weights too): gamma and beta train, the moving statistics stay frozen.
      channels = self._fold_channels()
      self.bn_gamma = self.add_weight(name="bn_gamma", shape=(channels,), initializer="ones")
      self.bn_beta = self.add_weight(name="bn_beta", shape=(channels,), initializer="zeros")
      self.bn_moving_mean = self.add_weight(name="bn_moving_mean", shape=(channels,),
                                            initializer="zeros", trainable=False)
      self.bn_moving_variance = self.add_weight(name="bn_moving_variance", shape=(channels,),
                                                initializer="ones", trainable=False)
    self.zero_masks = {}
    if self.preserve_zeros:
      for i, t in enumerate(targets):
        nonzero = tf.cast(tf.not_equal(_read_float32(t.kernel.variable), 0.0), tf.float32)
        self.zero_masks[t.name] = self.add_weight(
            name=f"nonzero_mask_{i}", shape=tuple(t.kernel.variable.shape),
            initializer=lambda shape, dtype=None, v=nonzero: v, trainable=False)

  @property
  def folds_batchnorm(self) -> bool:
    """Whether a BatchNormalization was folded into this layer (see morph_model)."""
    return self.fold_batchnorm_epsilon is not None

  def _fold_axes(self):
    """{id(kernel variable): axis} of the kernels the BN folds into."""
    return {id(getattr(self.layer, name)): axis
            for name, axis in folding.fold_axes(self.layer).items()}

  def _fold_channels(self) -> int:
    name, axis = next(iter(folding.fold_axes(self.layer).items()))
    shape = getattr(self.layer, name).shape
    return int(shape[-2] * shape[-1]) if axis == "depthwise" else int(shape[axis])

  def folded_values(self):
    """({kernel name: folded kernel}, folded bias) from the current weights (tensors)."""
    axes = self._fold_axes()
    names = {id(t.kernel.variable): t.name for t in self._resolve()}
    kernels = {names[i]: _read_float32(t.kernel.variable) for t in self._resolve()
               for i in [id(t.kernel.variable)] if i in axes}
    bias = getattr(self.layer, "bias", None)
    return folding.fold(kernels, None if bias is None else _read_float32(bias),
                        self.bn_gamma, self.bn_beta, self.bn_moving_mean,
                        self.bn_moving_variance, self.fold_batchnorm_epsilon,
                        {names[i]: axis for i, axis in axes.items()})

  def _master(self, target, folded) -> tf.Tensor:
    value = folded.get(target.name)
    if value is None:
      value = _read_float32(target.kernel.variable)
    if self.preserve_zeros:
      value = value * self.zero_masks[target.name]
    return value

  def _morph(self, value, target, training=None) -> tf.Tensor:
    axes = ()
    if target.spec.method == "bitx":
      axes = target.kernel.reduction_axes()
    if op_for_morph(target.spec, training):
      from mortar_tf import ops  # pylint: disable=import-outside-toplevel
      return ops.morph_spec(value, target.spec, axes)
    return morph_tf.morph_tensor(value, target.spec, axes)

  def morphed_values(self) -> dict[str, tf.Tensor]:
    """{kernel name: the value the layer multiplies with} (morphed, folded first
    when a BatchNormalization was folded in, zeros kept with preserve_zeros) for
    every kernel whose value differs from its master."""
    folded = self.folded_values()[0] if self.folds_batchnorm else {}
    out = {}
    for t in self._resolve():
      if t.spec is None and t.name not in folded and not self.preserve_zeros:
        continue
      value = self._master(t, folded)
      out[t.name] = value if t.spec is None else self._morph(value, t)
    return out

  if IS_KERAS3:

    def compute_output_spec(self, *args, **kwargs):
      """The inner layer's: morphing never changes shapes, and tracing it
      symbolically (what Keras 3 would do) costs a whole morph graph per wrapper
      each time a functional model is built or cloned."""
      return self.layer.compute_output_spec(*args, **kwargs)

  def compute_output_shape(self, *args, **kwargs):
    return self.layer.compute_output_shape(*args, **kwargs)

  def compute_mask(self, *args, **kwargs):
    return self.layer.compute_mask(*args, **kwargs)

  def _inner_kwargs(self, kwargs, training):
    """The call arguments the inner layer's call takes (Conv's takes no `training`)."""
    params = inspect.signature(self.layer.call).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = {k: v for k, v in kwargs.items() if takes_any or k in params}
    if training is not None and (takes_any or "training" in params):
      out["training"] = training
    return out

  def call(self, *args, training=None, **kwargs):
    kwargs = self._inner_kwargs(kwargs, training)
    if not self.layer.weights:
      self.layer(*args, **kwargs)  # builds it (MultiHeadAttention needs all its inputs)
    self._build_own_weights()
    if not self.morph_forward and not self.folds_batchnorm and not self.preserve_zeros:
      return self.layer(*args, **kwargs)
    folded, extra_bias = {}, None
    replaced = []
    if self.folds_batchnorm:
      folded, folded_bias = self.folded_values()
      bias = getattr(self.layer, "bias", None)
      if bias is not None:
        replaced.append((self.layer, "bias", bias, folded_bias))
      else:
        extra_bias = folded_bias  # the layer has no bias variable to stand in for
    for t in self._resolve():
      if t.spec is None and t.name not in folded and not self.preserve_zeros:
        continue
      value = self._master(t, folded)
      if self.morph_forward and t.spec is not None:
        # the morph is outside the tape: the gradient is _straight_through's alone
        value = _straight_through(value, self._morph(tf.stop_gradient(value), t, training))
      replaced.append((t.kernel.owner, t.kernel.attribute, t.kernel.variable, value))
    outputs = self._call_with(replaced, args, kwargs)
    if extra_bias is not None:
      outputs = outputs + tf.cast(extra_bias, outputs.dtype)
    return outputs

  def _call_with(self, replaced, args, kwargs):
    """Runs the inner layer with each (owner, attribute, variable, tensor) read as the tensor."""
    if IS_KERAS3:
      # Keras 3 kernels are read-only properties on Dense/Conv; the public
      # StatelessScope reads the morphed tensors in place of the variables. It
      # also holds back every other update made inside (BN statistics, seed
      # generators) and activity-regularizer losses: both are carried out here.
      mapped = {id(v) for _, _, v, _ in replaced}
      with keras.StatelessScope(state_mapping=[(v, t) for _, _, v, t in replaced],
                                collect_losses=True) as scope:
        outputs = self.layer(*args, **kwargs)
      for variable in self.layer.variables:
        if id(variable) not in mapped:
          value = scope.get_current_value(variable)
          if value is not None:
            variable.assign(value)
      for loss in scope.losses:
        self.add_loss(loss)
      return outputs
    # tf_keras keeps kernels in plain attributes: swap them for the call, as
    # TFMOT's QuantizeWrapper does, and put the variables back afterwards.
    # object.__setattr__ bypasses Keras' attribute tracking, which would
    # otherwise untrack and re-append the variable (reordering layer.weights).
    # The inner layer is called through __call__, so its activity regularizer,
    # masking and mixed-precision casts apply.
    try:
      for owner, attribute, _, tensor in replaced:
        object.__setattr__(owner, attribute, tf.cast(tensor, owner.compute_dtype))
      return self.layer(*args, **kwargs)
    finally:
      for owner, attribute, variable, _ in replaced:
        object.__setattr__(owner, attribute, variable)

  def get_config(self):
    config = super().get_config()
    config.pop("autocast", None)
    if self.spec is not None:  # flat, as before specs: older versions load it too
      config.update(self.spec.settings())
    else:
      config["precision"] = precision_map.to_json(dict(self._map_specs), self.method)
    config["method"] = self.method
    config["morph_forward"] = self.morph_forward
    config["fold_batchnorm_epsilon"] = self.fold_batchnorm_epsilon
    config["preserve_zeros"] = self.preserve_zeros
    config["embeddings"] = self.embeddings
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    if IS_KERAS3:
      inner = keras.saving.deserialize_keras_object(config.pop("layer"),
                                                    custom_objects=custom_objects)
    else:
      inner = keras.layers.deserialize(config.pop("layer"), custom_objects=custom_objects)
    return cls(inner, **config)
