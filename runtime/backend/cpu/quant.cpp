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
// A block pair's integer products in 8 lanes of 4 consecutive positions each (lane l: positions 4l..4l+3), exact in
// int32. Each lane is scaled by d_w * d_x and added into its own f32 accumulator across the row's blocks; the row's
// value is then ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)). The AVX2 kernel computes the same lanes with
// vector instructions and adds them in the same order, so both give the same bits.
constexpr int kLanes = 8;

void lanes_scalar(const BlockQ8_0& w, const BlockQ8_0& x, int* lanes) {
  for (int l = 0; l < kLanes; ++l) {
    int sum = 0;
    for (int j = 4 * l; j < 4 * l + 4; ++j) sum += int(w.qs[j]) * int(x.qs[j]);
    lanes[l] = sum;
  }
}

void lanes_scalar(const BlockQ4_0& w, const BlockQ8_0& x, int* lanes) {
  for (int l = 0; l < kLanes; ++l) {
    int sum = 0;
    for (int j = 4 * l; j < 4 * l + 4; ++j) {
      const int nibble = j < kBlock / 2 ? w.qs[j] & 0x0F : w.qs[j - kBlock / 2] >> 4;  // weight j
      sum += (nibble - 8) * int(x.qs[j]);
    }
    lanes[l] = sum;
  }
}

float sum_lanes(const float* a) { return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])); }

template <typename Block>
void rows_scalar(const Block* w, const BlockQ8_0* xq, const float* x_scales, float* y, std::int64_t tokens,
                 std::int64_t begin, std::int64_t end, std::int64_t out, std::int64_t blocks) {
  for (std::int64_t r = begin; r < end; ++r)
    for (std::int64_t t = 0; t < tokens; ++t) {
      float acc[kLanes] = {};
      int lanes[kLanes];
      for (std::int64_t b = 0; b < blocks; ++b) {
        lanes_scalar(w[r * blocks + b], xq[t * blocks + b], lanes);
        const float scale = f16_to_f32(w[r * blocks + b].d) * x_scales[t * blocks + b];
        for (int l = 0; l < kLanes; ++l) acc[l] += float(lanes[l]) * scale;
      }
      y[t * out + r] = sum_lanes(acc);
    }
}

#if defined(__x86_64__)
// (a0 + a4, a1 + a5, a2 + a6, a3 + a7), then ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)): sum_lanes' order.
__attribute__((target("avx2"), always_inline)) inline float sum_lanes_avx2(__m256 acc) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}

// A weight block's bytes as signed int8 (Q4_0: nibbles to bytes, the low 128-bit lane the low nibbles, weights
// 0-15, the high lane the high ones, 16-31).
__attribute__((target("avx2"), always_inline)) inline __m256i weight_bytes(const BlockQ8_0& w) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs));
}
__attribute__((target("avx2"), always_inline)) inline __m256i weight_bytes(const BlockQ4_0& w) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs));
  const __m256i nibbles = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
  return _mm256_sub_epi8(_mm256_and_si256(nibbles, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}

// Up to 4 tokens per pass over a row: each weight block is loaded (and unpacked) once for all of them. Every
// (row, token) still adds its blocks in order, as the scalar kernel does.
template <typename Block>
__attribute__((target("avx2,f16c"))) void rows_avx2(const Block* w, const BlockQ8_0* xq, const float* x_scales,
                                                    float* y, std::int64_t tokens, std::int64_t begin, std::int64_t end,
                                                    std::int64_t out, std::int64_t blocks) {
  constexpr int kTile = 4;
  for (std::int64_t r = begin; r < end; ++r)
    for (std::int64_t t0 = 0; t0 < tokens; t0 += kTile) {
      const int n = int(std::min<std::int64_t>(kTile, tokens - t0));
      __m256 acc[kTile] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (std::int64_t b = 0; b < blocks; ++b) {
        const Block& block = w[r * blocks + b];
        const __m256i wv = weight_bytes(block);
        const __m256i magnitude = _mm256_sign_epi8(wv, wv);
        const float dw = _cvtsh_ss(block.d);  // f16 -> f32 is exact either way
        for (int i = 0; i < n; ++i) {
          const std::int64_t at = (t0 + i) * blocks + b;
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[at].qs));
          const __m256i products = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xv, wv));
          const __m256 lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, _mm256_set1_epi16(1)));
          acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(lanes, _mm256_set1_ps(dw * x_scales[at])));
        }
      }
      for (int i = 0; i < n; ++i) y[(t0 + i) * out + r] = sum_lanes_avx2(acc[i]);
    }
}
#endif

bool has_avx2() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
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
