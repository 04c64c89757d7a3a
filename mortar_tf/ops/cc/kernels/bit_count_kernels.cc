// MortarBitCount and MortarAlignedCount: bit statistics at memory speed,
// sharded over TF's CPU worker pool with per-shard counters merged at the end.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"
#include "mortar_tf/ops/cc/kernels/float_bits.h"

namespace tensorflow {
namespace {

// Eight uint32 lanes: one AVX2 register (two SSE ones in the baseline clone).
typedef uint32_t Lanes __attribute__((vector_size(32)));
constexpr int kLanes = 8;

// Carry-save adder per bit: a + b + c = 2 * high + low, bit-sliced.
inline void Csa(Lanes& high, Lanes& low, Lanes a, Lanes b, Lanes c) {
  const Lanes u = a ^ b;
  high = (a & b) | (u & c);
  low = u ^ c;
}

inline Lanes Load(const uint32_t* words, bool significand) {
  Lanes u;
  std::memcpy(&u, words, sizeof u);
  if (!significand) return u;
  const Lanes mag = u & mortar::kMagnitude;
  const Lanes normal = (mag - mortar::kMinNormal) <= (mortar::kMaxFinite - mortar::kMinNormal);
  return ((mag & mortar::kMantissa) | mortar::kHidden) & normal;  // normal: all ones or 0
}

// Adds 8 vectors (64 words) into the bit-sliced ones/twos/fours counters and
// returns the eights carried out: two half adders of pairs, then of the twos.
inline Lanes AddEight(const uint32_t* w, bool significand, Lanes& ones, Lanes& twos,
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

// Ones per bit position (LSB first) of n words, added to counts.
// Positional popcount with a Harley-Seal carry-save network: 16 vectors of 8
// words are reduced to bit-sliced ones/twos/fours/eights counters and one
// "sixteens" vector, and only that vector is spread over the 32 per-bit lane
// counters, so the per-bit work happens once per 128 words instead of per word.
__attribute__((target_clones("avx2", "default")))
void CountBits(const uint32_t* words, int64_t n, bool significand, int64_t* counts) {
  Lanes ones = {}, twos = {}, fours = {}, eights = {};
  Lanes sixteens_per_bit[32] = {};
  constexpr int64_t kBlock = 16 * kLanes;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    Lanes sixteens;
    const Lanes eights_a = AddEight(words + i, significand, ones, twos, fours);
    const Lanes eights_b = AddEight(words + i + 8 * kLanes, significand, ones, twos, fours);
    Csa(sixteens, eights, eights, eights_a, eights_b);
    for (int b = 0; b < 32; ++b) sixteens_per_bit[b] += (sixteens >> b) & 1u;
  }
  for (int b = 0; b < 32; ++b) {
    int64_t total = 0;
    for (int l = 0; l < kLanes; ++l) {
      total += 16 * int64_t{sixteens_per_bit[b][l]} + 8 * ((eights[l] >> b) & 1u) +
               4 * ((fours[l] >> b) & 1u) + 2 * ((twos[l] >> b) & 1u) + ((ones[l] >> b) & 1u);
    }
    counts[b] += total;
  }
  for (; i < n; ++i) {  // the tail, one word at a time
    const uint32_t v = significand ? mortar::Significand(words[i]) : words[i];
    for (int b = 0; b < 32; ++b) counts[b] += (v >> b) & 1u;
  }
}

class MortarBitCountOp : public OpKernel {
 public:
  explicit MortarBitCountOp(OpKernelConstruction* context) : OpKernel(context) {
    std::string domain;
    OP_REQUIRES_OK(context, context->GetAttr("domain", &domain));
    significand_ = domain == "significand";
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const int bits = significand_ ? 24 : 32;
    Tensor* histogram = nullptr;
    Tensor* total = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({bits}), &histogram));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({}), &total));
    int64_t counts[32] = {};
    const int64_t n = x.NumElements();
    if (n > 0) {
      const uint32_t* words = reinterpret_cast<const uint32_t*>(x.flat<float>().data());
      absl::Mutex mu;
      const bool significand = significand_;
      auto work = [&, words, significand](int64_t begin, int64_t end) {
        int64_t local[32] = {};
        CountBits(words + begin, end - begin, significand, local);
        absl::MutexLock lock(&mu);
        for (int b = 0; b < 32; ++b) counts[b] += local[b];
      };
      const auto& workers = *context->device()->tensorflow_cpu_worker_threads();
      Shard(workers.num_threads, workers.workers, n, 40, work);
    }
    auto out = histogram->vec<int64_t>();
    int64_t sum = 0;
    for (int b = 0; b < bits; ++b) {
      out(b) = counts[bits - 1 - b];  // most significant first
      sum += counts[bits - 1 - b];
    }
    total->scalar<int64_t>()() = sum;
  }

 private:
  bool significand_ = false;
};

