// Per-weight float32 bit arithmetic of SPEC sections 1-3, shared by the kernels.
//
// Every function here mirrors the numpy reference in mortar_tf/morphing.py and
// mortar_tf/bits.py operation for operation, so results agree bit for bit:
// the same integer reformulation of the ball test, the same float32 tricks for
// powers of two, the same double arithmetic (built with -ffp-contract=off so
// no multiply-add is fused). Hazards handled: special values pass through,
// unsigned arithmetic only where a value can wrap, no shift by >= 32 or 64.

#ifndef MORTAR_TF_CC_FLOAT_BITS_H_
#define MORTAR_TF_CC_FLOAT_BITS_H_

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mortar {

constexpr uint32_t kSign = 0x80000000u;
constexpr uint32_t kMagnitude = 0x7FFFFFFFu;
constexpr uint32_t kExponent = 0x7F800000u;
constexpr uint32_t kMantissa = 0x007FFFFFu;
constexpr uint32_t kHidden = 0x00800000u;
constexpr uint32_t kMinNormal = 0x00800000u;
constexpr uint32_t kMaxFinite = 0x7F7FFFFFu;

inline float AsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t AsBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// cond ? a : b with masks: GCC if-converts a few ternaries but turns longer
// chains of them into branches, which stops vectorisation.
inline uint32_t Select(bool cond, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);
  return (a & mask) | (b & ~mask);
}

// Biased exponent 1..254, in one unsigned compare (below 2^-126 wraps to huge).
inline bool IsNormal(uint32_t mag) { return mag - kMinNormal <= kMaxFinite - kMinNormal; }

// 2^floor(log2(v)) for v < 2^24 (exact in float32), 0 for 0. Only the low 24
// bits are read, so a don't-care input can never make an out-of-range
// float-to-int conversion; int32 conversions keep it vectorisable (AVX2 has no
// unsigned ones).
inline uint32_t PowerOfHighestBit24(uint32_t v) {
  const float f = static_cast<float>(static_cast<int32_t>(v & 0x00FFFFFFu));
  return static_cast<uint32_t>(static_cast<int32_t>(AsFloat(AsBits(f) & 0xFF800000u)));
}

// The 24-bit significand with the hidden bit; 0 for special values.
inline uint32_t Significand(uint32_t u) {
  const uint32_t mag = u & kMagnitude;
  return IsNormal(mag) ? ((mag & kMantissa) | kHidden) : 0u;
}

// ceil(fl(p * m)) and ceil(2 * fl(p * m)) for m < 2^24, 0 < p <= 1, from one
// product and one truncation (no std::ceil: GCC vectorises it only under
// -fno-trapping-math, which we do not want near bit-exact code). With
// t = floor(fl(p * m)) < 2^24, f = fl(p * m) - t is exact (Sterbenz when
// t >= 1), so the two are t + [f > 0] and 2t + [f > 0] + [f > 0.5]
// (2 * fl(p * m) is exact). No FP op sits in a branch: it vectorises.
struct CeilProducts {
  uint32_t once, twice;
};

inline CeilProducts CeilProduct(double p, uint32_t m) {
  const double product = p * static_cast<double>(static_cast<int32_t>(m));
  const int32_t t = static_cast<int32_t>(product);  // truncation = floor here
  const double f = product - static_cast<double>(t);
  const uint32_t above = static_cast<uint32_t>(f > 0.0);
  return {static_cast<uint32_t>(t) + above,
          2u * static_cast<uint32_t>(t) + above + static_cast<uint32_t>(f > 0.5)};
}

// SPEC 2.1, in O(1): see morphing._paper_bits for the proof. Branch-free (every
// element computes everything, selects at the end) so loops vectorise.
inline uint32_t Paper(uint32_t u, double p) {
  const uint32_t mag = u & kMagnitude;
  const uint32_t m = (mag & kMantissa) | kHidden;
  const uint32_t m_plus_d = m + CeilProduct(p, m).once - 1u;
  const uint32_t reach = PowerOfHighestBit24((m ^ m_plus_d) >> 1) << 1;
  const uint32_t below_reach = reach - static_cast<uint32_t>(reach != 0);
  uint32_t patterns = m & ~(m >> 1) & below_reach;
  // exponent 254: the carry at b = 23 would be inf
  patterns &= Select(mag >= (254u << 23), ~kHidden, ~0u);
  const uint32_t step = PowerOfHighestBit24(patterns);
  const uint32_t low = ((step << 1) - 1u) & kMantissa;
  const uint32_t morphed = ((mag | low) + 1u) | (u & kSign);
  return Select((step != 0) & IsNormal(mag), morphed, u);
}

// SPEC 2.3: round half away on the magnitude word; a carry into exponent 255
// truncates instead.
inline uint32_t Round(uint32_t u, int keep_bits) {
  const uint32_t mag = u & kMagnitude;
  if (!IsNormal(mag) || keep_bits >= 23) return u;
  const int drop = 23 - keep_bits;
  const uint32_t keep_mask = ~((1u << drop) - 1u);
  uint32_t rounded = (mag + (1u << (drop - 1))) & keep_mask;
  if (rounded >= kExponent) rounded = mag & keep_mask;
  return rounded | (u & kSign);
}

// SPEC's predicate, literally: fabs((double)y - (double)x) < P * fabs((double)x).
inline bool InBall(uint32_t y_mag, double x_abs, double threshold) {
  return std::fabs(static_cast<double>(AsFloat(y_mag)) - x_abs) < threshold;
}

