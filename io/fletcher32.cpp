// Fletcher32 compatible with HDF5's checksum filter; see io/fletcher32.h.
#include "io/fletcher32.h"

#include <algorithm>
#include <bit>
#include <cstring>

#if defined(__x86_64__)  // the portable block sums vectorise well with AVX2's 32-bit multiplies; chosen at run time
#include <immintrin.h>
#define STRATA_FLETCHER_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STRATA_FLETCHER_CLONES
#endif

namespace strata {
namespace {

std::uint32_t fold(std::uint32_t sum) { return (sum & 0xffff) + (sum >> 16); }

bool sum_matches(std::uint32_t sum, std::uint32_t stored) {
  const std::uint32_t swapped = ((sum & 0x00ff00ffu) << 8) | ((sum >> 8) & 0x00ff00ffu);
  return stored == sum || stored == swapped;
}

// Over n <= 360 big-endian 16-bit words w_i: plain = sum(w_i), weighted = sum((n - i) * w_i), both mod 2^32. HDF5
// runs `sum1 += w; sum2 += sum1` word by word in uint32; over a block that adds plain to sum1 and
// n * sum1 + weighted to sum2: the same values, without the serial dependency, so the compiler vectorises it.
STRATA_FLETCHER_CLONES void block_sums(const unsigned char* p, std::size_t n, std::uint32_t& plain_out,
                                       std::uint32_t& weighted_out) {
  std::uint32_t plain = 0, weighted = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, p + 2 * i, 2);
    if constexpr (std::endian::native == std::endian::little) bits = __builtin_bswap16(bits);
    const std::uint32_t w = bits;
    plain += w;
    weighted += std::uint32_t(n - i) * w;
  }
  plain_out = plain;
  weighted_out = weighted;
}

#if defined(__x86_64__)
// The same sums with AVX2, about twice as fast (checksums are half of a mapped checkpoint load). Every sum is linear
// in the words, and a big-endian word is 256 * (its first byte) + (its second byte), so the bytes are summed in two
// sets of 16-bit lanes straight from a little-endian load (first bytes: the low halves; second: the high halves),
// with no byte shuffle. Sixteen lanes each run the recurrence b += a, a += byte over the block's rounds of 16
// words: for word i = 16 t + j of m rounds, a_j = sum(bytes) <= 22 * 255 and b_j = sum((m - 1 - t) * byte) <=
// 231 * 255 both fit 16 bits for n <= 360, and the weight of word i is 16 * (m - 1 - t) + (n - 16 * (m - 1) - j).
__attribute__((target("avx2"))) void block_sums_avx2(const unsigned char* p, std::size_t n, std::uint32_t& plain_out,
                                                     std::uint32_t& weighted_out) {
  constexpr std::size_t kLanes = 16;
  const std::size_t rounds = n / kLanes;
  const __m256i low_byte = _mm256_set1_epi16(0x00ff);
  __m256i a_first = _mm256_setzero_si256(), a_second = a_first, b_first = a_first, b_second = a_first;
  for (std::size_t t = 0; t < rounds; ++t) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * kLanes * t));
    b_first = _mm256_add_epi16(b_first, a_first);
    b_second = _mm256_add_epi16(b_second, a_second);
    a_first = _mm256_add_epi16(a_first, _mm256_and_si256(v, low_byte));
    a_second = _mm256_add_epi16(a_second, _mm256_srli_epi16(v, 8));
  }
  alignas(32) std::uint16_t af[kLanes], as[kLanes], bf[kLanes], bs[kLanes];
  _mm256_store_si256(reinterpret_cast<__m256i*>(af), a_first);
  _mm256_store_si256(reinterpret_cast<__m256i*>(as), a_second);
  _mm256_store_si256(reinterpret_cast<__m256i*>(bf), b_first);
  _mm256_store_si256(reinterpret_cast<__m256i*>(bs), b_second);
  std::uint32_t plain = 0, weighted = 0;
  if (rounds > 0) {
    const auto last_round = std::uint32_t(n - kLanes * (rounds - 1));
    for (std::size_t j = 0; j < kLanes; ++j) {
      const std::uint32_t a = 256u * af[j] + as[j], b = 256u * bf[j] + bs[j];
      plain += a;
      weighted += std::uint32_t(kLanes) * b + (last_round - std::uint32_t(j)) * a;
    }
  }
  for (std::size_t i = rounds * kLanes; i < n; ++i) {  // the words after the last full round
    const std::uint32_t w = std::uint32_t(p[2 * i]) << 8 | p[2 * i + 1];
    plain += w;
    weighted += std::uint32_t(n - i) * w;
  }
  plain_out = plain;
  weighted_out = weighted;
}
#endif

using BlockSums = void (*)(const unsigned char*, std::size_t, std::uint32_t&, std::uint32_t&);

// Chosen at the first use (not during static initialisation, whose order across files is unspecified).
BlockSums fastest_block_sums() {
  static const BlockSums chosen = [] {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return &block_sums_avx2;
#endif
    return &block_sums;
  }();
  return chosen;
}

std::uint32_t whole_sum(const void* data, std::size_t bytes, BlockSums sums) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t sum1 = 0, sum2 = 0;
  for (std::size_t words = bytes / 2; words > 0;) {
    const std::size_t n = std::min<std::size_t>(words, 360);
    std::uint32_t plain, weighted;
    sums(p, n, plain, weighted);
    sum2 += std::uint32_t(n) * sum1 + weighted;
    sum1 += plain;
    sum1 = fold(sum1);
    sum2 = fold(sum2);
    p += 2 * n;
    words -= n;
  }
  if (bytes % 2 != 0) {  // a trailing odd byte is the high half of one more word
    sum1 += std::uint32_t(*p) << 8;
    sum2 += sum1;
    sum1 = fold(sum1);
    sum2 = fold(sum2);
  }
  sum1 = fold(sum1);
  sum2 = fold(sum2);
  return (sum2 << 16) | sum1;
}

}  // namespace

void Fletcher32::update(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t words = bytes / 2; words > 0;) {
    const std::size_t n = std::min<std::size_t>(words, 360 - block_words_);
    std::uint32_t plain, weighted;
    fastest_block_sums()(p, n, plain, weighted);
    sum2_ += std::uint32_t(n) * sum1_ + weighted;
    sum1_ += plain;
    block_words_ += n;
    if (block_words_ == 360) {
      sum1_ = fold(sum1_);
      sum2_ = fold(sum2_);
      block_words_ = 0;
    }
    p += 2 * n;
    words -= n;
  }
}

std::uint32_t Fletcher32::value() const {
  std::uint32_t sum1 = sum1_, sum2 = sum2_;
  if (block_words_ > 0) {  // the reduction after the last, partial block
    sum1 = fold(sum1);
    sum2 = fold(sum2);
  }
  return (fold(sum2) << 16) | fold(sum1);
}

bool Fletcher32::matches(std::uint32_t stored) const { return sum_matches(value(), stored); }

std::uint32_t fletcher32(const void* data, std::size_t bytes) { return whole_sum(data, bytes, fastest_block_sums()); }

std::uint32_t fletcher32_portable(const void* data, std::size_t bytes) { return whole_sum(data, bytes, block_sums); }

bool fletcher32_matches(const void* data, std::size_t bytes, std::uint32_t stored) {
  return sum_matches(fletcher32(data, bytes), stored);
}

}  // namespace strata
