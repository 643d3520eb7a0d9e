// Quantized dot products; see quant.h. Compiled with -ffp-contract=off, so all kernels give the same bits.
#include "runtime/backend/cpu/quant.h"

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
#include "runtime/tensor/tensor.h"

namespace strata::quant {

namespace {

// ---------------------------------------------------------------------------------------------- block dot products
// The arithmetic every kernel follows, so that all give the same bits: for each (row, token), acc = 0 and, for the
// row's blocks in order, acc = fma(float(sumi), s, acc), where sumi is the block's exact integer dot product of the
// 32 weight and activation integers (|sumi| < 2^20, exact in int32 and in f32) and s = d_w * d_x, an f32 product.
// (llama.cpp's scalar vec_dot sums each block in integers the same way.)

constexpr std::int64_t kGroup = 16;  // rows per AVX-512 pass (one per 32-bit lane), and per work item

// The interleaved layout of a group of 16 rows (quant.h), `quants` bytes of quants per block (16 q4_0, 32 q8_0):
// block b's quants from byte b * quants * 16 (byte j of row r at (j / 4) * 64 + r * 4 + j % 4 there), then every
// block's 16 f16 scales (row r's of block b at blocks * quants * 16 + (b * 16 + r) * 2).
constexpr std::size_t interleaved_quant(std::size_t quants, std::int64_t b, std::size_t j, std::int64_t r) {
  return std::size_t(b) * quants * kGroup + (j / 4) * 64 + std::size_t(r) * 4 + j % 4;
}
constexpr std::size_t interleaved_scale(std::size_t quants, std::int64_t blocks, std::int64_t b, std::int64_t r) {
  return std::size_t(blocks) * quants * kGroup + (std::size_t(b) * kGroup + std::size_t(r)) * 2;
}
// q8_0's quants are stored with the sign bit flipped (VPDPBUSD's unsigned operand); q4_0's nibbles as they are.
constexpr std::uint8_t interleaved_flip(Format format) { return format == Format::Q8_0 ? 0x80 : 0x00; }

// The activations of a product: the Q8_0 blocks and their scales, and the unsigned-side terms the
// AVX-512 kernel reads (see there).
struct Activations {
  const BlockQ8_0* q;         // Q8_0 blocks
  const float* scales;        // each block's d_x
  const std::int32_t* start;  // AVX-512: -8 (Q4_0 weights) or -128 (Q8_0) times each block's activation sum
};

int block_dot(const BlockQ8_0& w, const BlockQ8_0& x) {
  int sum = 0;
  for (int j = 0; j < kBlock; ++j) sum += int(w.qs[j]) * int(x.qs[j]);
  return sum;
}

int block_dot(const BlockQ4_0& w, const BlockQ8_0& x) {
  int sum = 0;
  for (int j = 0; j < kBlock; ++j) {
    const int nibble = j < kBlock / 2 ? w.qs[j] & 0x0F : w.qs[j - kBlock / 2] >> 4;  // weight j
    sum += (nibble - 8) * int(x.qs[j]);
  }
  return sum;
}

template <typename Block>
void rows_scalar(const Block* w, const BlockQ8_0* xq, const float* x_scales, float* y, std::int64_t tokens,
                 std::int64_t begin, std::int64_t end, std::int64_t out, std::int64_t blocks) {
  for (std::int64_t r = begin; r < end; ++r)
    for (std::int64_t t = 0; t < tokens; ++t) {
      float acc = 0.0f;
      for (std::int64_t b = 0; b < blocks; ++b) {
        const float scale = f16_to_f32(w[r * blocks + b].d) * x_scales[t * blocks + b];
        acc = std::fma(float(block_dot(w[r * blocks + b], xq[t * blocks + b])), scale, acc);
      }
      y[t * out + r] = acc;
    }
}

#if defined(__x86_64__)
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

// The 8 lane sums of a block pair's 32 products: |w| * (x with w's sign), VPMADDUBSW's unsigned x signed operands
// (pairs stay within int16), then pairs of pairs.
__attribute__((target("avx2"), always_inline)) inline __m256i block_lanes(__m256i wv, __m256i xv) {
  const __m256i products = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
  return _mm256_madd_epi16(products, _mm256_set1_epi16(1));
}

// The four blocks' whole sums, in order, from their lanes (three horizontal adds and one across the halves).
__attribute__((target("avx2"), always_inline)) inline __m128i block_sums4(const __m256i* lanes) {
  const __m256i pairs = _mm256_hadd_epi32(_mm256_hadd_epi32(lanes[0], lanes[1]), _mm256_hadd_epi32(lanes[2], lanes[3]));
  return _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1));
}

// One row, up to 4 tokens per pass: each weight block is loaded (and unpacked) once for all of them; the 4 block
// sums are reduced together (three horizontal adds) and scaled in one 4-lane FMA, lane i being token i's acc.
template <typename Block, int Tokens>
__attribute__((target("avx2,fma,f16c"))) void row_tile_avx2(const Block* w, const BlockQ8_0* xq, const float* x_scales,
                                                            float* y, std::int64_t out, std::int64_t blocks) {
  __m128 acc = _mm_setzero_ps();
  for (std::int64_t b = 0; b < blocks; ++b) {
    const __m256i wv = weight_bytes(w[b]);
    __m256i lanes[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    float xs[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < Tokens; ++i) {
      const std::int64_t at = i * blocks + b;
      lanes[i] = block_lanes(wv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[at].qs)));
      xs[i] = x_scales[at];
    }
    const __m128 scale = _mm_mul_ps(_mm_set1_ps(_cvtsh_ss(w[b].d)), _mm_setr_ps(xs[0], xs[1], xs[2], xs[3]));
    acc = _mm_fmadd_ps(_mm_cvtepi32_ps(block_sums4(lanes)), scale, acc);
  }
  alignas(16) float result[4];
  _mm_store_ps(result, acc);
  for (int i = 0; i < Tokens; ++i) y[i * out] = result[i];
}

