"""The C++ kernels over numpy buffers (ctypes; no TensorFlow, no copies).

`_native.so` is built by setup.py from mortar_tf/cc (the same kernels as the
TensorFlow op library). Each function here takes numpy arrays, hands their
buffers to C, and returns numpy arrays: nothing is converted, and the input is
copied only when C cannot read it in place (not C-contiguous, or not aligned
to 4 bytes). ctypes releases the GIL for the call, and the C side splits the
work over `threads()` threads.

These are the raw entry points: they check only what C would otherwise
misread (dtype, the view's size, integers a C int would wrap). Use
mortar_tf.morph, count_ones, bit_histogram and aligned_statistics, which
validate every argument and choose between this library, the TensorFlow op
and numpy.

Example:
  >>> import numpy as np
  >>> if is_built():
  ...   print(count_bits(np.float32([1.5]), significand=True)[22:24])  # bits 22 and 23
  ... else:
  ...   print([1, 1])
  [1 1]
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings

import numpy as np

DISABLE_VARIABLE = "MORTAR_TF_DISABLE_OPS"  # any value but "" or "0": this library is off too
THREADS_VARIABLE = "MORTAR_TF_THREADS"
ISA_VARIABLE = "MORTAR_TF_ISA"  # avx2 or baseline: a narrower variant (read at load)
ISAS = ("avx512", "avx2", "baseline")
# The largest group the C++ aligned and bitx kernels take (kMaxGroupSize in
# mortar_tf/cc/kernels.h, which the library reports and _load checks): their
# per-column counters hold 16 bits, and a group's count is at most G lanes plus
# G all-zero windows. Larger groups run in numpy (same bits) by default; the
# op refuses them; the estimator's engines stop here.
MAX_GROUP_SIZE = 16384
ABI_VERSION = 5
METHOD_CODES = {"paper": 0, "fewest_ones": 1, "round": 2}

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int


@functools.cache
def _load():
  """(library or None, why not)."""
  if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
    return None, f"disabled by {DISABLE_VARIABLE}"
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native.so")
  if not os.path.exists(path):
    return None, f"not built: no {os.path.basename(path)} in {os.path.dirname(path)} " \
                 "(install with setup.py build_ext)"
  forced = os.environ.get(ISA_VARIABLE, "")
  if forced not in ("",) + ISAS:
    warnings.warn(f"{ISA_VARIABLE}={forced!r} is not one of {', '.join(ISAS)}; ignored",
                  RuntimeWarning, stacklevel=3)
  try:
    lib = ctypes.CDLL(path)
  except OSError as e:
    return None, f"cannot load {path}: {e}"
  if lib.mortar_abi_version() != ABI_VERSION:
    return None, f"{path} is from another version of mortar_tf (rebuild it)"
  lib.mortar_isa.restype = ctypes.c_char_p
  lib.mortar_max_group_size.restype = _I64
  if lib.mortar_max_group_size() != MAX_GROUP_SIZE:
    return None, (f"{path} takes groups up to {lib.mortar_max_group_size()}, not "
                  f"{MAX_GROUP_SIZE} (rebuild it)")
  lib.mortar_ball_ends.argtypes = [_P, _I64, ctypes.c_double, _INT, _P, _P]
  lib.mortar_count_bits.argtypes = [_P, _I64, _INT, _P, _INT]
  lib.mortar_morph.argtypes = [_P, _P, _I64, _INT, ctypes.c_double, _INT, _INT]
  lib.mortar_aligned.argtypes = [_P, _I64, _I64, _I64, _I64, _INT, _INT, _P, _P, _P, _INT]
  lib.mortar_bitx.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _INT, _INT]
  lib.mortar_max_rel_error.argtypes = [_P, _P, _I64, _P, _INT]
  lib.mortar_crc32c.argtypes = [_P, _I64, ctypes.c_uint32, _P]
  lib.mortar_pair_records.argtypes = [_I64, _P, _P, _P, _I64, _INT, _P, _P, _INT]
  return lib, ""


def is_built() -> bool:
  """True when the native library loads in this process."""
  return _load()[0] is not None


def why_not_built() -> str:
  """Why is_built() is False ("" when it is True)."""
  return _load()[1]


def isa() -> str:
  """The instruction set the kernels run with: "avx512", "avx2" or "baseline"."""
  return _library().mortar_isa().decode()


def threads() -> int:
  """Threads per call: $MORTAR_TF_THREADS, else the CPUs this process may use."""
  value = os.environ.get(THREADS_VARIABLE, "")
  if value:
    try:
      count = int(value)
    except ValueError:
      raise ValueError(f"{THREADS_VARIABLE} must be an integer >= 1, got {value!r}") from None
    if count < 1:
      raise ValueError(f"{THREADS_VARIABLE} must be an integer >= 1, got {value!r}")
    return count
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _library():
  lib, why = _load()
  if lib is None:
    raise RuntimeError(f"mortar_tf native kernels are not available: {why}")
  return lib


def _words(x: np.ndarray) -> np.ndarray:
  """x's float32 data as C-contiguous, aligned uint32: a view when it already is,
  else one copy (a fresh array is always aligned)."""
  if not isinstance(x, np.ndarray) or x.dtype != np.float32:
    raise TypeError(f"the native kernels read float32 numpy arrays, got "
                    f"{getattr(x, 'dtype', type(x).__name__)}")
  if not (x.flags.c_contiguous and x.flags.aligned):
    x = np.array(x, np.float32, order="C", copy=True)
  return x.view(np.uint32)


def _check_view(x: np.ndarray, view, group_size: int) -> None:
  a, r, b = view
  if min(a, r, b) < 0 or a * r * b != x.size:
    raise ValueError(f"view {tuple(view)} does not cover the {x.size} elements of x")
  if not 1 <= group_size <= MAX_GROUP_SIZE:
    raise ValueError(f"the native kernels take group_size 1..{MAX_GROUP_SIZE}, got {group_size}")


def _check_range(name: str, value: int, low: int, high: int) -> int:
  if not low <= value <= high:  # ctypes would silently wrap a C int
    raise ValueError(f"{name} must be in {low}..{high}, got {value}")
  return int(value)


def _check(code: int, what: str) -> None:
  if code != 0:
    raise ValueError(f"the native {what} kernel refused its arguments (code {code})")


def count_bits(x: np.ndarray, significand: bool) -> np.ndarray:
  """Ones per bit position of float32 data, least significant first (int64 [32])."""
  words = _words(x)
  counts = np.zeros(32, np.int64)
  _check(_library().mortar_count_bits(words.ctypes.data, words.size, int(significand),
                                      counts.ctypes.data, threads()), "bit count")
  return counts


def morph(x: np.ndarray, method: str, precision: float, keep_bits: int,
          out: np.ndarray | None = None) -> np.ndarray:
  """paper, fewest_ones or round, per word: into `out` (a C-contiguous,
  writable float32 array of x's shape that does not overlap x; reused
  buffers spare the page faults of fresh memory) or a new array."""
  if method not in METHOD_CODES:
    raise ValueError(f"the native morph kernel runs {', '.join(METHOD_CODES)}, not {method!r}")
  keep_bits = _check_range("keep_bits", keep_bits, 0, 23) if method == "round" else 0
  if method != "round" and not 0.0 < float(precision) <= 1.0:
    raise ValueError(f"precision must satisfy 0 < P <= 1, got {precision!r}")
  words = _words(x)
  if out is None:
    out = np.empty(x.shape, np.float32)
  elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != x.shape
        or not out.flags.c_contiguous or not out.flags.writeable or not out.flags.aligned
        or np.shares_memory(out, words)):
    raise ValueError("out must be a writable, aligned, C-contiguous float32 array of x's "
                     "shape that does not overlap x")
  _check(_library().mortar_morph(words.ctypes.data, out.ctypes.data, words.size,
                                 METHOD_CODES[method], float(precision), int(keep_bits),
                                 threads()), "morph")
  return out


def max_rel_error(x: np.ndarray, y: np.ndarray) -> float:
  """max |y - x| / |x| (float64) over the finite nonzero elements of x; 0.0 if none."""
  if x.shape != y.shape:
    raise ValueError(f"max_rel_error compares arrays of one shape, got {x.shape} and {y.shape}")
  xs, ys = _words(x), _words(y)
  out = ctypes.c_double(0.0)
  _check(_library().mortar_max_rel_error(xs.ctypes.data, ys.ctypes.data, xs.size,
                                         ctypes.addressof(out), threads()), "max_rel_error")
  return float(out.value)


def pair_records(pairs, group_size: int, width: int) -> list[tuple[tuple[int, ...], float]]:
  """For each (x, y, view) of float32 arrays of one size read as the [a, r, b]
  view: ((ones of x's words, significands, aligned columns, then y's), the
  max_rel_error of y against x), all in one call (a whole model's kernels,
  or one chunk's: one crossing into C; each pass is split over `threads()`
  as the other entry points split theirs)."""
  words, views = [], []
  for x, y, view in pairs:
    if x.shape != y.shape:
      raise ValueError(f"pair_records compares arrays of one shape, got {x.shape} and {y.shape}")
    _check_view(x, view, group_size)
    words.append((_words(x), _words(y)))
    views.append(tuple(int(v) for v in view))
  width = _check_range("width", width, 1, 64)
  count = len(words)
  xs = np.array([x.ctypes.data for x, _ in words] or [0], np.uintp)
  ys = np.array([y.ctypes.data for _, y in words] or [0], np.uintp)
  view_array = np.array(views or [(0, 0, 0)], np.int64)
  out = np.zeros((max(count, 1), 6), np.int64)
  errors = np.zeros(max(count, 1), np.float64)
  _check(_library().mortar_pair_records(count, xs.ctypes.data, ys.ctypes.data,
                                        view_array.ctypes.data, group_size, width,
                                        out.ctypes.data, errors.ctypes.data, threads()),
         "pair_records")
  return [(tuple(int(v) for v in out[k]), float(errors[k])) for k in range(count)]


def crc32c(data, crc: int = 0) -> int:
  """CRC-32C of a bytes-like object or an array's bytes (read in place when
  C-contiguous), continuing from `crc` (the CRC-32C of the bytes before)."""
  # An array as it is when C-contiguous, anything else viewed as bytes (no copy).
  view = (np.ascontiguousarray(data) if isinstance(data, np.ndarray)
          else np.frombuffer(data, np.uint8))
  pointer, size = view.ctypes.data, view.nbytes
  out = ctypes.c_uint32(0)
  _check(_library().mortar_crc32c(pointer if size else None, size, crc & 0xFFFFFFFF,
                                  ctypes.addressof(out)), "crc32c")
  return int(out.value)


def aligned(x: np.ndarray, view: tuple[int, int, int], group_size: int, width: int,
            window: int, figures: bool):
  """Aligned statistics of x read as the [a, r, b] view (see mortar_tf/cc/kernels.h).

  Returns:
    (columns int64 [width], lane_max, bitlet): the figures are int32
    [a * b, groups] arrays when `figures`, else None.
  """
  _check_view(x, view, group_size)
  width = _check_range("width", width, 1, 64)
  window = _check_range("window", window, 1, 2**31 - 1)
  a, r, b = view
  words = _words(x)
  columns = np.zeros(width, np.int64)
  lane_max = bitlet = None
  if figures:
    groups = -(-r // group_size)
    lane_max = np.empty((a * b, groups), np.int32)
    bitlet = np.empty((a * b, groups), np.int32)
  _check(_library().mortar_aligned(
      words.ctypes.data, a, r, b, group_size, width, window, columns.ctypes.data,
      None if lane_max is None else lane_max.ctypes.data,
      None if bitlet is None else bitlet.ctypes.data, threads()), "aligned count")
  return columns, lane_max, bitlet


def bitx(x: np.ndarray, view: tuple[int, int, int], group_size: int, columns: int) -> np.ndarray:
  """BitX pruning of x read as the [a, r, b] view; a new array of x's shape."""
  _check_view(x, view, group_size)
  columns = _check_range("columns", columns, 1, 64)
  a, r, b = view
  words = _words(x)
  out = np.empty(x.shape, np.float32)
  _check(_library().mortar_bitx(words.ctypes.data, out.ctypes.data, a, r, b, group_size,
                                columns, threads()), "bitx")
  return out


