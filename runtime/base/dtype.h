// Element types of weights and activations, and exact conversions between them.
// f16/bf16 -> f32 is exact; f32 -> f16/bf16 rounds to nearest even (NaN stays NaN, overflow goes to inf).
// Q8_0 / Q4_0 are llama.cpp's quantized blocks of 32 weights (quant_blocks.h): weight types only, a count of them a
// multiple of 32, converted from f32 by llama.cpp's quantizers and back exactly.
#pragma once
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

namespace strata {

enum class DType : std::uint8_t { F32, F16, BF16, Q8_0, Q4_0 };

// How a matrix's rows lie in memory: one after another, or (the CPU backend's AVX-512 quantized kernel and its
// avx512bf16 kernel for bf16 weights, see runtime/backend/cpu/quant.h and kernels.h) interleaved in groups of 16
// rows, the last rows % 16 in row layout after them.
enum class Layout : std::uint8_t { Rows, Interleaved16 };

inline bool is_quantized(DType dtype) { return dtype == DType::Q8_0 || dtype == DType::Q4_0; }
// Bytes per element (throws for the quantized types, which have none: use dtype_bytes).
std::size_t dtype_size(DType dtype);
// Bytes of `count` elements (for the quantized types count must be a multiple of 32; throws naming it otherwise).
std::size_t dtype_bytes(DType dtype, std::int64_t count);
const char* dtype_name(DType dtype);
DType parse_dtype(const std::string& name);      // "f32"/"float32", "f16"/"float16", "bf16"/"bfloat16", "q8_0", "q4_0"
DType parse_quantized(const std::string& name);  // "q8_0", "q4_0"

inline float bf16_to_f32(std::uint16_t bits) {
  std::uint32_t wide = std::uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &wide, 4);
  return value;
}

inline std::uint16_t f32_to_bf16(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);                                              // round to nearest even
  return std::uint16_t(bits >> 16);
}

float f16_to_f32(std::uint16_t bits);
std::uint16_t f32_to_f16(float value);

// Converts `count` elements stored as `dtype` at `src` into f32.
void convert_to_f32(DType dtype, const void* src, float* dst, std::size_t count);
// Converts f32 into `dtype` (dst must hold dtype_bytes(dtype, count) bytes).
void convert_from_f32(DType dtype, const float* src, void* dst, std::size_t count);

}  // namespace strata