// One token (decode): 4 rows per pass instead, so that the reduction is shared by 4 sums there too.
template <typename Block>
__attribute__((target("avx2,fma,f16c"))) void four_rows_avx2(const Block* w, const BlockQ8_0* xq, const float* x_scales,
                                                             float* y, std::int64_t blocks) {
  __m128 acc = _mm_setzero_ps();
  for (std::int64_t b = 0; b < blocks; ++b) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[b].qs));
    __m256i lanes[4];
    for (int i = 0; i < 4; ++i) lanes[i] = block_lanes(weight_bytes(w[i * blocks + b]), xv);
    const __m128 dw = _mm_setr_ps(_cvtsh_ss(w[b].d), _cvtsh_ss(w[blocks + b].d), _cvtsh_ss(w[2 * blocks + b].d),
                                  _cvtsh_ss(w[3 * blocks + b].d));
    acc = _mm_fmadd_ps(_mm_cvtepi32_ps(block_sums4(lanes)), _mm_mul_ps(dw, _mm_set1_ps(x_scales[b])), acc);
  }
  _mm_storeu_ps(y, acc);
}

template <typename Block>
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(const Block* w, const BlockQ8_0* xq, const float* x_scales,
                                                        float* y, std::int64_t tokens, std::int64_t begin,
                                                        std::int64_t end, std::int64_t out, std::int64_t blocks) {
  constexpr int kTile = 4;
  if (tokens == 1)
    for (; begin + 4 <= end; begin += 4) four_rows_avx2<Block>(w + begin * blocks, xq, x_scales, y + begin, blocks);
  for (std::int64_t r = begin; r < end; ++r)
    for (std::int64_t t0 = 0; t0 < tokens; t0 += kTile)
      cpu::with_tile_count<kTile>(tokens - t0, [&](auto n) {
        row_tile_avx2<Block, n()>(w + r * blocks, xq + t0 * blocks, x_scales + t0 * blocks, y + t0 * out + r, out,
                                  blocks);
      });
}

// AVX-512 with VNNI: 16 rows at a time, one row per 32-bit lane. For each block the 16 rows' weights are transposed
// in registers into 8 vectors g[k] (lane r: row r's weights 4k..4k+3), so one VPDPBUSD against token t's
// activations 4k..4k+3 (broadcast) adds 4 products to each of the 16 rows' block sums, and 8 of them give the 16
// whole block sums; then one conversion and one FMA scale them into the 16 rows' accumulators. The weights keep
// llama.cpp's layout (no repacked copy; checkpoints stay mappable in place).
// VPDPBUSD multiplies unsigned by signed bytes, so the weights are made unsigned: Q4_0's nibbles are w + 8 as
// stored, Q8_0's bytes get + 128 (the sign bit flipped). Each block sum then starts at -8 or -128 times the sum of
// the token's 32 activations, computed once per activation block.
// GCC 12 reports its own intrinsics' deliberately undefined upper halves (_mm512_undefined_*) as uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define STRATA_AVX512 "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c"

// One block of 16 rows, ready for the products.
struct alignas(64) GroupBlock {
  __m512i g[8];   // lane r of g[k]: row r's weights 4k..4k+3, + 8 (Q4_0) or + 128 (Q8_0), as unsigned bytes
  __m512 scales;  // each row's d_w
};

// 16 rows x 4 dwords (a 16-byte slice of each row's block at `offset`) -> 4 vectors, vector d lane r = row r's
// dword d. Loading row 4j + k into 128-bit lane j of q[k] makes the two-step 4 x 4 transpose inside each 128-bit
// lane put every row in its own lane (d-th dword of rows 4j..4j+3 lands in lanes 4j..4j+3).
__attribute__((target(STRATA_AVX512), always_inline)) inline void transpose_16x4(const char* rows,
                                                                                 std::size_t row_bytes,
                                                                                 std::size_t offset, __m512i* out) {
  __m512i q[4];
  for (int k = 0; k < 4; ++k) {
    const char* at = rows + std::size_t(k) * row_bytes + offset;
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(at + 4 * row_bytes)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(at + 8 * row_bytes)), 2);
    q[k] = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(at + 12 * row_bytes)), 3);
  }
  const __m512i t0 = _mm512_unpacklo_epi32(q[0], q[1]), t1 = _mm512_unpackhi_epi32(q[0], q[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(q[2], q[3]), t3 = _mm512_unpackhi_epi32(q[2], q[3]);
  out[0] = _mm512_unpacklo_epi64(t0, t2);
  out[1] = _mm512_unpackhi_epi64(t0, t2);
  out[2] = _mm512_unpacklo_epi64(t1, t3);
  out[3] = _mm512_unpackhi_epi64(t1, t3);
}

// The 16 rows' f16 scales of a block (at its start in each row), widened: sixteen scalar loads inserted into two
// vectors. At one token, a VPGATHERDD of them was 20-25% slower here, and 16 narrow stores to an array then read
// as one vector (a failed store forwarding) about 5% slower on q4_0.
__attribute__((target(STRATA_AVX512), always_inline)) inline __m512 group_scales(const char* block0,
                                                                                 std::size_t row_bytes) {
  auto half = [&](int r) {
    std::uint16_t h;
    std::memcpy(&h, block0 + std::size_t(r) * row_bytes, 2);
    return int(h);
  };
  __m128i lo = _mm_cvtsi32_si128(half(0)), hi = _mm_cvtsi32_si128(half(8));
  lo = _mm_insert_epi16(lo, half(1), 1);
  hi = _mm_insert_epi16(hi, half(9), 1);
  lo = _mm_insert_epi16(lo, half(2), 2);
  hi = _mm_insert_epi16(hi, half(10), 2);
  lo = _mm_insert_epi16(lo, half(3), 3);
  hi = _mm_insert_epi16(hi, half(11), 3);
  lo = _mm_insert_epi16(lo, half(4), 4);
  hi = _mm_insert_epi16(hi, half(12), 4);
  lo = _mm_insert_epi16(lo, half(5), 5);
  hi = _mm_insert_epi16(hi, half(13), 5);
  lo = _mm_insert_epi16(lo, half(6), 6);
  hi = _mm_insert_epi16(hi, half(14), 6);
  lo = _mm_insert_epi16(lo, half(7), 7);
  hi = _mm_insert_epi16(hi, half(15), 7);
  return _mm512_cvtph_ps(_mm256_set_m128i(hi, lo));
}

__attribute__((target(STRATA_AVX512), always_inline)) inline void prepare(const BlockQ4_0*, const char* rows,
                                                                          std::size_t row_bytes, std::int64_t b,
                                                                          GroupBlock& gb) {
  const std::size_t at = std::size_t(b) * sizeof(BlockQ4_0);
  __m512i packed[4];
  transpose_16x4(rows, row_bytes, at + offsetof(BlockQ4_0, qs), packed);
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int k = 0; k < 4; ++k) {  // byte i of a block: weight i in the low nibble, weight i + 16 in the high one
    gb.g[k] = _mm512_and_si512(packed[k], low);
    gb.g[k + 4] = _mm512_and_si512(_mm512_srli_epi16(packed[k], 4), low);
  }
  gb.scales = group_scales(rows + at, row_bytes);
}

