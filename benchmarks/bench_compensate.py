"""What compensated morphing costs on a MobileNetV2-sized model.

keras.applications.MobileNetV2 (weights=None: 3.5M kernel weights in 53
kernels, the issue's ImageNet model without its download), 224x224 inputs,
64 calibration images (seeded noise: this measures time and memory, not
accuracy). Prints, in one run: the plain morph of every kernel (the
baseline), the statistics pass (one forward pass with the layers' calls
hooked), the compensation of every kernel from those statistics, and with
--morphed_statistics the per-layer passes of statistics="morphed"; resident
memory before and at the peak (ru_maxrss), beside the model's kernel bytes
and the largest layer's H. Not asserted anywhere.

  .venv/bin/python benchmarks/bench_compensate.py [--samples=64] [--morphed_statistics]
"""

import resource
import time

from absl import app
from absl import flags
import numpy as np

from mortar_tf import morphing
from mortar_tf.keras import calibration
from mortar_tf.keras import registry
from mortar_tf.keras.compat import keras

_SAMPLES = flags.DEFINE_integer("samples", 64, "Calibration images.")
_PRECISION = flags.DEFINE_float("precision", 0.01, "P of fewest_ones.")
_MORPHED = flags.DEFINE_bool("morphed_statistics", False,
                             "Also time statistics='morphed' (one pass per layer).")


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  import logging  # pylint: disable=import-outside-toplevel
  logging.getLogger("mortar_tf").setLevel(logging.ERROR)
  keras.utils.set_random_seed(0)
  model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
  x = np.random.default_rng(0).uniform(-1, 1, (_SAMPLES.value, 224, 224, 3)).astype(np.float32)
  plan = registry.find_kernels(model)
  spec = morphing.MorphSpec("fewest_ones", _PRECISION.value)
  kernel_bytes = sum(k.numpy().nbytes for k in plan.kernels)
  start_rss = _rss_mb()

  start = time.perf_counter()
  for k in plan.kernels:
    morphing.morph_numpy(k.numpy(), spec)
  plain = time.perf_counter() - start

  start = time.perf_counter()
  model.predict(x, batch_size=32, verbose=0)
  forward = time.perf_counter() - start

  cal = calibration.Calibration(x)
  start = time.perf_counter()
  compensator = calibration.Compensator(model, [k.variable for k in plan.kernels], cal)
  statistics = time.perf_counter() - start
  start = time.perf_counter()
  done = compensator.values({id(k.variable): spec for k in plan.kernels})
  compensate = time.perf_counter() - start
  t = done.totals()

  print(f"MobileNetV2 (weights=None), {len(plan.kernels)} kernels, "
        f"{sum(k.numpy().size for k in plan.kernels) / 1e6:.2f}M weights, {_SAMPLES.value} "
        f"calibration images 224x224, fewest_ones P={_PRECISION.value:g}, 2 CPU cores")
  print(f"plain morph of every kernel (numpy):  {plain:7.2f} s  (1.00x)")
  print(f"one forward pass (model.predict):     {forward:7.2f} s  ({forward / plain:.1f}x)")
  print(f"statistics pass (hooked calls):       {statistics:7.2f} s  ({statistics / plain:.1f}x; "
        f"{statistics / forward:.1f}x the forward pass)")
  print(f"compensating every kernel:            {compensate:7.2f} s  ({compensate / plain:.1f}x)")
  print(f"total compensation:                   {statistics + compensate:7.2f} s  (goal <= 60 s)")
  print(f"{len(done.results)} kernels compensated, {len(done.plain)} plain; "
        f"{t['outside']} of {t['weights']} weights farther than P ({t['outside'] / t['weights']:.1%})"
        f", mean relative distance {t['mean_rel']:.3g}")
  h_mb = max(s.gram.nbytes for s in compensator.statistics.values()) / 2 ** 20
  all_h_mb = sum(s.gram.nbytes for s in compensator.statistics.values()) / 2 ** 20
  print(f"memory: resident {start_rss:.0f} MB before, peak {_rss_mb():.0f} MB; kernels "
        f"{kernel_bytes / 2 ** 20:.1f} MB; largest H {h_mb:.1f} MB, all H together "
        f"{all_h_mb:.1f} MB (every layer's H is held until compensation)")
  if _MORPHED.value:
    start = time.perf_counter()
    calibration.compensated_values(model, {id(k.variable): spec for k in plan.kernels},
                                   calibration.Calibration(x, statistics="morphed"))
    morphed = time.perf_counter() - start
    print(f"statistics='morphed' (one pass per layer): {morphed:.1f} s "
          f"({morphed / (statistics + compensate):.1f}x the 'original' statistics)")


if __name__ == "__main__":
  app.run(main)
