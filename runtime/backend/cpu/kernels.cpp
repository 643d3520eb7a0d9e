// CPU kernels; see kernels.h. Independent accumulator lanes let GCC vectorise the reductions without -ffast-math.
#include "runtime/backend/cpu/kernels.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/backend/cpu/cpu_features.h"
#include "runtime/backend/cpu/tiles.h"
#include "runtime/base/error.h"
#include "runtime/tensor/tensor.h"

#if defined(__x86_64__)
#include <immintrin.h>
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
inline float as_f32(Half f16) { return f16_to_f32(f16.bits); }

// The order every row kernel adds in, for one (row, token): 16 lanes, lane j accumulating
// acc_j = fma(w[i + j], x[i + j], acc_j) over i = 0, 16, 32, ...; the lanes reduced pairwise, (j, j + 8), then
// (j, j + 4), (j, j + 2), (0, 1); then the last in % 16 products fused onto that sum in order. The scalar, AVX2 and
// AVX-512 kernels all follow it, so they give the same bits, and so do 16-bit and f32 weights holding the same
// values.
// The 16 lanes reduced pairwise in that order, (j, j + 8), (j, j + 4), (j, j + 2), (0, 1) (a is overwritten).
inline float lane_tree(float* a) {
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) a[j] = a[j] + a[j + width];
  return a[0];
}

// One (row, token) in exactly that order: the scalar kernel's step, and attention's scores on CPUs without AVX-512.
template <typename W>
inline float dot_in_order(const float* x, const W* w, std::int64_t n) {
  float a[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) a[j] = std::fma(as_f32(w[i + j]), x[i + j], a[j]);
  float sum = lane_tree(a);
  for (; i < n; ++i) sum = std::fma(as_f32(w[i]), x[i], sum);
  return sum;
}

// The scalar kernel (CPUs without AVX2), one (row, token) at a time.
template <typename W>
void rows_scalar(const float* x, const W* w, float* y, std::int64_t tokens, std::int64_t begin, std::int64_t end,
                 std::int64_t out, std::int64_t in) {
  for (std::int64_t r = begin; r < end; ++r) {
    const W* row = w + (r - begin) * in;
    for (std::int64_t t = 0; t < tokens; ++t) y[t * out + r] = dot_in_order(x + t * in, row, in);
  }
}

#if defined(__x86_64__)
// AVX2: the 16 lanes as two 8-lane registers; one row x up to 4 tokens per pass (8 accumulators), each weight
// vector widened once for all of them. Same lanes, same order.
__attribute__((target("avx2,fma,f16c"), always_inline)) inline void load16_avx2(const float* p, __m256& lo,
                                                                                __m256& hi) {
  lo = _mm256_loadu_ps(p);
  hi = _mm256_loadu_ps(p + 8);
}
__attribute__((target("avx2,fma,f16c"), always_inline)) inline void load16_avx2(const std::uint16_t* p, __m256& lo,
                                                                                __m256& hi) {  // bf16
  const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8));
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(a), 16));
  hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
}

// (j, j + 8) of the 16 lanes held as lo = 0..7 and hi = 8..15, then (j, j + 4), (j, j + 2), (0, 1).
__attribute__((target("avx2,fma,f16c"), always_inline)) inline float reduce_lanes_avx2(__m256 lo, __m256 hi) {
  const __m256 b = _mm256_add_ps(lo, hi);
  __m128 c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
  c = _mm_add_ps(c, _mm_movehl_ps(c, c));
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 0x55)));
}

template <int Tokens, typename W>
__attribute__((target("avx2,fma,f16c"))) void row_avx2(const float* x, const W* row, float* y, std::int64_t out,
                                                       std::int64_t in) {
  __m256 lo[Tokens], hi[Tokens];
  for (int t = 0; t < Tokens; ++t) lo[t] = hi[t] = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + kLanes <= in; i += kLanes) {
    __m256 wl, wh;
    load16_avx2(row + i, wl, wh);
    for (int t = 0; t < Tokens; ++t) {
      lo[t] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(x + t * in + i), lo[t]);
      hi[t] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(x + t * in + i + 8), hi[t]);
    }
  }
  for (int t = 0; t < Tokens; ++t) {
    float sum = reduce_lanes_avx2(lo[t], hi[t]);
    for (std::int64_t k = i; k < in; ++k) sum = std::fma(as_f32(row[k]), x[t * in + k], sum);
    y[t * out] = sum;
  }
}

template <typename W>
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(const float* x, const W* w, float* y, std::int64_t tokens,
                                                        std::int64_t begin, std::int64_t end, std::int64_t out,
                                                        std::int64_t in) {
  for (std::int64_t r = begin; r < end; ++r)
    for (std::int64_t t0 = 0; t0 < tokens; t0 += 4)
      with_tile_count<4>(tokens - t0,
                         [&](auto n) { row_avx2<n()>(x + t0 * in, w + (r - begin) * in, y + t0 * out + r, out, in); });
}

