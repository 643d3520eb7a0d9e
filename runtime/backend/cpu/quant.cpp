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

#include "runtime/backend/cpu/cpu_features.h"
#include "runtime/backend/cpu/tiles.h"
#include "runtime/base/dtype.h"
#include "runtime/base/error.h"

namespace strata::quant {

namespace {

// ---------------------------------------------------------------------------------------------- block dot products
// A block pair's integer products in 8 lanes of 4 consecutive positions each (lane l: positions 4l..4l+3), exact in
// int32. Each lane is scaled by s = d_w * d_x (rounded to f32) and added into its own f32 accumulator across the
// row's blocks with one fused multiply-add, acc_l = fma(lane_l, s, acc_l); the row's value is then
// ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)). Every kernel computes these same lanes and adds them in this
// order, so all of them give the same bits.
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
        for (int l = 0; l < kLanes; ++l) acc[l] = std::fma(float(lanes[l]), scale, acc[l]);
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
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(const Block* w, const BlockQ8_0* xq, const float* x_scales,
                                                        float* y, std::int64_t tokens, std::int64_t begin,
                                                        std::int64_t end, std::int64_t out, std::int64_t blocks) {
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
          acc[i] = _mm256_fmadd_ps(lanes, _mm256_set1_ps(dw * x_scales[at]), acc[i]);
        }
      }
      for (int i = 0; i < n; ++i) y[(t0 + i) * out + r] = sum_lanes_avx2(acc[i]);
    }
}

// AVX-512 with VNNI: two rows per 512-bit register (row r's block in the low half, row r + 1's in the high half),
// each half holding that row's 8 lanes, so the lanes and their order are the scalar kernel's. One VPDPBUSD forms
// the 64 products and their 16 lane sums (what VPMADDUBSW + VPMADDWD take two steps for), the weight side (unpacking,
// magnitudes, signs, scales) is done once per block for up to kTile tokens, and each token's block is broadcast to
// both halves from one load.
// GCC 12 reports its own intrinsics' deliberately undefined upper halves (_mm512_undefined_*) as uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define STRATA_AVX512 "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c"

__attribute__((target(STRATA_AVX512), always_inline)) inline __m512i pair_bytes(const BlockQ8_0& a,
                                                                                const BlockQ8_0& b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)), 1);
}
__attribute__((target(STRATA_AVX512), always_inline)) inline __m512i pair_bytes(const BlockQ4_0& a,
                                                                                const BlockQ4_0& b) {
  const __m256i packed = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)),
                                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.qs)));
  const __m256i low = _mm256_and_si256(packed, _mm256_set1_epi8(0x0F));
  const __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), _mm256_set1_epi8(0x0F));
  // 128-bit lanes [low a, low b, high a, high b] -> [low a, high a, low b, high b]: weights 0-15 then 16-31 per row
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
  return _mm512_sub_epi8(_mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(3, 1, 2, 0)), _mm512_set1_epi8(8));
}

