// The kernels of kernels.h. Every loop body is an always-inline template,
// instantiated in three functions compiled for AVX-512, AVX2 and baseline
// x86-64 (target attributes, not target_clones, because a clone can name only
// one feature and the 512-bit code needs several); DetectIsa() picks one at
// load time. MORTAR_TF_ISA=avx2|baseline forces a narrower one (the tests use
// it to check that every variant gives the same bits). On other CPUs, or built
// with -DMORTAR_TF_PORTABLE, there is one portable variant.

#include "mortar_tf/cc/kernels.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "mortar_tf/cc/float_bits.h"

#define MORTAR_INLINE __attribute__((always_inline)) inline

#if (defined(__x86_64__) || defined(__i386__)) && !defined(MORTAR_TF_PORTABLE)
// Defines NameAvx512, NameAvx2 and NameBaseline, each calling NameImpl<L>
// with L the uint32 lanes of the variant's vector registers (16, 8, 4): code
// written for vectors of L lanes keeps its working set in registers.
#define MORTAR_VARIANTS(name, params, args)                                                 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")))    \
  void name##Avx512 params { name##Impl<16> args; }                                         \
  __attribute__((target("avx2,popcnt,bmi,bmi2"))) void name##Avx2 params {                  \
    name##Impl<8> args;                                                                     \
  }                                                                                         \
  void name##Baseline params { name##Impl<4> args; }
#else  // other CPUs: one portable variant (the names stay, the dispatcher picks it)
#define MORTAR_VARIANTS(name, params, args)                \
  void name##Avx512 params { name##Impl<4> args; }         \
  void name##Avx2 params { name##Impl<4> args; }           \
  void name##Baseline params { name##Impl<4> args; }
#endif

namespace mortar {
namespace {

enum class Isa { kBaseline, kAvx2, kAvx512 };

Isa DetectIsa() {
  Isa isa = Isa::kBaseline;
#if (defined(__x86_64__) || defined(__i386__)) && !defined(MORTAR_TF_PORTABLE)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
      __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2")) {
    isa = Isa::kAvx2;
  }
  if (isa == Isa::kAvx2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq")) {
    isa = Isa::kAvx512;
  }
#endif
  const char* forced = std::getenv("MORTAR_TF_ISA");
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) isa = Isa::kBaseline;
  if (forced != nullptr && std::strcmp(forced, "avx2") == 0 && isa == Isa::kAvx512) {
    isa = Isa::kAvx2;
  }
  return isa;
}

const Isa kIsa = DetectIsa();

#define MORTAR_DISPATCH(name, args)           \
  switch (kIsa) {                             \
    case Isa::kAvx512: name##Avx512 args; break; \
    case Isa::kAvx2: name##Avx2 args; break;     \
    default: name##Baseline args; break;         \
  }

// ---------------------------------------------------------------------------
// Bit counts: positional popcount with a Harley-Seal carry-save network.

typedef uint32_t Lanes __attribute__((vector_size(32)));  // 8 words
constexpr int kLanes = 8;

// Carry-save adder per bit: a + b + c = 2 * high + low, bit-sliced.
MORTAR_INLINE void Csa(Lanes& high, Lanes& low, Lanes a, Lanes b, Lanes c) {
  const Lanes u = a ^ b;
  high = (a & b) | (u & c);
  low = u ^ c;
}

MORTAR_INLINE Lanes Load(const uint32_t* words, bool significand) {
  Lanes u;
  std::memcpy(&u, words, sizeof u);
  if (!significand) return u;
  const Lanes mag = u & kMagnitude;
  const Lanes normal = (mag - kMinNormal) <= (kMaxFinite - kMinNormal);
  return ((mag & kMantissa) | kHidden) & normal;  // normal: all ones or 0
}

// Adds 8 vectors (64 words) into the bit-sliced ones/twos/fours counters and
// returns the eights carried out.
MORTAR_INLINE Lanes AddEight(const uint32_t* w, bool significand, Lanes& ones, Lanes& twos,
                             Lanes& fours) {
  Lanes fours_half[2];
  for (int half = 0; half < 2; ++half) {
    const uint32_t* v = w + half * 4 * kLanes;
    Lanes twos_a, twos_b;
    Csa(twos_a, ones, ones, Load(v, significand), Load(v + kLanes, significand));
    Csa(twos_b, ones, ones, Load(v + 2 * kLanes, significand), Load(v + 3 * kLanes, significand));
    Csa(fours_half[half], twos, twos, twos_a, twos_b);
  }
  Lanes eights;
  Csa(eights, fours, fours, fours_half[0], fours_half[1]);
  return eights;
}