// AVX-512: four rows x up to 6 tokens per pass, 24 accumulators in registers, each weight vector widened once for 6
// tokens and each activation vector loaded once for the four rows, so the loop is bound by the FMA units rather than by
// loads (the AVX2 kernel reloads a token's activations for every row). Same lanes, same order.
#define STRATA_AVX512F "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"
#pragma GCC diagnostic push  // GCC 12 reports its intrinsics' deliberately undefined upper halves as uninitialised
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 load16(const float* p) {
  return _mm512_loadu_ps(p);
}
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 load16(const std::uint16_t* p) {  // bf16
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

__attribute__((target(STRATA_AVX512F), always_inline)) inline float reduce_lanes_avx512(__m512 a) {
  return reduce_lanes_avx2(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
}

template <int Rows, int Tokens, typename W>
__attribute__((target(STRATA_AVX512F))) void tile_avx512(const float* x, const W* w, float* y, std::int64_t out,
                                                         std::int64_t in) {
  __m512 acc[Rows][Tokens];
  for (int r = 0; r < Rows; ++r)
    for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_setzero_ps();
  // A tile's rows are interleaved streams, which the hardware prefetchers follow poorly: fetch them two tiles on.
  const char* ahead = reinterpret_cast<const char*>(w + 2 * Rows * in);
  constexpr int kStepBytes = Rows * kLanes * int(sizeof(W));
  std::int64_t i = 0;
  for (; i + kLanes <= in; i += kLanes) {
    for (int p = 0; p < kStepBytes; p += 64) _mm_prefetch(ahead + Rows * i * std::int64_t(sizeof(W)) + p, _MM_HINT_T0);
    __m512 wv[Rows];
    for (int r = 0; r < Rows; ++r) wv[r] = load16(w + r * in + i);
    for (int t = 0; t < Tokens; ++t) {
      const __m512 xv = _mm512_loadu_ps(x + t * in + i);
      for (int r = 0; r < Rows; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int t = 0; t < Tokens; ++t) {
      float sum = reduce_lanes_avx512(acc[r][t]);
      for (std::int64_t k = i; k < in; ++k) sum = std::fma(as_f32(w[r * in + k]), x[t * in + k], sum);
      y[t * out + r] = sum;
    }
}

constexpr int kTileTokens = 6;  // 4 rows x 6 tokens: 24 accumulators, 4 weight vectors and an activation in 32 zmm

// Token tiles outside, rows inside: a tile's activations stay in L1 while the work item's rows (16) pass by.
template <typename W>
__attribute__((target(STRATA_AVX512F))) void rows_avx512(const float* x, const W* w, float* y, std::int64_t tokens,
                                                         std::int64_t begin, std::int64_t end, std::int64_t out,
                                                         std::int64_t in) {
  for (std::int64_t t0 = 0; t0 < tokens; t0 += kTileTokens) {
    const std::int64_t n = tokens - t0;
    std::int64_t r = begin;
    for (; r + 4 <= end; r += 4)
      with_tile_count<kTileTokens>(
          n, [&](auto t) { tile_avx512<4, t()>(x + t0 * in, w + (r - begin) * in, y + t0 * out + r, out, in); });
    for (; r < end; ++r)
      with_tile_count<kTileTokens>(
          n, [&](auto t) { tile_avx512<1, t()>(x + t0 * in, w + (r - begin) * in, y + t0 * out + r, out, in); });
  }
}

// AVX512_BF16, for bf16 weights: VDPBF16PS multiplies 32 bf16 pairs per instruction into 16 f32 lanes (each lane
// adds two products, in f32), twice the multiply-adds of an f32 FMA; on the Zen 4 cores of docs/performance.md it
// issues at the FMA's rate, so the products run at up to twice the f32 kernel's peak. The activations are rounded to
// bf16 (f32_to_bf16, once per call for all its products: bf16_dot_products) as llama.cpp's and the GPUs' bf16 GEMMs
// round them; the products of two bf16 values are exact in f32, so what differs from the f32 kernels is that rounding
// and the order of the f32 additions. Tiles of 4 rows x up to 6 tokens as tile_avx512; the row's tail (in % 32) through
// masked loads, whose zero lanes add nothing. Each output's instructions are the same whatever the tile, the batch or
// the thread, so a token's result does not depend on what it is batched with. VDPBF16PS treats bf16 denormals as zero.
#define STRATA_AVX512BF16 STRATA_AVX512F ",avx512bf16"

// One step of tile_bf16_dots: 32 bf16 values of each row and token (the lanes outside `mask` read as zero).
template <int Rows, int Tokens>
__attribute__((target(STRATA_AVX512BF16), always_inline)) inline void bf16_dots_step(const std::uint16_t* x,
                                                                                     std::int64_t ldx,
                                                                                     const std::uint16_t* w,
                                                                                     std::int64_t in, __mmask32 mask,
                                                                                     __m512 (&acc)[Rows][Tokens]) {
  __m512bh wv[Rows];
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r) wv[r] = __m512bh(_mm512_maskz_loadu_epi16(mask, w + r * in));
#pragma GCC unroll 6
  for (int t = 0; t < Tokens; ++t) {
    const __m512bh xv = __m512bh(_mm512_maskz_loadu_epi16(mask, x + t * ldx));
#pragma GCC unroll 4
    for (int r = 0; r < Rows; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], xv);
  }
}

template <int Rows, int Tokens, bool Fetch>
__attribute__((target(STRATA_AVX512BF16))) void tile_bf16_dots(const std::uint16_t* x, std::int64_t ldx,
                                                               const std::uint16_t* w, float* y, std::int64_t out,
                                                               std::int64_t in) {
  __m512 acc[Rows][Tokens];
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 6
    for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_setzero_ps();
  const char* ahead = reinterpret_cast<const char*>(w + 2 * Rows * in);  // as tile_avx512: two tiles on
  constexpr std::int64_t kPair = 2 * kLanes;                             // bf16 values per instruction
  std::int64_t i = 0;
  for (; i + kPair <= in; i += kPair) {
    if constexpr (Fetch)
#pragma GCC unroll 4
      for (int p = 0; p < Rows * 64; p += 64) _mm_prefetch(ahead + Rows * i * 2 + p, _MM_HINT_T0);
    bf16_dots_step<Rows, Tokens>(x + i, ldx, w + i, in, ~__mmask32(0), acc);
  }
  if (i < in) bf16_dots_step<Rows, Tokens>(x + i, ldx, w + i, in, __mmask32((1u << (in - i)) - 1), acc);
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 6
    for (int t = 0; t < Tokens; ++t) y[t * out + r] = reduce_lanes_avx512(acc[r][t]);
}

__attribute__((target(STRATA_AVX512BF16))) void rows_bf16_dots(const std::uint16_t* x, std::int64_t ldx,
                                                               const std::uint16_t* w, float* y, std::int64_t tokens,
                                                               std::int64_t begin, std::int64_t end, std::int64_t out,
                                                               std::int64_t in) {
  if (tokens <= 0) return;
  const auto pass = [&](std::int64_t t0, auto fetch) {
    const std::int64_t n = tokens - t0;
    std::int64_t r = begin;
    for (; r + 4 <= end; r += 4)
      with_tile_count<kTileTokens>(n, [&](auto t) {
        tile_bf16_dots<4, t(), fetch()>(x + t0 * ldx, ldx, w + (r - begin) * in, y + t0 * out + r, out, in);
      });
    for (; r < end; ++r)
      with_tile_count<kTileTokens>(n, [&](auto t) {
        tile_bf16_dots<1, t(), fetch()>(x + t0 * ldx, ldx, w + (r - begin) * in, y + t0 * out + r, out, in);
      });
  };
  // Only the first token tile's pass requests the rows ahead: it reads them from memory, and the later passes find
  // them in L2, where requests would only bring lines into L1 that the arithmetic does not need yet, pushing out the
  // activations it does (with 2048-wide rows, 64-token products ran ~10% faster without them).
  pass(0, std::true_type{});
  for (std::int64_t t0 = kTileTokens; t0 < tokens; t0 += kTileTokens) pass(t0, std::false_type{});
}

// The interleaved layout (kernels.h): Groups groups of 16 rows (one after another, 16 * in values each) x up to 6
// tokens, Groups * Tokens accumulators whose lane r is row r's sum. Per pair of columns: one 64-byte load per group
// and one 4-byte broadcast per token (folded into the load), then Groups * Tokens VDPBF16PS. Every output's lane adds
// its row's pairs in order, one VDPBF16PS each, whatever the tile, the batch or the thread.
constexpr int kGroupTile = 4;
// Bytes ahead of each group's stream that the first pass requests: 1024 measured a few % faster than 512 at 1 and 16
// tokens (strata_products_bench), 1536 level.
constexpr std::int64_t kGroupAhead = 1024;

// A pass's requests for the thread's next tile (see groups_bf16_interleaved): `lines` cache lines from `from` on,
// spread evenly over the pass's column pairs.
struct NextTile {
  const char* from = nullptr;
  std::int64_t lines = 0;
};

// Fetch: the first token pass, which reads the groups from memory and requests them kGroupAhead bytes ahead (into
// L1); the later passes find them in L2. Every pass may request part of the next tile (into L2).
template <int Groups, int Tokens, bool Fetch>
__attribute__((target(STRATA_AVX512BF16))) void tile_bf16_interleaved(const std::uint16_t* x, std::int64_t ldx,
                                                                      const std::uint16_t* w, float* y,
                                                                      std::int64_t out, std::int64_t in,
                                                                      NextTile next) {
  __m512 acc[Groups][Tokens];
#pragma GCC unroll 16
  for (int g = 0; g < Groups; ++g)
#pragma GCC unroll 16
    for (int t = 0; t < Tokens; ++t) acc[g][t] = _mm512_setzero_ps();
  const std::int64_t group = 16 * in, pairs = in / 2;
  std::int64_t owed = 0, line = 0;  // next.lines over `pairs` steps, evenly: owed / pairs lines are due
  for (std::int64_t p = 0; p < pairs; ++p) {
    if (next.lines > 0)
      for (owed += next.lines; owed >= pairs; owed -= pairs, ++line) _mm_prefetch(next.from + line * 64, _MM_HINT_T1);
    __m512bh wv[Groups];
#pragma GCC unroll 16
    for (int g = 0; g < Groups; ++g) {
      const std::uint16_t* at = w + g * group + p * 32;
      if constexpr (Fetch) _mm_prefetch(reinterpret_cast<const char*>(at) + kGroupAhead, _MM_HINT_T0);
      wv[g] = __m512bh(_mm512_loadu_si512(at));
    }
#pragma GCC unroll 16
    for (int t = 0; t < Tokens; ++t) {
      std::int32_t pair;
      std::memcpy(&pair, x + t * ldx + 2 * p, sizeof pair);
      const __m512bh xv = __m512bh(_mm512_set1_epi32(pair));
#pragma GCC unroll 16
      for (int g = 0; g < Groups; ++g) acc[g][t] = _mm512_dpbf16_ps(acc[g][t], wv[g], xv);
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < Groups; ++g)
#pragma GCC unroll 16
    for (int t = 0; t < Tokens; ++t) _mm512_storeu_ps(y + t * out + 16 * g, acc[g][t]);
}

// Groups [first, last) of an interleaved matrix (its first group at w), kGroupTile groups at a time (96 KiB of
// 768-wide rows: they stay in L2 from the first token tile's pass to the last), the last few together.
//   A tile's first pass reads it from memory, unless it came into L2 while the tile before it was computed: each pass
// of a tile of more than one pass requests a part of the next tile of the range into L2, in proportion to the tokens
// it computes (a pass of 6 tokens of 16: 6/16 of the lines), spread evenly over its column pairs. Until the
// twenty-first session only the later passes requested, one to four lines at each of their first pairs (the tile's
// bytes over their pairs, rounded up to whole lines). An in-process A/B of the two (alternating per pass over 200 MB
// of width 768, two threads, medians of 80-100 passes), ms, 8 / 12 / 16 / 24 tokens: 3.66 / 3.81 / 4.31 / 5.80
// against 3.91 / 4.60 / 4.72 / 6.07, and 4.44 / 4.58 / 4.33 / 5.78 against 4.65 / 5.27 / 4.76 / 6.15 in a slower
// phase; 32, 48 and 64 tokens within 2% either way (widths 384-2048 too; 32 tokens 0-2% more time in most runs, and
// finishing the requests within the first 18 or 24 tokens' passes, as the old ones did, was no better). These are the
// batched decode steps' products, which stream the weights. At 12 tokens both request the same lines, in the one later
// pass: there the old per-pair loop of requests itself cost the time. Only where two tiles fit in half of L2 (at width
// 4096 and 16 tokens, 512 KiB tiles and 1 MiB of L2, the old requests pushed out the tile being read: 5-34% more time).
// At width 2048 and 16 tokens the old requests came too fast (128 KiB a pass, 14-19% more time, so none were made);
// spread by tokens, 5% less time than none.
__attribute__((target(STRATA_AVX512BF16))) void groups_bf16_interleaved(const std::uint16_t* x, std::int64_t ldx,
                                                                        const std::uint16_t* w, float* y,
                                                                        std::int64_t tokens, std::int64_t first,
                                                                        std::int64_t last, std::int64_t out,
                                                                        std::int64_t in) {
  const std::int64_t group_bytes = 16 * in * 2, group_lines = group_bytes / 64;
  const bool fetch_next = tokens > kTileTokens && in >= 2 && 4 * kGroupTile * group_bytes <= l2_bytes();
  const auto tiles = [&](std::int64_t g, auto groups) {
    const std::int64_t next_groups = fetch_next ? std::min<std::int64_t>(kGroupTile, last - g - groups()) : 0;
    const std::int64_t next_lines = next_groups * group_lines;
    const char* next = reinterpret_cast<const char*>(w) + (g + groups()) * group_bytes;
    std::int64_t requested = 0;  // lines of the next tile
    const auto pass = [&](std::int64_t t0, auto fetch) {
      NextTile request;
      if (requested < next_lines) {  // the lines of tokens [0, t0 + n) of the tile's, rounded up
        const std::int64_t due = (next_lines * std::min(tokens, t0 + kTileTokens) + tokens - 1) / tokens;
        request = {next + requested * 64, due - requested};
        requested = due;
      }
      with_tile_count<kTileTokens>(tokens - t0, [&](auto t) {
        tile_bf16_interleaved<groups(), t(), fetch()>(x + t0 * ldx, ldx, w + g * 16 * in, y + t0 * out + 16 * g, out,
                                                      in, request);
      });
    };
    pass(0, std::true_type{});
    for (std::int64_t t0 = kTileTokens; t0 < tokens; t0 += kTileTokens) pass(t0, std::false_type{});
  };
  for (std::int64_t g = first; g < last; g += kGroupTile)
    with_tile_count<kGroupTile>(last - g, [&](auto groups) { tiles(g, groups); });
}
#pragma GCC diagnostic pop
#endif

bool cpu_has(const std::string& kernel) {
  return kernel == "scalar" || (kernel == "avx2" && has_avx2_fma()) || (kernel == "avx512" && has_avx512()) ||
         (kernel == "avx512bf16" && has_avx512_bf16());
}

enum class Kernel { Scalar, Avx2, Avx512, Avx512Bf16 };

Kernel kernel_for(const std::string& name) {
  STRATA_CHECK(cpu_has(name), Config, "row kernel '", name,
               "' is not one this CPU runs (scalar, avx2, avx512 or avx512bf16)");
  return name == "avx512bf16" ? Kernel::Avx512Bf16
         : name == "avx512"   ? Kernel::Avx512
         : name == "avx2"     ? Kernel::Avx2
                              : Kernel::Scalar;
}

template <typename W>
void rows_dispatch(Kernel kernel, const float* x, const W* w, float* y, std::int64_t tokens, std::int64_t begin,
                   std::int64_t end, std::int64_t out, std::int64_t in) {
#if defined(__x86_64__)
  if (kernel == Kernel::Avx512 || kernel == Kernel::Avx512Bf16)
    return rows_avx512(x, w, y, tokens, begin, end, out, in);
  if (kernel == Kernel::Avx2) return rows_avx2(x, w, y, tokens, begin, end, out, in);
#endif
  rows_scalar(x, w, y, tokens, begin, end, out, in);
}

STRATA_CLONES void widen_bf16(const std::uint16_t* src, float* dst, std::int64_t count) {
  auto* bits = reinterpret_cast<std::uint32_t*>(dst);  // bf16 is the top half of an f32
  for (std::int64_t i = 0; i < count; ++i) bits[i] = std::uint32_t(src[i]) << 16;
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) void widen_f16_f16c(const std::uint16_t* src, float* dst, std::int64_t count) {
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < count; ++i) dst[i] = f16_to_f32(src[i]);
}

__attribute__((target("avx2,f16c"))) void narrow_f16_f16c(const float* src, std::uint16_t* dst, std::int64_t count) {
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8)  // round to nearest even, as f32_to_f16
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < count; ++i) dst[i] = f32_to_f16(src[i]);
}
#endif

}  // namespace