REGISTER_KERNEL_BUILDER(Name("MortarBitCount").Device(DEVICE_CPU), MortarBitCountOp);

// Bit-sliced counters: plane k holds bit k of a count kept for every one of the
// 64 columns at once (column c is bit 63 - c of an aligned word), so adding a
// word's ones to all columns is a carry chain over the planes, whatever the
// width.
constexpr int kPlanes = 16;

// Adds x to a counter of `planes` planes; a fixed trip count keeps the loop
// free of data-dependent branches (the caller sizes `planes` for its maximum).
__attribute__((always_inline)) inline void Increment(uint64_t* counter, int planes, uint64_t x) {
  for (int k = 0; k < planes; ++k) {
    const uint64_t carry = counter[k] & x;
    counter[k] ^= x;
    x = carry;
  }
}

// The largest count among the columns in `keep`: from the top plane down, keep
// only the columns that have the bit whenever any of them has it.
__attribute__((always_inline)) inline int32_t MaxCount(const uint64_t* counter, int planes, uint64_t keep) {
  int32_t value = 0;
  for (int k = planes - 1; k >= 0; --k) {
    const uint64_t with_bit = keep & counter[k];
    const bool any = with_bit != 0;
    keep = any ? with_bit : keep;
    value |= int32_t{any} << k;
  }
  return value;
}

inline int BitLength(int64_t v) {
  int n = 0;
  while ((int64_t{1} << n) <= v) ++n;
  return n;
}

// Column totals over many groups: each group's bit-sliced counter (plane k =
// weight 2^k) is added to a second-level bit-sliced counter per k (a carry
// chain that stops early: it runs once per group, not per lane), flushed to
// int64 totals before its 16 planes could overflow.
class ColumnTotals {
 public:
  explicit ColumnTotals(int width) : columns_(width, 0) {}

  void Add(const uint64_t* group_counter, int planes) {
    for (int k = 0; k < planes; ++k) {
      uint64_t x = group_counter[k];
      for (int j = 0; x != 0; ++j) {
        const uint64_t carry = levels_[k][j] & x;
        levels_[k][j] ^= x;
        x = carry;
      }
    }
    if (++groups_ == (1 << kPlanes) - 1) Flush();
  }

  const std::vector<int64_t>& Flush() {
    for (int k = 0; k < kPlanes; ++k) {
      for (int j = 0; j < kPlanes; ++j) {
        const uint64_t plane = levels_[k][j];
        for (size_t c = 0; plane != 0 && c < columns_.size(); ++c) {
          columns_[c] += int64_t((plane >> (63 - c)) & 1u) << (k + j);
        }
        levels_[k][j] = 0;
      }
    }
    groups_ = 0;
    return columns_;
  }

 private:
  uint64_t levels_[kPlanes][kPlanes] = {};
  int64_t groups_ = 0;
  std::vector<int64_t> columns_;
};

struct GroupStats {
  int32_t lane_max;
  int32_t bitlet;
};

struct GroupShape {
  int group_size, width, window;
  int cost_planes;  // enough for group_size + windows
  int zero_planes;  // enough for windows
  uint64_t keep;    // columns 0..width-1 at bits 63..
};

// One group (SPEC 3 and 4): `lanes` real elements start at `values`; the group
// has shape.group_size lanes, the rest +0.0 padding (all-zero words, which
// still count as all-zero windows). Per column it counts cost = ones +
// all-zero windows, and zero windows apart, so ones = cost - zero windows
// without a second counter per lane.
__attribute__((always_inline)) inline GroupStats AlignGroup(const uint32_t* values, int lanes, const GroupShape& shape,
                             ColumnTotals* costs, ColumnTotals* zeros, int64_t* total) {
  int emax = 0;
  for (int l = 0; l < lanes; ++l) {
    const int e = int((values[l] >> 23) & 0xFF);
    emax = std::max(emax, mortar::Significand(values[l]) != 0 ? e : 0);
  }
  uint64_t cost[kPlanes] = {};
  uint64_t zero[kPlanes] = {};
  int32_t lane_max = 0;
  for (int start = 0; start < shape.group_size; start += shape.window) {
    const int stop = std::min(std::min(start + shape.window, shape.group_size), lanes);
    uint64_t any = 0;
    for (int l = start; l < stop; ++l) {
      const uint32_t m = mortar::Significand(values[l]);
      const int d = emax - int((values[l] >> 23) & 0xFF);
      // bit j of m lands in column 23 - j + d, i.e. bit 40 + j - d of the word
      const uint64_t word = (d < 64) ? ((uint64_t{m} << 40) >> (d & 63)) & shape.keep : 0;
      any |= word;
      const int32_t count = __builtin_popcountll(word);
      lane_max = std::max(lane_max, count);
      *total += count;
      Increment(cost, shape.cost_planes, word);
    }
    const uint64_t empty = shape.keep & ~any;
    Increment(cost, shape.cost_planes, empty);
    Increment(zero, shape.zero_planes, empty);
  }
  costs->Add(cost, shape.cost_planes);
  zeros->Add(zero, shape.zero_planes);
  return {lane_max, std::max<int32_t>(1, MaxCount(cost, shape.cost_planes, shape.keep))};
}