// 16 vectors of 8 words are reduced to bit-sliced ones/twos/fours/eights
// counters and one "sixteens" vector, and only that vector is spread over the
// 32 per-bit lane counters: the per-bit work happens once per 128 words.
template <int L>
MORTAR_INLINE void CountBitsImpl(const uint32_t* words, int64_t n, bool significand,
                                 int64_t* counts) {
  Lanes ones = {}, twos = {}, fours = {}, eights = {};
  Lanes sixteens_per_bit[32] = {};
  constexpr int64_t kBlock = 16 * kLanes;
  int64_t i = 0;
  // a lane counter gains at most 1 per block: flush well before 2^32
  int64_t blocks = 0;
  auto flush = [&]() {
    for (int b = 0; b < 32; ++b) {
      for (int l = 0; l < kLanes; ++l) counts[b] += 16 * int64_t{sixteens_per_bit[b][l]};
      sixteens_per_bit[b] = Lanes{};
    }
  };
  for (; i + kBlock <= n; i += kBlock) {
    Lanes sixteens;
    const Lanes eights_a = AddEight(words + i, significand, ones, twos, fours);
    const Lanes eights_b = AddEight(words + i + 8 * kLanes, significand, ones, twos, fours);
    Csa(sixteens, eights, eights, eights_a, eights_b);
    for (int b = 0; b < 32; ++b) sixteens_per_bit[b] += (sixteens >> b) & 1u;
    if (++blocks == (int64_t{1} << 30)) {
      flush();
      blocks = 0;
    }
  }
  flush();
  for (int b = 0; b < 32; ++b) {
    int64_t total = 0;
    for (int l = 0; l < kLanes; ++l) {
      total += 8 * ((eights[l] >> b) & 1u) + 4 * ((fours[l] >> b) & 1u) +
               2 * ((twos[l] >> b) & 1u) + ((ones[l] >> b) & 1u);
    }
    counts[b] += total;
  }
  for (; i < n; ++i) {  // the tail, one word at a time
    const uint32_t v = significand ? Significand(words[i]) : words[i];
    for (int b = 0; b < 32; ++b) counts[b] += (v >> b) & 1u;
  }
}

MORTAR_VARIANTS(CountBits, (const uint32_t* words, int64_t n, bool significand, int64_t* counts),
                (words, n, significand, counts))

// ---------------------------------------------------------------------------
// Morphing: branch-free per-word functions of float_bits.h, so loops vectorise.

template <int L>
MORTAR_INLINE void MorphRangeImpl(Method method, const uint32_t* in, uint32_t* out, int64_t n,
                                  double p, int keep_bits) {
  switch (method) {
    case Method::kPaper:
      for (int64_t i = 0; i < n; ++i) out[i] = Paper(in[i], p);
      break;
    case Method::kFewestOnes:
      if (p <= 0.5) {  // integer ball ends, branch-free
        for (int64_t i = 0; i < n; ++i) out[i] = FewestOnesExact(in[i], p);
      } else {  // the predicate-proven ends may bisect: scalar
        for (int64_t i = 0; i < n; ++i) out[i] = FewestOnes(in[i], p);
      }
      break;
    case Method::kRound:
      for (int64_t i = 0; i < n; ++i) out[i] = Round(in[i], keep_bits);
      break;
  }
}

MORTAR_VARIANTS(MorphRange,
                (Method method, const uint32_t* in, uint32_t* out, int64_t n, double p,
                 int keep_bits),
                (method, in, out, n, p, keep_bits))