void widen(DType dtype, const void* src, float* dst, std::int64_t count) {
  if (dtype == DType::BF16) return widen_bf16(static_cast<const std::uint16_t*>(src), dst, count);
#if defined(__x86_64__)
  static const bool f16c = has_avx2_fma();
  if (dtype == DType::F16 && f16c) return widen_f16_f16c(static_cast<const std::uint16_t*>(src), dst, count);
#endif
  convert_to_f32(dtype, src, dst, std::size_t(count));
}

void narrow(DType dtype, const float* src, void* dst, std::int64_t count) {
#if defined(__x86_64__)
  static const bool f16c = has_avx2_fma();
  if (dtype == DType::F16 && f16c) return narrow_f16_f16c(src, static_cast<std::uint16_t*>(dst), count);
#endif
  convert_from_f32(dtype, src, dst, std::size_t(count));
}

std::vector<std::string> row_kernels() {
  std::vector<std::string> names;
  for (const char* name : {"avx512bf16", "avx512", "avx2", "scalar"})
    if (cpu_has(name)) names.push_back(name);
  return names;
}

std::string row_kernel_name() {
  const char* forced = std::getenv("STRATA_ROW_KERNEL");
  if (!forced || !*forced) return row_kernels().front();
  kernel_for(forced);  // a kernel this CPU runs, or a clear error
  return forced;
}

std::int64_t row_kernel_max_tokens(const std::string& kernel) {
  return kernel == "avx512" || kernel == "avx512bf16" ? kAnyBatch : kSmallBatch;
}

Workers::Team team_for(DType weights) {
  const bool blas = !is_quantized(weights) && row_kernel_max_tokens(row_kernel_name()) != kAnyBatch;
  return blas ? Workers::Team::OpenMP : Workers::Team::Own;
}

void row_dot_products(Workers& workers, const float* x, const float* w, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in) {
  row_dot_products_with(workers, row_kernel_name(), x, w, DType::F32, y, tokens, out, in);
}

void row_dot_products(Workers& workers, const float* x, const void* w, DType w_dtype, float* y, std::int64_t tokens,
                      std::int64_t out, std::int64_t in) {
  row_dot_products_with(workers, row_kernel_name(), x, w, w_dtype, y, tokens, out, in);
}

