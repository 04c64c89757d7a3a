// The Mortar kernels over plain buffers, shared by the TensorFlow op library
// (mortar_tf/ops/_mortar_ops.so) and the numpy entry points
// (mortar_tf/_native.so, through c_api.cc). Nothing here depends on TensorFlow.
//
// Each hot loop is compiled three times (AVX-512, AVX2, baseline x86-64) and
// the widest the CPU supports is chosen once, at load time.
//
// Weights are read as their IEEE-754 words (uint32). Grouped kernels take a
// weight as a view [a, r, b] of a C-contiguous buffer: element (i, k, j) sits
// at (i * r + k) * b + j, output element o = i * b + j, and its reduction
// vector runs along k (SPEC 3). A conv kernel [kh, kw, cin, cout] is
// [1, kh*kw*cin, cout]; a Conv2DTranspose [kh, kw, out, in] is
// [kh*kw*out, in, 1]; reduction axes that are not adjacent in memory are not a
// view of this form (the caller transposes them, in slices).

#ifndef MORTAR_TF_CC_KERNELS_H_
#define MORTAR_TF_CC_KERNELS_H_

#include <cstdint>
#include <vector>

namespace mortar {

// Ones per bit position (LSB first) of n words, added to counts[32]. With
// `significand`, each word is first replaced by its 24-bit significand (0 for
// special values).
void CountBits(const uint32_t* words, int64_t n, bool significand, int64_t* counts);

enum class Method : int { kPaper = 0, kFewestOnes = 1, kRound = 2 };

// out[i] = the morphed word of in[i] (SPEC 2.1-2.3); in and out may be equal.
void MorphRange(Method method, const uint32_t* in, uint32_t* out, int64_t n, double p,
                int keep_bits);

// For tests of what fewest_ones builds on: the ball ends of float_bits.h of
// n positive normal magnitude words, BallEndsExact when `exact` (P <= 0.5),
// else BallEndsGeneral, compiled like MorphRange for each instruction set.
void BallEndsRange(const uint32_t* magnitudes, int64_t n, double p, bool exact,
                   uint32_t* lower, uint32_t* upper);

// Over n pairs (x[i], y[i]) of float32 words, added to what the pointers hold:
// totals[0..3] += the ones of x's words, of x's significands (0 for special
// values), of y's words, of y's significands; *worst = max(*worst, |y - x| /
// |x| in double over the x that are finite and nonzero), *saw_nan |= any such
// ratio is NaN. One pass over both (what a morph's record needs of a chunk).
void PairTotals(const uint32_t* x, const uint32_t* y, int64_t n, int64_t* totals, double* worst,
                bool* saw_nan);

// The [a, r, b] view of a weight, cut into groups along r.
struct GroupedView {
  const uint32_t* data;
  int64_t a, r, b;
  int64_t group_size;
  int64_t groups() const { return (r + group_size - 1) / group_size; }
  int64_t outputs() const { return a * b; }
};

// Work is split into tiles: up to kTileLanes output elements (lanes) x one
// group. TileCount says how many a view has, in an order that reads memory
// forwards.
constexpr int kTileLanes = 16;
// The largest group the grouped kernels take: per column a group counts at
// most group_size ones plus group_size all-zero windows in 16-bit counters.
constexpr int64_t kMaxGroupSize = 16384;
int64_t TileCount(const GroupedView& view);

// Aligned-domain statistics (SPEC 3 and 4) of tiles [begin, end):
// columns[c] += ones in column c (c < width), and when the pointers are not
// null, per output element o and group g (at o * groups + g):
//   lane_max: the most ones in one lane (Pragmatic's cycles, >= 0);
//   bitlet: max over columns of (ones + all-zero windows of `window` lanes),
//           at least 1 (Bitlet's cycles).
// Tiles of one view may be handed to threads in disjoint ranges, each with its
// own `columns`.
void AlignedTiles(const GroupedView& view, int width, int window, int64_t begin, int64_t end,
                  int64_t* columns, int32_t* lane_max, int32_t* bitlet);

// BitX pruning (SPEC 2.4) of units [begin, end) of BitxUnitCount(view) into
// out (laid out as the view's data): keeps the first `columns` aligned columns
// of each group. A unit is a tile where b == 1, else one group's rows over up
// to 1024 adjacent columns; units of one view may go to threads in disjoint
// ranges.
int64_t BitxUnitCount(const GroupedView& view);
// The most words one unit covers (what a thread's share is sized by).
int64_t BitxUnitWords(const GroupedView& view);
void BitxUnits(const GroupedView& view, int columns, int64_t begin, int64_t end, uint32_t* out);

// Which instruction set the dispatcher chose: "avx512", "avx2" or "baseline".
const char* IsaName();

}  // namespace mortar

#endif  // MORTAR_TF_CC_KERNELS_H_