template <int L>
MORTAR_INLINE void BallEndsRangeImpl(const uint32_t* magnitudes, int64_t n, double p,
                                     bool exact, uint32_t* lower, uint32_t* upper) {
  if (exact) {  // branch-free: vectorises as in MorphRange
    for (int64_t i = 0; i < n; ++i) BallEndsExact(magnitudes[i], p, &lower[i], &upper[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) BallEndsGeneral(magnitudes[i], p, &lower[i], &upper[i]);
  }
}

MORTAR_VARIANTS(BallEndsRange,
                (const uint32_t* magnitudes, int64_t n, double p, bool exact, uint32_t* lower,
                 uint32_t* upper),
                (magnitudes, n, p, exact, lower, upper))

// ---------------------------------------------------------------------------
// Tiles of a grouped view: kTileLanes output elements x one group, gathered
// into a [group_size][kTileLanes] buffer (zeros where the view has no element:
// +0.0 is the padding SPEC 3 asks for, and a special value contributes no
// bit), so the arithmetic runs across lanes with no stride and no edge case.

constexpr int V = kTileLanes;

// Vectors of L lanes. A tile (V lanes) is worked on in V / L parts of L lanes.
template <int L>
struct Vectors {
  typedef uint32_t U32 __attribute__((vector_size(4 * L)));
  typedef uint64_t U64 __attribute__((vector_size(8 * L)));
  typedef int32_t I32 __attribute__((vector_size(4 * L)));
};

struct TilePlace {
  int64_t i0, j0, g;  // first output lane (i0, j0), group g
  int lanes;          // valid lanes
  bool across_i;      // b == 1: lanes are consecutive i; else consecutive j
};

MORTAR_INLINE TilePlace Place(const GroupedView& view, int64_t tile) {
  const int64_t groups = view.groups();
  TilePlace t;
  if (view.b == 1) {  // tile = (i block, g): lanes are rows of [a, r]
    t.across_i = true;
    t.g = tile % groups;
    t.i0 = (tile / groups) * V;
    t.j0 = 0;
    t.lanes = int(std::min<int64_t>(V, view.a - t.i0));
  } else {  // tile = (i, g, j block): lanes are adjacent in memory
    const int64_t j_blocks = (view.b + V - 1) / V;
    t.across_i = false;
    t.i0 = tile / (groups * j_blocks);
    t.g = (tile / j_blocks) % groups;
    t.j0 = (tile % j_blocks) * V;
    t.lanes = int(std::min<int64_t>(V, view.b - t.j0));
  }
  return t;
}

// Fills tile[l * V + v] with element (lane v, row g * G + l), or 0.
MORTAR_INLINE void Gather(const GroupedView& view, const TilePlace& t, uint32_t* tile) {
  const int64_t g_size = view.group_size;
  const int64_t k0 = t.g * g_size;
  const int64_t rows = std::min<int64_t>(g_size, view.r - k0);
  std::memset(tile, 0, sizeof(uint32_t) * V * g_size);
  if (t.across_i) {
    for (int v = 0; v < t.lanes; ++v) {
      const uint32_t* src = view.data + (t.i0 + v) * view.r + k0;
      for (int64_t l = 0; l < rows; ++l) tile[l * V + v] = src[l];
    }
  } else {
    for (int64_t l = 0; l < rows; ++l) {
      std::memcpy(tile + l * V, view.data + (t.i0 * view.r + k0 + l) * view.b + t.j0,
                  sizeof(uint32_t) * t.lanes);
    }
  }
}

// Lanes [part, part + L) of row l.
template <int L>
MORTAR_INLINE typename Vectors<L>::U32 LoadRow(const uint32_t* tile, int64_t l, int part) {
  typename Vectors<L>::U32 u;
  std::memcpy(&u, tile + l * V + part, sizeof u);
  return u;
}

// The 24-bit significands with the hidden bit; 0 for special values.
template <int L>
MORTAR_INLINE typename Vectors<L>::U32 SignificandOf(typename Vectors<L>::U32 u) {
  typedef typename Vectors<L>::U32 U32;
  const U32 mag = u & kMagnitude;
  const U32 normal = (U32)((mag - kMinNormal) <= (kMaxFinite - kMinNormal));
  return ((mag & kMantissa) | kHidden) & normal;
}

// The biased exponents of the normal elements; 0 for the others.
template <int L>
MORTAR_INLINE typename Vectors<L>::U32 ExponentOf(typename Vectors<L>::U32 u) {
  typedef typename Vectors<L>::U32 U32;
  const U32 mag = u & kMagnitude;
  const U32 normal = (U32)((mag - kMinNormal) <= (kMaxFinite - kMinNormal));
  return (mag >> 23) & normal;
}

// Per lane: the group's largest biased exponent among normal elements (0 when
// there is none), over `rows` rows of L lanes, row l at first + l * stride.
template <int L>
MORTAR_INLINE typename Vectors<L>::U32 GroupEmax(const uint32_t* first, int64_t stride,
                                                 int64_t rows) {
  typedef typename Vectors<L>::U32 U32;
  U32 emax = {};
  for (int64_t l = 0; l < rows; ++l) {
    U32 u;
    std::memcpy(&u, first + l * stride, sizeof u);
    const U32 e = ExponentOf<L>(u);
    emax = e > emax ? e : emax;
  }
  return emax;
}

// Aligned words: column c of the window is bit (bits - 1 - c) of a W word
// (W = uint32 for width <= 32, uint64 above).
template <typename W, int L>
struct Words;

template <int L>
struct Words<uint32_t, L> {
  typedef typename Vectors<L>::U32 U32;
  typedef U32 Vec;
  static constexpr int kBits = 32;
  // bit j of m lands in column 23 - j + d: bit j + 8 - d of the word
  static MORTAR_INLINE Vec Align(U32 m, U32 d) {
    const U32 shifted = (m << 8) >> (d & 31u);
    return d < 32u ? shifted : U32{};
  }
  static MORTAR_INLINE Vec Popcount(Vec x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    x = x + (x >> 8);
    x = x + (x >> 16);
    return x & 0x3Fu;
  }
};

template <int L>
struct Words<uint64_t, L> {
  typedef typename Vectors<L>::U32 U32;
  typedef typename Vectors<L>::U64 Vec;
  static constexpr int kBits = 64;
  static MORTAR_INLINE Vec Align(U32 m, U32 d) {
    const Vec m64 = __builtin_convertvector(m, Vec);
    const Vec d64 = __builtin_convertvector(d, Vec);
    const Vec shifted = (m64 << 40) >> (d64 & 63u);
    return d64 < 64u ? shifted : Vec{};
  }
  static MORTAR_INLINE Vec Popcount(Vec x) {
    x = x - ((x >> 1) & 0x5555555555555555u);
    x = (x & 0x3333333333333333u) + ((x >> 2) & 0x3333333333333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Fu;
    x = x + (x >> 8);
    x = x + (x >> 16);
    x = x + (x >> 32);
    return x & 0x7Fu;
  }
};

// Bit-sliced counters: plane k holds bit k of a count kept for every column at
// once, so adding a word's ones to all its columns is a carry chain over the
// planes. A fixed trip count keeps it free of data-dependent branches.
constexpr int kPlanes = 16;   // group_size <= kMaxGroupSize: counts stay below 2^16
constexpr int kLevels = 8;    // second level: flushed every 255 additions

template <typename Vec>
MORTAR_INLINE void Increment(Vec* counter, int planes, Vec x) {
  for (int k = 0; k < planes; ++k) {
    const Vec carry = counter[k] & x;
    counter[k] ^= x;
    x = carry;
  }
}

// Per lane, the largest count among the columns in `keep`: from the top plane
// down, keep only the columns that have the bit whenever any of them has it.
template <typename Vec>
MORTAR_INLINE Vec MaxCount(const Vec* counter, int planes, Vec keep) {
  Vec value = {};
  for (int k = planes - 1; k >= 0; --k) {
    const Vec with_bit = keep & counter[k];
    const Vec any = (Vec)(with_bit != 0);
    keep = any ? with_bit : keep;
    value |= any & (Vec{} + 1) << k;
  }
  return value;
}

// Column totals over many tile parts: each part's per-lane counter (plane k =
// weight 2^k) is added to a second-level counter per k, which is flushed to
// int64 totals before it can overflow.
template <typename Vec, int kBits, int L>
class ColumnTotals {
 public:
  explicit ColumnTotals(int planes) : planes_(planes) {}

  MORTAR_INLINE void Add(const Vec* counter, int64_t* columns) {
    for (int k = 0; k < planes_; ++k) Increment(levels_[k], kLevels, counter[k]);
    if (++added_ == (1 << kLevels) - 1) Flush(columns);
  }

  void Flush(int64_t* columns) {
    for (int k = 0; k < planes_; ++k) {
      for (int j = 0; j < kLevels; ++j) {
        for (int v = 0; v < L; ++v) {
          uint64_t plane = uint64_t(levels_[k][j][v]);
          while (plane != 0) {
            const int bit = 63 - __builtin_clzll(plane);
            columns[kBits - 1 - bit] += int64_t{1} << (k + j);
            plane &= ~(uint64_t{1} << bit);
          }
        }
        levels_[k][j] = Vec{};
      }
    }
    added_ = 0;
  }

 private:
  int planes_;
  Vec levels_[kPlanes][kLevels] = {};
  int added_ = 0;
};

MORTAR_INLINE int BitLength(int64_t v) {
  int n = 0;
  while ((int64_t{1} << n) <= v) ++n;
  return n;
}

// kFixedPlanes > 0: the counters' plane count is a compile-time constant (the
// common group sizes), so the carry chains unroll and stay in registers.
template <typename W, int kFixedPlanes, int L>
MORTAR_INLINE void AlignedTilesTyped(const GroupedView& view, int width, int window,
                                     int64_t begin, int64_t end, int64_t* columns,
                                     int32_t* lane_max_out, int32_t* bitlet_out) {
  typedef typename Vectors<L>::U32 U32;
  typedef typename Words<W, L>::Vec Vec;
  constexpr int kBits = Words<W, L>::kBits;
  const int64_t g_size = view.group_size;
  const int64_t groups = view.groups();
  const int64_t windows = (g_size + window - 1) / window;
  const int cost_planes = kFixedPlanes > 0 ? kFixedPlanes : BitLength(g_size + windows);
  const int zero_planes = BitLength(windows);
  const W keep_word = W(~W{0}) << (kBits - width);  // columns 0..width-1
  const Vec keep = Vec{} + keep_word;
  std::vector<uint32_t> tile(V * g_size);
  // ones per column = cost - all-zero windows, both counted bit-sliced
  std::vector<int64_t> cost_sums(kBits, 0), zero_sums(kBits, 0);
  ColumnTotals<Vec, kBits, L> cost_totals(cost_planes), zero_totals(zero_planes);
  for (int64_t t = begin; t < end; ++t) {
    const TilePlace place = Place(view, t);
    Gather(view, place, tile.data());
    for (int part = 0; part < place.lanes; part += L) {
      const U32 emax = GroupEmax<L>(tile.data() + part, V, g_size);
      Vec cost[kPlanes] = {};
      Vec zero[kPlanes] = {};
      Vec lane_max = {};
      for (int64_t start = 0; start < g_size; start += window) {
        const int64_t stop = std::min<int64_t>(start + window, g_size);
        Vec any = {};
        for (int64_t l = start; l < stop; ++l) {
          const U32 u = LoadRow<L>(tile.data(), l, part);
          const U32 mag = u & kMagnitude;
          const U32 m = SignificandOf<L>(u);
          const Vec word = Words<W, L>::Align(m, emax - (mag >> 23)) & keep;
          any |= word;
          const Vec count = Words<W, L>::Popcount(word);
          lane_max = count > lane_max ? count : lane_max;
          Increment(cost, cost_planes, word);
        }
        const Vec empty = keep & ~any;
        Increment(cost, cost_planes, empty);
        Increment(zero, zero_planes, empty);
      }
      // lanes past place.lanes hold zeros: their windows are empty in both
      // counters, so they cancel in cost - zero
      cost_totals.Add(cost, cost_sums.data());
      zero_totals.Add(zero, zero_sums.data());
      if (lane_max_out != nullptr || bitlet_out != nullptr) {
        Vec bitlet = MaxCount(cost, cost_planes, keep);
        bitlet = bitlet > 1u ? bitlet : Vec{} + 1u;
        const int lanes = std::min(L, place.lanes - part);
        for (int v = 0; v < lanes; ++v) {
          const int64_t lane = part + v;
          const int64_t o = place.across_i ? place.i0 + lane : place.i0 * view.b + place.j0 + lane;
          if (lane_max_out != nullptr) lane_max_out[o * groups + place.g] = int32_t(lane_max[v]);
          if (bitlet_out != nullptr) bitlet_out[o * groups + place.g] = int32_t(bitlet[v]);
        }
      }
    }
  }
  cost_totals.Flush(cost_sums.data());
  zero_totals.Flush(zero_sums.data());
  for (int c = 0; c < width; ++c) columns[c] += cost_sums[c] - zero_sums[c];
}

template <int L>
MORTAR_INLINE void AlignedTilesImpl(const GroupedView& view, int width, int window,
                                    int64_t begin, int64_t end, int64_t* columns,
                                    int32_t* lane_max, int32_t* bitlet) {
  const int64_t windows = (view.group_size + window - 1) / window;
  const int planes = BitLength(view.group_size + windows);
  if (width <= 32) {
    switch (planes) {
      case 5:
        AlignedTilesTyped<uint32_t, 5, L>(view, width, window, begin, end, columns, lane_max,
                                          bitlet);
        return;
      case 6:
        AlignedTilesTyped<uint32_t, 6, L>(view, width, window, begin, end, columns, lane_max,
                                          bitlet);
        return;
      case 7:
        AlignedTilesTyped<uint32_t, 7, L>(view, width, window, begin, end, columns, lane_max,
                                          bitlet);
        return;
      default:
        AlignedTilesTyped<uint32_t, 0, L>(view, width, window, begin, end, columns, lane_max,
                                          bitlet);
        return;
    }
  }
  AlignedTilesTyped<uint64_t, 0, L>(view, width, window, begin, end, columns, lane_max, bitlet);
}

MORTAR_VARIANTS(AlignedTiles,
                (const GroupedView& view, int width, int window, int64_t begin, int64_t end,
                 int64_t* columns, int32_t* lane_max, int32_t* bitlet),
                (view, width, window, begin, end, columns, lane_max, bitlet))

// SPEC 2.4: bit j of an element d binades below its group's emax sits in
// column 23 - j + d, so it is kept iff j >= cut = 24 - columns + d. The kept
// bits are the top of the significand: clear the mantissa below the cut, or
// give +0.0 when even the hidden bit goes (cut >= 24). Specials are unchanged.
template <int L>
MORTAR_INLINE typename Vectors<L>::U32 BitxLanes(typename Vectors<L>::U32 u,
                                                 typename Vectors<L>::U32 emax, int columns) {
  typedef typename Vectors<L>::U32 U32;
  typedef typename Vectors<L>::I32 I32;
  const U32 mag = u & kMagnitude;
  const U32 normal = (U32)((mag - kMinNormal) <= (kMaxFinite - kMinNormal));
  const I32 cut = (I32)(emax - (mag >> 23)) + (24 - columns);  // d >= 0 where normal
  const I32 clamped = cut < 0 ? I32{} : (cut > 23 ? I32{} + 23 : cut);
  const U32 low = ((U32{} + 1u) << (U32)clamped) - 1u;
  const U32 pruned = (U32)(cut >= 24) ? U32{} : (u & ~low);
  return normal ? pruned : u;
}

// b == 1: a group is G consecutive words, read in place (a tile's lanes would
// be G words apart, and one lane of V when a == 1): the group's exponent
// maximum, then the pruning L words at a time (the last few through a
// zero-padded vector: +0.0 is left as it is).
template <int L>
MORTAR_INLINE void BitxRows(const GroupedView& view, int columns, int64_t begin, int64_t end,
                            uint32_t* out) {
  typedef typename Vectors<L>::U32 U32;
  const int64_t g_size = view.group_size;
  for (int64_t t = begin; t < end; ++t) {
    const TilePlace place = Place(view, t);
    const int64_t k0 = place.g * g_size;
    const int64_t rows = std::min<int64_t>(g_size, view.r - k0);
    for (int v = 0; v < place.lanes; ++v) {
      const uint32_t* src = view.data + (place.i0 + v) * view.r + k0;
      uint32_t* dst = out + (place.i0 + v) * view.r + k0;
      uint32_t emax = 0;
      for (int64_t l = 0; l < rows; ++l) {
        const uint32_t mag = src[l] & kMagnitude;
        const uint32_t e = IsNormal(mag) ? mag >> 23 : 0u;
        emax = e > emax ? e : emax;
      }
      const U32 emax_lanes = U32{} + emax;
      int64_t l = 0;
      for (; l + L <= rows; l += L) {
        U32 u;
        std::memcpy(&u, src + l, sizeof u);
        const U32 result = BitxLanes<L>(u, emax_lanes, columns);
        std::memcpy(dst + l, &result, sizeof result);
      }
      if (l < rows) {
        U32 u = {};
        std::memcpy(&u, src + l, sizeof(uint32_t) * (rows - l));
        const U32 result = BitxLanes<L>(u, emax_lanes, columns);
        std::memcpy(dst + l, &result, sizeof(uint32_t) * (rows - l));
      }
    }
  }
}

// b > 1: a band is one group's rows (up to G) of one i, over a chunk of up to
// kBandWords adjacent columns j. Its exponent maxima are taken row by row,
// then it is pruned row by row: both passes read (and the second writes)
// whole runs of adjacent words, forwards, so the hardware's prefetch follows
// (a tile of 16 lanes touched one cache line in each of its G rows, G pages
// apart, and stalled on them: 1.8-2.1x np.copy on a [3,3,512,5425] kernel
// through TensorFlow's op). The band's input is read twice; at G = 64 rows of
// 4 KiB it is still in L2 the second time.
constexpr int64_t kBandWords = 1024;

template <int L>
MORTAR_INLINE void BitxBands(const GroupedView& view, int columns, int64_t begin, int64_t end,
                             uint32_t* out) {
  typedef typename Vectors<L>::U32 U32;
  static_assert(kBandWords % L == 0, "a band's maxima are read L at a time");
  const int64_t g_size = view.group_size;
  const int64_t groups = view.groups();
  const int64_t chunks = (view.b + kBandWords - 1) / kBandWords;
  alignas(64) uint32_t emax[kBandWords];
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t i = unit / (groups * chunks);
    const int64_t g = (unit / chunks) % groups;
    const int64_t j0 = (unit % chunks) * kBandWords;
    const int64_t width = std::min(kBandWords, view.b - j0);
    const int64_t whole = width - width % L;
    const int64_t k0 = g * g_size;
    const int64_t rows = std::min<int64_t>(g_size, view.r - k0);
    const int64_t base = (i * view.r + k0) * view.b + j0;
    std::memset(emax, 0, sizeof emax);
    for (int64_t l = 0; l < rows; ++l) {
      const uint32_t* row = view.data + base + l * view.b;
      for (int64_t j = 0; j < width; j += L) {
        U32 u = {};
        std::memcpy(&u, row + j, sizeof(uint32_t) * (j < whole ? L : width - whole));
        const U32 e = ExponentOf<L>(u);
        U32 m;
        std::memcpy(&m, emax + j, sizeof m);
        m = e > m ? e : m;
        std::memcpy(emax + j, &m, sizeof m);
      }
    }
    for (int64_t l = 0; l < rows; ++l) {
      const uint32_t* row = view.data + base + l * view.b;
      uint32_t* dst = out + base + l * view.b;
      for (int64_t j = 0; j < width; j += L) {
        const size_t bytes = sizeof(uint32_t) * (j < whole ? L : width - whole);
        U32 u = {}, m;
        std::memcpy(&u, row + j, bytes);
        std::memcpy(&m, emax + j, sizeof m);
        const U32 result = BitxLanes<L>(u, m, columns);
        std::memcpy(dst + j, &result, bytes);
      }
    }
  }
}

// Units [begin, end) of BitxUnitCount(view): b == 1 tiles, else bands.
template <int L>
MORTAR_INLINE void BitxUnitsImpl(const GroupedView& view, int columns, int64_t begin,
                                 int64_t end, uint32_t* out) {
  if (view.b == 1) {
    BitxRows<L>(view, columns, begin, end, out);
  } else {
    BitxBands<L>(view, columns, begin, end, out);
  }
}

MORTAR_VARIANTS(BitxUnits,
                (const GroupedView& view, int columns, int64_t begin, int64_t end, uint32_t* out),
                (view, columns, begin, end, out))

// ---------------------------------------------------------------------------
// What a morph's record needs of (x, y) besides the aligned counts, in one
// pass over both, a block at a time while it is in L1: the ones of each word
// and of each significand (0 for special values), and max |y - x| / |x| in
// double over the x that are finite and nonzero (mortar_max_rel_error's
// arithmetic: r > w ? r : w, NaN noted apart).
//
// The division is the slow part, and the maximum rarely moves: a block is
// divided only when some element may beat the maximum w so far, tested by
// |y - x| > fl(fl(w * c) * |x|) with c = 1 - 2^-40, which is below w * |x|
// (each rounding adds at most 2^-53), so no element with fl(|y - x| / |x|) > w
// is passed over (that needs |y - x| > w * |x|, rounding being monotone), or a
// NaN difference. The loops are plain scalar code that GCC vectorises (double
// compares in vector extensions scalarise under GCC 12's AVX-512 target).

template <int L>
MORTAR_INLINE void PairTotalsImpl(const uint32_t* x, const uint32_t* y, int64_t n,
                                  int64_t* totals, double* worst, bool* saw_nan) {
  constexpr int64_t kBlock = 2048;  // 8 KiB of x and of y
  constexpr double kShrink = 1.0 - 1.0 / 1099511627776.0;  // 1 - 2^-40
  double w = *worst;
  double threshold = w * kShrink;
  bool nan = *saw_nan;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t count = std::min(kBlock, n - start);  // 32 * kBlock fits a lane's uint32
    const uint32_t* xb = x + start;
    const uint32_t* yb = y + start;
    typedef typename Vectors<L>::U32 U32;
    U32 wx = {}, sx = {}, wy = {}, sy = {};
    int64_t i = 0;
    for (; i + L <= count; i += L) {
      U32 u, v;
      std::memcpy(&u, xb + i, sizeof u);
      std::memcpy(&v, yb + i, sizeof v);
      wx += Words<uint32_t, L>::Popcount(u);
      sx += Words<uint32_t, L>::Popcount(SignificandOf<L>(u));
      wy += Words<uint32_t, L>::Popcount(v);
      sy += Words<uint32_t, L>::Popcount(SignificandOf<L>(v));
    }
    for (int l = 0; l < L; ++l) {
      totals[0] += wx[l];
      totals[1] += sx[l];
      totals[2] += wy[l];
      totals[3] += sy[l];
    }
    for (; i < count; ++i) {
      totals[0] += __builtin_popcount(xb[i]);
      totals[1] += __builtin_popcount(Significand(xb[i]));
      totals[2] += __builtin_popcount(yb[i]);
      totals[3] += __builtin_popcount(Significand(yb[i]));
    }
    const float* xf = reinterpret_cast<const float*>(xb);
    const float* yf = reinterpret_cast<const float*>(yb);
    int64_t candidates = 0;
    for (i = 0; i < count; ++i) {
      const double xi = xf[i];
      const double ax = std::fabs(xi);
      const double d = std::fabs(double(yf[i]) - xi);
      const int64_t ok = (ax <= double(FLT_MAX)) & (ax != 0.0);
      candidates |= ok & ((d > threshold * ax) | (d != d));
    }
    if (candidates == 0) continue;
    for (i = 0; i < count; ++i) {  // the exact arithmetic, on this block only
      const double xi = xf[i];
      if (!(std::fabs(xi) <= double(FLT_MAX)) || xi == 0.0) continue;
      const double r = std::fabs(double(yf[i]) - xi) / std::fabs(xi);
      nan |= std::isnan(r);
      w = r > w ? r : w;
    }
    threshold = w * kShrink;
  }
  *worst = w;
  *saw_nan = nan;
}

