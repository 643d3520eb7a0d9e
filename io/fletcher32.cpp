// Fletcher32 compatible with HDF5's checksum filter; see io/fletcher32.h.
#include "io/fletcher32.h"

#include <algorithm>

namespace strata {
namespace {

std::uint32_t fold(std::uint32_t sum) { return (sum & 0xffff) + (sum >> 16); }

bool sum_matches(std::uint32_t sum, std::uint32_t stored) {
  const std::uint32_t swapped = ((sum & 0x00ff00ffu) << 8) | ((sum >> 8) & 0x00ff00ffu);
  return stored == sum || stored == swapped;
}

}  // namespace

void Fletcher32::update(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t words = bytes / 2; words > 0;) {
    const std::size_t n = std::min<std::size_t>(words, 360 - block_words_);
    std::uint32_t plain = 0, weighted = 0;  // as in fletcher32: the word-by-word sums of a block, mod 2^32
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t w = (std::uint32_t(p[2 * i]) << 8) | p[2 * i + 1];
      plain += w;
      weighted += std::uint32_t(n - i) * w;
    }
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
    // HDF5 runs `sum1 += w; sum2 += sum1` word by word in uint32. Over a block that adds sum(w) to sum1 and
    // n * sum1 + sum((n - i) * w_i) to sum2; the same values mod 2^32, but without the serial dependency, so the
    // compiler vectorises the two sums.
    std::uint32_t plain = 0, weighted = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t w = (std::uint32_t(p[2 * i]) << 8) | p[2 * i + 1];
      plain += w;
      weighted += std::uint32_t(n - i) * w;
    }
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
