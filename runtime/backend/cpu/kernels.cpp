// CPU kernels; see kernels.h. Independent accumulator lanes let GCC vectorise the reductions without -ffast-math.
#include "runtime/backend/cpu/kernels.h"

#include <omp.h>

#include <algorithm>

#if defined(__x86_64__)
#define STRATA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STRATA_CLONES
#endif

namespace strata::cpu {
namespace {

constexpr int kLanes = 16;

template <int Tokens>
__attribute__((always_inline)) inline void rows_for(const float* x, const float* w, float* y, std::int64_t begin,
                                                    std::int64_t end, std::int64_t out, std::int64_t in) {
  for (std::int64_t r = begin; r < end; ++r) {
    const float* row = w + r * in;
    float acc[Tokens][kLanes] = {};
    std::int64_t i = 0;
    for (; i + kLanes <= in; i += kLanes)
      for (int t = 0; t < Tokens; ++t)
        for (int j = 0; j < kLanes; ++j) acc[t][j] += row[i + j] * x[t * in + i + j];
    for (int t = 0; t < Tokens; ++t) {
      float sum = 0;
      for (std::int64_t k = i; k < in; ++k) sum += row[k] * x[t * in + k];
      for (int j = 0; j < kLanes; ++j) sum += acc[t][j];
      y[t * out + r] = sum;
    }
  }
}

STRATA_CLONES void rows_kernel(const float* x, const float* w, float* y, std::int64_t tokens, std::int64_t begin,
                               std::int64_t end, std::int64_t out, std::int64_t in) {
  switch (tokens) {
    case 1:
      rows_for<1>(x, w, y, begin, end, out, in);
      break;
    case 2:
      rows_for<2>(x, w, y, begin, end, out, in);
      break;
    case 3:
      rows_for<3>(x, w, y, begin, end, out, in);
      break;
    default:
      rows_for<4>(x, w, y, begin, end, out, in);
      break;
  }
}

}  // namespace

void row_dot_products(const float* x, const float* w, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in) {
  constexpr std::int64_t kBlock = 16;  // rows per work item: enough to amortise scheduling, fine enough to balance
  const std::int64_t blocks = (out + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < blocks; ++b)
    rows_kernel(x, w, y, tokens, b * kBlock, std::min(out, (b + 1) * kBlock), out, in);
}

STRATA_CLONES float dot(const float* a, const float* b, std::int64_t n) {
  float acc[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  float sum = 0;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (float v : acc) sum += v;
  return sum;
}

STRATA_CLONES void axpy(float alpha, const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace strata::cpu