MORTAR_VARIANTS(PairTotals,
                (const uint32_t* x, const uint32_t* y, int64_t n, int64_t* totals, double* worst,
                 bool* saw_nan),
                (x, y, n, totals, worst, saw_nan))

}  // namespace

void CountBits(const uint32_t* words, int64_t n, bool significand, int64_t* counts) {
  MORTAR_DISPATCH(CountBits, (words, n, significand, counts))
}

void MorphRange(Method method, const uint32_t* in, uint32_t* out, int64_t n, double p,
                int keep_bits) {
  MORTAR_DISPATCH(MorphRange, (method, in, out, n, p, keep_bits))
}

void BallEndsRange(const uint32_t* magnitudes, int64_t n, double p, bool exact,
                   uint32_t* lower, uint32_t* upper) {
  MORTAR_DISPATCH(BallEndsRange, (magnitudes, n, p, exact, lower, upper))
}

void PairTotals(const uint32_t* x, const uint32_t* y, int64_t n, int64_t* totals, double* worst,
                bool* saw_nan) {
  MORTAR_DISPATCH(PairTotals, (x, y, n, totals, worst, saw_nan))
}

int64_t TileCount(const GroupedView& view) {
  const int64_t groups = view.groups();
  if (view.a == 0 || view.b == 0 || view.r == 0) return 0;
  if (view.b == 1) return ((view.a + V - 1) / V) * groups;
  return view.a * groups * ((view.b + V - 1) / V);
}

void AlignedTiles(const GroupedView& view, int width, int window, int64_t begin, int64_t end,
                  int64_t* columns, int32_t* lane_max, int32_t* bitlet) {
  MORTAR_DISPATCH(AlignedTiles, (view, width, window, begin, end, columns, lane_max, bitlet))
}

int64_t BitxUnitWords(const GroupedView& view) {
  return (view.b == 1 ? int64_t{V} : std::min(kBandWords, view.b)) * view.group_size;
}

int64_t BitxUnitCount(const GroupedView& view) {
  if (view.a == 0 || view.b == 0 || view.r == 0) return 0;
  if (view.b == 1) return TileCount(view);
  return view.a * view.groups() * ((view.b + kBandWords - 1) / kBandWords);
}

void BitxUnits(const GroupedView& view, int columns, int64_t begin, int64_t end, uint32_t* out) {
  MORTAR_DISPATCH(BitxUnits, (view, columns, begin, end, out))
}

const char* IsaName() {
  switch (kIsa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace mortar
