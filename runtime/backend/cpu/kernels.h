// Hand-written CPU kernels for the cases OpenBLAS serves poorly: the products of decode (where the whole weight is
// streamed once per step: memory bandwidth is the limit at 1 token, the FMA units from a few tokens on) and, with
// AVX-512, every product (OpenBLAS 0.3.21 runs its AVX2 Haswell kernels on CPUs newer than it knows, at 60% of this
// kernel's rate), and attention over the KV cache. Parallel over output rows on the backend's Workers; the
// products have AVX-512, AVX2 and scalar kernels chosen at run time, the rest GCC target_clones.
// Weights may be stored 16-bit (bf16/f16, as the checkpoint holds them): the kernels widen them to f32 in small
// blocks that stay in cache, then run the f32 arithmetic, so results equal those of f32 weights exactly; except the
// avx512bf16 kernel on bf16 weights, which rounds the activations to bf16 and runs bf16 dot products (VDPBF16PS).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "runtime/backend/cpu/workers.h"
#include "runtime/backend/row_shares.h"
#include "runtime/base/dtype.h"

namespace strata::cpu {

// An IEEE half, as stored in an f16 KV cache (a distinct type: std::uint16_t means bf16 to the row kernels).
struct Half {
  std::uint16_t bits;
};

// linear() gives row_dot_products products of up to kSmallBatch tokens (OpenBLAS SGEMM is faster above), or of any
// number (kAnyBatch) with the AVX-512 kernel, which is faster than OpenBLAS 0.3.21 at every size on CPUs that have
// it (docs/performance.md).
constexpr std::int64_t kSmallBatch = 4;
constexpr std::int64_t kAnyBatch = std::int64_t(1) << 40;
// The most tokens linear() gives row_dot_products with `kernel` (one of row_kernels()).
std::int64_t row_kernel_max_tokens(const std::string& kernel);
// The team a CPU backend with `weights` runs its loops on: OpenMP's where OpenBLAS computes products (no AVX-512 row
// kernel and unquantized weights: see workers.h), else its own threads.
Workers::Team team_for(DType weights);

// y[t, n] = sum_k x[t, k] * w[n, k] for t < tokens; rows of w shared out over `workers` (Workers::balance). Kernels,
// the best the CPU has chosen at run time: AVX-512 (4 rows x 6 tokens register tiles), AVX2 with FMA (1 row x 4
// tokens), scalar. All add in the same order (kernels.cpp), so they give the same bits. Above them, on CPUs with
// AVX512_BF16, avx512bf16: bf16 weights times the activations rounded to bf16 (f32_to_bf16), VDPBF16PS into f32
// lanes, in the AVX-512 kernel's tiles on the row layout and in 4 groups x 6 tokens on its interleaved one (below),
// each output computed the same way whatever the batch or thread (other weights: the AVX-512 kernel).
// STRATA_ROW_KERNEL=avx512|avx2|scalar forces one (a kernel the CPU lacks is an error).
void row_dot_products(Workers& workers, const float* x, const float* w, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in);
// The same with w stored as `w_dtype` (F32, F16 or BF16), streamed from memory at its stored size: bf16 is widened
// in registers, f16 block by block into a per-thread scratch.
void row_dot_products(Workers& workers, const float* x, const void* w, DType w_dtype, float* y, std::int64_t tokens,
                      std::int64_t out, std::int64_t in);
// The kernels this CPU runs, best first ("avx512bf16", "avx512", "avx2", "scalar"), the one row_dot_products uses, and
// a product with the kernel named: for tests of each path.
std::vector<std::string> row_kernels();
std::string row_kernel_name();
void row_dot_products_with(Workers& workers, const std::string& kernel, const float* x, const void* w, DType w_dtype,
                           float* y, std::int64_t tokens, std::int64_t out, std::int64_t in,
                           Layout layout = Layout::Rows);

// Several products of the same activations x [tokens, in] (q, k and v): every product's rows in one parallel loop
// (handing a loop to the threads and waiting for them costs microseconds, and a decode step has dozens), x rounded
// to bf16 once where the avx512bf16 kernel runs; each y as row_dot_products_with gives it. All weights `w_dtype`.
// The quantized kernels take the same list (quant.h).
struct Product {
  const void* w;
  Layout layout;
  float* y;          // [tokens, out]
  std::int64_t out;  // rows of w
};
void row_dot_products_many(Workers& workers, const std::string& kernel, const float* x, DType w_dtype,
                           std::int64_t tokens, std::int64_t in, std::span<const Product> products);
// row_dot_products_many where x holds only this rank's rows of `shares` (sequence parallelism): rounded to bf16,
// they are exchanged with the other ranks' (half the bytes of f32), then every row's products computed. The same
// bits as row_dot_products_many of all the rows. The avx512bf16 kernel on bf16 weights only (gathers_shares).
void shared_rows_dot_products(Workers& workers, const std::string& kernel, const float* x, const RowShares& shares,
                              DType w_dtype, std::int64_t tokens, std::int64_t in, std::span<const Product> products);
bool gathers_shares(const std::string& kernel, DType w_dtype);
// The bytes of `tokens` rows of `in` values as shared_rows_dot_products exchanges them (RowShares::rounds), 0 where
// it does not (!gathers_shares).
std::size_t shared_rows_bytes(const std::string& kernel, DType w_dtype, std::int64_t tokens, std::int64_t in);
// Makes token t's activations (`in` values in f32) and returns where they are: in `scratch` (the calling thread's,
// `in` floats, in L1) or wherever the maker wrote them.
using RowMaker = std::function<const float*(std::int64_t t, float* scratch)>;
// row_dot_products_many of activations made token by token by `make`, where the kernel rounds them to bf16
// (avx512bf16, bf16 weights): each row rounded as soon as it is made, from L1, instead of in a pass of its own over
// rows that may have left the cache (an op fused with its products: SwiGLU's rows are never stored in f32). The same
// bits as making every row, then row_dot_products_many. Returns false, having done nothing, for other kernels and
// weights.
bool made_rows_dot_products(Workers& workers, const std::string& kernel, const RowMaker& make, DType w_dtype,
                            std::int64_t tokens, std::int64_t in, std::span<const Product> products);

// The avx512bf16 kernel reads bf16 weights interleaved by 16 rows (Layout::Interleaved16), copied once at load
// (CpuBackend::prepare_weight): for each group of 16 rows, in / 2 vectors of 64 bytes whose 32-bit lane r holds row
// r's weights 2p and 2p + 1; the last out % 16 rows after the groups in row layout. VDPBF16PS then multiplies one
// vector of 16 rows by an activation pair broadcast to every lane, each lane accumulating its own row's sum: no
// horizontal reduction per output, and each group one sequential stream (docs/performance.md: 16-32% less time than
// the row layout at 1, 16 and 64 tokens). Rows of an odd width stay in row layout.
bool interleaves_bf16(const std::string& kernel);                   // whether `kernel` reads the layout at all
bool interleaves_bf16(const std::string& kernel, std::int64_t in);  // ... for a matrix of rows `in` wide
void interleave_bf16_rows(Workers& workers, const std::uint16_t* rows, std::uint16_t* interleaved, std::int64_t out,
                          std::int64_t in);
// Row r of an interleaved [out, in] bf16 matrix, widened to f32 (the values the row layout holds).
void widen_interleaved_bf16_row(const std::uint16_t* interleaved, std::int64_t r, std::int64_t out, std::int64_t in,
                                float* dst);
// dst[0, count) = src as f32 (bf16: a 16-bit shift, vectorised; f16: F16C where the CPU has it, else
// convert_to_f32; the same values either way). Single-threaded.
void widen(DType dtype, const void* src, float* dst, std::int64_t count);
// dst[0, count) = src in dtype, as convert_from_f32 (f16: F16C where the CPU has it, which gives f32_to_f16's values
// for every input but NaN, kept NaN with another payload). Single-threaded.
void narrow(DType dtype, const float* src, void* dst, std::int64_t count);

// y += alpha * x
void axpy(float alpha, const float* x, float* y, std::int64_t n);

// Attention's two passes over a run of cached positions (rows `stride` floats apart):
// scores[r] = q . (keys + r * stride) over n elements, for r < count, in the row kernels' order (16 lanes of FMAs, the
// pairwise lane tree, the tail fused in order); with AVX-512, 16 rows at a time with their trees reduced together.
void dots(const float* q, const float* keys, std::int64_t stride, std::int64_t count, std::int64_t n, float* scores);
// The same on f16 rows (an f16 KV cache): the arithmetic of f32 rows holding the same values, every path.
void dots(const float* q, const Half* keys, std::int64_t stride, std::int64_t count, std::int64_t n, float* scores);
// dots for `heads` query heads over the same keys (a GQA group): head g's query at q + g * n, its scores at
// scores + g * score_stride, each score the bits dots gives it (AVX-512: a few heads' scores side by side, each key
// loaded, and widened from f16, once for them).
void group_dots(const float* q, std::int64_t heads, const float* keys, std::int64_t stride, std::int64_t count,
                std::int64_t n, float* scores, std::int64_t score_stride);
void group_dots(const float* q, std::int64_t heads, const Half* keys, std::int64_t stride, std::int64_t count,
                std::int64_t n, float* scores, std::int64_t score_stride);
// o += weights[r] * (values + r * stride) for r < count in order, axpy's arithmetic per element (o kept in registers,
// 64 elements at a time).
void weighted_sum(const float* weights, const float* values, std::int64_t stride, std::int64_t count, std::int64_t n,
                  float* o);
void weighted_sum(const float* weights, const Half* values, std::int64_t stride, std::int64_t count, std::int64_t n,
                  float* o);
// weighted_sum for `heads` heads over the same values (a GQA group): head g's weights at weights + g *
// weight_stride, its output at o + g * n; each head's bits those of weighted_sum alone (AVX-512: the heads' sums
// side by side, independent chains sharing each value load).
void weighted_sums(const float* weights, std::int64_t weight_stride, std::int64_t heads, const float* values,
                   std::int64_t stride, std::int64_t count, std::int64_t n, float* o);
void weighted_sums(const float* weights, std::int64_t weight_stride, std::int64_t heads, const Half* values,
                   std::int64_t stride, std::int64_t count, std::int64_t n, float* o);

// Softmax's exponentials: s[j] = exp(s[j] - max) for j < n, returning their sum (16 lanes, the row kernels' lane
// tree, the tail in order). exp is a polynomial within ~1 ulp of exp (tested within 3), the same operations on
// every path (AVX-512 or portable), so the same bits; libm's expf called per score was most of a long-context
// softmax. exp_and_sum_without_vectors: the portable path alone (for tests on AVX-512 machines).
float exp_and_sum(float* s, std::int64_t n, float max);
float exp_and_sum_without_vectors(float* s, std::int64_t n, float max);

// The attention output of one query head from `parts` softmax parts (consecutive runs of its positions, see
// CpuBackend::attend): part s's largest score maxes[s], its sum of exp(score - maxes[s]) sums[s], and its n weighted
// sums by those exponentials at weighted + s * weighted_stride. With M the largest of the maxes and c_s = exp(maxes[s]
// - M) (exp_and_sum's exponential), o[i] = (sum_s c_s * weighted_s[i]) / (sum_s c_s * sums[s]), each sum in part
// order, products and sums unfused (the same bits on every CPU). `scale`: room for `parts` floats (the c_s).
void merge_softmax_parts(std::int64_t parts, const float* maxes, const float* sums, const float* weighted,
                         std::int64_t weighted_stride, std::int64_t n, float* scale, float* o);

// Softmax's other two passes: s[j] *= scale for j < n, returning the largest (-inf for n = 0); s[j] /= denom. Each
// element is one IEEE multiply or divide, and a maximum is the same in any order (up to the sign of a zero, which
// no exp(s - max) can tell), so the vectors give the scalar loops' bits; the scalar loops were a fifth of a
// long-context decode step's attention. The _without_vectors twins: the portable loops alone (for tests).
float scale_and_max(float* s, std::int64_t n, float scale);
void divide_by(float* s, std::int64_t n, float denom);
float scale_and_max_without_vectors(float* s, std::int64_t n, float scale);
void divide_by_without_vectors(float* s, std::int64_t n, float denom);

// Greedy sampling's pick: the index of the greatest of row[0..n), the first of equal ones, NaN ranking below every
// number (index 0 when nothing is above -inf), as host_candidates' Greedy mode picks. The vector path takes the
// maximum, then finds its first occurrence: two passes over the row, against a branch per element that was 2-3% of a
// batched decode step (a row of 32,000 logits per sequence). greedy_index_without_vectors: the portable loop alone.
std::int64_t greedy_index(const float* row, std::int64_t n);
std::int64_t greedy_index_without_vectors(const float* row, std::int64_t n);

// SwiGLU's product: out[i] = g / (1 + exp(-g)) * up[i] with g = gate[i] and exp the softmax's above (the same bits
// with or without AVX-512; below g = -88.7, where exp(-g) is clamped, |out| stays under 1e-35 as the exact value
// does); libm's expf called per element was most of the op. silu_times_without_vectors: the portable path alone
// (for tests).
void silu_times(const float* gate, const float* up, float* out, std::int64_t n);
void silu_times_without_vectors(const float* gate, const float* up, float* out, std::int64_t n);

// RMSNorm's sum of x[i]^2 in double: 8 independent lanes (the same sums on every instruction set), reduced pairwise,
// then the last n % 8 in order. One running double sum was a chain of dependent adds, ~1 us per row of 768.
double sum_of_squares(const float* x, std::int64_t n);

}  // namespace strata::cpu