__attribute__((target(STRATA_AVX512), always_inline)) inline void prepare(const BlockQ8_0*, const char* rows,
                                                                          std::size_t row_bytes, std::int64_t b,
                                                                          GroupBlock& gb) {
  const std::size_t at = std::size_t(b) * sizeof(BlockQ8_0);
  transpose_16x4(rows, row_bytes, at + offsetof(BlockQ8_0, qs), gb.g);
  transpose_16x4(rows, row_bytes, at + offsetof(BlockQ8_0, qs) + 16, gb.g + 4);
  for (int k = 0; k < 8; ++k) gb.g[k] = _mm512_xor_si512(gb.g[k], _mm512_set1_epi8(char(0x80)));  // w + 128
  gb.scales = group_scales(rows + at, row_bytes);
}

// The same block from a group in the interleaved layout (see quant.h: each block's quants are already 16 rows x 4
// bytes per vector, q8_0's with the sign bit flipped, and the 16 scales side by side): plain loads.
__attribute__((target(STRATA_AVX512), always_inline)) inline void prepare_interleaved(const BlockQ4_0*,
                                                                                      const char* group,
                                                                                      std::int64_t blocks,
                                                                                      std::int64_t b, GroupBlock& gb) {
  const char* qs = group + interleaved_quant(16, b, 0, 0);
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int k = 0; k < 4; ++k) {
    const __m512i packed = _mm512_loadu_si512(qs + k * 64);
    gb.g[k] = _mm512_and_si512(packed, low);
    gb.g[k + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
  }
  gb.scales = _mm512_cvtph_ps(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + interleaved_scale(16, blocks, b, 0))));
}

__attribute__((target(STRATA_AVX512), always_inline)) inline void prepare_interleaved(const BlockQ8_0*,
                                                                                      const char* group,
                                                                                      std::int64_t blocks,
                                                                                      std::int64_t b, GroupBlock& gb) {
  const char* qs = group + interleaved_quant(32, b, 0, 0);
  for (int k = 0; k < 8; ++k) gb.g[k] = _mm512_loadu_si512(qs + k * 64);
  gb.scales = _mm512_cvtph_ps(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + interleaved_scale(32, blocks, b, 0))));
}

// The 16 rows' block sums for one token's activation block.
__attribute__((target(STRATA_AVX512), always_inline)) inline __m512i block_sums(const GroupBlock& gb,
                                                                                const Activations& x, std::int64_t at) {
  const auto* xs = reinterpret_cast<const std::int32_t*>(x.q[at].qs);
  // Two chains of 4 (integer sums: any order gives the same), so that one block is not 8 VPDPBUSD latencies long.
  __m512i even = _mm512_set1_epi32(x.start[at]), odd = _mm512_setzero_si512();
  for (int k = 0; k < 8; k += 2) {
    even = _mm512_dpbusd_epi32(even, gb.g[k], _mm512_set1_epi32(xs[k]));
    odd = _mm512_dpbusd_epi32(odd, gb.g[k + 1], _mm512_set1_epi32(xs[k + 1]));
  }
  return _mm512_add_epi32(even, odd);
}

// Block b of the 16 rows at `rows` (a group in either layout), ready for the products.
template <typename Block, Layout L>
__attribute__((target(STRATA_AVX512), always_inline)) inline void prepare_block(const char* rows, std::size_t row_bytes,
                                                                                std::int64_t blocks, std::int64_t b,
                                                                                GroupBlock& gb) {
  if constexpr (L == Layout::Interleaved16)
    prepare_interleaved(static_cast<const Block*>(nullptr), rows, blocks, b, gb);
  else
    prepare(static_cast<const Block*>(nullptr), rows, row_bytes, b, gb);
}

// Block b's products for each of the Tokens tokens, scaled into that token's accumulator.
template <int Tokens>
__attribute__((target(STRATA_AVX512), always_inline)) inline void accumulate_block(const GroupBlock& gb,
                                                                                   const Activations& x,
                                                                                   std::int64_t blocks, std::int64_t b,
                                                                                   __m512* acc) {
#pragma GCC unroll 8
  for (int i = 0; i < Tokens; ++i) {
    const std::int64_t at = i * blocks + b;
    const __m512 scale = _mm512_mul_ps(gb.scales, _mm512_set1_ps(x.scales[at]));
    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(block_sums(gb, x, at)), scale, acc[i]);
  }
}

