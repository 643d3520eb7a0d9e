// DType names and the f16 conversions (bf16 is inline in the header).
#include "runtime/base/dtype.h"

#include <cmath>

#include "runtime/base/error.h"
#include "runtime/base/quant_blocks.h"

namespace strata {

std::size_t dtype_size(DType dtype) {
  STRATA_CHECK(!is_quantized(dtype), Internal, dtype_name(dtype), " blocks have no size per element");
  return dtype == DType::F32 ? 4 : 2;
}

std::size_t dtype_bytes(DType dtype, std::int64_t count) {
  if (!is_quantized(dtype)) return std::size_t(count) * dtype_size(dtype);
  return quant::row_bytes(dtype == DType::Q8_0 ? quant::Format::Q8_0 : quant::Format::Q4_0, count);
}

DType parse_quantized(const std::string& name) {
  return quant::parse_format(name) == quant::Format::Q8_0 ? DType::Q8_0 : DType::Q4_0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "f32";
    case DType::F16:
      return "f16";
    case DType::BF16:
      return "bf16";
    case DType::Q8_0:
      return "q8_0";
    case DType::Q4_0:
      return "q4_0";
  }
  return "?";
}

DType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "float32") return DType::F32;
  if (name == "f16" || name == "float16") return DType::F16;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  if (name == "q8_0") return DType::Q8_0;
  if (name == "q4_0") return DType::Q4_0;
  throw Error(ErrorKind::Usage, cat("unknown dtype '", name, "' (expected f32, f16, bf16, q8_0 or q4_0)"));
}

float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int shift = 0;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3ffu;
      bits = sign | std::uint32_t(127 - 15 - shift + 1) << 23 | mantissa << 13;
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | mantissa << 13;
  } else {
    bits = sign | (exponent - 15 + 127) << 23 | mantissa << 13;
  }
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

std::uint16_t f32_to_f16(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const std::uint16_t sign = std::uint16_t((bits >> 16) & 0x8000u);
  const std::uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                        // below the smallest normal f16: subnormal or zero
    if (abs < 0x33000000u) return sign;           // < 2^-25 rounds to zero
    const std::uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - int(abs >> 23);  // f16 subnormal m * 2^-24 = M * 2^(e-150): shift 14..24
    const std::uint32_t shifted = mantissa >> shift;
    const std::uint32_t rest = mantissa & ((1u << shift) - 1);
    const std::uint32_t half = 1u << (shift - 1);
    std::uint32_t result = shifted;
    if (rest > half || (rest == half && (shifted & 1u))) ++result;
    return sign | std::uint16_t(result);
  }
  std::uint32_t result = ((abs >> 23) - 127 + 15) << 10 | (abs & 0x7fffffu) >> 13;
  const std::uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (result & 1u))) ++result;  // carries into the exponent correctly
  return sign | std::uint16_t(result);
}

void convert_to_f32(DType dtype, const void* src, float* dst, std::size_t count) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, count * 4);
      return;
    case DType::F16: {
      auto* in = static_cast<const std::uint16_t*>(src);
      for (std::size_t i = 0; i < count; ++i) dst[i] = f16_to_f32(in[i]);
      return;
    }
    case DType::BF16: {
      auto* in = static_cast<const std::uint16_t*>(src);
      for (std::size_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(in[i]);
      return;
    }
    case DType::Q8_0:
      return quant::dequantize_row(quant::Format::Q8_0, src, dst, std::int64_t(count));
    case DType::Q4_0:
      return quant::dequantize_row(quant::Format::Q4_0, src, dst, std::int64_t(count));
  }
}

void convert_from_f32(DType dtype, const float* src, void* dst, std::size_t count) {
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, count * 4);
      return;
    case DType::F16: {
      auto* out = static_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < count; ++i) out[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::BF16: {
      auto* out = static_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < count; ++i) out[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::Q8_0:  // blocks of 32 consecutive values: rows whose length is a multiple of 32 quantize row by row
      return quant::quantize_row(quant::Format::Q8_0, src, dst, std::int64_t(count));
    case DType::Q4_0:
      return quant::quantize_row(quant::Format::Q4_0, src, dst, std::int64_t(count));
  }
}

}  // namespace strata
