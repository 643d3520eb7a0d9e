// Q8_0 / Q4_0 blocks; see quant_blocks.h. Compiled with -ffp-contract=off: every product and sum is rounded as
// written, so the quantizers match llama.cpp's reference ones bit for bit.
#include "runtime/base/quant_blocks.h"

#include <algorithm>
#include <cmath>

#include "runtime/base/dtype.h"
#include "runtime/base/error.h"

namespace strata::quant {

std::string format_name(Format format) { return format == Format::Q8_0 ? "q8_0" : "q4_0"; }

Format parse_format(const std::string& name) {
  if (name == "q8_0") return Format::Q8_0;
  if (name == "q4_0") return Format::Q4_0;
  throw Error(ErrorKind::Usage, cat("unknown quantization '", name, "' (q8_0 and q4_0 are supported)"));
}

std::size_t block_bytes(Format format) { return format == Format::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0); }

std::size_t row_bytes(Format format, std::int64_t n) {
  STRATA_CHECK(n >= 0 && n % kBlock == 0, Config, format_name(format), " rows must hold a multiple of ", kBlock,
               " weights (got ", n, ")");
  return std::size_t(n / kBlock) * block_bytes(format);
}

namespace {

void quantize_q8_0(const float* x, BlockQ8_0* y, std::int64_t blocks) {
  for (std::int64_t i = 0; i < blocks; ++i, x += kBlock) {
    float amax = 0.0f;
    for (std::int64_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (std::int64_t j = 0; j < kBlock; ++j) y[i].qs[j] = std::int8_t(std::round(x[j] * id));
  }
}

// The scale is the weight of largest magnitude over -8 (its sign kept), so that weight maps to nibble 0 exactly.
void quantize_q4_0(const float* x, BlockQ4_0* y, std::int64_t blocks) {
  for (std::int64_t i = 0; i < blocks; ++i, x += kBlock) {
    float amax = 0.0f, max = 0.0f;
    for (std::int64_t j = 0; j < kBlock; ++j)
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (std::int64_t j = 0; j < kBlock / 2; ++j) {
      const auto low = std::uint8_t(std::min<int>(15, std::int8_t(x[j] * id + 8.5f)));
      const auto high = std::uint8_t(std::min<int>(15, std::int8_t(x[j + kBlock / 2] * id + 8.5f)));
      y[i].qs[j] = std::uint8_t(low | (high << 4));
    }
  }
}

}  // namespace

void quantize_row(Format format, const float* x, void* out, std::int64_t n) {
  row_bytes(format, n);  // checks n
  if (format == Format::Q8_0)
    quantize_q8_0(x, static_cast<BlockQ8_0*>(out), n / kBlock);
  else
    quantize_q4_0(x, static_cast<BlockQ4_0*>(out), n / kBlock);
}

void dequantize_row(Format format, const void* in, float* y, std::int64_t n) {
  row_bytes(format, n);
  if (format == Format::Q8_0) {
    const auto* b = static_cast<const BlockQ8_0*>(in);
    for (std::int64_t i = 0; i < n / kBlock; ++i, y += kBlock) {
      const float d = f16_to_f32(b[i].d);
      for (std::int64_t j = 0; j < kBlock; ++j) y[j] = float(b[i].qs[j]) * d;
    }
    return;
  }
  const auto* b = static_cast<const BlockQ4_0*>(in);
  for (std::int64_t i = 0; i < n / kBlock; ++i, y += kBlock) {
    const float d = f16_to_f32(b[i].d);
    for (std::int64_t j = 0; j < kBlock / 2; ++j) {
      y[j] = float(int(b[i].qs[j] & 0x0F) - 8) * d;
      y[j + kBlock / 2] = float(int(b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void quantize_q8_0_blocks(const float* x, BlockQ8_0* out, std::int64_t blocks) { quantize_q8_0(x, out, blocks); }

}  // namespace strata::quant