// Bytes a pass over a group requests into the cache for what comes after it (see group_rows_avx512), spread over
// its blocks: block b requests the b-th of `blocks` equal slices (the last ones shorter).
struct Requests {
  const char* begin = nullptr;
  std::size_t bytes = 0;
};

// Tokens tokens (activations from x at token 0) x 16 rows from `rows`; the blocks prepared on the way (decode:
// each weight is read once) or read from `prepared` (prefill: prepared once for all the token tiles). `requests`:
// what the block loop requests from memory, instead of its own bytes ahead in its own stream (see
// group_rows_avx512), and with `own_too` in both; none with `prepared`.
template <typename Block, Layout L, int Tokens>
__attribute__((target(STRATA_AVX512))) void group_avx512(const char* rows, std::size_t row_bytes,
                                                         const GroupBlock* prepared, Activations x, float* y,
                                                         std::int64_t out, std::int64_t blocks, Requests requests = {},
                                                         bool own_too = false) {
  // The hardware prefetchers do not keep up with this loop at one token (in the row layout the 16 rows are also 16
  // streams they follow poorly): each block fetches a block's share of the bytes ahead. Row layout: the next group's
  // (this thread's next one, but for the last of its range); interleaved: the group's bytes (and the next group's,
  // which follow them) kAhead blocks' shares ahead: about 9 KiB at one token, where a block takes the least time
  // (against 8 blocks, 2.3 KiB of q4_0, a decode step's q4_0 products took 0.80-0.95 ms instead of 0.90-1.20 for
  // 40 MB, five alternating rounds; q8_0 level), 8 blocks with more tokens.
  constexpr std::size_t kShare = kGroup * sizeof(Block), kAhead = Tokens == 1 ? 9 * 1024 / kShare : 8;
  const char* ahead = rows + (L == Layout::Rows ? kGroup * row_bytes : kAhead * kShare);
  if (!requests.begin) requests = {ahead, std::size_t(blocks) * kShare};
  const std::size_t per_block = (requests.bytes + std::size_t(blocks) - 1) / std::size_t(blocks);  // one division
  // Every loop over the tokens unrolled, so that acc[] lives in registers from the start to the stores: with only
  // the block loop's unrolled, GCC kept the accumulators on the stack around it, 12-35 vector stack accesses a call
  // at 3-8 tokens (products 2-6% faster without them: batch-16 and -64 decode, 128-token prefill; in-process A/B).
  __m512 acc[Tokens];
#pragma GCC unroll 8
  for (int i = 0; i < Tokens; ++i) acc[i] = _mm512_setzero_ps();
  if (prepared) {
    for (std::int64_t b = 0; b < blocks; ++b) accumulate_block<Tokens>(prepared[b], x, blocks, b, acc);
  } else {
    // The block prepared into a local the loop body sees directly, so that it stays in registers: through a pointer
    // that could also be `prepared`'s, GCC kept it in memory, 8 vector stores and loads per block (at one token
    // that was what bounded the q4_0 kernel).
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::size_t from = std::size_t(b) * per_block / 64 * 64;
      const std::size_t to = std::min(requests.bytes, std::size_t(b + 1) * per_block);
      for (std::size_t line = from; line < to; line += 64) _mm_prefetch(requests.begin + line, _MM_HINT_T0);
      if (own_too)
        for (std::size_t line = 0; line < kShare; line += 64) _mm_prefetch(ahead + b * kShare + line, _MM_HINT_T0);
      GroupBlock local;
      prepare_block<Block, L>(rows, row_bytes, blocks, b, local);
      accumulate_block<Tokens>(local, x, blocks, b, acc);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < Tokens; ++i) _mm512_storeu_ps(y + i * out, acc[i]);
}

