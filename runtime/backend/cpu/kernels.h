// Hand-written CPU kernels for the cases OpenBLAS serves poorly: the matrix-vector products of decode (1-4 tokens,
// where the whole weight is streamed once and memory bandwidth is the limit) and attention over the KV cache.
// Parallel with OpenMP over output rows / (token, head) pairs; vector code is compiled for AVX-512, AVX2 and
// baseline x86-64 and chosen at run time (GCC target_clones).
#pragma once
#include <cstdint>

namespace strata::cpu {

constexpr std::int64_t kSmallBatch = 4;  // linear() uses row_dot_products up to this many tokens

// y[t, n] = sum_k x[t, k] * w[n, k] for t < tokens (1..kSmallBatch); rows of w split over the OpenMP threads.
void row_dot_products(const float* x, const float* w, float* y, std::int64_t tokens, std::int64_t out, std::int64_t in);

float dot(const float* a, const float* b, std::int64_t n);
// y += alpha * x
void axpy(float alpha, const float* x, float* y, std::int64_t n);

}  // namespace strata::cpu
