// Fletcher32 compatible with HDF5's checksum filter; see io/fletcher32.h.
#include "io/fletcher32.h"

#include <algorithm>
#include <bit>
#include <cstring>

#if defined(__x86_64__)  // the block sums vectorise well with AVX2's 32-bit multiplies; chosen at run time
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

}  // namespace

void Fletcher32::update(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t words = bytes / 2; words > 0;) {
    const std::size_t n = std::min<std::size_t>(words, 360 - block_words_);
    std::uint32_t plain, weighted;
    block_sums(p, n, plain, weighted);
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

std::uint32_t fletcher32(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t sum1 = 0, sum2 = 0;
  for (std::size_t words = bytes / 2; words > 0;) {
    const std::size_t n = std::min<std::size_t>(words, 360);
    std::uint32_t plain, weighted;
    block_sums(p, n, plain, weighted);
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

bool fletcher32_matches(const void* data, std::size_t bytes, std::uint32_t stored) {
  return sum_matches(fletcher32(data, bytes), stored);
}

}  // namespace strata