#if defined(__x86_64__)
namespace {
// A row stride of `in` bf16 values or a little more: an odd number of 64-byte lines, so that a tile's activation
// rows fall in different L1 sets (rows 4 KiB apart, as 2048 values are, all land in one).
std::int64_t odd_lines_stride(std::int64_t in) {
  const std::int64_t lines = (in * 2 + 63) / 64;
  return (lines % 2 == 0 ? lines + 1 : lines) * 32;
}

// x rounded to bf16 as f32_to_bf16 rounds (to nearest even; a vectorised loop).
STRATA_CLONES void round_to_bf16(const float* x, std::uint16_t* dst, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) dst[i] = f32_to_bf16(x[i]);
}

// The avx512bf16 kernel's products: x rounded to bf16 by all threads (a share of its rows each), then the rows of
// every product shared out as the other kernels share them, in one loop. The rounded rows live in the calling
// thread's buffer, kept between calls, an odd number of cache lines apart (odd_lines_stride: 64-token products of
// 4096-wide rows 6-17% faster than with the rows 8 KiB apart, whose 6 lines a step shared one L1 set with the 4
// weight rows' lines). A prefill goes over the rows in token passes (tiles.h), every pass's items in the same loop
// (pass by pass), after one rounding of all its tokens: a 128-token prefill's products had been four loops each.
// fill(first, last, xs, ldx) writes tokens [first, last)'s activations, rounded to bf16, at xs + t * ldx. With
// `shares`, only this rank's rows are filled, and the other ranks' come through shares->gather.
template <typename Fill>
void bf16_dot_products(Workers& workers, Fill&& fill, std::int64_t tokens, std::int64_t in,
                       std::span<const Product> products, const RowShares* shares = nullptr) {
  if (tokens <= 0) return;  // (the tiles run at least one token)
  const std::int64_t ldx = odd_lines_stride(in), held = shares ? std::max(tokens, shares->starts.back()) : tokens;
  // Rows start on a cache line (ldx is a whole number of them, the scratch on a huge page or the rounds' memory
  // page-aligned), so no 64-byte load spans two lines.
  thread_local HostScratch rounded;
  SharedRows* rounds = shares ? shares->rounds : nullptr;
  const std::size_t x_bytes = std::size_t(held * ldx) * sizeof(std::uint16_t);
  if (rounds)
    STRATA_CHECK(x_bytes <= rounds->bytes(), Internal, "rows of ", held, " tokens of ", in,
                 " bf16 values past the shared rows' ", rounds->bytes(), " bytes");
  auto* xs = rounds ? static_cast<std::uint16_t*>(rounds->begin_round()) : rounded.get<std::uint16_t>(x_bytes / 2);
  const std::int64_t own = shares ? shares->begin(tokens) : 0, own_end = shares ? shares->end(tokens) : tokens;
  workers.split(own_end - own, [&](std::int64_t first, std::int64_t last) { fill(own + first, own + last, xs, ldx); });
  if (rounds)
    shares->for_each_other(tokens, [&](int r, std::int64_t, std::int64_t) { rounds->publish(r, own, own_end - own); });
  else if (shares)
    shares->gather(xs, std::size_t(ldx) * sizeof(std::uint16_t));
  // Work items: in the interleaved layout kGroupTile groups (a product's last one fewer), and one more for the
  // rows after the groups (in row layout); in the row layout kBlock rows. Items of one group left the balancing
  // tail to 1-group tiles (6 accumulators, a broadcast per VDPBF16PS): 12% of a batch-16 decode step's samples.
  // Where that would leave fewer than two items a thread (small matrices, many threads; counted over all the
  // products of the call), items of one group, so that every thread has work; a thread's contiguous groups still go
  // through 4-group tiles.
  std::int64_t all_groups = 0;
  for (const Product& p : products)
    if (p.layout == Layout::Interleaved16) all_groups += p.out / 16;
  const std::int64_t per_item = all_groups / kGroupTile >= 2 * workers.size() ? kGroupTile : 1;
  const auto group_items = [&](const Product& p) { return (p.out / 16 + per_item - 1) / per_item; };
  const ProductItems items(products, [&](const Product& p) {
    if (p.layout != Layout::Interleaved16) return (p.out + kBlock - 1) / kBlock;
    return group_items(p) + (p.out % 16 ? 1 : 0);
  });
  // Items [first, last) of product p, numbered within it, for tokens t0 .. t0 + n.
  const std::uint16_t* x_rows = xs;  // the memory the rows being computed are read from (row t at t * ldx)
  const auto product_items = [&](std::size_t index, std::int64_t first, std::int64_t last, std::int64_t t0,
                                 std::int64_t n) {
    const Product& p = products[index];
    const auto* w = static_cast<const std::uint16_t*>(p.w);
    const std::uint16_t* xt = x_rows + t0 * ldx;
    float* y = p.y + t0 * p.out;
    if (p.layout != Layout::Interleaved16) {
      for (std::int64_t b = first; b < last; ++b) {
        const std::int64_t begin = b * kBlock, end = std::min(p.out, begin + kBlock);
        rows_bf16_dots(xt, ldx, w + begin * in, y, n, begin, end, p.out, in);
      }
      return;
    }
    const std::int64_t groups = p.out / 16, grouped = group_items(p);
    if (first < grouped)
      groups_bf16_interleaved(xt, ldx, w, y, n, first * per_item, std::min(last * per_item, groups), p.out, in);
    if (last > grouped) rows_bf16_dots(xt, ldx, w + groups * 16 * in, y, n, groups * 16, p.out, p.out, in);
  };
  // Tokens [begin, end), read from x_rows.
  const auto products_of_tokens = [&](std::int64_t begin, std::int64_t end) {
    const TokenPasses passes(end - begin);
    if (passes.count() == 1) {  // in the step's order (Workers::forecast): the rows of product_items' items
      const std::size_t row_bytes = std::size_t(in) * sizeof(std::uint16_t);
      forecast_balanced(workers, items, products, [&](const Product& p, std::int64_t i) {
        std::int64_t first = i * kBlock, last = std::min(p.out, first + kBlock);
        if (p.layout == Layout::Interleaved16) {
          const std::int64_t groups = p.out / 16;
          first = i < group_items(p) ? i * per_item * 16 : groups * 16;
          last = i < group_items(p) ? std::min(groups, (i + 1) * per_item) * 16 : p.out;
        }
        return std::pair(std::size_t(first) * row_bytes, std::size_t(last) * row_bytes);
      });
    }
    workers.balance(passes.count() * items.size(), [&](std::int64_t first, std::int64_t last) {
      passes.for_each(items.size(), first, last,
                      [&](std::int64_t t0, std::int64_t n, std::int64_t from, std::int64_t to) {
                        items.for_each(from, to, [&](std::size_t p, std::int64_t a, std::int64_t b) {
                          product_items(p, a, b, begin + t0, n);
                        });
                      });
    });
  };
  if (!rounds) return products_of_tokens(0, tokens);
  if (tokens <= kTokenPass) {  // one pass over the weights for every row: the others' rows copied in first
    shares->for_each_other(tokens, [&](int r, std::int64_t begin, std::int64_t end) {
      const auto* from = static_cast<const std::uint16_t*>(rounds->rows_from(r, begin, end - begin));
      std::memcpy(xs + begin * ldx, from + begin * ldx, std::size_t((end - begin) * ldx) * sizeof(std::uint16_t));
    });
    rounds->end_reading();
    return products_of_tokens(0, tokens);
  }
  // This rank's rows first, then each other rank's from its memory once it has handed them over (each a pass of its
  // own anyway).
  products_of_tokens(own, own_end);
  shares->for_each_other(tokens, [&](int r, std::int64_t begin, std::int64_t end) {
    x_rows = static_cast<const std::uint16_t*>(rounds->rows_from(r, begin, end - begin));
    if (end > begin) products_of_tokens(begin, end);
  });
  rounds->end_reading();
}
}  // namespace
#endif

void row_dot_products_with(Workers& workers, const std::string& name, const float* x, const void* w, DType w_dtype,
                           float* y, std::int64_t tokens, std::int64_t out, std::int64_t in, Layout layout) {
  const Product product{w, layout, y, out};
  row_dot_products_many(workers, name, x, w_dtype, tokens, in, {&product, 1});
}

