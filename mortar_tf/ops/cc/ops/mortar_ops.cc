// Interfaces of the Mortar ops: registration, attributes and shape functions.
// The kernels live in ../kernels/.

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

REGISTER_OP("MortarBitCount")
    .Input("x: float")
    .Output("histogram: int64")
    .Output("total: int64")
    .Attr("domain: {'word', 'significand'} = 'word'")
    .SetShapeFn([](InferenceContext* c) {
      std::string domain;
      TF_RETURN_IF_ERROR(c->GetAttr("domain", &domain));
      c->set_output(0, c->Vector(domain == "word" ? 32 : 24));
      c->set_output(1, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Ones per bit position of float32 data, most significant first.

histogram: 32 counts (word: sign, exponent, mantissa) or 24 (significand:
  hidden bit first; zeros, subnormals, infinities and NaNs count nothing).
total: the sum of histogram.
)doc");

REGISTER_OP("MortarAlignedCount")
    .Input("x: float")
    .Output("columns: int64")
    .Output("total: int64")
    .Output("lane_max: int32")
    .Output("bitlet: int32")
    .Attr("group_size: int >= 1 = 16")
    .Attr("width: int >= 1 = 24")
    .Attr("window: int >= 1 = 8")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      int64_t group_size, width;
      TF_RETURN_IF_ERROR(c->GetAttr("group_size", &group_size));
      TF_RETURN_IF_ERROR(c->GetAttr("width", &width));
      DimensionHandle rows = c->Dim(x, 0);
      DimensionHandle groups = c->UnknownDim();
      if (c->ValueKnown(c->Dim(x, 1))) {
        groups = c->MakeDim((c->Value(c->Dim(x, 1)) + group_size - 1) / group_size);
      }
      c->set_output(0, c->Vector(width));
      c->set_output(1, c->Scalar());
      c->set_output(2, c->Matrix(rows, groups));
      c->set_output(3, c->Matrix(rows, groups));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Exponent-matched ("aligned") bit statistics of a [rows, R] weight view (SPEC 3).

Each row is one output element's reduction vector, cut into groups of
group_size lanes (the last padded with +0.0) and aligned to the group's largest
exponent in a window of width columns.
columns: ones per column, column 0 (most significant) first.
total: ones inside the windows.
lane_max: per group, the most ones in one lane (Pragmatic's cycles, >= 0).
bitlet: per group, max over columns of (ones + all-zero windows of window
  lanes), at least 1 (Bitlet's cycles, SPEC 4).
)doc");

REGISTER_OP("MortarMorph")
    .Input("x: float")
    .Input("precision: double")
    .Output("y: float")
    .Attr("method: {'paper', 'fewest_ones', 'round'}")
    .Attr("keep_bits: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &unused));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Mantissa morphing of float32 weights (SPEC 2), bit for bit as the numpy reference.

precision: P as a float64 scalar (0 < P <= 1; used by paper and fewest_ones).
  A float attr would be 32-bit and change results.
keep_bits: explicit mantissa bits kept by round, 0..23.
)doc");

REGISTER_OP("MortarBitx")
    .Input("x: float")
    .Output("y: float")
    .Attr("group_size: int >= 1 = 16")
    .Attr("columns: int >= 1 = 8")
    .Attr("view: list(int)")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
BitX pruning of float32 weights (SPEC 2.4), bit for bit as the numpy reference.

x is read as a view [a, r, b] of its row-major data (view, product = size):
element (i, k, j) at (i * r + k) * b + j, with groups of group_size along k.
Each group keeps its first `columns` exponent-matched columns; an element with
no bit left becomes +0.0; special values are unchanged.
)doc");

}  // namespace tensorflow