template <typename Block, int Tokens>
__attribute__((target(STRATA_AVX512))) void row_pair_avx512(const Block* w0, const Block* w1, const BlockQ8_0* xq,
                                                            const float* x_scales, float* y, std::int64_t out,
                                                            std::int64_t blocks) {
  __m512 acc[Tokens];
  for (int i = 0; i < Tokens; ++i) acc[i] = _mm512_setzero_ps();
  // The two rows are two interleaved streams, which the hardware prefetchers follow poorly (decode at one token ran
  // at half the speed of one row at a time); prefetch the rows two pairs on, one line per block of each row.
  const char* ahead = reinterpret_cast<const char*>(w0) + 4 * blocks * std::int64_t(sizeof(Block));
  for (std::int64_t b = 0; b < blocks; ++b) {
    _mm_prefetch(ahead + 2 * b * std::int64_t(sizeof(Block)), _MM_HINT_T0);
    _mm_prefetch(ahead + (2 * b + 1) * std::int64_t(sizeof(Block)), _MM_HINT_T0);
    const __m512i wv = pair_bytes(w0[b], w1[b]);
    const __m512i magnitude = _mm512_abs_epi8(wv);
    const __mmask64 negative = _mm512_movepi8_mask(wv);
    const __m512 dw = _mm512_insertf32x8(_mm512_set1_ps(_cvtsh_ss(w0[b].d)), _mm256_set1_ps(_cvtsh_ss(w1[b].d)), 1);
    for (int i = 0; i < Tokens; ++i) {
      const std::int64_t at = i * blocks + b;
      const __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[at].qs)));
      // x with the weight's sign (|w| * sign(w) * x): the unsigned x signed operand order VPDPBUSD takes
      const __m512i signed_x = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
      const __m512i lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), magnitude, signed_x);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), _mm512_mul_ps(dw, _mm512_set1_ps(x_scales[at])), acc[i]);
    }
  }
  for (int i = 0; i < Tokens; ++i) {
    y[i * out] = sum_lanes_avx2(_mm512_castps512_ps256(acc[i]));
    y[i * out + 1] = sum_lanes_avx2(_mm512_extractf32x8_ps(acc[i], 1));
  }
}

template <typename Block>
__attribute__((target(STRATA_AVX512))) void rows_avx512(const Block* w, const BlockQ8_0* xq, const float* x_scales,
                                                        float* y, std::int64_t tokens, std::int64_t begin,
                                                        std::int64_t end, std::int64_t out, std::int64_t blocks) {
  constexpr int kTile = 8;
  std::int64_t r = begin;
  for (; r + 2 <= end; r += 2)
    for (std::int64_t t0 = 0; t0 < tokens; t0 += kTile) {
      const Block *w0 = w + r * blocks, *w1 = w0 + blocks;
      const BlockQ8_0* x = xq + t0 * blocks;
      const float* xs = x_scales + t0 * blocks;
      float* yt = y + t0 * out + r;
      cpu::with_tile_count<kTile>(tokens - t0,
                                  [&](auto n) { row_pair_avx512<Block, n()>(w0, w1, x, xs, yt, out, blocks); });
    }
  if (r < end) rows_avx2<Block>(w, xq, x_scales, y, tokens, r, end, out, blocks);  // an odd last row
}

// quantize_q8_0_blocks (llama.cpp's reference quantizer) with vectors, the same bits: the largest magnitude (a max,
// exact in any order), d = amax / 127 and its inverse as scalars, each x * (1 / d) the same f32 product, and
// roundf's half-away-from-zero rounding as trunc(v) plus the sign of v where |v - trunc(v)| >= 0.5 (v - trunc(v) is
// exact below 2^23).
__attribute__((target(STRATA_AVX512))) void quantize_blocks_avx512(const float* x, BlockQ8_0* out,
                                                                   std::int64_t blocks) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  for (std::int64_t b = 0; b < blocks; ++b, x += kBlock) {
    __m512 v[2] = {_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16)};
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = f32_to_f16(d);
    for (int h = 0; h < 2; ++h) {
      const __m512 scaled = _mm512_mul_ps(v[h], _mm512_set1_ps(id));
      const __m512 whole = _mm512_roundscale_ps(scaled, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __mmask16 away = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(scaled, whole)), half, _CMP_GE_OQ);
      const __m512 sign = _mm512_castsi512_ps(
          _mm512_and_si512(_mm512_castps_si512(scaled), _mm512_set1_epi32(std::int32_t(0x80000000u))));
      const __m512 rounded = _mm512_mask_add_ps(whole, away, whole, _mm512_or_ps(one, sign));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16 * h),
                       _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(rounded)));
    }
  }
}
#pragma GCC diagnostic pop
#endif

bool cpu_has(const std::string& kernel) {
  return kernel == "scalar" || (kernel == "avx2" && cpu::has_avx2_fma()) ||
         (kernel == "avx512vnni" && cpu::has_avx512_vnni());
}