namespace {
// Rows [begin, end) of w (row layout) with the f32 kernels: bf16 widened in registers, f16 block by block into a
// per-thread scratch (the conversion is not a plain shift).
void rows_of(Kernel kernel, const float* x, const void* w, DType w_dtype, float* y, std::int64_t tokens,
             std::int64_t begin, std::int64_t end, std::int64_t out, std::int64_t in) {
  if (w_dtype == DType::F32)
    return rows_dispatch(kernel, x, static_cast<const float*>(w) + begin * in, y, tokens, begin, end, out, in);
  if (w_dtype == DType::BF16)
    return rows_dispatch(kernel, x, static_cast<const std::uint16_t*>(w) + begin * in, y, tokens, begin, end, out, in);
  thread_local std::vector<float> scratch;  // kept between calls: no allocation or page faults per step
  if (scratch.size() < std::size_t(kBlock * in)) scratch.resize(std::size_t(kBlock * in));
  widen(w_dtype, static_cast<const char*>(w) + std::size_t(begin * in) * dtype_size(w_dtype), scratch.data(),
        (end - begin) * in);
  rows_dispatch(kernel, x, static_cast<const float*>(scratch.data()), y, tokens, begin, end, out, in);
}

// The products' rows in items of kBlock rows over the threads, for up to kTokenPass tokens.
void row_kernel_products(Workers& workers, Kernel kernel, const float* x, DType w_dtype, std::int64_t tokens,
                         std::int64_t in, std::span<const Product> products, const ProductItems& blocks) {
  workers.balance(blocks.size(), [&](std::int64_t first, std::int64_t last) {
    blocks.for_each(first, last, [&](std::size_t index, std::int64_t from, std::int64_t to) {
      const Product& p = products[index];
      for (std::int64_t b = from; b < to; ++b)
        rows_of(kernel, x, p.w, w_dtype, p.y, tokens, b * kBlock, std::min(p.out, (b + 1) * kBlock), p.out, in);
    });
  });
}
}  // namespace

namespace {
// row_dot_products_many, and with `shares` (only where gathers_shares) shared_rows_dot_products.
void dot_products_many(Workers& workers, const std::string& name, const float* x, DType w_dtype, std::int64_t tokens,
                       std::int64_t in, std::span<const Product> products, const RowShares* shares) {
  const Kernel kernel = kernel_for(name);
  for (const Product& p : products)
    STRATA_CHECK(p.layout == Layout::Rows || (w_dtype == DType::BF16 && interleaves_bf16(name, in)), Internal,
                 "bf16 weights interleaved by 16 rows given to the ", name, " kernel");
#if defined(__x86_64__)
  if (kernel == Kernel::Avx512Bf16 && w_dtype == DType::BF16) {
    const auto round = [&](std::int64_t first, std::int64_t last, std::uint16_t* xs, std::int64_t ldx) {
      for (std::int64_t t = first; t < last; ++t) round_to_bf16(x + t * in, xs + t * ldx, in);
    };
    return bf16_dot_products(workers, round, tokens, in, products, shares);
  }
#endif
  const ProductItems blocks(products, [](const Product& p) { return (p.out + kBlock - 1) / kBlock; });
  if (tokens > kTokenPass) {  // a prefill: in passes (tiles.h); each output's arithmetic is the same
    return in_token_passes(tokens, products, [&](std::int64_t t0, std::int64_t n, std::span<const Product> part) {
      row_kernel_products(workers, kernel, x + t0 * in, w_dtype, n, in, part, blocks);
    });
  }
  // In the step's order (Workers::forecast): item i is rows kBlock i .. kBlock (i + 1) - 1, in the row layout.
  forecast_balanced_rows(workers, blocks, products, kBlock, std::size_t(in) * dtype_size(w_dtype));
  row_kernel_products(workers, kernel, x, w_dtype, tokens, in, products, blocks);
}
}  // namespace

void row_dot_products_many(Workers& workers, const std::string& name, const float* x, DType w_dtype,
                           std::int64_t tokens, std::int64_t in, std::span<const Product> products) {
  dot_products_many(workers, name, x, w_dtype, tokens, in, products, nullptr);
}

bool gathers_shares(const std::string& kernel, DType w_dtype) {
  return kernel_for(kernel) == Kernel::Avx512Bf16 && w_dtype == DType::BF16;
}

std::size_t shared_rows_bytes(const std::string& kernel, DType w_dtype, std::int64_t tokens, std::int64_t in) {
#if defined(__x86_64__)
  if (gathers_shares(kernel, w_dtype)) return std::size_t(tokens * odd_lines_stride(in)) * sizeof(std::uint16_t);
#endif
  (void)kernel, (void)w_dtype, (void)tokens, (void)in;
  return 0;
}

void shared_rows_dot_products(Workers& workers, const std::string& name, const float* x, const RowShares& shares,
                              DType w_dtype, std::int64_t tokens, std::int64_t in, std::span<const Product> products) {
  STRATA_CHECK(gathers_shares(name, w_dtype), Internal, "the ", name, " kernel does not gather rows of ",
               dtype_name(w_dtype), " products");
  dot_products_many(workers, name, x, w_dtype, tokens, in, products, &shares);
}

bool made_rows_dot_products(Workers& workers, const std::string& name, const RowMaker& make, DType w_dtype,
                            std::int64_t tokens, std::int64_t in, std::span<const Product> products) {
#if defined(__x86_64__)
  if (kernel_for(name) != Kernel::Avx512Bf16 || w_dtype != DType::BF16) return false;
  const auto made = [&](std::int64_t first, std::int64_t last, std::uint16_t* xs, std::int64_t ldx) {
    thread_local std::vector<float> scratch;
    if (scratch.size() < std::size_t(in)) scratch.resize(std::size_t(in));
    for (std::int64_t t = first; t < last; ++t) round_to_bf16(make(t, scratch.data()), xs + t * ldx, in);
  };
  bf16_dot_products(workers, made, tokens, in, products);
  return true;
#else
  (void)workers, (void)name, (void)make, (void)w_dtype, (void)tokens, (void)in, (void)products;
  return false;
#endif
}

bool interleaves_bf16(const std::string& kernel) { return kernel == "avx512bf16"; }

bool interleaves_bf16(const std::string& kernel, std::int64_t in) { return interleaves_bf16(kernel) && in % 2 == 0; }

void interleave_bf16_rows(Workers& workers, const std::uint16_t* rows, std::uint16_t* interleaved, std::int64_t out,
                          std::int64_t in) {
  const std::int64_t groups = out / 16;
  workers.split(groups, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t g = first; g < last; ++g)
      for (std::int64_t r = 0; r < 16; ++r) {
        const std::uint16_t* row = rows + (g * 16 + r) * in;
        std::uint16_t* lane = interleaved + g * 16 * in + 2 * r;
        for (std::int64_t p = 0; p < in / 2; ++p) {
          lane[p * 32] = row[2 * p];
          lane[p * 32 + 1] = row[2 * p + 1];
        }
      }
  });
  std::memcpy(interleaved + groups * 16 * in, rows + groups * 16 * in, std::size_t((out - groups * 16) * in) * 2);
}

void widen_interleaved_bf16_row(const std::uint16_t* interleaved, std::int64_t r, std::int64_t out, std::int64_t in,
                                float* dst) {
  const std::int64_t grouped = out / 16 * 16;
  if (r >= grouped) return widen(DType::BF16, interleaved + r * in, dst, in);
  const std::uint16_t* lane = interleaved + r / 16 * 16 * in + 2 * (r % 16);
  for (std::int64_t p = 0; p < in / 2; ++p) {
    dst[2 * p] = bf16_to_f32(lane[p * 32]);
    dst[2 * p + 1] = bf16_to_f32(lane[p * 32 + 1]);
  }
}

