// MortarBitCount and MortarAlignedCount: the shared kernels of
// mortar_tf/cc/kernels.h, sharded over TF's CPU worker pool with per-shard
// counters merged at the end.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"
#include "mortar_tf/cc/kernels.h"

namespace tensorflow {
namespace {

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
        mortar::CountBits(words + begin, end - begin, significand, local);
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

class MortarAlignedCountOp : public OpKernel {
 public:
  explicit MortarAlignedCountOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("group_size", &group_size_));
    OP_REQUIRES_OK(context, context->GetAttr("width", &width_));
    OP_REQUIRES_OK(context, context->GetAttr("window", &window_));
    OP_REQUIRES(context, group_size_ >= 1 && group_size_ <= mortar::kMaxGroupSize,
                errors::InvalidArgument("group_size must be in 1..", mortar::kMaxGroupSize,
                                        ", got ", group_size_));
    OP_REQUIRES(context, width_ >= 1 && width_ <= 64,
                errors::InvalidArgument("width must be in 1..64, got ", width_));
    OP_REQUIRES(context, window_ >= 1,
                errors::InvalidArgument("window must be >= 1, got ", window_));
    // A window of G lanes or more is one window over the group (the same
    // figures), and a G-sized one fits the int the kernels take: an int64
    // attr past 2^31 would wrap.
    window_ = std::min(window_, group_size_);
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
    const mortar::GroupedView view{reinterpret_cast<const uint32_t*>(x.flat<float>().data()),
                                   rows, r, 1, group_size_};
    const int64_t tiles = mortar::TileCount(view);
    if (tiles > 0) {
      int32_t* lane_max = lane_max_t->flat<int32_t>().data();
      int32_t* bitlet = bitlet_t->flat<int32_t>().data();
      absl::Mutex mu;
      const int width = int(width_);
      const int window = int(window_);
      auto work = [&, lane_max, bitlet](int64_t begin, int64_t end) {
        std::vector<int64_t> local(width, 0);
        mortar::AlignedTiles(view, width, window, begin, end, local.data(), lane_max, bitlet);
        absl::MutexLock lock(&mu);
        for (int c = 0; c < width; ++c) columns[c] += local[c];
      };
      const auto& workers = *context->device()->tensorflow_cpu_worker_threads();
      Shard(workers.num_threads, workers.workers, tiles,
            int64_t{group_size_} * mortar::kTileLanes * 4, work);
    }
    auto out = columns_t->vec<int64_t>();
    int64_t total = 0;
    for (int c = 0; c < width_; ++c) {
      out(c) = columns[c];
      total += columns[c];
    }
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