// Groups [begin, end) of a [rows, r] matrix, `groups` per row. Cloned for CPUs
// with the popcnt instruction (by feature: "arch=" clones dispatch on the CPU
// model and miss e.g. AMD EPYC) and a baseline, which calls libgcc's popcount.
__attribute__((target_clones("popcnt", "default")))
void AlignRange(const uint32_t* data, int64_t r, int64_t groups, int64_t begin, int64_t end,
                const GroupShape& shape, int32_t* lane_max, int32_t* bitlet,
                ColumnTotals* costs, ColumnTotals* zeros, int64_t* total) {
  int64_t row = begin / groups;
  int64_t first = (begin % groups) * shape.group_size;
  for (int64_t unit = begin; unit < end; ++unit) {
    const int lanes = int(std::min<int64_t>(shape.group_size, r - first));
    const GroupStats stats = AlignGroup(data + row * r + first, lanes, shape, costs, zeros, total);
    lane_max[unit] = stats.lane_max;
    bitlet[unit] = stats.bitlet;
    first += shape.group_size;
    if (first >= r) {
      first = 0;
      ++row;
    }
  }
}

class MortarAlignedCountOp : public OpKernel {
 public:
  explicit MortarAlignedCountOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("group_size", &group_size_));
    OP_REQUIRES_OK(context, context->GetAttr("width", &width_));
    OP_REQUIRES_OK(context, context->GetAttr("window", &window_));
    OP_REQUIRES(context, group_size_ >= 1 && group_size_ <= 4096,
                errors::InvalidArgument("group_size must be in 1..4096, got ", group_size_));
    OP_REQUIRES(context, width_ >= 1 && width_ <= 64,
                errors::InvalidArgument("width must be in 1..64, got ", width_));
    OP_REQUIRES(context, window_ >= 1,
                errors::InvalidArgument("window must be >= 1, got ", window_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    OP_REQUIRES(context, x.dims() == 2,
                errors::InvalidArgument("x must be a [rows, R] matrix, got shape ",
                                        x.shape().DebugString()));
    const int64_t rows = x.dim_size(0);
    const int64_t r = x.dim_size(1);
    const int64_t groups = (r + group_size_ - 1) / group_size_;
    Tensor* columns_t = nullptr;
    Tensor* total_t = nullptr;
    Tensor* lane_max_t = nullptr;
    Tensor* bitlet_t = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({width_}), &columns_t));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({}), &total_t));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({rows, groups}), &lane_max_t));
    OP_REQUIRES_OK(context, context->allocate_output(3, TensorShape({rows, groups}), &bitlet_t));
    std::vector<int64_t> columns(width_, 0);
    int64_t total = 0;
    const int64_t units = rows * groups;
    if (units > 0) {
      const uint32_t* data = reinterpret_cast<const uint32_t*>(x.flat<float>().data());
      int32_t* lane_max = lane_max_t->flat<int32_t>().data();
      int32_t* bitlet = bitlet_t->flat<int32_t>().data();
      absl::Mutex mu;
      const int width = width_;
      const int64_t windows = (group_size_ + window_ - 1) / window_;
      const GroupShape shape{int(group_size_), width, int(window_), BitLength(group_size_ + windows),
                             BitLength(windows), ~uint64_t{0} << (64 - width)};
      auto work = [&, data, lane_max, bitlet](int64_t begin, int64_t end) {
        ColumnTotals costs(width), zeros(width);
        int64_t local_total = 0;
        AlignRange(data, r, groups, begin, end, shape, lane_max, bitlet, &costs, &zeros,
                   &local_total);
        const std::vector<int64_t>& cost_sums = costs.Flush();
        const std::vector<int64_t>& zero_sums = zeros.Flush();
        absl::MutexLock lock(&mu);
        for (int c = 0; c < width; ++c) columns[c] += cost_sums[c] - zero_sums[c];
        total += local_total;
      };
      const auto& workers = *context->device()->tensorflow_cpu_worker_threads();
      Shard(workers.num_threads, workers.workers, units, int64_t{group_size_} * 30, work);
    }
    auto out = columns_t->vec<int64_t>();
    for (int c = 0; c < width_; ++c) out(c) = columns[c];
    total_t->scalar<int64_t>()() = total;
  }

 private:
  int64_t group_size_ = 16;
  int64_t width_ = 24;
  int64_t window_ = 8;
};

REGISTER_KERNEL_BUILDER(Name("MortarAlignedCount").Device(DEVICE_CPU), MortarAlignedCountOp);

}  // namespace
}  // namespace tensorflow