STRATA_CLONES void axpy(float alpha, const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

namespace {

#if defined(__x86_64__)
#pragma GCC diagnostic push  // GCC 12 reports its intrinsics' deliberately undefined upper halves as uninitialised
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Up to 16 positions at a time (fewer: the last one repeated, its extra scores dropped), one 16-lane accumulator each;
// their 16 lane trees are then reduced together by a shuffle network (15 adds and 30 shuffles for 16 scores, where one
// tree alone takes 4 adds and 4 shuffles) whose every add is the tree's: pair (j, j + 8) first, then (j, j + 4), (j, j
// + 2), (0, 1). Lane 4m + p of the result holds position m + 4p's score.
// 16 f16 keys or values (an f16 KV cache), widened exactly by VCVTPH2PS (f32 ones: load16 above).
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 load16(const Half* at) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)));
}

// The four levels of the lane trees, each folding two vectors of partial sums into one: (j, j + 8) of each input,
// the two inputs side by side; then (j, j + 4), one input's partials per 128-bit lane; (j, j + 2); (0, 1).
// lane_trees16 and lane_trees8 are built from these alone, so every sum takes the same adds in either.
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 fold_eighths(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
}
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 fold_quarters(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 fold_pairs(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 fold_last(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// The 16 accumulators' lane trees reduced together (see above): lane k of the result is accumulator k's sum.
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 lane_trees16(const __m512 (&a)[16]) {
  __m512 b[8], c[4], d[2];
  for (int p = 0; p < 8; ++p) b[p] = fold_eighths(a[2 * p], a[2 * p + 1]);   // positions 2p, 2p + 1 side by side
  for (int p = 0; p < 4; ++p) c[p] = fold_quarters(b[2 * p], b[2 * p + 1]);  // one position per 128-bit lane
  for (int p = 0; p < 2; ++p) d[p] = fold_pairs(c[2 * p], c[2 * p + 1]);
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, fold_last(d[0], d[1]));
}

template <typename K>
__attribute__((target(STRATA_AVX512F))) void dots16_avx512(const float* q, const K* keys, std::int64_t stride,
                                                           std::int64_t rows, std::int64_t n, float* scores) {
  // Fully unrolled, so that the 16 accumulators live in registers (GCC otherwise zeroed them on the stack with a
  // REP STOSQ per call: a tenth of the time of a long-context decode's scores).
  const K* row[16];
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) row[k] = keys + std::min<std::int64_t>(k, rows - 1) * stride;
  __m512 a[16];
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) a[k] = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m512 qv = _mm512_loadu_ps(q + i);
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) a[k] = _mm512_fmadd_ps(load16(row[k] + i), qv, a[k]);
  }
  alignas(64) float sums[16];
  _mm512_store_ps(sums, lane_trees16(a));
  for (int k = 0; k < rows; ++k) {
    for (std::int64_t t = i; t < n; ++t) sums[k] = std::fma(as_f32(row[k][t]), q[t], sums[k]);  // the tail, in order
    scores[k] = sums[k];
  }
}

// dots16_avx512 for 16 whole rows side by side (stride D, a multiple of 16: no tail), the common head sizes: the
// rows are addressed from one pointer and the scores stored at once, where the general kernel's 16 row pointers did
// not fit the registers (a third of a long-context decode's score time went to reloading them and to the tail's
// loop). The same arithmetic, so the same bits.
template <typename K, int D>
__attribute__((target(STRATA_AVX512F))) void dots16_packed_avx512(const float* q, const K* keys, float* scores) {
  static_assert(D % kLanes == 0);
  __m512 a[16];
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) a[k] = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < D; i += kLanes) {
    const __m512 qv = _mm512_loadu_ps(q + i);
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) a[k] = _mm512_fmadd_ps(load16(keys + k * D + i), qv, a[k]);
  }
  _mm512_storeu_ps(scores, lane_trees16(a));
}

// lane_trees16 for 8 accumulators, from the same folds (the last one on a single vector), so the same bits; lane
// k < 8 of the result is accumulator k's sum.
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m256 lane_trees8(const __m512 (&a)[8]) {
  __m512 b[4], c[2];
  for (int p = 0; p < 4; ++p) b[p] = fold_eighths(a[2 * p], a[2 * p + 1]);
  for (int p = 0; p < 2; ++p) c[p] = fold_quarters(b[2 * p], b[2 * p + 1]);
  const __m512 d = fold_pairs(c[0], c[1]);
  const __m512 e = fold_last(d, d);  // lane 4k: accumulator k, 4k + 1: accumulator 4 + k
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps256(_mm512_permutexvar_ps(order, e));
}

// dots16_packed_avx512 for G query heads (a GQA group, D floats each, one after another) over 8 keys: each key
// chunk is loaded (f16: widened) once for the G heads instead of once per head; each score's FMAs and tree are
// those of dots16_packed_avx512, so the same bits. Head g's scores go to scores + g * score_stride. Partial: the
// first `rows` < 8 keys only (a run's last few: the accumulators past them repeat the last key, their scores are not
// stored), where one head at a time through dots16_avx512 had cost a prefill's attention a fifth of its score time.
template <typename K, int D, int G, bool Partial = false>
__attribute__((target(STRATA_AVX512F))) void group_dots8_avx512(const float* q, const K* keys, float* scores,
                                                                std::int64_t score_stride, int rows = 8) {
  static_assert(D % kLanes == 0 && G * 8 + G + 1 <= 32);  // accumulators, queries and a key in the registers
  const auto key = [&](int k) { return keys + (Partial ? std::min(k, rows - 1) : k) * D; };
  __m512 a[G][8];
#pragma GCC unroll 3
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) a[g][k] = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < D; i += kLanes) {
    __m512 qv[G];
#pragma GCC unroll 3
    for (int g = 0; g < G; ++g) qv[g] = _mm512_loadu_ps(q + g * D + i);
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      const __m512 kv = load16(key(k) + i);
#pragma GCC unroll 3
      for (int g = 0; g < G; ++g) a[g][k] = _mm512_fmadd_ps(kv, qv[g], a[g][k]);
    }
  }
#pragma GCC unroll 3
  for (int g = 0; g < G; ++g) {
    if constexpr (Partial)
      _mm256_mask_storeu_ps(scores + g * score_stride, __mmask8((1u << rows) - 1), lane_trees8(a[g]));
    else
      _mm256_storeu_ps(scores + g * score_stride, lane_trees8(a[g]));
  }
}
#pragma GCC diagnostic pop
#endif

// The attention passes for f32 or f16 (Half) cached rows. Without AVX-512, f16 rows are widened a row at a time
// (F16C where the CPU has it) into a per-thread buffer and go through the f32 code: the same values either way.
std::vector<float>& widened_row(std::int64_t n) {
  thread_local std::vector<float> row;
  if (row.size() < std::size_t(n)) row.resize(std::size_t(n));
  return row;
}

template <typename K>
void dots_of(const float* q, const K* keys, std::int64_t stride, std::int64_t count, std::int64_t n, float* scores) {
  std::int64_t r = 0;
#if defined(__x86_64__)
  static const bool avx512 = has_avx512();
  if (avx512 && stride == n && (n == 64 || n == 128)) {
    for (; r + 16 <= count; r += 16)
      (n == 64 ? dots16_packed_avx512<K, 64> : dots16_packed_avx512<K, 128>)(q, keys + r * stride, scores + r);
  }
  if (avx512)
    for (; r < count; r += 16)
      dots16_avx512(q, keys + r * stride, stride, std::min<std::int64_t>(16, count - r), n, scores + r);
#endif
  for (; r < count; ++r) {
    if constexpr (std::is_same_v<K, float>) {
      scores[r] = dot_in_order(q, keys + r * stride, n);
    } else {
      std::vector<float>& row = widened_row(n);
      widen(DType::F16, keys + r * stride, row.data(), n);
      scores[r] = dot_in_order(q, row.data(), n);
    }
  }
}