// The 16 rows from row r for all tokens: up to kTile tokens per pass, each block prepared as it is used. In the row
// layout more tokens prepare the group's blocks once into a per-thread buffer and pass over them per token tile;
// interleaved blocks are prepared again for each tile (a few loads and masks from a group that stays in L1, where
// the buffer cost a store and a load of twice the bytes: q4_0 at 16 tokens decoded 1158-1318 tok/s against 772-1163
// with the buffer, 100m batch 16, three alternating rounds).
//   Interleaved, the first token tile reads the group from memory and the later ones find it in cache: every tile
// requests a slice of the next group's bytes instead (the 16 rows after these, one run of bytes, most often this
// thread's next work item), tile t of T the t-th T-th of them, so that the next group's first tile does not wait on
// memory; the first group of a run also requests its own bytes ahead in its first tile. Against requesting all of the
// next group's bytes in the second tile, and the group's own bytes ahead in the others (most already in cache):
// q8_0 products from memory of width 768 (`strata_products_bench`, alternating runs) 1080-1140 GOP/s against
// 935-1020 at 16 tokens, 1195-1200 against 1120-1145 at 24, 1250-1270 against 1190 at 64, 1160-1190 against 1100 at
// 128; q4_0 level to 3% faster; whole decode steps in one process, alternating the two step by step (`strata bench
// --batch-sizes 16 --gen-len 128 --repeats 3`): q8_0 at batch 16 5.35 / 4.96 and 5.14 / 4.75 ms, q4_0 4.56 / 4.43;
// batch 64 q8_0 16.7 / 16.0, q4_0 18.4 / 18.1. (The earlier scheme against none at all, 2048-row matrices: at 16
// tokens q4_0 11-14% less time at width 768, q8_0 13-19%.)
//   A call of one tile of 2-8 tokens (decode of a few sequences) requests the next group too, in place of its own
// bytes ahead, where the next group is the next one this thread computes (`run_last`: the last group of a run of
// items goes to another thread or product); the first group of a run requests its own bytes as well, since no group
// before it did. An in-process A/B (alternating per pass over 200 MB of width 768, products of 768 or 256 rows, two
// threads, medians of 60 passes): q4_0 8-10% less time at 2, 4 and 8 tokens, q8_0 3-8%; `strata bench` of the 100m,
// three alternating rounds, decode tok/s at batch 2 / 4 / 8: q4_0 15-28% / 8-35% / 2-42% faster, q8_0 1-8% / -18 to
// +9% / 5-10%. Without the run's ends (every group requesting the next, none its own) the products alone were as
// fast but the decode of a few sequences no faster, and at one token, where both were tried, batch-1 decode 12-20%
// slower: a step's loops are short, and the first group of each part and tail chunk went unrequested. One token
// keeps its own bytes ahead.
template <typename Block, Layout L>
__attribute__((target(STRATA_AVX512))) void group_rows_avx512(const Block* w, const Activations& x, float* y,
                                                              std::int64_t tokens, std::int64_t r, std::int64_t out,
                                                              std::int64_t blocks, bool run_first = true,
                                                              bool run_last = true) {
  constexpr int kTile = 8;
  const std::size_t row_bytes = std::size_t(blocks) * sizeof(Block);
  const char* rows = reinterpret_cast<const char*>(w + r * blocks);  // a group starts there in both layouts
  thread_local std::vector<GroupBlock> prepared;
  const GroupBlock* ready = nullptr;
  if (tokens > kTile && L == Layout::Rows) {
    prepared.resize(std::size_t(blocks));
    for (std::int64_t b = 0; b < blocks; ++b)
      prepare_block<Block, L>(rows, row_bytes, blocks, b, prepared[std::size_t(b)]);
    ready = prepared.data();
  }
  const std::size_t group_bytes = std::size_t(blocks) * kGroup * sizeof(Block);
  const char* next_group = rows + group_bytes;
  const std::int64_t tiles = (tokens + kTile - 1) / kTile;
  const bool one_tile_next = L == Layout::Interleaved16 && tokens > 1 && tokens <= kTile && !run_last;
  for (std::int64_t t0 = 0; t0 < tokens; t0 += kTile) {
    const Activations at{x.q + t0 * blocks, x.scales + t0 * blocks, x.start + t0 * blocks};
    Requests requests;
    bool own_too = false;
    if (one_tile_next) {
      requests = {next_group, group_bytes};
      own_too = run_first;
    } else if (L == Layout::Interleaved16 && tiles > 1) {  // tile t: the t-th of `tiles` slices of the next group
      const std::size_t t = std::size_t(t0 / kTile), from = group_bytes * t / std::size_t(tiles);
      requests = {next_group + from, group_bytes * (t + 1) / std::size_t(tiles) - from};
      own_too = t == 0 && run_first;
    }
    cpu::with_tile_count<kTile>(tokens - t0, [&](auto n) {
      group_avx512<Block, L, n()>(rows, row_bytes, ready, at, y + t0 * out + r, out, blocks, requests, own_too);
    });
  }
}

// quantize_q8_0_blocks (llama.cpp's reference quantizer) with vectors, the same bits: the largest magnitude (a max,
// exact in any order), d = amax / 127 and its inverse as scalars, each x * (1 / d) the same f32 product, and
// roundf's half-away-from-zero rounding as trunc(v) plus the sign of v where |v - trunc(v)| >= 0.5 (v - trunc(v) is
// exact below 2^23). Also each block's scale back in f32 and, with `starts`, -bias times its sum of quantized values,
// from the vectors at hand: d's rounding to f16 and back by F16C (round to nearest even, the bits of f32_to_f16 and
// f16_to_f32 for every finite d; the software conversion for the rest), the sum an integer reduction. Done per
// block in scalar code after the vector pass, the sum's 32 additions and the two conversions took a third of a
// batch-16 decode step's quantizing.
__attribute__((target(STRATA_AVX512))) void quantize_blocks_avx512(const float* x, BlockQ8_0* out, float* scales,
                                                                   std::int32_t* starts, int bias,
                                                                   std::int64_t blocks) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  for (std::int64_t b = 0; b < blocks; ++b, x += kBlock) {
    __m512 v[2] = {_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16)};
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const std::uint16_t d16 = std::isfinite(d) ? std::uint16_t(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT)) : f32_to_f16(d);
    out[b].d = d16;
    scales[b] = _cvtsh_ss(d16);
    __m512i sum = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      const __m512 scaled = _mm512_mul_ps(v[h], _mm512_set1_ps(id));
      const __m512 whole = _mm512_roundscale_ps(scaled, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __mmask16 away = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(scaled, whole)), half, _CMP_GE_OQ);
      const __m512 sign = _mm512_castsi512_ps(
          _mm512_and_si512(_mm512_castps_si512(scaled), _mm512_set1_epi32(std::int32_t(0x80000000u))));
      const __m512 rounded = _mm512_mask_add_ps(whole, away, whole, _mm512_or_ps(one, sign));
      const __m512i q = _mm512_cvttps_epi32(rounded);
      sum = _mm512_add_epi32(sum, q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16 * h), _mm512_cvtepi32_epi8(q));
    }
    if (starts) starts[b] = -bias * _mm512_reduce_add_epi32(sum);
  }
}

