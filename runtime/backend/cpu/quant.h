// Quantized weights in llama.cpp's block formats (GGUF's Q8_0 and Q4_0), so that llama.cpp can check them bit for
// bit: every run of 32 weights of a row is one block with an IEEE half scale d.
//   Q8_0: 34 bytes, d then 32 int8 q; w = q * d, d = max|w| / 127.
//   Q4_0: 18 bytes, d then 16 bytes of nibbles; byte j holds weight j (low nibble) and weight j + 16 (high),
//         w = (nibble - 8) * d, d = (the weight of largest magnitude) / -8.
// Products follow llama.cpp too: the activation row is quantized to Q8_0 blocks once per call, and each block pair
// contributes d_w * d_x * (integer dot product of the 32 pairs), summed in f32. Kernels: AVX2 (chosen at run time
// when the CPU has it) and portable scalar code, which give the same bits (integer sums are exact; the f32 block
// sums are added in the same order).
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

// Which kernel row_dot_products uses on this CPU: "avx2" or "scalar" (STRATA_QUANT_KERNEL=scalar forces the
// portable one, for tests and comparisons).
std::string kernel_name();

// y[t, r] = sum_k x[t, k] * w[r, k] for t < tokens, r < out, with w's rows quantized (row_bytes(format, in) each)
// and each x row quantized to Q8_0 first. in must be a multiple of kBlock. Rows of w are split over OpenMP threads.
void row_dot_products(const float* x, const void* w, Format format, float* y, std::int64_t tokens, std::int64_t out,
                      std::int64_t in);
// The same with the kernel named ("avx2" only where the CPU has it): for tests of each path.
void row_dot_products_with(const std::string& kernel, const float* x, const void* w, Format format, float* y,
                           std::int64_t tokens, std::int64_t out, std::int64_t in);

}  // namespace strata::quant
