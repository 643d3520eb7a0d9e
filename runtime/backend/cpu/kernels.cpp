// CPU kernels; see kernels.h. Independent accumulator lanes let GCC vectorise the reductions without -ffast-math.
#include "runtime/backend/cpu/kernels.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__)
#define STRATA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STRATA_CLONES
#endif

namespace strata::cpu {
namespace {

constexpr int kLanes = 16;

constexpr std::int64_t kBlock = 16;  // rows per work item: enough to amortise scheduling, fine enough to balance

inline float as_f32(float w) { return w; }
inline float as_f32(std::uint16_t bf16) { return bf16_to_f32(bf16); }  // a shift: vectorises

// `w` points at row `begin` (of the weight, or of a widened copy of rows [begin, end)). W is float or bf16 bits;
// either way every product is of the same f32 values in the same order, so the results are identical.
template <int Tokens, typename W>
__attribute__((always_inline)) inline void rows_for(const float* x, const W* w, float* y, std::int64_t begin,
                                                    std::int64_t end, std::int64_t out, std::int64_t in) {
  for (std::int64_t r = begin; r < end; ++r) {
    const W* row = w + (r - begin) * in;
    float acc[Tokens][kLanes] = {};
    std::int64_t i = 0;
    for (; i + kLanes <= in; i += kLanes)
      for (int t = 0; t < Tokens; ++t)
        for (int j = 0; j < kLanes; ++j) acc[t][j] += as_f32(row[i + j]) * x[t * in + i + j];
    for (int t = 0; t < Tokens; ++t) {
      float sum = 0;
      for (std::int64_t k = i; k < in; ++k) sum += as_f32(row[k]) * x[t * in + k];
      for (int j = 0; j < kLanes; ++j) sum += acc[t][j];
      y[t * out + r] = sum;
    }
  }
}

template <typename W>
STRATA_CLONES void rows_kernel(const float* x, const W* w, float* y, std::int64_t tokens, std::int64_t begin,
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

STRATA_CLONES void widen_bf16(const std::uint16_t* src, float* dst, std::int64_t count) {
  auto* bits = reinterpret_cast<std::uint32_t*>(dst);  // bf16 is the top half of an f32
  for (std::int64_t i = 0; i < count; ++i) bits[i] = std::uint32_t(src[i]) << 16;
}

}  // namespace

void widen(DType dtype, const void* src, float* dst, std::int64_t count) {
  if (dtype == DType::BF16)
    widen_bf16(static_cast<const std::uint16_t*>(src), dst, count);
  else
    convert_to_f32(dtype, src, dst, std::size_t(count));
}

void row_dot_products(const float* x, const float* w, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in) {
  const std::int64_t blocks = (out + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < blocks; ++b)
    rows_kernel(x, w + b * kBlock * in, y, tokens, b * kBlock, std::min(out, (b + 1) * kBlock), out, in);
}

void row_dot_products(const float* x, const void* w, DType w_dtype, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in) {
  if (w_dtype == DType::F32) return row_dot_products(x, static_cast<const float*>(w), y, tokens, out, in);
  const std::int64_t blocks = (out + kBlock - 1) / kBlock;
  if (w_dtype == DType::BF16) {  // widened in registers
    const auto* bits = static_cast<const std::uint16_t*>(w);
#pragma omp parallel for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b)
      rows_kernel(x, bits + b * kBlock * in, y, tokens, b * kBlock, std::min(out, (b + 1) * kBlock), out, in);
    return;
  }
  // f16: widened block by block into a per-thread scratch (the conversion is not a plain shift).
  const auto* bytes = static_cast<const char*>(w);
  const std::size_t row_bytes = std::size_t(in) * dtype_size(w_dtype);
#pragma omp parallel
  {
    thread_local std::vector<float> scratch;  // kept between calls: no allocation or page faults per step
    if (scratch.size() < std::size_t(kBlock * in)) scratch.resize(std::size_t(kBlock * in));
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t begin = b * kBlock, end = std::min(out, begin + kBlock);
      widen(w_dtype, bytes + std::size_t(begin) * row_bytes, scratch.data(), (end - begin) * in);
      rows_kernel(x, static_cast<const float*>(scratch.data()), y, tokens, begin, end, out, in);
    }
  }
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
