"""Shared helpers of the benchmarks: the test weights and a median timer."""

import statistics
import time

import numpy as np


def median_seconds(fn, repeats: int, warmup: bool = False) -> float:
  """Median wall time of `repeats` calls (after one untimed call if `warmup`)."""
  if warmup:
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def copy_ratios(fn, w: np.ndarray, repeats: int) -> list[float]:
  """Per round: time(fn()) / time(np.copy(w)), the two alternating so that both
  see the same machine state (after one untimed call of fn)."""
  fn()  # warm: code paths, thread start, page cache
  ratios = []
  for _ in range(repeats):
    start = time.perf_counter()
    np.copy(w)
    copy = time.perf_counter() - start
    start = time.perf_counter()
    fn()
    ratios.append((time.perf_counter() - start) / copy)
  return ratios


def conv_weights(size: int, out_channels: int = 256, seed: int = 0) -> np.ndarray:
  """About `size` float32 weights shaped like a 3x3 conv kernel, N(0, 0.05)."""
  rng = np.random.default_rng(seed)
  cin = max(1, size // (9 * out_channels))
  return (rng.standard_normal((3, 3, cin, out_channels)) * 0.05).astype(np.float32)