// The f32 scales and starts quantize_blocks_avx512 gives blocks [0, count), from the blocks alone.
__attribute__((target(STRATA_AVX512))) void scales_and_starts_avx512(const BlockQ8_0* xq, float* scales,
                                                                     std::int32_t* starts, int bias,
                                                                     std::int64_t count) {
  const __m256i flip = _mm256_set1_epi8(char(0x80));
  for (std::int64_t b = 0; b < count; ++b) {
    scales[b] = _cvtsh_ss(xq[b].d);
    if (!starts) continue;
    // q + 128 as unsigned bytes, summed in groups of 8 (VPSADBW against zero), less 32 x 128.
    const __m256i shifted = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[b].qs)), flip);
    const __m256i eights = _mm256_sad_epu8(shifted, _mm256_setzero_si256());
    const __m128i halves = _mm_add_epi64(_mm256_castsi256_si128(eights), _mm256_extracti128_si256(eights, 1));
    const std::int64_t sum = _mm_cvtsi128_si64(halves) + _mm_extract_epi64(halves, 1) - kBlock * 128;
    starts[b] = -bias * std::int32_t(sum);
  }
}
#pragma GCC diagnostic pop
#endif

bool cpu_has(const std::string& kernel) {
  return kernel == "scalar" || (kernel == "avx2" && cpu::has_avx2_fma()) ||
         (kernel == "avx512vnni" && cpu::has_avx512_vnni());
}

// Work item i of a product in run(): its 16 rows from row 16 i (fewer at its end).
template <typename Block>
void group_item(int which, const Activations& x, const Product& product, std::int64_t tokens, std::int64_t blocks,
                std::int64_t i, bool run_first = true, bool run_last = true) {
  const auto* rows = static_cast<const Block*>(product.w);
  const Layout layout = product.layout;
  float* y = product.y;
  const std::int64_t out = product.out;
  const std::int64_t begin = i * kGroup, end = std::min(out, begin + kGroup);
#if defined(__x86_64__)
  if (which == 2 && end - begin == kGroup) {
    if (layout == Layout::Interleaved16)
      group_rows_avx512<Block, Layout::Interleaved16>(rows, x, y, tokens, begin, out, blocks, run_first, run_last);
    else
      group_rows_avx512<Block, Layout::Rows>(rows, x, y, tokens, begin, out, blocks);
    return;
  }
  if (which >= 1) {
    rows_avx2<Block>(rows, x.q, x.scales, y, tokens, begin, end, out, blocks);
    return;
  }
#endif
  rows_scalar<Block>(rows, x.q, x.scales, y, tokens, begin, end, out, blocks);
}

// The rows of every product in work items of 16 (the AVX-512 kernel's group; a last partial group goes to the AVX2
// kernel, whose arithmetic is the same, and is in the row layout in both layouts) over the workers: several
// products of the same activations share one parallel loop. A prefill goes over the rows in token passes (tiles.h;
// q4_0 products of 2048 tokens 10-20% faster than in one pass, the same arithmetic), all in that loop.
template <typename Block>
void run(cpu::Workers& workers, const std::string& kernel, const Activations& x, std::span<const Product> products,
         std::int64_t tokens, std::int64_t blocks) {
  const cpu::ProductItems items(products, [](const Product& p) { return (p.out + kGroup - 1) / kGroup; });
  const int which = kernel == "avx512vnni" ? 2 : kernel == "avx2" ? 1 : 0;
  const cpu::TokenPasses passes(tokens);
  if (passes.count() == 1)  // in the step's order (Workers::forecast); item i is rows 16 i .. 16 i + 15
    cpu::forecast_balanced_rows(workers, items, products, kGroup, std::size_t(blocks) * sizeof(Block));
  workers.balance(passes.count() * items.size(), [&](std::int64_t first, std::int64_t last) {
    passes.for_each(items.size(), first, last,
                    [&](std::int64_t t0, std::int64_t n, std::int64_t from, std::int64_t to) {
                      const std::int64_t at = t0 * blocks;
                      const Activations xt{x.q + at, x.scales + at, x.start ? x.start + at : nullptr};
                      items.for_each(from, to, [&](std::size_t p, std::int64_t a, std::int64_t b) {
                        Product part = products[p];
                        part.y += t0 * part.out;
                        for (std::int64_t i = a; i < b; ++i)
                          group_item<Block>(which, xt, part, n, blocks, i, i == a, i + 1 == b);
                      });
                    });
  });
}

// rows(first, last) for the tokens of a step's activations, over the threads once there are enough blocks to share
// (on one thread, quantizing left the others waiting for ~10% of a quantized prefill).
template <typename Rows>
void over_tokens(cpu::Workers& workers, std::int64_t tokens, std::int64_t blocks, Rows&& rows) {
  if (tokens * blocks >= 256)
    workers.split(tokens, rows);
  else
    rows(0, tokens);
}

// What quantize_token gives blocks [first, last) of its scales (and starts) from the blocks alone: after its
// portable quantizer, and for the rows another rank quantized, which come without them (sequence parallelism).
void scales_and_starts(bool avx512, const BlockQ8_0* xq, float* x_scales, std::int32_t* starts, int bias,
                       std::int64_t first, std::int64_t last) {
#if defined(__x86_64__)
  if (avx512)
    return scales_and_starts_avx512(xq + first, x_scales + first, starts ? starts + first : nullptr, bias,
                                    last - first);
#endif
  for (std::int64_t b = first; b < last; ++b) {
    x_scales[b] = f16_to_f32(xq[b].d);
    if (!starts) continue;
    int sum = 0;
    for (int j = 0; j < kBlock; ++j) sum += xq[b].qs[j];
    starts[b] = -bias * sum;
  }
}

