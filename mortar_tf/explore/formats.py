"""Morphing beside the other ways to ship a smaller model: the results page's
"formats" section.

For one model, each row is one way to ship its kernels, with its own score on
the same samples and its measured compressed bytes:

- float32: the original kernels (the reference, 1.000x);
- morphed: the search's per-kernel map and the best global P within the
  budget (scores: the search's own, on every sample; rows only where the
  search ran);
- float16: each kernel cast to IEEE half (round to nearest even), scored with
  the half values widened back to float32 in the model, which is what a
  float16 file loads to (TFLite's float16 option, `model.half()`);
- TFLite dynamic-range int8: TFLite's converter with Optimize.DEFAULT, run by
  TFLite's interpreter (its default delegates, what a user's app gets),
  scored against the same reference outputs. Its bytes are those of the
  constants the file ships as int8 (values and float32 scales) plus the
  kernels it leaves float32 (TFLite does not quantize small ones).

Bytes are zlib level 9 of each kernel alone as stored (4, 2 or 1 bytes a
value, little-endian), summed, like `compressed x` everywhere else
(mortar_tf.compression): `compressed x` = the original kernels' zlib bytes
over the row's. Only kernels are counted (biases, norms and the graph are the
same in every row but TFLite's, whose file is reported beside it).

Example:
  section = formats_section(model, metric, models.model_kernels(model), record.get("search"))
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings

import numpy as np

from mortar_tf import compression
from mortar_tf import morphing
from mortar_tf.explore import in_place
from mortar_tf.explore import models

FORMATS_VERSION = 2  # 2: int8 bytes of the weights matched to the kernels


class TFLiteModel:
  """A .tflite file run by TFLite's interpreter, with `predict` as the
  metrics call it (one signature input; the scored output by name)."""

  def __init__(self, path: str, signature: str, output: str | None):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self.path = path
    with warnings.catch_warnings():  # tf.lite.Interpreter's notice of its move to LiteRT
      warnings.simplefilter("ignore", UserWarning)
      self.interpreter = tf.lite.Interpreter(model_path=path)
    self.runner = self.interpreter.get_signature_runner(signature)
    inputs = list(self.runner.get_input_details())
    if len(inputs) != 1:
      raise ValueError(f"the TFLite signature {signature!r} has inputs {inputs}, not one")
    self.input_name = inputs[0]
    outputs = sorted(self.runner.get_output_details())
    if output is None:
      output = outputs[0]
    if output not in outputs:
      raise ValueError(f"the TFLite signature {signature!r} has no output {output!r} "
                       f"(it has {outputs})")
    self.output = output

  def predict(self, x, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
    del verbose
    parts = [np.asarray(self.runner(**{self.input_name: x[s:s + batch_size]})[self.output])
             for s in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def _saved_model(model, scratch: str) -> tuple[str, str, str | None]:
  """(SavedModel directory, signature, scored output) of a Keras model
  (exported into `scratch`) or a LoadedSavedModel (its own directory)."""
  if isinstance(model, models.LoadedSavedModel):
    return model.path, model.signature, model.output
  path = os.path.join(scratch, "saved_model")
  from mortar_tf.keras import saving  # pylint: disable=import-outside-toplevel
  saving.export_saved_model(model, path)
  return path, "serving_default", None


def _row(name: str, label: str, score, drop, weights: int, raw: int, zlib_bytes: int,
         original_zlib: int, **extra) -> dict:
  return {"name": name, "label": label, "metric": score, "drop": drop, "weights": int(weights),
          "raw_bytes": int(raw), "zlib_bytes": int(zlib_bytes),
          "compressed_x": original_zlib / zlib_bytes if zlib_bytes else None, **extra}


def _morphed_sizes(kernels, chosen, method, original_sizes, measurer) -> int:
  """Total zlib bytes of the kernels with `chosen` {index: P} morphed."""
  futures = {i: measurer.submit(in_place.morph(kernels[i], morphing.MorphSpec.create(method, p)))
             for i, p in chosen.items()}
  return sum(futures[i].result().zlib if i in futures else original_sizes[i].zlib
             for i in range(len(kernels)))


def formats_section(model, metric, kernels, search: dict | None, *, progress=None) -> dict:
  """The record's "formats" section (module docstring) of one model.

  `metric` is the model's built-in metric on every sample (its original
  score is measured again here, so each row's drop is on one footing);
  `search` is the record's search section (or None). `progress(done,
  total, label)` is called before each row.
  """
  from mortar_tf.explore import search as search_lib  # pylint: disable=import-outside-toplevel
  started = time.perf_counter()
  stages = 5 if search else 3
  done = [0]

  def step(label):
    if progress is not None:
      progress(done[0], stages, label)
    done[0] += 1
  weights = int(sum(k.original.size for k in kernels))
  raw = 4 * weights
  step("float32")
  original = metric(model)
  rows = []
  with compression.Measurer(zstd=False) as measurer:
    original_sizes = measurer.map([k.original for k in kernels])
    original_zlib = sum(s.zlib for s in original_sizes)
    rows.append(_row("float32", "float32 (original)", original, 0.0, weights, raw,
                     original_zlib, original_zlib))
    if search:
      method = search["method"]
      chosen = (search_lib.resolve_map(search["precisions"], kernels, method)
                if search["precisions"] else {})
      point = search["point"]
      step("the searched map")
      rows.append(_row("searched", f"morphed: searched map ({method})", point["metric"],
                       metric.drop(original, point["metric"]), weights, raw,
                       _morphed_sizes(kernels, chosen, method, original_sizes, measurer),
                       original_zlib, morphed_kernels=len(chosen)))
      best = search.get("best_global")
      if best:
        p = best["settings"]["precision"]
        everywhere = dict.fromkeys(range(len(kernels)), p)
        step(f"P={p:g} everywhere")
        rows.append(_row("global", f"morphed: {best['method']} P={p:g} everywhere",
                         best["metric"], metric.drop(original, best["metric"]), weights, raw,
                         _morphed_sizes(kernels, everywhere, best["method"], original_sizes,
                                        measurer), original_zlib))

  step("float16")
  halves = [k.original.astype(np.float16) for k in kernels]
  overflow = int(sum(np.count_nonzero(np.isinf(h) & np.isfinite(k.original))
                     for h, k in zip(halves, kernels)))
  flushed = int(sum(np.count_nonzero((h == 0) & (k.original != 0))
                    for h, k in zip(halves, kernels)))
  with in_place.Assigned([(k.variable, h.astype(np.float32)) for k, h in zip(kernels, halves)]):
    half_score = metric(model)
  rows.append(_row("float16", "float16 cast", half_score, metric.drop(original, half_score),
                   weights, 2 * weights, sum(compression.stored_zlib_size(h) for h in halves),
                   original_zlib, overflow=overflow, flushed_to_zero=flushed))
  step("TFLite int8")
  rows.append(_tflite_int8_row(model, metric, original, original_zlib, kernels))
  return {"version": FORMATS_VERSION, "rows": rows,
          "seconds": time.perf_counter() - started}


def match_kernels(sizes, candidates):
  """Pairs each kernel (by its element count, in order) with the first
  unused candidate (size, tensor) of that count: TFLite transposes and
  reshapes kernels (a depthwise one to [1, h, w, c*m]) but keeps their
  sizes. Returns ([tensor or None per kernel], [kernel indices without one],
  [tensors left over]: constants of the graph that are not the model's
  kernels, e.g. a fixed filter bank)."""
  pool = {}
  for size, tensor in candidates:
    pool.setdefault(int(size), []).append(tensor)
  matched, missing = [], []
  for i, size in enumerate(sizes):
    found = pool.get(int(size))
    if found:
      matched.append(found.pop(0))
    else:
      matched.append(None)
      missing.append(i)
  extra = [t for ts in pool.values() for t in ts]
  return matched, missing, extra


def _tflite_int8_row(model, metric, original: float, original_zlib: int, kernels) -> dict:
  """TFLite dynamic-range int8: converted, run and measured here; a row
  with "error" where TFLite cannot convert or run the model, keeps weights
  as variables, or lacks a kernel of the model. Its bytes are those of the
  file's weights matched to the model's kernels by size (match_kernels)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mortar_tf import tflite  # pylint: disable=import-outside-toplevel
  label = "TFLite dynamic-range int8"
  scratch = tempfile.mkdtemp(prefix="mortar_formats_")
  try:
    try:
      path, signature, output = _saved_model(model, scratch)
      converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=[signature])
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      blob = converter.convert()
    except Exception as e:  # pylint: disable=broad-except
      return {"name": "int8", "label": label,
              "error": f"TFLite could not convert it: {str(e).strip().splitlines()[0][:300]}"}
    file = os.path.join(scratch, "model.tflite")
    with open(file, "wb") as f:
      f.write(blob)
    if tflite.has_variables(file):
      return {"name": "int8", "label": label,
              "error": "TFLite's file keeps weights as resource variables (VAR_HANDLE) that its "
                       "interpreter does not fill, so its outputs mean nothing: no int8 figure"}
    quantized = tflite.quantized_weights(file)
    floats, _ = tflite.read_weights(file)
    matched, missing, extra = match_kernels(
        [k.original.size for k in kernels],
        [(q.value.size, q) for q in quantized] + [(w.value.size, w) for w in floats])
    if missing:
      return {"name": "int8", "label": label,
              "error": f"{len(missing)} of the model's {len(kernels)} kernels have no weight of "
                       f"their size in TFLite's file: no like-for-like int8 figure"}
    chosen = [t for t in matched if t is not None]
    ints = [t for t in chosen if isinstance(t, tflite.QuantizedWeight)]
    rest = [t for t in chosen if not isinstance(t, tflite.QuantizedWeight)]
    q_weights = int(sum(q.value.size for q in ints))
    f_weights = int(sum(w.value.size for w in rest))
    zlib_bytes = (sum(compression.stored_zlib_size(q.value) for q in ints)
                  + sum(compression.stored_zlib_size(q.scales) for q in ints)
                  + sum(compression.zlib_size(w.value) for w in rest))
    raw = q_weights + sum(4 * q.scales.size for q in ints) + 4 * f_weights
    other = int(sum(t.value.size for t in extra))
    try:
      score = metric(TFLiteModel(file, signature, output))
    except Exception as e:  # pylint: disable=broad-except
      return {"name": "int8", "label": label,
              "error": f"TFLite's interpreter could not run it: "
                       f"{str(e).strip().splitlines()[0][:300]}"}
    return _row("int8", label, score, metric.drop(original, score), q_weights + f_weights, raw,
                zlib_bytes, original_zlib, int8_weights=q_weights, float32_weights=f_weights,
                other_weights=other, file_bytes=len(blob),
                file_gzip_bytes=compression.gzip_file_size(file))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
