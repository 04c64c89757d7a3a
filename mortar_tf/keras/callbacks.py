"""MortarCallback: save a morphed copy of the model while it trains.

Example:
  >>> callback = MortarCallback("/tmp/morphed-{epoch:02d}.keras", "fewest_ones", precision=0.1)
  >>> callback.save_freq
  'epoch'
"""

from __future__ import annotations

import concurrent.futures
import math
import numbers
import os
import shutil
import tempfile
import threading

import numpy as np
import tensorflow as tf

from mortar_tf import backends
from mortar_tf import bits
from mortar_tf import compression
from mortar_tf import files
from mortar_tf import precision_map
from mortar_tf.keras import apply
from mortar_tf.keras import calibration
from mortar_tf.keras import registry
from mortar_tf.keras import saving
from mortar_tf.keras.compat import keras
from mortar_tf.keras.wrapper import MorphWrapper
from mortar_tf.morphing import MorphSpec

FORMATS = saving.FORMATS
LOG_KEYS = {domain: f"mortar_ratio_{domain}" for domain in bits.DOMAINS}
# compressed x: zlib 9 bytes of the original kernels / of the saved (morphed)
# ones, each kernel alone (mortar_tf.compression), measured at each save.
COMPRESSED_LOG_KEY = "mortar_ratio_compressed"


def _has_wrappers(model) -> bool:
  return any(isinstance(layer, MorphWrapper) for layer in apply.every_layer(model))


