// The CPU backend's products with Q8_0 / Q4_0 weights (runtime/base/quant_blocks.h), as llama.cpp computes them:
// the activation row is quantized to Q8_0 blocks once per call, and each block pair contributes
// d_w * d_x * (integer dot product of the 32 pairs), summed in f32. Kernels: AVX2 (chosen at run time when the CPU
// has it) and portable scalar code, which give the same bits (integer sums are exact; the f32 block sums are added
// in the same order).
#pragma once
#include <cstdint>
#include <string>

#include "runtime/base/quant_blocks.h"

namespace strata::quant {

// Which kernel row_dot_products uses on this CPU: "avx2" or "scalar" (STRATA_QUANT_KERNEL=scalar forces the
// portable one, for tests and comparisons).
std::string kernel_name();

// y[t, r] = sum_k x[t, k] * w[r, k] for t < tokens, r < out, with w's rows quantized (row_bytes(format, in) each)
// and each x row quantized to Q8_0 first. in must be a multiple of kBlock. Rows of w are split over OpenMP threads.
void row_dot_products(const float* x, const void* w, Format format, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in);
// The same with the kernel named ("avx2" only where the CPU has it): for tests of each path.
void row_dot_products_with(const std::string& kernel, const float* x, const void* w, Format format, float* y,
                           std::int64_t tokens, std::int64_t out, std::int64_t in);

}  // namespace strata::quant