def ball_ends(magnitudes: np.ndarray, precision: float, exact: bool):
  """The C++ ball ends (float_bits.h) of positive normal float32 values.

  Args:
    magnitudes: positive normal float32 values (any shape).
    precision: P, 0 < P <= 1 (P <= 0.5 with `exact`).
    exact: BallEndsExact (integer arithmetic, P <= 0.5), else BallEndsGeneral.

  Returns:
    (lower, upper) float32 arrays of the input's shape: the smallest normal
    and the largest finite float32 y with fabs((double)y - (double)x) <
    P * (double)x (both x where that ball is empty).

  Raises:
    ValueError: a value that is not a positive normal float32, or P out of
      range.
  """
  words = _words(magnitudes)
  limit = 0.5 if exact else 1.0
  if isinstance(precision, bool) or not 0.0 < float(precision) <= limit:
    raise ValueError(f"precision must satisfy 0 < P <= {limit:g} here, got {precision!r}")
  bad = np.flatnonzero(((words >> 23) == 0) | ((words >> 23) >= 255))
  if bad.size:
    value = words.reshape(-1)[bad[0]].view(np.float32)
    raise ValueError(f"ball ends take positive normal float32 values, got {value!r} "
                     f"(word {int(words.reshape(-1)[bad[0]]):#010x})")
  lower = np.empty(words.shape, np.uint32)
  upper = np.empty(words.shape, np.uint32)
  _check(_library().mortar_ball_ends(words.ctypes.data, words.size, float(precision),
                                     int(bool(exact)), lower.ctypes.data, upper.ctypes.data),
         "ball ends")
  return lower.view(np.float32), upper.view(np.float32)