class MortarCallback(keras.callbacks.Callback):
  """Writes a morphed copy of the model at each save; training weights stay untouched.

  For an unwrapped model the copy is the model itself with morph(kernel) in
  place of each kernel (mortar_tf.keras.registry), whatever the model is
  (Sequential, Functional, subclassed, holding TFMOT pruning wrappers, under a
  distribution strategy): Keras 3's .keras writer is handed the morphed
  values in the kernels' place, so the model's variables are not touched;
  elsewhere (SavedModel, tf_keras, a layer that writes copies of its
  variables) the kernels are morphed in place, the model is saved, and every
  kernel is restored bit for bit before training goes on. For a model
  with MorphWrappers the copy is strip_morphing(model) (kernels morphed once,
  never twice; a graph model is needed). With fold_batchnorm the copy is a
  plain clone with the BNs folded (a graph model is needed; a Functional
  subclass, e.g. a keras-hub Backbone, is then saved as a plain Functional,
  and a warning says so when training starts).

  Args:
    filepath: where to write; may hold `{epoch}` and `{batch}` (1-based) and
      any logs key, as Keras' ModelCheckpoint. A ".keras" file (Keras 3;
      ".keras" or ".h5" with tf_keras) or a SavedModel directory.
    method, precision, keep_bits, columns, group_size, width: the morphing,
      as mortar_tf.morph: a MorphSpec, or a method name with its flat
      settings (unused for wrapped models: their wrappers decide).
      `precision` may be a {pattern: P or MorphSpec} map (any Mapping,
      matched as mortar_tf.precision_map says; e.g. from
      mortar_tf.explore.search_precisions): a number is P for `method`, a
      MorphSpec gives the kernels its entry wins its own method; kernels it
      leaves out are saved unmorphed.
    save_freq: "epoch", or an integer number of training batches.
    format: "keras" (model.save) or "savedmodel" (Keras 3: model.export;
      tf_keras: tf.saved_model.save).
    log_dir: if given, per-kernel sparsity ratios (scalars) and morphed
      kernel values (histograms) go to TensorBoard in `log_dir/train`, on the
      step axis of Keras' TensorBoard callback (the epoch for epoch saves,
      the optimizer's iterations for batch saves).
    fold_batchnorm: fold each BatchNormalization that follows a morphed
      conv/dense layer into it before morphing (see morph_model); ratios then
      compare the folded kernels with the model's unfolded ones.
    embeddings: also morph Embedding tables (lookups; off by default).
    compensate: calibration inputs (no labels) or a
      mortar_tf.keras.Calibration: each save morphs the kernels with their
      errors compensated and the biases corrected (SPEC 6), from statistics
      of the model as it is at that save (one pass over the calibration
      inputs per save). Not with fold_batchnorm or a model holding
      MorphWrappers.
    verbose: 1 prints what is morphed when training starts and a line per
      save.
    compress: write each ".keras" (tf_keras: also ".h5") save with its bytes
      deflated, as mortar_tf.keras.save_compressed does: plain Keras loads it,
      and morphed kernels shrink by far more than original ones. Only with
      format="keras" (a SavedModel directory cannot be compressed in place;
      the error says how to archive one).
    log_compressed: also measure `compressed x` at each save (off by default:
      it compresses every morphed kernel twice with zlib 9, 0.6-20 MB/s a
      core, which on a large model costs more than the save itself).

  The total sparsity ratios (significand, word, aligned) are added to the
  epoch's logs as mortar_ratio_<domain>, and with log_compressed the
  measured `compressed x` (zlib 9 bytes of the kernels before / after
  morphing, each kernel alone) as mortar_ratio_compressed, so History
  records them; per-kernel figures (and the compressed bytes) go only to
  TensorBoard (the progress bar prints every logs key).

  Raises:
    ValueError: a bad save_freq, format, path pattern or morphing argument,
      compress with format="savedmodel", or a save path on log_dir's TensorBoard event directory (here); an
      output directory that cannot be written (probed with a file when
      training starts); a map entry matching no kernel or winning none,
      nothing to morph, or a model the copy cannot be made of (when training
      starts, before the first batch where the model is built by then, else
      after it).
    TypeError: kernels that are not float32 (when training starts).
  """

  def __init__(self, filepath: str, method="paper", precision=None, *, keep_bits=None,
               columns=None, group_size=None, width=None, save_freq="epoch",
               format: str = "keras", log_dir: str | None = None, fold_batchnorm: bool = False,
               embeddings: bool = False, compensate=None,
               verbose: int = 0, compress: bool = False,
               log_compressed: bool = False):  # pylint: disable=redefined-builtin
    super().__init__()
    self.log_compressed = bool(log_compressed)
    if save_freq != "epoch" and (isinstance(save_freq, bool) or
                                 not isinstance(save_freq, numbers.Integral) or save_freq < 1):
      raise ValueError(f"save_freq must be 'epoch' or a positive number of batches, got "
                       f"{save_freq!r}")
    self.filepath = saving.check_path(filepath, format)
    self.compress = bool(compress)
    if self.compress:
      try:
        saving.check_compressible(self.filepath, format)
      except ValueError as e:
        raise ValueError(f"MortarCallback(compress=True): {e}") from None
    # One MorphSpec, or {pattern: MorphSpec} (the map's numbers made specs of `method`).
    self._morphing = precision_map.check_morphing(method, precision, keep_bits=keep_bits,
                                                  columns=columns, group_size=group_size,
                                                  width=width)
    self.spec = self._morphing if isinstance(self._morphing, MorphSpec) else None
    self.precision_map = None if self.spec is not None else dict(precision)
    if log_dir and format == "savedmodel":  # a save never replaces the events it writes
      events = os.path.abspath(os.path.join(log_dir, "train"))
      chain = [events] + [os.path.dirname(events)]
      while os.path.dirname(chain[-1]) != chain[-1]:
        chain.append(os.path.dirname(chain[-1]))
      hit = next((p for p in chain[:-1] if saving.template_reaches(self.filepath, p)), None)
      if hit is not None:
        raise ValueError(f"filepath {filepath!r} can name {hit!r}, which holds log_dir's event "
                         f"directory {events!r}: a SavedModel save would replace it whole; "
                         "choose another path")
    self.method = self.spec.method if self.spec is not None else method
    self.save_freq = save_freq
    self.format = format
    self.log_dir = log_dir
    self.fold_batchnorm = bool(fold_batchnorm)
    self.embeddings = bool(embeddings)
    self.calibration = calibration.as_calibration(compensate)
    if self.calibration is not None and self.fold_batchnorm:
      raise ValueError("MortarCallback: compensate and fold_batchnorm do not combine: fold the "
                       "model first (mortar_tf.keras.fold_batchnorm) and train that")
    self.last_compensation = None
    self.verbose = verbose
    self._epoch = 0
    self._batches = 0
    self._writer = None
    self._substitutes = None  # whether the writer takes morphed values (known after a save)
    self._checked_model = None
    self.plan: registry.KernelPlan | None = None
    self.specs: dict[int, MorphSpec] = {}
    self.last_ratios: dict[str, float] = {}

  # -- Keras hooks

  def set_model(self, model):
    super().set_model(model)
    self._checked_model = None
    if model.built:
      self._check()

  def on_train_begin(self, logs=None):
    self._check_output()  # needs no model: even one built by its first batch
    if self.model.built:
      self._check()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    self._check()
    self._batches += 1
    if self.save_freq != "epoch" and self._batches % self.save_freq == 0:
      self._save(batch=batch, logs=logs)

  def on_epoch_end(self, epoch, logs=None):
    if self.save_freq == "epoch":
      self._save(batch=None, logs=logs)
    if logs is not None and self.last_ratios:
      for domain, key in LOG_KEYS.items():
        logs[key] = self.last_ratios[domain]
      if "compressed" in self.last_ratios:
        logs[COMPRESSED_LOG_KEY] = self.last_ratios["compressed"]

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  # -- checks, done once per model before anything is saved

  def _check_output(self):
    """The first save's directory is made and probed with a file (os.access
    says yes to root where nothing can be written, e.g. /sys), and so is
    log_dir's event directory (or its nearest existing ancestor)."""
    saving.check_writable(self.filepath.format(epoch=1, batch=1, **_dummy_fields(self.filepath)),
                          self.format, template=self.filepath)
    if self.log_dir:
      try:
        files.check_creatable_dir(os.path.join(self.log_dir, "train"), "event directory")
      except files.OutputError as e:
        raise ValueError(f"cannot write TensorBoard events: {e}") from None

  def _check(self):
    model = self.model
    if self._checked_model is model:
      return
    self._check_output()
    self._wrapped = _has_wrappers(model)
    if self._wrapped and self.calibration is not None:
      raise ValueError("MortarCallback: compensate needs a plain model; this one holds "
                       "MorphWrappers (morph-aware training already morphs in its forward pass)")
    if self.format == "savedmodel":
      saving.check_exportable(model)
    needs_clone = self._wrapped or self.fold_batchnorm
    if needs_clone and not registry.is_graph_model(model):
      why = "it holds MorphWrappers (saving strips them)" if self._wrapped else "fold_batchnorm"
      raise ValueError(
          f"MortarCallback cannot save {type(model).__name__} {model.name!r}: {why} needs a "
          "Sequential or Functional model to clone, and subclassed models cannot be cloned")
    plan = registry.find_kernels(model, embeddings=self.embeddings)
    if self._wrapped:
      self.plan, self.specs = plan, {}
    else:
      specs = apply.resolve_specs(plan, self._morphing)
      apply.check_float32(plan, self.precision_map or self.spec)
      if not specs:
        raise ValueError(f"MortarCallback: nothing to morph in {model.name!r}: "
                         + plan.summary())
      self.plan, self.specs = plan, specs
      apply.log_plan("MortarCallback", plan, [k.name for k in plan.kernels if id(k.variable) in specs])
      if self.verbose:
        print("MortarCallback: " + plan.summary(
            [k.name for k in plan.kernels if id(k.variable) in specs]))
    if needs_clone:  # the folds, and the classes the copy keeps, now rather than after an epoch
      apply.check_copy(model, self.specs, self.fold_batchnorm, what="MortarCallback")
    self._substitutes = None
    self._checked_model = model

  # -- work

  def _save(self, batch, logs):
    self._check()
    path = saving.format_path(self.filepath, epoch=self._epoch + 1,
                              batch=None if batch is None else batch + 1, logs=logs)
    if self._wrapped or self.fold_batchnorm:
      copy, record = apply.copy_and_values(self.model, self.specs, self.fold_batchnorm,
                                           what="MortarCallback", quiet=True)
      self._write(copy, path)
      changed = {key: (np.asarray(w.numpy()), value) for key, (w, value) in record.items()}
      ones = None
    else:
      changed, ones = self._save_in_place(path)
    self.last_ratios = self._ratios(changed, ones)
    if self.verbose:
      ratios = ", ".join(f"{d} {r:.3f}x" for d, r in self.last_ratios.items())
      geometry = bits.geometry_text(bits.DEFAULT_GROUP_SIZE, bits.DEFAULT_WIDTH)
      print(f"\nMortarCallback: wrote {path} ({ratios}; aligned at {geometry})")
      if self.last_compensation is not None:
        print("MortarCallback: " + self.last_compensation.summary())

  def _save_in_place(self, path) -> tuple[dict, dict | None]:
    """Writes the model with its kernels morphed, and leaves them as they were.

    With Keras 3's .keras writer the morphed values are written in the
    kernels' place (saving.substituted_values): a thread of their own reads,
    morphs and then counts the kernels while the writer (on this thread,
    mostly Python) walks the model and takes each morphed value when it
    reaches its kernel. Elsewhere, or where that writer does not take every
    one of them, the kernels are morphed in place, the model is written and
    every kernel is restored bit for bit.

    Returns ({id(variable): (original, morphed)}, {id(variable): (ones
    before, ones after)} or None)."""
    if self.calibration is not None:
      changed, values = {}, {}
      done = calibration.compensated_values(self.model, self.specs, self.calibration)
      self.last_compensation = done
      kernels = {id(k.variable) for k in self.plan.kernels}
      for key, value in done.values.items():
        variable = done.variables[key]
        original = np.asarray(variable.numpy())
        if key in kernels:
          changed[key] = (original, value)
        values[key] = (variable, np.asarray(value, np.float32))
      pending = _Ready(changed, values, self._ones(changed))
    else:
      pending = _MorphedAside([k for k in self.plan.kernels if id(k.variable) in self.specs],
                              self.specs, self._ones)
    try:
      if self.format == "keras" and self._substitutes is not False:
        with saving.substituted_values(pending.values) as swap:
          if swap.available:
            self._write(self.model, path, accept=lambda: swap.complete)
        self._substitutes = swap.complete  # the same model saves the same way next time
        if swap.complete:
          return pending.result()
      changed, ones = pending.result()
      restore = []
      try:
        for key, (variable, _) in pending.values.items():
          restore.append((variable, changed[key][0] if key in changed else variable.numpy()))
          variable.assign(pending.value(key))
        self._write(self.model, path)
      finally:
        for variable, original in restore:
          variable.assign(original)
      return changed, ones
    finally:
      pending.join()  # no thread is left reading the model

  def _ones(self, changed) -> dict:
    """{id(variable): (ones by domain before, after)} of the measured kernels:
    those with a grouped view in one native call, the rest one by one."""
    grouped, rest = [], []
    for kernel in self.plan.kernels:
      if id(kernel.variable) not in changed:
        continue
      original, value = changed[id(kernel.variable)]
      value = np.asarray(value, np.float32)
      view = bits.grouped_view(original.shape, kernel.reduction_axes())
      if view is not None:  # (pair_statistics_many checks dtypes and shapes)
        grouped.append((id(kernel.variable), original, value, view))
      else:
        rest.append((kernel, original, value))
    out = {}
    results = backends.pair_statistics_many([(x, y, view) for _, x, y, view in grouped],
                                            bits.DEFAULT_GROUP_SIZE, bits.DEFAULT_WIDTH)
    for (key, _, _, _), (ones_x, ones_y, _) in zip(grouped, results):
      out[key] = (ones_x, ones_y)
    for kernel, original, value in rest:
      grouping = kernel.grouping()
      out[id(kernel.variable)] = (backends.ones_by_domain(original, **grouping),
                                  backends.ones_by_domain(value, **grouping))
    return out

  def _write(self, model, path, accept=None) -> bool:
    """saving.write_model (`accept` as there); False where it replaced nothing."""
    if not _is_chief(self.model):
      # Every worker builds and writes its copy (as Keras' own checkpointing
      # does under MultiWorkerMirroredStrategy); only the chief keeps it.
      scratch = tempfile.mkdtemp(prefix=".mortar-worker-")
      try:
        return saving.write_model(model, os.path.join(scratch, os.path.basename(path)),
                                  self.format, compress=self.compress, accept=accept)
      finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return saving.write_model(model, path, self.format, compress=self.compress, accept=accept)

  def _ratios(self, changed, ones=None) -> dict[str, float]:
    """Total ratios over the kernels ({id(variable): (original, new value)}),
    the ones domains' and "compressed" (measured); per kernel to TensorBoard
    when log_dir is set. `ones`: _ones(changed), when counted already."""
    before = {d: 0 for d in bits.DOMAINS}
    after = {d: 0 for d in bits.DOMAINS}
    per_kernel = {}
    measured = [k for k in self.plan.kernels if id(k.variable) in changed]
    sizes = {}
    if self.log_compressed:
      with compression.Measurer() as measurer:
        sizes = {id(k.variable): compression.CompressedSize.of(*measurer.map(
            [changed[id(k.variable)][0], np.asarray(changed[id(k.variable)][1], np.float32)]))
                 for k in measured}
    if ones is None:
      ones = self._ones(changed)
    for kernel in measured:
      _, value = changed[id(kernel.variable)]
      ones_before, ones_after = ones[id(kernel.variable)]
      for d in bits.DOMAINS:
        before[d] += ones_before[d]
        after[d] += ones_after[d]
      ratios = {d: bits.sparsity_ratio(ones_before[d], ones_after[d]) for d in bits.DOMAINS}
      if sizes:
        ratios["compressed"] = sizes[id(kernel.variable)].ratio
      per_kernel[kernel.name] = (ratios, value)
    totals = {d: _finite(bits.sparsity_ratio(before[d], after[d])) for d in bits.DOMAINS}
    total_sizes = None
    if self.log_compressed:
      total_sizes = compression.CompressedSize.total(sizes.values())
      totals["compressed"] = _finite(total_sizes.ratio)
    if self.log_dir:
      self._summaries(per_kernel, totals, total_sizes)
    return totals

  def _step(self) -> int:
    """Keras' TensorBoard steps: the epoch for epoch summaries, else the
    optimizer's iterations (the batch counter where there is none)."""
    if self.save_freq == "epoch":
      return self._epoch
    iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
    try:
      return int(np.asarray(iterations.numpy() if hasattr(iterations, "numpy") else iterations))
    except (TypeError, ValueError, AttributeError):
      return self._batches

  def _summaries(self, per_kernel, totals, total_sizes):
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
    step = self._step()
    with self._writer.as_default():
      for domain, ratio in totals.items():
        tf.summary.scalar(f"mortar/total/ratio_{domain}", ratio, step=step)
      if total_sizes is not None:
        tf.summary.scalar("mortar/total/compressed_bytes", total_sizes.morphed.zlib, step=step)
      for name, (ratios, values) in per_kernel.items():
        for domain, ratio in ratios.items():
          tf.summary.scalar(f"mortar/{name}/ratio_{domain}", _finite(ratio), step=step)
        tf.summary.histogram(f"mortar/{name}/morphed", np.asarray(values), step=step)
      if self.last_compensation is not None:  # how far compensation moved the kernels
        t = self.last_compensation.totals()
        tf.summary.scalar("mortar/compensation/outside_share",
                          t["outside"] / max(t["weights"], 1), step=step)
        tf.summary.scalar("mortar/compensation/max_rel", t["max_rel"], step=step)
        tf.summary.scalar("mortar/compensation/mean_rel", t["mean_rel"], step=step)
    self._writer.flush()


