// Hand-written CPU kernels for the cases OpenBLAS serves poorly: the products of decode (where the whole weight is
// streamed once per step: memory bandwidth is the limit at 1 token, the FMA units from a few tokens on) and, with
// AVX-512, every product (OpenBLAS 0.3.21 runs its AVX2 Haswell kernels on CPUs newer than it knows, at 60% of this
// kernel's rate), and attention over the KV cache. Parallel with OpenMP over output rows / (token, head) pairs; the
// products have AVX-512, AVX2 and scalar kernels chosen at run time, the rest GCC target_clones.
// Weights may be stored 16-bit (bf16/f16, as the checkpoint holds them): the kernels widen them to f32 in small
// blocks that stay in cache, then run the f32 arithmetic, so results equal those of f32 weights exactly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/base/dtype.h"

namespace strata::cpu {

constexpr std::int64_t kSmallBatch = 4;  // linear() uses row_dot_products up to this many tokens...
constexpr std::int64_t kAvx512Batch =
    std::int64_t(1)
    << 40;  // ...or any number with the AVX-512 kernel (faster than OpenBLAS 0.3.21 at every batch here)
// The most tokens linear() gives row_dot_products on this CPU (larger products go to OpenBLAS).
std::int64_t row_kernel_max_tokens();

// y[t, n] = sum_k x[t, k] * w[n, k] for t < tokens; rows of w split over the OpenMP threads. Any token count works;
// row_kernel_max_tokens() says up to where it beats OpenBLAS. Kernels: AVX-512 (2 rows x 8 tokens register tiles)
// where the CPU has it, else portable code (4 tokens per pass; AVX2 and baseline clones); STRATA_ROW_KERNEL=portable
// forces the latter. Both add in the same order (kernels.cpp), so they give the same bits.
void row_dot_products(const float* x, const float* w, float* y, std::int64_t tokens, std::int64_t out, std::int64_t in);
// The same with w stored as `w_dtype` (F32, F16 or BF16), streamed from memory at its stored size: bf16 is widened
// in registers, f16 block by block into a per-thread scratch.
void row_dot_products(const float* x, const void* w, DType w_dtype, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in);
// The kernels this CPU runs, best first ("avx512", "avx2", "scalar"), the one row_dot_products uses, and a product
// with the kernel named: for tests of each path.
std::vector<std::string> row_kernels();
std::string row_kernel_name();
void row_dot_products_with(const std::string& kernel, const float* x, const void* w, DType w_dtype, float* y,
                           std::int64_t tokens, std::int64_t out, std::int64_t in);
// dst[0, count) = src as f32 (bf16: a 16-bit shift, vectorised; f16 through convert_to_f32). Single-threaded.
void widen(DType dtype, const void* src, float* dst, std::int64_t count);

float dot(const float* a, const float* b, std::int64_t n);
// y += alpha * x
void axpy(float alpha, const float* x, float* y, std::int64_t n);

}  // namespace strata::cpu
