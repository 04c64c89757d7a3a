"""The Keras paths against the plain Keras work they stand beside, per method.

On one keras.applications model (ResNet50, weights=None, 64x64 by default), for
every morphing method, in one run:

1. strip_morphing against morph_model + one keras.models.clone_model of the
   same model (goal: ratio <= 1.5);
2. one MortarCallback save (on the plain model, and on the wrapped model)
   against one keras.callbacks.ModelCheckpoint save of the same model (goal:
   ratio <= 1.1 for the plain model), the saves alternating, with an
   unmorphed save written the callback's way (beside the path, then renamed
   over it, so that no partial file is ever at the path) to show what that
   way costs by itself;
3. a training step (SGD, batch 32) of the wrapped model against the plain one:
   the median step (goal: ratio <= 1.3) and the first step's extra time (the
   trace and compile of the morph: goal <= 3 s).

With --tf_ops_baseline, strip and the training step are timed again with the
wrapper's TF-ops morph (mortar_tf.keras.wrapper.tf_ops_only: what every path
used before the C++ op), to show what the op changes. Medians of --repeats.
Not asserted anywhere.

  .venv/bin/python benchmarks/bench_keras_paths.py [--model=ResNet50] \
      [--input_size=64] [--repeats=3] [--steps=5] [--tf_ops_baseline] [--methods=paper ...]
"""

import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from mortar_tf.keras import MortarCallback
from mortar_tf.keras import morph_model
from mortar_tf.keras import saving
from mortar_tf.keras import strip_morphing
from mortar_tf.keras import wrapper
from mortar_tf.keras.compat import IS_KERAS3
from mortar_tf.keras.compat import keras
from mortar_tf.morphing import MorphSpec
import timing