// Token t's row of quantize_activations, its values at `row`.
void quantize_token(bool avx512, const float* row, BlockQ8_0* xq, float* x_scales, std::int64_t blocks,
                    std::int32_t* starts, int bias, std::int64_t t) {
#if defined(__x86_64__)
  if (avx512)
    return quantize_blocks_avx512(row, xq + t * blocks, x_scales + t * blocks, starts ? starts + t * blocks : nullptr,
                                  bias, blocks);
#endif
  quantize_q8_0_blocks(row, xq + t * blocks, blocks);
  scales_and_starts(false, xq, x_scales, starts, bias, t * blocks, (t + 1) * blocks);
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

void row_dot_products(cpu::Workers& workers, const float* x, const void* w, Format format, float* y,
                      std::int64_t tokens, std::int64_t out, std::int64_t in) {
  row_dot_products_with(workers, kernel_name(), x, w, format, y, tokens, out, in, Layout::Rows);
}

bool interleaves(const std::string& kernel) { return kernel == "avx512vnni"; }

// Portable code: it runs once per weight at load, at memory speed.
void interleave_rows(cpu::Workers& workers, Format format, const void* rows, void* interleaved, std::int64_t out,
                     std::int64_t in) {
  const std::size_t row = row_bytes(format, in), block = block_bytes(format), quants = block - 2;
  const std::int64_t blocks = in / kBlock, groups = out / kGroup;
  const std::uint8_t flip = interleaved_flip(format);
  const auto* src = static_cast<const std::uint8_t*>(rows);
  auto* dst = static_cast<std::uint8_t*>(interleaved);
  workers.split(groups, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t g = first; g < last; ++g) {
      const std::uint8_t* from = src + std::size_t(g) * kGroup * row;
      std::uint8_t* group = dst + std::size_t(g) * kGroup * row;
      for (std::int64_t b = 0; b < blocks; ++b)
        for (std::int64_t r = 0; r < kGroup; ++r) {
          const std::uint8_t* at = from + std::size_t(r) * row + std::size_t(b) * block;
          std::memcpy(group + interleaved_scale(quants, blocks, b, r), at, 2);
          for (std::size_t j = 0; j < quants; ++j) group[interleaved_quant(quants, b, j, r)] = at[2 + j] ^ flip;
        }
    }
  });
  const std::size_t grouped = std::size_t(groups) * kGroup * row;
  std::memcpy(dst + grouped, src + grouped, std::size_t(out - groups * kGroup) * row);
}

void dequantize_interleaved_row(Format format, const void* interleaved, std::int64_t r, std::int64_t out,
                                std::int64_t in, float* y) {
  const std::size_t row = row_bytes(format, in), quants = block_bytes(format) - 2;
  const auto* src = static_cast<const std::uint8_t*>(interleaved);
  if (r >= out / kGroup * kGroup) return dequantize_row(format, src + std::size_t(r) * row, y, in);
  const std::int64_t blocks = in / kBlock, lane = r % kGroup;
  const std::uint8_t flip = interleaved_flip(format);
  const std::uint8_t* group = src + std::size_t(r / kGroup) * kGroup * row;
  for (std::int64_t b = 0; b < blocks; ++b) {  // each block back in llama.cpp's layout, then dequantized
    std::uint8_t at[sizeof(BlockQ8_0)];
    std::memcpy(at, group + interleaved_scale(quants, blocks, b, lane), 2);
    for (std::size_t j = 0; j < quants; ++j) at[2 + j] = group[interleaved_quant(quants, b, j, lane)] ^ flip;
    dequantize_row(format, at, y + b * kBlock, kBlock);
  }
}

void quantize_activations(cpu::Workers& workers, const std::string& kernel, const float* x, BlockQ8_0* xq,
                          float* x_scales, std::int64_t tokens, std::int64_t blocks, std::int32_t* starts, int bias) {
  const bool avx512 = kernel == "avx512vnni";
  over_tokens(workers, tokens, blocks, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t t = first; t < last; ++t)
      quantize_token(avx512, x + t * blocks * kBlock, xq, x_scales, blocks, starts, bias, t);
  });
}

void row_dot_products_with(cpu::Workers& workers, const std::string& kernel, const float* x, const void* w,
                           Format format, float* y, std::int64_t tokens, std::int64_t out, std::int64_t in,
                           Layout layout) {
  const Product product{w, layout, y, out};
  row_dot_products_many(workers, kernel, x, format, tokens, in, {&product, 1});
}

