// MortarMorph and MortarBitx: the shared kernels of mortar_tf/cc/kernels.h,
// sharded over TF's CPU worker pool.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"
#include "mortar_tf/cc/kernels.h"

namespace tensorflow {
namespace {

class MortarMorphOp : public OpKernel {
 public:
  explicit MortarMorphOp(OpKernelConstruction* context) : OpKernel(context) {
    std::string method;
    OP_REQUIRES_OK(context, context->GetAttr("method", &method));
    method_ = method == "paper"         ? mortar::Method::kPaper
              : method == "fewest_ones" ? mortar::Method::kFewestOnes
                                        : mortar::Method::kRound;
    OP_REQUIRES_OK(context, context->GetAttr("keep_bits", &keep_bits_));
    OP_REQUIRES(context, keep_bits_ >= 0 && keep_bits_ <= 23,
                errors::InvalidArgument("keep_bits must be in 0..23, got ", keep_bits_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& precision = context->input(1);
    OP_REQUIRES(context, TensorShapeUtils::IsScalar(precision.shape()),
                errors::InvalidArgument("precision must be a scalar, got shape ",
                                        precision.shape().DebugString()));
    const double p = precision.scalar<double>()();
    if (method_ != mortar::Method::kRound) {
      OP_REQUIRES(context, std::isfinite(p) && p > 0.0 && p <= 1.0,
                  errors::InvalidArgument("precision must satisfy 0 < P <= 1, got ", p));
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    const uint32_t* in = reinterpret_cast<const uint32_t*>(x.flat<float>().data());
    uint32_t* out = reinterpret_cast<uint32_t*>(y->flat<float>().data());
    const mortar::Method method = method_;
    const int keep_bits = keep_bits_;
    auto work = [=](int64_t begin, int64_t end) {
      mortar::MorphRange(method, in + begin, out + begin, end - begin, p, keep_bits);
    };
    const auto& workers = *context->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = method_ == mortar::Method::kFewestOnes ? 60 : 20;  // cycles per weight
    Shard(workers.num_threads, workers.workers, n, cost, work);
  }

 private:
  mortar::Method method_;
  int keep_bits_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("MortarMorph").Device(DEVICE_CPU), MortarMorphOp);

class MortarBitxOp : public OpKernel {
 public:
  explicit MortarBitxOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("group_size", &group_size_));
    OP_REQUIRES_OK(context, context->GetAttr("columns", &columns_));
    OP_REQUIRES_OK(context, context->GetAttr("view", &view_));
    OP_REQUIRES(context, group_size_ >= 1 && group_size_ <= mortar::kMaxGroupSize,
                errors::InvalidArgument("group_size must be in 1..", mortar::kMaxGroupSize,
                                        ", got ", group_size_));
    OP_REQUIRES(context, columns_ >= 1 && columns_ <= 64,
                errors::InvalidArgument("columns must be in 1..64, got ", columns_));
    OP_REQUIRES(context, view_.size() == 3 && view_[0] >= 0 && view_[1] >= 0 && view_[2] >= 0,
                errors::InvalidArgument("view must be [a, r, b] (three sizes >= 0)"));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    OP_REQUIRES(context, x.NumElements() == view_[0] * view_[1] * view_[2],
                errors::InvalidArgument("view [", view_[0], ", ", view_[1], ", ", view_[2],
                                        "] does not cover x of shape ",
                                        x.shape().DebugString()));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    const mortar::GroupedView view{reinterpret_cast<const uint32_t*>(x.flat<float>().data()),
                                   view_[0], view_[1], view_[2], group_size_};
    const int64_t units = mortar::BitxUnitCount(view);
    if (units == 0) return;
    uint32_t* out = reinterpret_cast<uint32_t*>(y->flat<float>().data());
    const int columns = int(columns_);
    auto work = [&, out, columns](int64_t begin, int64_t end) {
      mortar::BitxUnits(view, columns, begin, end, out);
    };
    const auto& workers = *context->device()->tensorflow_cpu_worker_threads();
    Shard(workers.num_threads, workers.workers, units, mortar::BitxUnitWords(view) * 4, work);
  }

 private:
  int64_t group_size_ = 16;
  int64_t columns_ = 8;
  std::vector<int64_t> view_;
};

REGISTER_KERNEL_BUILDER(Name("MortarBitx").Device(DEVICE_CPU), MortarBitxOp);

}  // namespace
}  // namespace tensorflow