def _dummy_fields(filepath: str) -> dict:
  """Values for the logs keys a path pattern names (to check the directory)."""
  import string  # pylint: disable=import-outside-toplevel
  names = {name.split(".")[0].split("[")[0] for _, name, _, _ in
           string.Formatter().parse(filepath) if name}
  return {name: 0 for name in names if name not in ("epoch", "batch")}


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


class _Ready:
  """Values made before the save (compensate's): the interface of _MorphedAside."""

  def __init__(self, changed, values, ones):
    self.changed, self.values, self.ones = changed, values, ones

  def value(self, key):
    return self.values[key][1]

  def result(self):
    return self.changed, self.ones

  def join(self):
    pass


class _MorphedAside:
  """Reads, morphs and then counts `kernels` on a thread of its own, in order.

  `values`: {id(variable): (variable, Future of its morphed array)} for
  saving.substituted_values, the futures resolved one by one as the thread
  goes; result(): (changed, ones) once it is done, or its error. A failure
  fails every value not made yet, so a writer waiting on one never hangs.
  """

  def __init__(self, kernels, specs, count):
    self.values = {id(k.variable): (k.variable, concurrent.futures.Future()) for k in kernels}
    self.changed, self.ones, self.error = {}, None, None
    self._thread = threading.Thread(target=self._run, args=(kernels, specs, count),
                                    name="MortarCallback-morph", daemon=True)
    self._thread.start()

  def _run(self, kernels, specs, count):
    try:
      for kernel in kernels:
        key = id(kernel.variable)
        spec = specs[key]
        original = kernel.numpy()
        grouping = kernel.grouping() if spec.method == "bitx" else {}
        morphed = backends.morph(original, spec, **grouping)
        self.changed[key] = (original, morphed)
        self.values[key][1].set_result(morphed)
      self.ones = count(self.changed)
    except BaseException as e:  # pylint: disable=broad-except
      self.error = e
      for _, future in self.values.values():
        if not future.done():
          future.set_exception(e)

  def value(self, key):
    return self.values[key][1].result()

  def result(self):
    self._thread.join()
    if self.error is not None:
      raise self.error
    return self.changed, self.ones

  def join(self):
    self._thread.join()
