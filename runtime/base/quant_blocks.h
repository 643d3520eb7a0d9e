// Quantized weights in llama.cpp's block formats (GGUF's Q8_0 and Q4_0), so that llama.cpp can check them bit for
// bit: every run of 32 weights of a row is one block with an IEEE half scale d.
//   Q8_0: 34 bytes, d then 32 int8 q; w = q * d, d = max|w| / 127.
//   Q4_0: 18 bytes, d then 16 bytes of nibbles; byte j holds weight j (low nibble) and weight j + 16 (high),
//         w = (nibble - 8) * d, d = (the weight of largest magnitude) / -8.
// The CPU backend's products on these blocks are in runtime/backend/cpu/quant.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace strata::quant {

constexpr std::int64_t kBlock = 32;  // weights per block

enum class Format : std::uint8_t { Q8_0, Q4_0 };

struct BlockQ8_0 {
  std::uint16_t d;  // IEEE half
  std::int8_t qs[kBlock];
};
struct BlockQ4_0 {
  std::uint16_t d;
  std::uint8_t qs[kBlock / 2];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18, "GGUF block sizes");

std::string format_name(Format format);        // "q8_0", "q4_0"
Format parse_format(const std::string& name);  // throws Error(Usage) naming the accepted names
std::size_t block_bytes(Format format);
// Bytes of a row of n weights (n a multiple of kBlock; throws otherwise naming n).
std::size_t row_bytes(Format format, std::int64_t n);

// llama.cpp's reference quantizers (quantize_row_q8_0_ref / quantize_row_q4_0_ref), n a multiple of kBlock.
void quantize_row(Format format, const float* x, void* out, std::int64_t n);
void dequantize_row(Format format, const void* in, float* y, std::int64_t n);
// quantize_row for Q8_0 into typed blocks (the activations of the quantized products).
void quantize_q8_0_blocks(const float* x, BlockQ8_0* out, std::int64_t blocks);

}  // namespace strata::quant
