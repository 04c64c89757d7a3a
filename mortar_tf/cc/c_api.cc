// A C entry point over plain buffers for each kernel of kernels.h, loaded by
// mortar_tf/native.py with ctypes: numpy arrays go in and come out without a
// copy and without TensorFlow. Work is split over std::threads; ctypes has
// released the GIL for the call.
//
// Every function validates what it is given and returns 0, or a nonzero code
// (the Python side validates first, so a code here means a caller bug).

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "mortar_tf/cc/float_bits.h"
#include "mortar_tf/cc/kernels.h"

namespace {

constexpr int kBadArgument = 1;

// How many parts ParallelFor cuts `units` into: `threads`, or fewer so that
// each has at least min_units (callers size per-part results with it).
int PartsFor(int64_t units, int64_t min_units, int threads) {
  const int64_t by_work = std::max<int64_t>(1, units / std::max<int64_t>(1, min_units));
  return int(std::max<int64_t>(1, std::min<int64_t>(std::max(threads, 1), by_work)));
}

// Runs fn(begin, end, part) over [0, units) in PartsFor(...) contiguous parts.
template <typename Fn>
void ParallelFor(int64_t units, int64_t min_units, int threads, const Fn& fn) {
  const int parts = PartsFor(units, min_units, threads);
  if (parts == 1) {
    fn(int64_t{0}, units, 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(parts - 1);
  for (int part = 1; part < parts; ++part) {
    pool.emplace_back([&, part]() { fn(units * part / parts, units * (part + 1) / parts, part); });
  }
  fn(int64_t{0}, units / parts, 0);
  for (std::thread& t : pool) t.join();
}

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TensorFlow's
// checkpoints and LevelDB tables store it (before masking). `crc` is the
// running value without the final inversion: start from 0xFFFFFFFF, invert
// at the end.
uint32_t Crc32cTableByte(uint32_t crc, uint8_t byte) {
  crc ^= byte;
  for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  return crc;
}

uint32_t Crc32cPortable(uint32_t crc, const uint8_t* p, int64_t n) {
  static const auto* table = [] {
    auto* t = new uint32_t[256];
    for (uint32_t i = 0; i < 256; ++i) t[i] = Crc32cTableByte(0, static_cast<uint8_t>(i));
    return t;
  }();
  for (int64_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(uint32_t crc, const uint8_t* p,
                                                       int64_t n) {
  uint64_t c = crc;
  for (; n > 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0; --n) {
    c = __builtin_ia32_crc32qi(static_cast<uint32_t>(c), *p++);
  }
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t word;
    __builtin_memcpy(&word, p, 8);
    c = __builtin_ia32_crc32di(c, word);
  }
  for (; n > 0; --n) c = __builtin_ia32_crc32qi(static_cast<uint32_t>(c), *p++);
  return static_cast<uint32_t>(c);
}
#endif

uint32_t Crc32c(uint32_t crc, const uint8_t* p, int64_t n) {
#if defined(__x86_64__)
  static const bool hardware = __builtin_cpu_supports("sse4.2");
  if (hardware) return Crc32cSse42(crc, p, n);
#endif
  return Crc32cPortable(crc, p, n);
}

bool ValidView(const void* data, int64_t a, int64_t r, int64_t b, int64_t group_size) {
  return (data != nullptr || a * r * b == 0) && a >= 0 && r >= 0 && b >= 0 && group_size >= 1 &&
         group_size <= mortar::kMaxGroupSize;
}

// mortar::PairTotals over n pairs split over threads: totals[4] (overwritten)
// the ones of x's words, x's significands, y's words, y's significands;
// *worst the max relative error as mortar_max_rel_error gives it (NaN when
// any is NaN).
void PairTotalsParallel(const uint32_t* x, const uint32_t* y, int64_t n, int64_t* totals,
                        double* worst, int threads) {
  constexpr int64_t kMin = 1 << 18;
  const int parts = PartsFor(n, kMin, threads);
  std::vector<int64_t> partial(4 * parts, 0);
  std::vector<double> worst_part(parts, 0.0);
  std::vector<char> nan(parts, 0);
  ParallelFor(n, kMin, threads, [&](int64_t begin, int64_t end, int part) {
    bool saw_nan = false;
    mortar::PairTotals(x + begin, y + begin, end - begin, &partial[4 * part], &worst_part[part],
                       &saw_nan);
    nan[part] = saw_nan;
  });
  double w = 0.0;
  bool any_nan = false;
  for (int k = 0; k < 4; ++k) totals[k] = 0;
  for (int part = 0; part < parts; ++part) {
    for (int k = 0; k < 4; ++k) totals[k] += partial[4 * part + k];
    any_nan |= nan[part] != 0;
    w = std::max(w, worst_part[part]);
  }
  *worst = any_nan ? std::nan("") : w;
}

}  // namespace

extern "C" {

// Bumped whenever a signature below changes; native.py refuses a mismatch.
int mortar_abi_version() { return 5; }  // 5: mortar_pair_records

const char* mortar_isa() { return mortar::IsaName(); }

// The largest group_size mortar_aligned and mortar_bitx take (kMaxGroupSize).
int64_t mortar_max_group_size() { return mortar::kMaxGroupSize; }

// The ball ends of float_bits.h (what fewest_ones builds on), for tests: for
// each positive normal magnitude word, the smallest normal (lower) and the
// largest finite (upper) float32 in its ball at P (SPEC 2), by BallEndsExact
// (exact != 0, P <= 0.5 only) or BallEndsGeneral, in the chosen instruction
// set. A ball the predicate finds empty (P * |x| is 0 in double) gives |x|
// for both. Any other word, or P outside its range, is refused before
// anything is written. One thread: this is for tests.
int mortar_ball_ends(const uint32_t* magnitudes, int64_t n, double p, int exact,
                     uint32_t* lower, uint32_t* upper) {
  if (n < 0 || ((magnitudes == nullptr || lower == nullptr || upper == nullptr) && n > 0) ||
      !(p > 0.0 && p <= (exact != 0 ? 0.5 : 1.0))) {
    return kBadArgument;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!mortar::IsNormal(magnitudes[i])) return kBadArgument;  // also any sign bit
  }
  mortar::BallEndsRange(magnitudes, n, p, exact != 0, lower, upper);
  return 0;
}

// Ones per bit position, LSB first, into counts[32] (overwritten).
int mortar_count_bits(const uint32_t* words, int64_t n, int significand, int64_t* counts,
                      int threads) {
  if (n < 0 || counts == nullptr || (words == nullptr && n > 0)) return kBadArgument;
  constexpr int64_t kMin = 1 << 20;
  const int parts = PartsFor(n, kMin, threads);
  std::vector<int64_t> partial(32 * parts, 0);
  ParallelFor(n, kMin, threads, [&](int64_t begin, int64_t end, int part) {
    mortar::CountBits(words + begin, end - begin, significand != 0, &partial[32 * part]);
  });
  for (int bit = 0; bit < 32; ++bit) {
    counts[bit] = 0;
    for (int part = 0; part < parts; ++part) counts[bit] += partial[32 * part + bit];
  }
  return 0;
}

// method: 0 paper, 1 fewest_ones, 2 round. in and out may be the same buffer.
int mortar_morph(const uint32_t* in, uint32_t* out, int64_t n, int method, double p,
                 int keep_bits, int threads) {
  if (n < 0 || ((in == nullptr || out == nullptr) && n > 0) || method < 0 || method > 2) {
    return kBadArgument;
  }
  if (method == 2 ? (keep_bits < 0 || keep_bits > 23) : !(p > 0.0 && p <= 1.0)) {
    return kBadArgument;
  }
  const auto which = static_cast<mortar::Method>(method);
  ParallelFor(n, int64_t{1} << 18, threads, [&](int64_t begin, int64_t end, int) {
    mortar::MorphRange(which, in + begin, out + begin, end - begin, p, keep_bits);
  });
  return 0;
}

// Aligned statistics of the [a, r, b] view (kernels.h): columns[width] is
// overwritten; lane_max and bitlet ([a * b, groups], int32) may be null.
int mortar_aligned(const uint32_t* data, int64_t a, int64_t r, int64_t b, int64_t group_size,
                   int width, int window, int64_t* columns, int32_t* lane_max, int32_t* bitlet,
                   int threads) {
  if (!ValidView(data, a, r, b, group_size) || width < 1 || width > 64 || window < 1 ||
      columns == nullptr) {
    return kBadArgument;
  }
  const mortar::GroupedView view{data, a, r, b, group_size};
  const int64_t tiles = mortar::TileCount(view);
  const int64_t min_tiles = std::max<int64_t>(1, (int64_t{1} << 16) / group_size);
  const int parts = PartsFor(tiles, min_tiles, threads);
  std::vector<int64_t> partial(int64_t{width} * parts, 0);
  ParallelFor(tiles, min_tiles, threads, [&](int64_t begin, int64_t end, int part) {
    mortar::AlignedTiles(view, width, window, begin, end, &partial[int64_t{width} * part],
                         lane_max, bitlet);
  });
  for (int c = 0; c < width; ++c) {
    columns[c] = 0;
    for (int part = 0; part < parts; ++part) columns[c] += partial[int64_t{width} * part + c];
  }
  return 0;
}

// max |y - x| / |x| in double over the elements whose x is finite and nonzero
// (numpy's float64 arithmetic, the same bits), into *out; 0 when there are
// none, NaN when any such y is NaN.
int mortar_max_rel_error(const float* x, const float* y, int64_t n, double* out, int threads) {
  if (n < 0 || out == nullptr || ((x == nullptr || y == nullptr) && n > 0)) return kBadArgument;
  constexpr int64_t kMin = 1 << 18;
  const int parts = PartsFor(n, kMin, threads);
  std::vector<double> worst(parts, 0.0);
  std::vector<char> nan(parts, 0);
  ParallelFor(n, kMin, threads, [&](int64_t begin, int64_t end, int part) {
    double w = 0.0;
    bool saw_nan = false;
    int64_t i = begin;
#if defined(__SSE2__)
    // Two doubles at a time, branch-free (the data is often in cache, so the
    // arithmetic is the bound): the scalar loop's arithmetic, MAXPD being its
    // `r > w ? r : w`.
    const __m128d sign = _mm_set1_pd(-0.0), top = _mm_set1_pd(FLT_MAX);
    const __m128d zero = _mm_setzero_pd(), one = _mm_set1_pd(1.0);
    __m128d wv = zero, nanv = zero;
    auto step = [&](__m128d xv, __m128d yv) {
      const __m128d ax = _mm_andnot_pd(sign, xv);
      const __m128d ok = _mm_and_pd(_mm_cmple_pd(ax, top), _mm_cmpneq_pd(ax, zero));
      const __m128d den = _mm_or_pd(_mm_and_pd(ok, ax), _mm_andnot_pd(ok, one));
      const __m128d r = _mm_and_pd(ok, _mm_div_pd(_mm_andnot_pd(sign, _mm_sub_pd(yv, xv)), den));
      nanv = _mm_or_pd(nanv, _mm_cmpunord_pd(r, r));
      wv = _mm_max_pd(r, wv);
    };
    for (; i + 4 <= end; i += 4) {
      const __m128 xs = _mm_loadu_ps(x + i), ys = _mm_loadu_ps(y + i);
      step(_mm_cvtps_pd(xs), _mm_cvtps_pd(ys));
      step(_mm_cvtps_pd(_mm_movehl_ps(xs, xs)), _mm_cvtps_pd(_mm_movehl_ps(ys, ys)));
    }
    alignas(16) double lanes[2];
    _mm_store_pd(lanes, wv);
    w = lanes[0] > lanes[1] ? lanes[0] : lanes[1];
    saw_nan = _mm_movemask_pd(nanv) != 0;
#endif
    for (; i < end; ++i) {
      const double xi = static_cast<double>(x[i]);
      if (!(std::fabs(xi) <= static_cast<double>(FLT_MAX)) || xi == 0.0) continue;
      const double r = std::fabs(static_cast<double>(y[i]) - xi) / std::fabs(xi);
      saw_nan |= std::isnan(r);
      w = r > w ? r : w;
    }
    worst[part] = w;
    nan[part] = saw_nan;
  });
  double w = 0.0;
  for (int part = 0; part < parts; ++part) {
    if (nan[part]) {
      *out = std::nan("");
      return 0;
    }
    w = std::max(w, worst[part]);
  }
  *out = w;
  return 0;
}

// What a record needs of many (x, y) pairs, in one call (one release of
// Python's lock for a whole model): for pair k, x = xs[k] and y = ys[k] read
// as the [a, r, b] view views[3k..3k+2], out[6k..6k+5] (overwritten) the ones
// of x's words, significands and aligned columns, then y's, and errors[k] as
// mortar_max_rel_error gives it.
int mortar_pair_records(int64_t count, const uint32_t* const* xs, const uint32_t* const* ys,
                        const int64_t* views, int64_t group_size, int width, int64_t* out,
                        double* errors, int threads) {
  if (count < 0 || (count > 0 && (xs == nullptr || ys == nullptr || views == nullptr ||
                                  out == nullptr || errors == nullptr)) ||
      width < 1 || width > 64) {
    return kBadArgument;
  }
  std::vector<int64_t> columns(width);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t a = views[3 * k], r = views[3 * k + 1], b = views[3 * k + 2];
    if (!ValidView(xs[k], a, r, b, group_size) || !ValidView(ys[k], a, r, b, group_size)) {
      return kBadArgument;
    }
    int64_t totals[4];
    PairTotalsParallel(xs[k], ys[k], a * r * b, totals, &errors[k], threads);
    for (int side = 0; side < 2; ++side) {
      const int code2 = mortar_aligned(side == 0 ? xs[k] : ys[k], a, r, b, group_size, width, 8,
                                       columns.data(), nullptr, nullptr, threads);
      if (code2 != 0) return code2;
      int64_t aligned = 0;
      for (int c = 0; c < width; ++c) aligned += columns[c];
      out[6 * k + 3 * side] = totals[2 * side];
      out[6 * k + 3 * side + 1] = totals[2 * side + 1];
      out[6 * k + 3 * side + 2] = aligned;
    }
  }
  return 0;
}

// BitX pruning of the [a, r, b] view into out (same layout; not the input).
int mortar_bitx(const uint32_t* in, uint32_t* out, int64_t a, int64_t r, int64_t b,
                int64_t group_size, int columns, int threads) {
  if (!ValidView(in, a, r, b, group_size) || (out == nullptr && a * r * b > 0) || columns < 1 ||
      columns > 64 || in == out) {
    return kBadArgument;
  }
  const mortar::GroupedView view{in, a, r, b, group_size};
  // at least 2^20 words a thread
  const int64_t min_units =
      std::max<int64_t>(1, (int64_t{1} << 20) / mortar::BitxUnitWords(view));
  ParallelFor(mortar::BitxUnitCount(view), min_units, threads,
              [&](int64_t begin, int64_t end, int) {
                mortar::BitxUnits(view, columns, begin, end, out);
              });
  return 0;
}

// CRC-32C of n bytes continuing from `crc` (a finished CRC-32C of the bytes
// before, 0 for none), into *out. One thread (hardware crc32 where the CPU
// has SSE4.2); the same value as any other CRC-32C (tested against one).
int mortar_crc32c(const uint8_t* data, int64_t n, uint32_t crc, uint32_t* out) {
  if (n < 0 || out == nullptr || (data == nullptr && n > 0)) return kBadArgument;
  *out = ~Crc32c(~crc, data, n);
  return 0;
}

}  // extern "C"