_MODEL = flags.DEFINE_string("model", "ResNet50", "keras.applications model.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 64, "Its input height and width.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Calls per timing (median).")
_STEPS = flags.DEFINE_integer("steps", 5, "Training steps after the first (median).")
_BATCH = flags.DEFINE_integer("batch", 32, "Training batch size.")
_METHODS = flags.DEFINE_multi_enum("methods", ["paper", "fewest_ones", "round", "bitx"],
                                   ["paper", "fewest_ones", "round", "bitx"],
                                   "Methods to time (default: all four).")
_TF_OPS_BASELINE = flags.DEFINE_bool("tf_ops_baseline", False,
                                     "Also time strip and the step with the TF-ops morph.")

SPECS = [MorphSpec.create("paper", 0.1), MorphSpec.create("fewest_ones", 0.01),
         MorphSpec.create("round", keep_bits=7), MorphSpec.create("bitx", columns=8)]


def _model():
  size = _INPUT_SIZE.value
  keras.utils.set_random_seed(0)
  return getattr(keras.applications, _MODEL.value)(weights=None, input_shape=(size, size, 3),
                                                    classes=10)


def _save_seconds(callback, model) -> float:
  callback.set_model(model)
  callback.on_train_begin()
  return timing.median_seconds(lambda: callback.on_epoch_end(0, {}), _REPEATS.value, warmup=True)


def _paired_save_seconds(callback, baseline, model, atomic) -> tuple[float, float, float]:
  """Median seconds of callback's saves, of baseline's and of `atomic()` (the
  model written unmorphed the way the callback writes: beside the path, then
  renamed over it), the three alternating save by save so that all see the
  same machine (a save's time here swings by half with the page cache's
  state), after one untimed call of each."""
  for c in (callback, baseline):
    c.set_model(model)
    c.on_train_begin()
  calls = [lambda: callback.on_epoch_end(0, {}), lambda: baseline.on_epoch_end(0, {}), atomic]
  for call in calls:
    call()
  times = [[], [], []]
  for _ in range(_REPEATS.value):
    for i in (1, 2, 0):
      start = time.perf_counter()
      calls[i]()
      times[i].append(time.perf_counter() - start)
  return tuple(statistics.median(t) for t in times)


def _steps(model, data) -> tuple[float, float]:
  """(first step's seconds, median of the next steps) of train_on_batch."""
  x, y = data
  model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy())
  b = _BATCH.value
  start = time.perf_counter()
  model.train_on_batch(x[:b], y[:b])
  first = time.perf_counter() - start
  times = []
  for i in range(1, _STEPS.value + 1):
    start = time.perf_counter()
    model.train_on_batch(x[b * i:b * (i + 1)], y[b * i:b * (i + 1)])
    times.append(time.perf_counter() - start)
  return first, float(np.median(times))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # morph_model's lists of kernels
  model = _model()
  size, b = _INPUT_SIZE.value, _BATCH.value
  rng = np.random.default_rng(0)
  data = (rng.standard_normal((b * (_STEPS.value + 1), size, size, 3)).astype(np.float32),
          rng.integers(0, 10, b * (_STEPS.value + 1)))
  print(f"{_MODEL.value} ({model.count_params() / 1e6:.1f}M weights, {size}x{size}), "
        f"medians of {_REPEATS.value}; training steps: batch {b}, median of {_STEPS.value}")
  suffix = ".keras" if IS_KERAS3 else ".h5"
  _steps(_model(), data)  # warms TensorFlow up: every first step below is a model's own
  plain_first, plain_step = _steps(_model(), data)
  with tempfile.TemporaryDirectory() as d:
    checkpoint = _save_seconds(keras.callbacks.ModelCheckpoint(os.path.join(d, "c" + suffix)),
                               model)
    clone = timing.median_seconds(lambda: keras.models.clone_model(model), _REPEATS.value,
                                  warmup=True)
    print(f"plain: clone_model {clone:.2f} s, ModelCheckpoint save {checkpoint:.2f} s, "
          f"training step {plain_step:.3f} s (first {plain_first:.2f} s)")
    header = ("| method | morph_model s | strip s | strip / (morph_model + clone) | "
              "MortarCallback save s (plain model) | / ModelCheckpoint (its s; an unmorphed save "
              "written beside and renamed, / ModelCheckpoint) | "
              "same, wrapped model | step s wrapped | / plain step | first-step extra s |")
    if _TF_OPS_BASELINE.value:
      header += " strip s, TF ops | step s, TF ops | first-step extra s, TF ops |"
    print(header)
    print("|" + "---|" * header.count(" |"))
    worst = {}
    for spec in [s for s in SPECS if s.method in _METHODS.value]:
      morph = timing.median_seconds(lambda: morph_model(model, spec), _REPEATS.value,  # pylint: disable=cell-var-from-loop
                                    warmup=True)
      wrapped = morph_model(model, spec)
      strip = timing.median_seconds(lambda: strip_morphing(wrapped), _REPEATS.value,  # pylint: disable=cell-var-from-loop
                                    warmup=True)
      path = os.path.join(d, "m" + suffix)
      save_plain, checkpoint, atomic = _paired_save_seconds(
          MortarCallback(path, spec),
          keras.callbacks.ModelCheckpoint(os.path.join(d, "c" + suffix)), model,
          lambda: saving.write_model(model, os.path.join(d, "a" + suffix), "keras"))  # pylint: disable=cell-var-from-loop
      save_wrapped = _save_seconds(MortarCallback(path), wrapped)
      first, step = _steps(morph_model(_model(), spec), data)
      ratios = {"strip": strip / (morph + clone), "save": save_plain / checkpoint,
                "step": step / plain_step, "first": first - plain_first}
      row = (f"| {spec} | {morph:.2f} | {strip:.2f} | {ratios['strip']:.2f} | {save_plain:.2f} | "
             f"{ratios['save']:.2f} ({checkpoint:.2f}; atomic {atomic / checkpoint:.2f}) | "
             f"{save_wrapped:.2f} | {step:.3f} | {ratios['step']:.2f} | {ratios['first']:.2f} |")
      if _TF_OPS_BASELINE.value:
        with wrapper.tf_ops_only():
          tf_strip = timing.median_seconds(lambda: strip_morphing(wrapped), 1)  # pylint: disable=cell-var-from-loop
          tf_first, tf_step = _steps(morph_model(_model(), spec), data)
        row += f" {tf_strip:.2f} | {tf_step:.3f} | {tf_first - plain_first:.2f} |"
      print(row, flush=True)
      for key, value in ratios.items():
        if value > worst.get(key, (-np.inf, ""))[0]:
          worst[key] = (value, str(spec))
  print("worst cells: " + "; ".join(
      f"{what} {worst[key][0]:.2f} ({worst[key][1]})" for key, what in
      [("strip", "strip ratio"), ("save", "save ratio"), ("step", "step ratio"),
       ("first", "first-step extra s")]))


if __name__ == "__main__":
  app.run(main)
