// The CPU backend's products with Q8_0 / Q4_0 weights (runtime/base/quant_blocks.h), as llama.cpp computes them:
// the activation row is quantized to Q8_0 blocks once per call, and each block pair contributes
// d_w * d_x * (integer dot product of the 32 pairs), summed in f32. Kernels, the best the CPU has chosen at run time:
// AVX-512 with VNNI (VPDPBUSD), AVX2 with FMA, and portable scalar code. All give the same bits (integer sums are
// exact; the f32 block sums are added with the same fused multiply-adds in the same order).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/workers.h"
#include "runtime/base/dtype.h"
#include "runtime/base/quant_blocks.h"

namespace strata::quant {

// The kernels this CPU runs, best first: "avx512vnni", "avx2", "scalar" (always).
std::vector<std::string> available_kernels();
// Which kernel row_dot_products uses: the best available, or the one STRATA_QUANT_KERNEL names (for tests and
// comparisons; a kernel the CPU lacks is an error).
std::string kernel_name();

// y[t, r] = sum_k x[t, k] * w[r, k] for t < tokens, r < out, with w's rows quantized (row_bytes(format, in) each)
// and each x row quantized to Q8_0 first. in must be a multiple of kBlock. Rows of w are split over the workers.
void row_dot_products(cpu::Workers& workers, const float* x, const void* w, Format format, float* y,
                      std::int64_t tokens, std::int64_t out, std::int64_t in);
// The same with the kernel named (one of available_kernels()): for tests of each path.
// With Layout::Interleaved16, w is interleave_rows' output, and the kernel one that interleaves().
void row_dot_products_with(cpu::Workers& workers, const std::string& kernel, const float* x, const void* w,
                           Format format, float* y, std::int64_t tokens, std::int64_t out, std::int64_t in,
                           Layout layout = Layout::Rows);

// Several products of the same activations x [tokens, in] (q, k and v), as cpu::row_dot_products_many: x quantized
// once and every product's rows in one parallel loop; each y as row_dot_products_with gives it. All weights in
// `format`.
using cpu::Product;
void row_dot_products_many(cpu::Workers& workers, const std::string& kernel, const float* x, Format format,
                           std::int64_t tokens, std::int64_t in, std::span<const Product> products);
// row_dot_products_many where x holds only this rank's rows of `shares` (sequence parallelism): quantized, they are
// exchanged with the other ranks' (the Q8_0 blocks, their f32 scales and the AVX-512 kernel's starts: 42 bytes per
// 32 values against f32's 128), then every row's products computed. The same bits as row_dot_products_many.
// The bytes of `tokens` rows of `in` values as shared_rows_dot_products exchanges them (RowShares::rounds): their
// Q8_0 blocks.
std::size_t shared_rows_bytes(std::int64_t tokens, std::int64_t in);
void shared_rows_dot_products(cpu::Workers& workers, const std::string& kernel, const float* x, const RowShares& shares,
                              Format format, std::int64_t tokens, std::int64_t in, std::span<const Product> products);
// row_dot_products_many of activations made token by token by `make` (cpu::RowMaker): each row quantized as soon as
// it is made. The same bits as making every row, then row_dot_products_many.
void made_rows_dot_products(cpu::Workers& workers, const std::string& kernel, const cpu::RowMaker& make, Format format,
                            std::int64_t tokens, std::int64_t in, std::span<const Product> products);

// The AVX-512 kernel reads 16 rows' blocks at once, one row per 32-bit lane. From the row layout it transposes
// each block of 16 rows in registers and inserts 16 scales one by one: at one token (decode) that cost more than
// the products. So the weights it multiplies are interleaved once, at load, into a layout of the same size:
// for each group of 16 rows (the last out % 16 rows stay in the row layout, after the groups), first every
// block's quants, as 64-byte vectors whose 32-bit lane r holds 4 bytes of row r (Q4_0: 4 vectors per block, bytes
// 4k..4k+3 of the 16 nibble bytes in vector k; Q8_0: 8 vectors, with the sign bit of each byte flipped, the
// unsigned operand VPDPBUSD wants), then every block's 16 f16 scales together.
bool interleaves(const std::string& kernel);  // whether `kernel` reads Layout::Interleaved16
void interleave_rows(cpu::Workers& workers, Format format, const void* rows, void* interleaved, std::int64_t out,
                     std::int64_t in);
// Row r of an interleaved [out, in] matrix, dequantized (dequantize_row of the row it came from).
void dequantize_interleaved_row(Format format, const void* interleaved, std::int64_t r, std::int64_t out,
                                std::int64_t in, float* y);

// The activation side of those products: x [tokens, blocks * 32] quantized to Q8_0 blocks exactly as
// quantize_q8_0_blocks (llama.cpp's reference) does, with the scales also as f32; with the "avx512vnni" kernel by
// AVX-512 code giving the same bytes. With `starts`, also -bias times each block's sum of quantized values (the
// AVX-512 kernel's start of each block sum), in the same pass. On the OpenMP threads.
void quantize_activations(cpu::Workers& workers, const std::string& kernel, const float* x, BlockQ8_0* xq,
                          float* x_scales, std::int64_t tokens, std::int64_t blocks, std::int32_t* starts = nullptr,
                          int bias = 0);

}  // namespace strata::quant