template <typename Block>
void run(const std::string& kernel, const BlockQ8_0* xq, const float* xs, const void* w, float* y, std::int64_t tokens,
         std::int64_t out, std::int64_t blocks) {
  constexpr std::int64_t kRows = 16;  // rows per work item (even: the AVX-512 kernel takes rows in pairs)
  const auto* rows = static_cast<const Block*>(w);
  const std::int64_t items = (out + kRows - 1) / kRows;
  const int which = kernel == "avx512vnni" ? 2 : kernel == "avx2" ? 1 : 0;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < items; ++i) {
    const std::int64_t begin = i * kRows, end = std::min(out, begin + kRows);
#if defined(__x86_64__)
    if (which == 2) {
      rows_avx512<Block>(rows, xq, xs, y, tokens, begin, end, out, blocks);
      continue;
    }
    if (which == 1) {
      rows_avx2<Block>(rows, xq, xs, y, tokens, begin, end, out, blocks);
      continue;
    }
#endif
    rows_scalar<Block>(rows, xq, xs, y, tokens, begin, end, out, blocks);
  }
}

}  // namespace

std::vector<std::string> available_kernels() {
  std::vector<std::string> names;
  for (const char* name : {"avx512vnni", "avx2", "scalar"})
    if (cpu_has(name)) names.push_back(name);
  return names;
}

std::string kernel_name() {
  const char* forced = std::getenv("STRATA_QUANT_KERNEL");
  if (forced && *forced) {
    STRATA_CHECK(cpu_has(forced), Config, "STRATA_QUANT_KERNEL=", forced,
                 ": not a quantized kernel this CPU runs (scalar, avx2 or avx512vnni)");
    return forced;
  }
  return available_kernels().front();
}

void row_dot_products(const float* x, const void* w, Format format, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in) {
  row_dot_products_with(kernel_name(), x, w, format, y, tokens, out, in);
}

void quantize_activations(const std::string& kernel, const float* x, BlockQ8_0* xq, float* x_scales,
                          std::int64_t tokens, std::int64_t blocks) {
  // On the OpenMP threads once there is enough to share: single-threaded, it left the other threads waiting for
  // ~10% of a quantized prefill.
  const bool avx512 = kernel == "avx512vnni";
#pragma omp parallel for schedule(static) if (tokens * blocks >= 256)
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * blocks * kBlock;
#if defined(__x86_64__)
    if (avx512)
      quantize_blocks_avx512(row, xq + t * blocks, blocks);
    else
#endif
      quantize_q8_0_blocks(row, xq + t * blocks, blocks);
    for (std::int64_t b = t * blocks; b < (t + 1) * blocks; ++b) x_scales[b] = f16_to_f32(xq[b].d);
  }
}

void row_dot_products_with(const std::string& kernel, const float* x, const void* w, Format format, float* y,
                           std::int64_t tokens, std::int64_t out, std::int64_t in) {
  STRATA_CHECK(cpu_has(kernel), Internal, "quantized kernel '", kernel, "' is not available on this CPU");
  const std::int64_t blocks = std::int64_t(row_bytes(format, in) / block_bytes(format));
  // The activations once per call: Q8_0 blocks and their scales as f32 (kept between calls: no allocation per step)
  thread_local std::vector<BlockQ8_0> xq;
  thread_local std::vector<float> xs;
  xq.resize(std::size_t(tokens * blocks));
  xs.resize(xq.size());
  quantize_activations(kernel, x, xq.data(), xs.data(), tokens, blocks);
  if (format == Format::Q8_0)
    run<BlockQ8_0>(kernel, xq.data(), xs.data(), w, y, tokens, out, blocks);
  else
    run<BlockQ4_0>(kernel, xq.data(), xs.data(), w, y, tokens, out, blocks);
}

}  // namespace strata::quant