namespace {
// row_dot_products_many with the activations made by rows(first, last, quantize), which calls quantize(t, row) for
// each token t in [first, last) with its f32 values at `row` (over_tokens, as quantize_activations).
// With `shares`, only this rank's rows are made, and the other ranks' come quantized through shares->gather.
template <typename Rows>
void products_of_rows(cpu::Workers& workers, const std::string& kernel, Rows&& rows, Format format, std::int64_t tokens,
                      std::int64_t in, std::span<const Product> products, const RowShares* shares = nullptr) {
  STRATA_CHECK(cpu_has(kernel), Internal, "quantized kernel '", kernel, "' is not available on this CPU");
  for (const Product& p : products)
    STRATA_CHECK(p.layout == Layout::Rows || interleaves(kernel), Internal, "quantized kernel '", kernel,
                 "' reads weights in the row layout only");
  const std::int64_t blocks = std::int64_t(row_bytes(format, in) / block_bytes(format));
  // The activations once per call: Q8_0 blocks, their scales as f32 and (the AVX-512 kernel) the start of each block
  // sum: -8 (Q4_0 weights) or -128 (Q8_0) times the activation sum. One after another in the calling thread's
  // scratch (a thread_local named inside the loop would be each worker's own), kept between calls (no allocation per
  // step; huge pages, HostScratch), each array from a cache line of its own.
  const auto count = std::size_t((shares ? std::max(tokens, shares->starts.back()) : tokens) * blocks);
  const auto lines = [](std::size_t bytes) { return (bytes + 63) / 64 * 64; };
  const std::size_t q_bytes = lines(count * sizeof(BlockQ8_0)), scale_bytes = lines(count * sizeof(float));
  thread_local HostScratch scratch;
  auto* base = scratch.get<char>(q_bytes + scale_bytes + count * sizeof(std::int32_t));
  const bool avx512 = kernel == "avx512vnni";
  const int bias = format == Format::Q8_0 ? 128 : 8;
  // The blocks of the rows this rank makes: in the rounds' memory, where the other ranks read them in place.
  SharedRows* rounds = shares ? shares->rounds : nullptr;
  if (rounds)
    STRATA_CHECK(count * sizeof(BlockQ8_0) <= rounds->bytes(), Internal, "Q8_0 rows of ", count / std::size_t(blocks),
                 " tokens of ", in, " values past the shared rows' ", rounds->bytes(), " bytes");
  auto* q = rounds ? static_cast<BlockQ8_0*>(rounds->begin_round()) : reinterpret_cast<BlockQ8_0*>(base);
  auto* scales = reinterpret_cast<float*>(base + q_bytes);
  std::int32_t* start = avx512 ? reinterpret_cast<std::int32_t*>(base + q_bytes + scale_bytes) : nullptr;
  const auto quantize = [&](std::int64_t t, const float* row) {
    quantize_token(avx512, row, q, scales, blocks, start, bias, t);
  };
  const std::int64_t begin = shares ? shares->begin(tokens) : 0, end = shares ? shares->end(tokens) : tokens;
  over_tokens(workers, end - begin, blocks,
              [&](std::int64_t first, std::int64_t last) { rows(begin + first, begin + last, quantize); });
  // The other ranks' rows come as their blocks alone, and their scales and starts are made here: one exchange
  // instead of three, each of which waits for the slowest rank (three had cost 1-2% of a tp-2 prefill).
  const auto complete = [&](const BlockQ8_0* from, std::int64_t first, std::int64_t last) {
    over_tokens(workers, last - first, blocks, [&](std::int64_t a, std::int64_t b) {
      scales_and_starts(avx512, from, scales, start, bias, (first + a) * blocks, (first + b) * blocks);
    });
  };
  // Tokens [first, last), their blocks read from `from` (token t's at t * blocks).
  const auto products_of_tokens = [&](const BlockQ8_0* from, std::int64_t first, std::int64_t last) {
    if (last <= first) return;
    thread_local std::vector<Product> part;
    part.assign(products.begin(), products.end());
    for (Product& p : part) p.y += first * p.out;
    const std::int64_t at = first * blocks;
    const Activations activations{from + at, scales + at, start ? start + at : nullptr};
    if (format == Format::Q8_0)
      run<BlockQ8_0>(workers, kernel, activations, part, last - first, blocks);
    else
      run<BlockQ4_0>(workers, kernel, activations, part, last - first, blocks);
  };
  if (rounds) {
    shares->for_each_other(tokens, [&](int r, std::int64_t, std::int64_t) { rounds->publish(r, begin, end - begin); });
    if (tokens <= cpu::kTokenPass) {  // one pass over the weights for every row: the others' rows copied in first
      shares->for_each_other(tokens, [&](int r, std::int64_t first, std::int64_t last) {
        const auto* from = static_cast<const BlockQ8_0*>(rounds->rows_from(r, first, last - first));
        std::memcpy(q + first * blocks, from + first * blocks,
                    std::size_t((last - first) * blocks) * sizeof(BlockQ8_0));
        complete(q, first, last);
      });
      rounds->end_reading();
      return products_of_tokens(q, 0, tokens);
    }
    // This rank's rows first, then each other rank's once it has handed them over (each a pass of its own anyway).
    products_of_tokens(q, begin, end);
    shares->for_each_other(tokens, [&](int r, std::int64_t first, std::int64_t last) {
      const auto* from = static_cast<const BlockQ8_0*>(rounds->rows_from(r, first, last - first));
      complete(from, first, last);
      products_of_tokens(from, first, last);
    });
    return rounds->end_reading();
  }
  if (shares) {
    shares->gather(q, std::size_t(blocks) * sizeof(BlockQ8_0));
    complete(q, 0, begin);
    complete(q, end, tokens);
  }
  products_of_tokens(q, 0, tokens);
}
}  // namespace

void row_dot_products_many(cpu::Workers& workers, const std::string& kernel, const float* x, Format format,
                           std::int64_t tokens, std::int64_t in, std::span<const Product> products) {
  const auto rows = [&](std::int64_t first, std::int64_t last, const auto& quantize) {
    for (std::int64_t t = first; t < last; ++t) quantize(t, x + t * in);
  };
  products_of_rows(workers, kernel, rows, format, tokens, in, products);
}

std::size_t shared_rows_bytes(std::int64_t tokens, std::int64_t in) {
  return std::size_t(tokens * (in / kBlock)) * sizeof(BlockQ8_0);
}

void shared_rows_dot_products(cpu::Workers& workers, const std::string& kernel, const float* x, const RowShares& shares,
                              Format format, std::int64_t tokens, std::int64_t in, std::span<const Product> products) {
  const auto rows = [&](std::int64_t first, std::int64_t last, const auto& quantize) {
    for (std::int64_t t = first; t < last; ++t) quantize(t, x + t * in);
  };
  products_of_rows(workers, kernel, rows, format, tokens, in, products, &shares);
}

void made_rows_dot_products(cpu::Workers& workers, const std::string& kernel, const cpu::RowMaker& make, Format format,
                            std::int64_t tokens, std::int64_t in, std::span<const Product> products) {
  const auto rows = [&](std::int64_t first, std::int64_t last, const auto& quantize) {
    thread_local std::vector<float> scratch;
    if (scratch.size() < std::size_t(in)) scratch.resize(std::size_t(in));
    for (std::int64_t t = first; t < last; ++t) quantize(t, make(t, scratch.data()));
  };
  products_of_rows(workers, kernel, rows, format, tokens, in, products);
}

}  // namespace strata::quant
