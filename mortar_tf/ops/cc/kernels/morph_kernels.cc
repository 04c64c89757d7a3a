// MortarMorph: per-weight morphing, sharded over TF's CPU worker pool.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"
#include "mortar_tf/ops/cc/kernels/float_bits.h"

namespace tensorflow {
namespace {

enum class Method { kPaper, kFewestOnes, kRound };

// One loop per method, cloned for AVX2 and a baseline; the dispatcher picks at
// load time. The loops are branch-light so the compiler can vectorise them.
__attribute__((target_clones("avx2", "default")))
void PaperRange(const uint32_t* in, uint32_t* out, int64_t n, double p) {
  for (int64_t i = 0; i < n; ++i) out[i] = mortar::Paper(in[i], p);
}

__attribute__((target_clones("avx2", "default")))
void FewestOnesRange(const uint32_t* in, uint32_t* out, int64_t n, double p) {
  if (p <= 0.5) {  // branch-free integer ball ends: vectorises
    for (int64_t i = 0; i < n; ++i) out[i] = mortar::FewestOnesExact(in[i], p);
  } else {  // the predicate-proven ends may bisect: scalar
    for (int64_t i = 0; i < n; ++i) out[i] = mortar::FewestOnes(in[i], p);
  }
}

__attribute__((target_clones("avx2", "default")))
void RoundRange(const uint32_t* in, uint32_t* out, int64_t n, int keep_bits) {
  for (int64_t i = 0; i < n; ++i) out[i] = mortar::Round(in[i], keep_bits);
}

class MortarMorphOp : public OpKernel {
 public:
  explicit MortarMorphOp(OpKernelConstruction* context) : OpKernel(context) {
    std::string method;
    OP_REQUIRES_OK(context, context->GetAttr("method", &method));
    method_ = method == "paper" ? Method::kPaper
              : method == "fewest_ones" ? Method::kFewestOnes : Method::kRound;
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
    if (method_ != Method::kRound) {
      OP_REQUIRES(context, std::isfinite(p) && p > 0.0 && p <= 1.0,
                  errors::InvalidArgument("precision must satisfy 0 < P <= 1, got ", p));
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    const uint32_t* in = reinterpret_cast<const uint32_t*>(x.flat<float>().data());
    uint32_t* out = reinterpret_cast<uint32_t*>(y->flat<float>().data());
    const Method method = method_;
    const int keep_bits = keep_bits_;
    auto work = [=](int64_t begin, int64_t end) {
      switch (method) {
        case Method::kPaper: PaperRange(in + begin, out + begin, end - begin, p); break;
        case Method::kFewestOnes: FewestOnesRange(in + begin, out + begin, end - begin, p); break;
        case Method::kRound: RoundRange(in + begin, out + begin, end - begin, keep_bits); break;
      }
    };
    const auto& workers = *context->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = method_ == Method::kFewestOnes ? 60 : 20;  // cycles per weight
    Shard(workers.num_threads, workers.workers, n, cost, work);
  }

 private:
  Method method_;
  int keep_bits_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("MortarMorph").Device(DEVICE_CPU), MortarMorphOp);

}  // namespace
}  // namespace tensorflow
