"""MortarCallback: save a morphed copy of the model while it trains.

Example:
  >>> from mortar_tf.keras.compat import keras
  >>> callback = MortarCallback("/tmp/morphed-{epoch:02d}.keras", "fewest_ones", precision=0.1)
  >>> callback.save_freq
  'epoch'
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
import tempfile
from typing import Mapping

import numpy as np
import tensorflow as tf

from mortar_tf import bits
from mortar_tf.keras import apply
from mortar_tf.keras import weights as weights_lib
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras
from mortar_tf.keras.wrapper import MorphWrapper
from mortar_tf.morphing import MorphSpec

FORMATS = ("keras", "savedmodel")
LOG_KEYS = {domain: f"mortar_ratio_{domain}" for domain in bits.DOMAINS}


def _has_wrappers(model) -> bool:
  return any(isinstance(layer, MorphWrapper) for _, layer in apply.all_layers(model))


class MortarCallback(keras.callbacks.Callback):
  """Writes a morphed copy of the model at each save; training weights stay untouched.

  For an unwrapped model the copy's kernels are morph(kernel) and everything
  else is identical; for a model with MorphWrappers the copy is
  strip_morphing(model) (its kernels morphed once, never twice).

  Args:
    filepath: where to write; may hold `{epoch}` and `{batch}` (1-based) and
      any logs key, as Keras' ModelCheckpoint. A ".keras" file (Keras 3;
      ".keras" or ".h5" with tf_keras) or a SavedModel directory.
    method, precision, keep_bits, columns, group_size, width: the morphing,
      as mortar_tf.morph (unused for wrapped models: their wrappers decide).
      `precision` may be a {layer name: P} map (as from
      mortar_tf.explore.search_precisions): layers it leaves out are saved
      unmorphed.
    save_freq: "epoch", or an integer number of training batches.
    format: "keras" (model.save) or "savedmodel" (Keras 3: model.export;
      tf_keras: tf.saved_model.save).
    log_dir: if given, per-layer sparsity ratios (scalars) and morphed kernel
      values (histograms) go to TensorBoard there.
    fold_batchnorm: fold BatchNormalization into the preceding conv/dense
      layer before morphing (see strip_morphing); ratios then compare the
      folded kernels with the model's unfolded ones.
    verbose: 1 prints a line per save.

  The total sparsity ratios (significand, word, aligned) are added to the
  epoch's logs as mortar_ratio_<domain>, so History records them; per-layer
  figures go only to TensorBoard (the progress bar prints every logs key).

  Raises:
    ValueError: a bad save_freq, format or morphing argument.
  """

  def __init__(self, filepath: str, method: str = "paper", precision=None, *, keep_bits=None,
               columns=None, group_size=None, width=None, save_freq="epoch",
               format: str = "keras", log_dir: str | None = None, fold_batchnorm: bool = False,
               verbose: int = 0):  # pylint: disable=redefined-builtin
    super().__init__()
    if save_freq != "epoch" and (isinstance(save_freq, bool) or
                                 not isinstance(save_freq, numbers.Integral) or save_freq < 1):
      raise ValueError(f"save_freq must be 'epoch' or a positive number of batches, got "
                       f"{save_freq!r}")
    if format not in FORMATS:
      raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    self.filepath = os.fspath(filepath)
    self.precision_map = None
    if isinstance(precision, Mapping):
      if (keep_bits, columns, group_size, width) != (None,) * 4:
        raise ValueError("a {layer: P} precision map takes no keep_bits, columns, group_size "
                         "or width")
      for value in precision.values():
        MorphSpec.create(method, value)  # validates the method and each P
      self.precision_map = dict(precision)
      precision = next(iter(precision.values()), None)
    self.spec = MorphSpec.create(method, precision, keep_bits=keep_bits, columns=columns,
                                 group_size=group_size, width=width)
    self.save_freq = save_freq
    self.format = format
    self.log_dir = log_dir
    self.fold_batchnorm = bool(fold_batchnorm)
    self.verbose = verbose
    self._epoch = 0
    self._batches = 0
    self._writer = None
    self.last_ratios: dict[str, float] = {}

  # -- Keras hooks

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    self._batches += 1
    if self.save_freq != "epoch" and self._batches % self.save_freq == 0:
      self._save(batch=batch, logs=logs)

  def on_epoch_end(self, epoch, logs=None):
    if self.save_freq == "epoch":
      self._save(batch=None, logs=logs)
    if logs is not None and self.last_ratios:
      for domain, key in LOG_KEYS.items():
        logs[key] = self.last_ratios[domain]

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  # -- work

  def morphed_copy(self):
    """The model as it would be saved now: stripped, or morphed through a clone."""
    model = self.model
    if _has_wrappers(model):
      return apply.strip_morphing(model, self.fold_batchnorm)
    if self.precision_map is not None:
      wrapped = apply.morph_model(model, self.spec.method, precision=self.precision_map,
                                  fold_batchnorm=self.fold_batchnorm)
      return apply.strip_morphing(wrapped, self.fold_batchnorm)
    return apply.morphed_copy(model, self.spec, self.fold_batchnorm)

  def _save(self, batch, logs):
    morphed = self.morphed_copy()
    self.last_ratios = self._ratios(morphed)
    path = self.filepath.format(epoch=self._epoch + 1,
                                batch=None if batch is None else batch + 1, **(logs or {}))
    if not _is_chief(self.model):
      # Every worker builds and writes its copy (as Keras' own checkpointing
      # does under MultiWorkerMirroredStrategy); only the chief keeps it.
      scratch = tempfile.mkdtemp(prefix=".mortar-worker-")
      try:
        _write_atomically(morphed, os.path.join(scratch, os.path.basename(path)), self.format)
      finally:
        shutil.rmtree(scratch, ignore_errors=True)
      return
    _write_atomically(morphed, path, self.format)
    if self.verbose:
      ratios = ", ".join(f"{d} {r:.3f}x" for d, r in self.last_ratios.items())
      print(f"\nMortarCallback: wrote {path} ({ratios})")

  def _ratios(self, morphed) -> dict[str, float]:
    """Total ratios over the kernels; per layer to TensorBoard when log_dir is set."""
    source = {w.name: w for w in weights_lib.model_weights(self.model)}
    target = {w.name: w for w in weights_lib.model_weights(morphed)}
    before = {d: 0 for d in bits.DOMAINS}
    after = {d: 0 for d in bits.DOMAINS}
    per_layer = {}
    for name, weight in target.items():
      original = source.get(name)
      if original is None:
        continue
      grouping = weight.grouping()
      ones_before = bits.ones_by_domain(original.numpy(), **grouping)
      ones_after = bits.ones_by_domain(weight.numpy(), **grouping)
      for d in bits.DOMAINS:
        before[d] += ones_before[d]
        after[d] += ones_after[d]
      per_layer[name] = ({d: bits.sparsity_ratio(ones_before[d], ones_after[d])
                          for d in bits.DOMAINS}, weight.numpy())
    if self.log_dir:
      self._summaries(per_layer)
    return {d: _finite(bits.sparsity_ratio(before[d], after[d])) for d in bits.DOMAINS}

  def _summaries(self, per_layer):
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    step = self._batches
    with self._writer.as_default():
      for name, (ratios, values) in per_layer.items():
        for domain, ratio in ratios.items():
          tf.summary.scalar(f"mortar/{name}/ratio_{domain}", _finite(ratio), step=step)
        tf.summary.histogram(f"mortar/{name}/morphed", values, step=step)
    self._writer.flush()


def _is_chief(model) -> bool:
  """True unless the model trains under a multi-worker strategy on a non-chief task."""
  strategy = getattr(model, "distribute_strategy", None)
  resolver = getattr(getattr(strategy, "extended", None), "_cluster_resolver", None)  # pylint: disable=protected-access
  resolver = getattr(strategy, "cluster_resolver", None) or resolver
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _finite(ratio: float) -> float:
  return ratio if math.isfinite(ratio) else float(np.finfo(np.float32).max)


def _write_atomically(model, path: str, fmt: str) -> None:
  """Writes beside `path` and renames into place: no partial file is ever left."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".mortar-", dir=directory)
  try:
    if fmt == "keras":
      temp = os.path.join(staging, os.path.basename(path))
      model.save(temp)
      os.replace(temp, path)
    else:
      temp = os.path.join(staging, "saved_model")
      if IS_KERAS3:
        model.export(temp, verbose=False)
      else:
        tf.saved_model.save(model, temp)
      if os.path.isdir(path):
        shutil.rmtree(path)
      os.replace(temp, path)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
