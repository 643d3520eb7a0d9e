// Quantized dot products; see quant.h. Compiled with -ffp-contract=off, so both kernels give the same bits.
#include "runtime/backend/cpu/quant.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/base/dtype.h"
#include "runtime/base/error.h"

namespace strata::quant {

namespace {

// ---------------------------------------------------------------------------------------------- block dot products
// Integer dot product of one weight block with one Q8_0 activation block (exact in int32: at most 32 x 127 x 127).

int dot_scalar(const BlockQ8_0& w, const BlockQ8_0& x) {
  int sum = 0;
  for (std::int64_t j = 0; j < kBlock; ++j) sum += int(w.qs[j]) * int(x.qs[j]);
  return sum;
}

int dot_scalar(const BlockQ4_0& w, const BlockQ8_0& x) {
  int sum = 0;
  for (std::int64_t j = 0; j < kBlock / 2; ++j) {
    sum += (int(w.qs[j] & 0x0F) - 8) * int(x.qs[j]);
    sum += (int(w.qs[j] >> 4) - 8) * int(x.qs[j + kBlock / 2]);
  }
  return sum;
}

#if defined(__x86_64__)
// Signed int8 pairs through maddubs (unsigned x signed): |w| times x with w's sign moved onto x, then pairs of
// int16 summed into int32 lanes and the lanes added. No saturation: |w|, |x| <= 127.
__attribute__((target("avx2"), always_inline)) inline int dot_bytes_avx2(__m256i w, __m256i x) {
  const __m256i products = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  const __m256i lanes = _mm256_madd_epi16(products, _mm256_set1_epi16(1));
  __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256(lanes, 1));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4E));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xB1));
  return _mm_cvtsi128_si32(sum);
}

__attribute__((target("avx2"), always_inline)) inline int dot_avx2(const BlockQ8_0& w, const BlockQ8_0& x) {
  return dot_bytes_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs)),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs)));
}

// Nibbles to bytes: the low 128-bit lane takes the low nibbles (weights 0-15), the high lane the high ones (16-31).
__attribute__((target("avx2"), always_inline)) inline int dot_avx2(const BlockQ4_0& w, const BlockQ8_0& x) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs));
  __m256i nibbles = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
  nibbles = _mm256_sub_epi8(_mm256_and_si256(nibbles, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
  return dot_bytes_avx2(nibbles, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs)));
}
#endif

// Rows [begin, end) of w against every quantized activation row: each block's exact integer sum times
// d_w * d_x, added in block order. The two kernels differ only in how they get the integer sums, so they give the
// same bits; each is its own function so that only the AVX2 one is compiled for AVX2.
template <typename Block>
void rows_scalar(const Block* w, const BlockQ8_0* xq, const float* x_scales, float* y, std::int64_t tokens,
                 std::int64_t begin, std::int64_t end, std::int64_t out, std::int64_t blocks) {
  for (std::int64_t r = begin; r < end; ++r)
    for (std::int64_t t = 0; t < tokens; ++t) {
      float sum = 0.0f;
      for (std::int64_t b = 0; b < blocks; ++b)
        sum += float(dot_scalar(w[r * blocks + b], xq[t * blocks + b])) *
               (f16_to_f32(w[r * blocks + b].d) * x_scales[t * blocks + b]);
      y[t * out + r] = sum;
    }
}

#if defined(__x86_64__)
template <typename Block>
__attribute__((target("avx2,f16c"))) void rows_avx2(const Block* w, const BlockQ8_0* xq, const float* x_scales,
                                                    float* y, std::int64_t tokens, std::int64_t begin, std::int64_t end,
                                                    std::int64_t out, std::int64_t blocks) {
  for (std::int64_t r = begin; r < end; ++r)
    for (std::int64_t t = 0; t < tokens; ++t) {
      float sum = 0.0f;
      for (std::int64_t b = 0; b < blocks; ++b)
        sum += float(dot_avx2(w[r * blocks + b], xq[t * blocks + b])) *
               (_cvtsh_ss(w[r * blocks + b].d) * x_scales[t * blocks + b]);  // f16 -> f32 is exact either way
      y[t * out + r] = sum;
    }
}
#endif

bool has_avx2() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

template <typename Block>
void run(const std::string& kernel, const BlockQ8_0* xq, const float* xs, const void* w, float* y, std::int64_t tokens,
         std::int64_t out, std::int64_t blocks) {
  constexpr std::int64_t kRows = 16;  // rows per work item
  const auto* rows = static_cast<const Block*>(w);
  const std::int64_t items = (out + kRows - 1) / kRows;
  const bool avx2 = kernel == "avx2";
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < items; ++i) {
    const std::int64_t begin = i * kRows, end = std::min(out, begin + kRows);
#if defined(__x86_64__)
    if (avx2) {
      rows_avx2<Block>(rows, xq, xs, y, tokens, begin, end, out, blocks);
      continue;
    }
#endif
    rows_scalar<Block>(rows, xq, xs, y, tokens, begin, end, out, blocks);
  }
}

}  // namespace

std::string kernel_name() {
  const char* forced = std::getenv("STRATA_QUANT_KERNEL");
  if (forced && std::string(forced) == "scalar") return "scalar";
  return has_avx2() ? "avx2" : "scalar";
}

void row_dot_products(const float* x, const void* w, Format format, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in) {
  row_dot_products_with(kernel_name(), x, w, format, y, tokens, out, in);
}

void row_dot_products_with(const std::string& kernel, const float* x, const void* w, Format format, float* y,
                           std::int64_t tokens, std::int64_t out, std::int64_t in) {
  STRATA_CHECK(kernel == "scalar" || (kernel == "avx2" && has_avx2()), Internal, "quantized kernel '", kernel,
               "' is not available on this CPU");
  const std::int64_t blocks = std::int64_t(row_bytes(format, in) / block_bytes(format));
  // The activations once per call: Q8_0 blocks and their scales as f32 (kept between calls: no allocation per step)
  thread_local std::vector<BlockQ8_0> xq;
  thread_local std::vector<float> xs;
  xq.resize(std::size_t(tokens * blocks));
  xs.resize(xq.size());
  for (std::int64_t t = 0; t < tokens; ++t) quantize_q8_0_blocks(x + t * in, xq.data() + t * blocks, blocks);
  for (std::size_t i = 0; i < xq.size(); ++i) xs[i] = f16_to_f32(xq[i].d);
  if (format == Format::Q8_0)
    run<BlockQ8_0>(kernel, xq.data(), xs.data(), w, y, tokens, out, blocks);
  else
    run<BlockQ4_0>(kernel, xq.data(), xs.data(), w, y, tokens, out, blocks);
}

}  // namespace strata::quant