// dots_of for `heads` query heads over the same keys (a GQA group): head g's query at q + g * n, its scores at
// scores + g * score_stride. With AVX-512 and whole rows of 64 or 128 side by side, up to three heads at a time go
// through 8 keys together (group_dots8_avx512); the rest, and every other shape, one head at a time. Every score the
// bits of dots_of's.
template <typename K>
void group_dots_of(const float* q, std::int64_t heads, const K* keys, std::int64_t stride, std::int64_t count,
                   std::int64_t n, float* scores, std::int64_t score_stride) {
  std::int64_t h = 0;
#if defined(__x86_64__)
  static const bool avx512 = has_avx512();
  if (avx512 && heads > 1 && stride == n && (n == 64 || n == 128)) {
    const std::int64_t whole = count - count % 8;
    while (heads - h >= 2) {  // threes, then a two or a one
      const std::int64_t g = std::min<std::int64_t>(3, heads - h);
      const auto kernel = n == 64 ? (g == 3 ? group_dots8_avx512<K, 64, 3> : group_dots8_avx512<K, 64, 2>)
                                  : (g == 3 ? group_dots8_avx512<K, 128, 3> : group_dots8_avx512<K, 128, 2>);
      const auto partial = n == 64
                               ? (g == 3 ? group_dots8_avx512<K, 64, 3, true> : group_dots8_avx512<K, 64, 2, true>)
                               : (g == 3 ? group_dots8_avx512<K, 128, 3, true> : group_dots8_avx512<K, 128, 2, true>);
      for (std::int64_t r = 0; r < whole; r += 8)
        kernel(q + h * n, keys + r * stride, scores + h * score_stride + r, score_stride, 8);
      if (whole < count)
        partial(q + h * n, keys + whole * stride, scores + h * score_stride + whole, score_stride, int(count - whole));
      h += g;
    }
  }
#endif
  for (; h < heads; ++h) dots_of(q + h * n, keys, stride, count, n, scores + h * score_stride);
}

#if defined(__x86_64__)
// G heads' weighted sums over the same values (a GQA group), each head's arithmetic that of weighted_sum (the product
// then the sum, axpy's arithmetic: this file is compiled without FMA contraction): 64 elements of the G outputs in
// registers, each value row loaded (f16: widened) once for all of them. One head alone is a chain of dependent adds
// per element (the latency of an add per position); G heads are G independent chains.
template <int G, typename K>
__attribute__((target(STRATA_AVX512F))) void weighted_sums_avx512(const float* weights, std::int64_t weight_stride,
                                                                  const K* values, std::int64_t stride,
                                                                  std::int64_t count, std::int64_t n, float* o) {
  std::int64_t i0 = 0;
  for (; i0 + 64 <= n; i0 += 64) {
    __m512 acc[G][4];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_loadu_ps(o + g * n + i0 + 16 * c);
    for (std::int64_t r = 0; r < count; ++r) {
      __m512 v[4];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) v[c] = load16(values + r * stride + i0 + 16 * c);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) {
        const __m512 w = _mm512_set1_ps(weights[g * weight_stride + r]);
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_add_ps(acc[g][c], _mm512_mul_ps(w, v[c]));
      }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(o + g * n + i0 + 16 * c, acc[g][c]);
  }
  for (int g = 0; g < G; ++g)
    for (std::int64_t r = 0; r < count; ++r)
      for (std::int64_t i = i0; i < n; ++i)
        o[g * n + i] += weights[g * weight_stride + r] * as_f32(values[r * stride + i]);
}
#endif

// exp for softmax, one algorithm for the scalar and the AVX-512 code (the same operations in the same order, so the
// same bits): x clamped to [-87.33, 88.7] (below, exp is under FLT_MIN and counts for nothing beside the row's
// maximum, whose exp is 1), n = x / ln 2 rounded to nearest even, r = x - n ln 2 in two fused steps (Cody-Waite),
// exp(r) = 1 + r + r^2 P(r) with Cephes' degree-5 P (about 1 ulp), times 2^n built in the exponent bits.
constexpr float kExpLow = -87.33654f, kExpHigh = 88.72283f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline float exp_portable(float x) {
  x = std::min(std::max(x, kExpLow), kExpHigh);
  const float n = std::nearbyint(x * kLog2e);
  float r = std::fma(n, -kLn2Hi, x);
  r = std::fma(n, -kLn2Lo, r);
  float p = kExpP[0];
  for (int k = 1; k < 6; ++k) p = std::fma(p, r, kExpP[k]);
  const float y = std::fma(p, r * r, r) + 1.0f;
  const std::uint32_t bits = std::uint32_t(int(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return y * scale;
}

// s[j] = exp(s[j] - max) for j < n, and their sum: 16 lanes over the whole runs of 16, reduced by the row kernels'
// lane tree, then the last n % 16 added in order.
float exp_and_sum_portable(float* s, std::int64_t n, float max) {
  float lanes[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += (s[i + j] = exp_portable(s[i + j] - max));
  float sum = lane_tree(lanes);
  for (; i < n; ++i) sum += (s[i] = exp_portable(s[i] - max));
  return sum;
}

float scale_and_max_portable(float* s, std::int64_t n, float scale) {
  float max = -INFINITY;
  for (std::int64_t i = 0; i < n; ++i) max = std::max(max, s[i] *= scale);
  return max;
}

void divide_by_portable(float* s, std::int64_t n, float denom) {
  for (std::int64_t i = 0; i < n; ++i) s[i] /= denom;
}

std::int64_t greedy_index_portable(const float* row, std::int64_t n) {
  std::int64_t best = 0;
  float best_value = -INFINITY;
  for (std::int64_t i = 0; i < n; ++i)
    if (row[i] > best_value) best_value = row[i], best = i;  // false for NaN; an equal value keeps the first
  return best;
}

void silu_times_portable(const float* gate, const float* up, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + exp_portable(-gate[i])) * up[i];
}

#if defined(__x86_64__)
#pragma GCC diagnostic push  // GCC 12 reports its intrinsics' deliberately undefined upper halves as uninitialised
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target(STRATA_AVX512F), always_inline)) inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpLow)), _mm512_set1_ps(kExpHigh));
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Hi), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpP[0]);
  for (int k = 1; k < 6; ++k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP[k]));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}

__attribute__((target(STRATA_AVX512F))) float exp_and_sum_avx512(float* s, std::int64_t n, float max) {
  __m512 lanes = _mm512_setzero_ps();
  const __m512 m = _mm512_set1_ps(max);
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i), m));
    _mm512_storeu_ps(s + i, e);
    lanes = _mm512_add_ps(lanes, e);
  }
  float sum = reduce_lanes_avx512(lanes);
  for (; i < n; ++i) sum += (s[i] = exp_portable(s[i] - max));
  return sum;
}

// The first min(left, 16) lanes: a run's last vector, loaded and stored through this mask, touches nothing past it.
__attribute__((target(STRATA_AVX512F), always_inline)) inline __mmask16 lanes_within(std::int64_t left) {
  return left >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

__attribute__((target(STRATA_AVX512F))) float scale_and_max_avx512(float* s, std::int64_t n, float scale) {
  const __m512 factor = _mm512_set1_ps(scale);
  __m512 max = _mm512_set1_ps(-INFINITY);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 in = lanes_within(n - i);
    const __m512 scaled = _mm512_mul_ps(_mm512_maskz_loadu_ps(in, s + i), factor);
    _mm512_mask_storeu_ps(s + i, in, scaled);
    max = _mm512_mask_max_ps(max, in, max, scaled);
  }
  return _mm512_reduce_max_ps(max);
}

__attribute__((target(STRATA_AVX512F))) void divide_by_avx512(float* s, std::int64_t n, float denom) {
  const __m512 d = _mm512_set1_ps(denom);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 in = lanes_within(n - i);
    _mm512_mask_storeu_ps(s + i, in, _mm512_div_ps(_mm512_maskz_loadu_ps(in, s + i), d));
  }
}

__attribute__((target(STRATA_AVX512F))) std::int64_t greedy_index_avx512(const float* row, std::int64_t n) {
  __m512 max = _mm512_set1_ps(-INFINITY);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 in = lanes_within(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(in, row + i);
    max = _mm512_mask_max_ps(max, in & _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), max, v);  // NaN lanes left out
  }
  const float best = _mm512_reduce_max_ps(max);
  if (best == -INFINITY) return 0;  // nothing above -inf: the portable loop's index
  const __m512 wanted = _mm512_set1_ps(best);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 in = lanes_within(n - i);  // nothing past the row is read (nor counts, as a zero would)
    const __mmask16 equal = _mm512_mask_cmp_ps_mask(in, _mm512_maskz_loadu_ps(in, row + i), wanted, _CMP_EQ_OQ);
    if (equal) return i + __builtin_ctz(equal);
  }
  return 0;  // unreachable: best is one of the row's values
}