// Ball ends for P <= 0.5 in integer arithmetic: see morphing._ball_ends_exact.
// Branch-free, like Paper.
inline void BallEndsExact(uint32_t mag, double p, uint32_t* a, uint32_t* b) {
  const uint32_t exp_word = mag & kExponent;
  const uint32_t m = (mag & kMantissa) | kHidden;
  const CeilProducts ceils = CeilProduct(p, m);
  const uint32_t d = ceils.once - 1u;
  const uint32_t up = m + d;
  const bool next_binade = up >= (1u << 24);
  const uint32_t upper = Select(next_binade, exp_word + (up >> 1), mag + d);
  *b = Select(next_binade & (exp_word == (254u << 23)), kMaxFinite, upper);
  const uint32_t down = m - d;
  const uint32_t k = 2u * m - (ceils.twice - 1u);
  const bool below_empty = k >= (1u << 24);
  uint32_t lower = Select(below_empty, exp_word, exp_word - (2u << 23) + k);
  lower = Select(!below_empty & (exp_word == (1u << 23)), kMinNormal, lower);
  *a = Select(down > (1u << 23), mag - d, lower);
}

// Ball ends for any P: guess, prove with the predicate, bisect if the proof
// fails (see morphing._ball_ends).
inline void BallEndsGeneral(uint32_t mag, double p, uint32_t* a_out, uint32_t* b_out) {
  const double x = static_cast<double>(AsFloat(mag));
  const double threshold = p * x;
  double low = x - threshold;
  if (low < 0.0) low = 0.0;
  const float low_f = static_cast<float>(low);
  uint32_t a = AsBits(low_f);
  if (static_cast<double>(low_f) < low) a += 1u;
  if (a < kMinNormal) a = kMinNormal;
  double high = x + threshold;
  if (high > static_cast<double>(FLT_MAX)) high = static_cast<double>(FLT_MAX);
  const float high_f = static_cast<float>(high);
  uint32_t b = AsBits(high_f);
  if (static_cast<double>(high_f) > high) b -= 1u;
  if (b > kMaxFinite) b = kMaxFinite;
  const bool a_ok = InBall(a, x, threshold) && (a == kMinNormal || !InBall(a - 1u, x, threshold));
  const bool b_ok = InBall(b, x, threshold) && (b == kMaxFinite || !InBall(b + 1u, x, threshold));
  if (!(a_ok && b_ok)) {
    uint32_t lo = kMinNormal, hi = mag;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2u;
      if (InBall(mid, x, threshold)) hi = mid; else lo = mid + 1u;
    }
    a = lo;
    lo = mag;
    hi = kMaxFinite;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1u) / 2u;
      if (InBall(mid, x, threshold)) lo = mid; else hi = mid - 1u;
    }
    b = lo;
  }
  *a_out = a;
  *b_out = b;
}

// The fewest-ones choice given the ball ends (SPEC 2.2; see
// morphing._fewest_ones_bits for the proof). Branch-free: both the power-of-two
// and the same-binade answers are computed, then one is selected.
inline uint32_t FewestOnesBetween(uint32_t u, uint32_t a, uint32_t b) {
  const uint32_t mag = u & kMagnitude;
  const uint32_t p_lo = mag & kExponent;
  const uint32_t p_hi = p_lo + (1u << 23);
  const bool take_lo = (p_lo >= a) & ((p_hi > b) | (mag - p_lo <= p_hi - mag));
  const uint32_t power = Select(take_lo, p_lo, p_hi);
  const uint32_t split = PowerOfHighestBit24((a ^ b) & kMantissa);  // 2^p
  const uint32_t prefix = a & ~((split << 1) - 1u);
  const uint32_t low_a = a - prefix;
  const uint32_t least = PowerOfHighestBit24(2u * low_a - 1u);  // smallest 2^q >= low_a
  const uint32_t r = mag - prefix;
  const uint32_t below = PowerOfHighestBit24(r);
  // one up when strictly nearer (2r > 3 below); a tie stays below
  uint32_t nearest = below << static_cast<uint32_t>(2u * r > 3u * below);
  nearest = std::min(std::max(nearest, least), split);
  const uint32_t same = Select(low_a == 0, a, prefix | nearest);
  const uint32_t result = Select(a == b, mag, Select((a ^ b) >= (1u << 23), power, same));
  return result | (u & kSign);
}

// SPEC 2.2 for P <= 0.5, branch-free so that loops vectorise. A P*|x| that
// underflows in double gives D = 0 here, so a == b == |x|: x is returned.
inline uint32_t FewestOnesExact(uint32_t u, double p) {
  const uint32_t mag = u & kMagnitude;
  const bool normal = IsNormal(mag);
  const uint32_t safe = Select(normal, mag, 0x3F800000u);  // specials: 1.0 stands in
  uint32_t a, b;
  BallEndsExact(safe, p, &a, &b);
  const uint32_t morphed = FewestOnesBetween((u & kSign) | safe, a, b);
  return Select(normal, morphed, u);
}

// SPEC 2.2 for any P (scalar: the general ball ends may bisect).
inline uint32_t FewestOnes(uint32_t u, double p) {
  const uint32_t mag = u & kMagnitude;
  if (!IsNormal(mag)) return u;
  const double x = static_cast<double>(AsFloat(mag));
  if (!(p * x > 0.0)) return u;  // P*|x| underflows: the ball is at most x itself
  if (p <= 0.5) return FewestOnesExact(u, p);
  uint32_t a, b;
  BallEndsGeneral(mag, p, &a, &b);
  return FewestOnesBetween(u, a, b);
}

}  // namespace mortar

#endif  // MORTAR_TF_CC_FLOAT_BITS_H_
