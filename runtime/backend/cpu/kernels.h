// Hand-written CPU kernels for the cases OpenBLAS serves poorly: the matrix-vector products of decode (1-4 tokens,
// where the whole weight is streamed once and memory bandwidth is the limit) and attention over the KV cache.
// Parallel with OpenMP over output rows / (token, head) pairs; vector code is compiled for AVX-512, AVX2 and
// baseline x86-64 and chosen at run time (GCC target_clones).
// Weights may be stored 16-bit (bf16/f16, as the checkpoint holds them): the kernels widen them to f32 in small
// blocks that stay in cache, then run the f32 arithmetic, so results equal those of f32 weights exactly.
#pragma once
#include <cstdint>

#include "runtime/base/dtype.h"

namespace strata::cpu {

constexpr std::int64_t kSmallBatch = 4;  // linear() uses row_dot_products up to this many tokens

// y[t, n] = sum_k x[t, k] * w[n, k] for t < tokens (1..kSmallBatch); rows of w split over the OpenMP threads.
void row_dot_products(const float* x, const float* w, float* y, std::int64_t tokens, std::int64_t out, std::int64_t in);
// The same with w stored as `w_dtype` (F32, F16 or BF16), streamed from memory at its stored size: bf16 is widened
// in registers, f16 block by block into a per-thread scratch.
void row_dot_products(const float* x, const void* w, DType w_dtype, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in);
// dst[0, count) = src as f32 (bf16: a 16-bit shift, vectorised; f16 through convert_to_f32). Single-threaded.
void widen(DType dtype, const void* src, float* dst, std::int64_t count);

float dot(const float* a, const float* b, std::int64_t n);
// y += alpha * x
void axpy(float alpha, const float* x, float* y, std::int64_t n);

}  // namespace strata::cpu