__attribute__((target(STRATA_AVX512F))) void silu_times_avx512(const float* gate, const float* up, float* out,
                                                               std::int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(zero, g))));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
  }
  silu_times_portable(gate + i, up + i, out + i, n - i);
}
#pragma GCC diagnostic pop
#endif

}  // namespace

STRATA_CLONES void dots(const float* q, const float* keys, std::int64_t stride, std::int64_t count, std::int64_t n,
                        float* scores) {
  dots_of(q, keys, stride, count, n, scores);
}

void dots(const float* q, const Half* keys, std::int64_t stride, std::int64_t count, std::int64_t n, float* scores) {
  dots_of(q, keys, stride, count, n, scores);
}

void group_dots(const float* q, std::int64_t heads, const float* keys, std::int64_t stride, std::int64_t count,
                std::int64_t n, float* scores, std::int64_t score_stride) {
  group_dots_of(q, heads, keys, stride, count, n, scores, score_stride);
}

void group_dots(const float* q, std::int64_t heads, const Half* keys, std::int64_t stride, std::int64_t count,
                std::int64_t n, float* scores, std::int64_t score_stride) {
  group_dots_of(q, heads, keys, stride, count, n, scores, score_stride);
}

STRATA_CLONES void weighted_sum(const float* weights, const float* values, std::int64_t stride, std::int64_t count,
                                std::int64_t n, float* o) {
  constexpr std::int64_t kChunk = 64;
  std::int64_t i0 = 0;
  for (; i0 + kChunk <= n; i0 += kChunk) {
    float acc[kChunk];
    for (std::int64_t i = 0; i < kChunk; ++i) acc[i] = o[i0 + i];
    for (std::int64_t r = 0; r < count; ++r) {
      const float w = weights[r], *v = values + r * stride + i0;
      for (std::int64_t i = 0; i < kChunk; ++i) acc[i] += w * v[i];
    }
    for (std::int64_t i = 0; i < kChunk; ++i) o[i0 + i] = acc[i];
  }
  for (std::int64_t r = 0; r < count && i0 < n; ++r) axpy(weights[r], values + r * stride + i0, o + i0, n - i0);
}

template <typename K>
void weighted_sums_of(const float* weights, std::int64_t weight_stride, std::int64_t heads, const K* values,
                      std::int64_t stride, std::int64_t count, std::int64_t n, float* o) {
  std::int64_t g = 0;
#if defined(__x86_64__)
  static const bool avx512 = has_avx512();
  for (; avx512 && g < heads; g += 4) {  // up to 4 heads at a time: 16 accumulators
    const float* w = weights + g * weight_stride;
    float* out = o + g * n;
    switch (std::min<std::int64_t>(4, heads - g)) {
      case 1:
        weighted_sums_avx512<1>(w, weight_stride, values, stride, count, n, out);
        break;
      case 2:
        weighted_sums_avx512<2>(w, weight_stride, values, stride, count, n, out);
        break;
      case 3:
        weighted_sums_avx512<3>(w, weight_stride, values, stride, count, n, out);
        break;
      default:
        weighted_sums_avx512<4>(w, weight_stride, values, stride, count, n, out);
        break;
    }
  }
#endif
  if constexpr (std::is_same_v<K, float>) {
    for (; g < heads; ++g) weighted_sum(weights + g * weight_stride, values, stride, count, n, o + g * n);
  } else if (g < heads) {  // each f16 row widened once for the heads, each head's sum in order r (axpy's arithmetic)
    std::vector<float>& row = widened_row(n);
    for (std::int64_t r = 0; r < count; ++r) {
      widen(DType::F16, values + r * stride, row.data(), n);
      for (std::int64_t h = g; h < heads; ++h) axpy(weights[h * weight_stride + r], row.data(), o + h * n, n);
    }
  }
}

void weighted_sum(const float* weights, const Half* values, std::int64_t stride, std::int64_t count, std::int64_t n,
                  float* o) {
  weighted_sums_of(weights, 0, 1, values, stride, count, n, o);
}

void weighted_sums(const float* weights, std::int64_t weight_stride, std::int64_t heads, const float* values,
                   std::int64_t stride, std::int64_t count, std::int64_t n, float* o) {
  weighted_sums_of(weights, weight_stride, heads, values, stride, count, n, o);
}

void weighted_sums(const float* weights, std::int64_t weight_stride, std::int64_t heads, const Half* values,
                   std::int64_t stride, std::int64_t count, std::int64_t n, float* o) {
  weighted_sums_of(weights, weight_stride, heads, values, stride, count, n, o);
}

float exp_and_sum(float* s, std::int64_t n, float max) {
#if defined(__x86_64__)
  static const bool avx512 = has_avx512();
  if (avx512) return exp_and_sum_avx512(s, n, max);
#endif
  return exp_and_sum_portable(s, n, max);
}

float exp_and_sum_without_vectors(float* s, std::int64_t n, float max) { return exp_and_sum_portable(s, n, max); }

void merge_softmax_parts(std::int64_t parts, const float* maxes, const float* sums, const float* weighted,
                         std::int64_t weighted_stride, std::int64_t n, float* scale, float* o) {
  float greatest = -INFINITY;
  for (std::int64_t s = 0; s < parts; ++s) greatest = std::max(greatest, maxes[s]);
  std::copy(maxes, maxes + parts, scale);
  exp_and_sum(scale, parts, greatest);  // c_s = exp(max_s - M); the sum of the c_s is not the one needed
  float denom = 0.0f;
  for (std::int64_t s = 0; s < parts; ++s) denom += scale[s] * sums[s];
  std::fill(o, o + n, 0.0f);
  for (std::int64_t s = 0; s < parts; ++s)
    for (std::int64_t i = 0; i < n; ++i) o[i] += scale[s] * weighted[s * weighted_stride + i];
  for (std::int64_t i = 0; i < n; ++i) o[i] /= denom;
}

float scale_and_max(float* s, std::int64_t n, float scale) {
#if defined(__x86_64__)
  static const bool avx512 = has_avx512();
  if (avx512) return scale_and_max_avx512(s, n, scale);
#endif
  return scale_and_max_portable(s, n, scale);
}

void divide_by(float* s, std::int64_t n, float denom) {
#if defined(__x86_64__)
  static const bool avx512 = has_avx512();
  if (avx512) return divide_by_avx512(s, n, denom);
#endif
  divide_by_portable(s, n, denom);
}

float scale_and_max_without_vectors(float* s, std::int64_t n, float scale) {
  return scale_and_max_portable(s, n, scale);
}

void divide_by_without_vectors(float* s, std::int64_t n, float denom) { divide_by_portable(s, n, denom); }

void silu_times(const float* gate, const float* up, float* out, std::int64_t n) {
#if defined(__x86_64__)
  static const bool avx512 = has_avx512();
  if (avx512) return silu_times_avx512(gate, up, out, n);
#endif
  silu_times_portable(gate, up, out, n);
}

void silu_times_without_vectors(const float* gate, const float* up, float* out, std::int64_t n) {
  silu_times_portable(gate, up, out, n);
}

std::int64_t greedy_index(const float* row, std::int64_t n) {
#if defined(__x86_64__)
  static const bool avx512 = has_avx512();
  if (avx512) return greedy_index_avx512(row, n);
#endif
  return greedy_index_portable(row, n);
}

std::int64_t greedy_index_without_vectors(const float* row, std::int64_t n) { return greedy_index_portable(row, n); }

STRATA_CLONES double sum_of_squares(const float* x, std::int64_t n) {
  constexpr int kDoubleLanes = 8;
  double lanes[kDoubleLanes] = {};
  std::int64_t i = 0;
  for (; i + kDoubleLanes <= n; i += kDoubleLanes)
    for (int j = 0; j < kDoubleLanes; ++j) lanes[j] += double(x[i + j]) * double(x[i + j]);
  for (int width = kDoubleLanes / 2; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  double sum = lanes[0];
  for (; i < n; ++i) sum += double(x[i]) * double(x[i]);
  return sum;
}

}  // namespace strata::cpu
