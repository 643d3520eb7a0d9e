// Q8_0 / Q4_0 blocks: quantize/dequantize error bounds, and the quantized dot-product kernels (scalar, AVX2,
// AVX-512 VNNI: each this CPU has) on odd shapes against a double-precision reference computed from the dequantized
// weights and activations (which equals the kernel's exact integer arithmetic up to its f32 sums), the kernels bit
// for bit against the scalar one, and a negative
// control: the unquantized product differs by far more than the tolerance, so the activation quantization is real.
// The blocks themselves are checked byte for byte against llama.cpp's own quantizer in tests/quant.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "runtime/backend/cpu/quant.h"
#include "runtime/base/dtype.h"
#include "runtime/base/error.h"

using namespace strata;
using quant::Format;

namespace {
// The kernels' threads in these tests: two, so that every parallel loop is split (a hand-over, not inline).
cpu::Workers& workers() {
  static cpu::Workers two(2);
  return two;
}
}  // namespace

namespace {

std::vector<float> normal(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<std::uint8_t> quantized(Format f, const std::vector<float>& x, std::int64_t rows, std::int64_t cols) {
  std::vector<std::uint8_t> out(quant::row_bytes(f, cols) * std::size_t(rows));
  for (std::int64_t r = 0; r < rows; ++r)
    quant::quantize_row(f, x.data() + r * cols, out.data() + std::size_t(r) * quant::row_bytes(f, cols), cols);
  return out;
}

std::vector<float> dequantized(Format f, const std::vector<std::uint8_t>& q, std::int64_t rows, std::int64_t cols) {
  std::vector<float> out(std::size_t(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    quant::dequantize_row(f, q.data() + std::size_t(r) * quant::row_bytes(f, cols), out.data() + r * cols, cols);
  return out;
}

}  // namespace

TEST(Quant, BlockSizesAndRowBytes) {
  EXPECT_EQ(quant::row_bytes(Format::Q8_0, 64), 68u);
  EXPECT_EQ(quant::row_bytes(Format::Q4_0, 96), 54u);
  EXPECT_THROW(quant::row_bytes(Format::Q8_0, 48), Error) << "not a multiple of 32";
  EXPECT_EQ(quant::parse_format("q4_0"), Format::Q4_0);
  EXPECT_THROW(quant::parse_format("q5_k"), Error);
}

// Each weight within half a step of its value (the step d = max|w| / 127 or |max| / 8, itself rounded to f16), the
// largest weight of a Q4_0 block exact up to d's rounding, and an all-zero block all zero.
TEST(Quant, RoundTripErrorIsWithinHalfAStep) {
  for (const Format f : {Format::Q8_0, Format::Q4_0}) {
    std::vector<float> x = normal(32 * 40, 3, 2.0f);
    std::fill(x.begin() + 64, x.begin() + 96, 0.0f);  // block 2: zeros
    const std::vector<float> y = dequantized(f, quantized(f, x, 1, std::int64_t(x.size())), 1, std::int64_t(x.size()));
    for (std::size_t b = 0; b < x.size() / 32; ++b) {
      float amax = 0;
      for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
      const float step = f == Format::Q8_0 ? amax / 127 : amax / 8;
      for (std::size_t j = 0; j < 32; ++j) {
        const std::size_t i = b * 32 + j;
        // Q4_0 maps the range [-8, 7] steps: the largest weight's opposite sign may clamp at a whole step
        const float bound = (f == Format::Q8_0 ? 0.5f : 1.0f) * step + amax * 0x1p-10f;
        EXPECT_LE(std::fabs(y[i] - x[i]), bound) << quant::format_name(f) << " block " << b << " weight " << j;
      }
      if (amax == 0) {
        for (std::size_t j = 0; j < 32; ++j) EXPECT_EQ(y[b * 32 + j], 0.0f);
      }
    }
  }
}

// Shapes not multiples of the 16-row work items (odd: the AVX-512 kernel takes rows in pairs), 1 to 17 and 200 tokens
// (its tiles are 8), 3 and 5 blocks per row. Blocks holding -128 (possible in a GGUF file, never made by the
// quantizer) and zeros exercise the sign handling.
TEST(Quant, KernelsMatchTheDequantizedReferenceAndEachOther) {
  const std::vector<std::string> kernels = quant::available_kernels();
  ASSERT_GE(kernels.size(), 2u) << "this test machine's CPU has AVX2 at least: a vector kernel must be tested";
  std::printf("quantized kernels on this CPU: %s%s%s\n", kernels[0].c_str(), kernels.size() > 2 ? ", " : "",
              kernels.size() > 2 ? kernels[1].c_str() : "");
  if (kernels.size() < 3) std::printf("  (no AVX-512 VNNI here: that kernel is tested on machines that have it)\n");
  for (const Format f : {Format::Q8_0, Format::Q4_0})
    for (const std::int64_t in : {96, 160})
      for (const std::int64_t tokens : {1, 2, 3, 5, 8, 9, 17, 200})  // 200: three passes (tiles.h)
        // 149: 9 groups, so that a thread's range holds several neighbouring groups
        for (const std::int64_t out : {37, 149}) {
          const std::vector<float> w = normal(std::size_t(out * in), 11, 0.5f),
                                   x = normal(std::size_t(tokens * in), 12);
          auto wq = quantized(f, w, out, in);
          if (f == Format::Q8_0) {  // row 3's first block: a -128 and a 0
            auto* block = reinterpret_cast<quant::BlockQ8_0*>(wq.data() + 3 * quant::row_bytes(f, in));
            block->qs[5] = -128;
            block->qs[6] = 0;
          }
          const std::vector<float> wd = dequantized(f, wq, out, in);
          const std::vector<float> xd = dequantized(Format::Q8_0, quantized(Format::Q8_0, x, tokens, in), tokens, in);
          std::vector<float> scalar(std::size_t(tokens * out));
          quant::row_dot_products_with(workers(), "scalar", x.data(), wq.data(), f, scalar.data(), tokens, out, in);
          for (const std::string& kernel : kernels) {
            std::vector<float> got(scalar.size(), -1.0f);
            quant::row_dot_products_with(workers(), kernel, x.data(), wq.data(), f, got.data(), tokens, out, in);
            EXPECT_EQ(0, std::memcmp(scalar.data(), got.data(), scalar.size() * 4))
                << kernel << " differs from scalar: " << quant::format_name(f) << " in " << in << " tokens " << tokens;
            if (!quant::interleaves(kernel)) continue;
            std::vector<std::uint8_t> interleaved(wq.size());  // whole groups of 16 rows, 5 rows in the row layout
            quant::interleave_rows(workers(), f, wq.data(), interleaved.data(), out, in);
            std::fill(got.begin(), got.end(), -1.0f);
            quant::row_dot_products_with(workers(), kernel, x.data(), interleaved.data(), f, got.data(), tokens, out,
                                         in, Layout::Interleaved16);
            EXPECT_EQ(0, std::memcmp(scalar.data(), got.data(), scalar.size() * 4))
                << kernel << " on interleaved weights differs from scalar: " << quant::format_name(f) << " in " << in
                << " out " << out << " tokens " << tokens;
          }
          double worst = 0, unquantized_gap = 0;
          for (std::int64_t t = 0; t < tokens; ++t)
            for (std::int64_t r = 0; r < out; ++r) {
              double ref = 0, magnitude = 0, exact = 0;
              for (std::int64_t k = 0; k < in; ++k) {
                ref += double(wd[std::size_t(r * in + k)]) * xd[std::size_t(t * in + k)];
                magnitude += std::fabs(double(wd[std::size_t(r * in + k)]) * xd[std::size_t(t * in + k)]);
                exact += double(wd[std::size_t(r * in + k)]) * x[std::size_t(t * in + k)];
              }
              const double got = scalar[std::size_t(t * out + r)];
              worst = std::max(worst, std::fabs(got - ref) / magnitude);
              unquantized_gap = std::max(unquantized_gap, std::fabs(got - exact) / magnitude);
            }
          EXPECT_LT(worst, 1e-6) << quant::format_name(f) << " in " << in << " tokens " << tokens;
          EXPECT_GT(unquantized_gap, 1e-4) << "the activations are quantized (negative control)";
        }
}

// The interleaved layout (quant.h) holds every row: each dequantizes as it did in the row layout, in the 16-row
// groups and in the rows after them; and it is a real rearrangement (the groups' bytes moved, the tail's not), the
// same size. It is built by portable code, so this runs on any CPU; the kernel reading it is tested above.
TEST(Quant, InterleavedRowsDequantizeAsTheirRows) {
  for (const Format f : {Format::Q8_0, Format::Q4_0}) {
    const std::int64_t out = 35, in = 96;
    const std::vector<float> w = normal(std::size_t(out * in), 31, 0.5f);
    const auto rows = quantized(f, w, out, in);
    std::vector<std::uint8_t> interleaved(rows.size());
    quant::interleave_rows(workers(), f, rows.data(), interleaved.data(), out, in);
    const std::size_t grouped = 32 * quant::row_bytes(f, in);
    EXPECT_NE(0, std::memcmp(rows.data(), interleaved.data(), grouped)) << quant::format_name(f);
    EXPECT_EQ(0, std::memcmp(rows.data() + grouped, interleaved.data() + grouped, rows.size() - grouped));
    const std::vector<float> want = dequantized(f, rows, out, in);
    std::vector<float> got(static_cast<std::size_t>(in));
    for (std::int64_t r = 0; r < out; ++r) {
      quant::dequantize_interleaved_row(f, interleaved.data(), r, out, in, got.data());
      EXPECT_EQ(0, std::memcmp(want.data() + r * in, got.data(), got.size() * 4))
          << quant::format_name(f) << " row " << r;
    }
  }
}

// The activation quantizer of each kernel gives quantize_q8_0_blocks' bytes (llama.cpp's reference, itself checked
// against llama.cpp in tests/quant): random rows, and blocks built so that x / d lands exactly on halves (roundf
// rounds them away from zero, a round-to-even vector instruction would not), zeros, and a block all zero; blocks
// whose d is an f16 subnormal, rounds up to a power of two, or passes f16's range (inf). Its scales are the f16 d
// back in f32, and its starts -bias times each block's sum of quantized values, for both biases the kernels use.
TEST(Quant, ActivationQuantizersGiveTheReferenceBytes) {
  const std::int64_t tokens = 9, blocks = 7;
  std::vector<float> x = normal(std::size_t(tokens * blocks * 32), 21, 3.0f);
  for (int j = 0; j < 32; ++j) {  // token 0 block 1: amax 127 -> d = 1, values k + 0.5 of both signs
    x[std::size_t(32 + j)] = j == 0 ? 127.0f : (j % 2 ? 1.0f : -1.0f) * (float(j) + 0.5f);
    x[std::size_t(64 + j)] = 0.0f;    // token 0 block 2: all zero
    x[std::size_t(96 + j)] *= 1e-6f;  // token 0 block 3: d ~ 1e-7, an f16 subnormal
    x[std::size_t(128 + j)] *= 1e7f;  // token 0 block 4: d ~ 2e5, past f16's 65504: inf
  }
  x[160] = 127.0f * 0.00048827f;  // token 0 block 5: d just under 2^-11, rounds up to it in f16
  for (int j = 1; j < 32; ++j) x[std::size_t(160 + j)] = 0.0001f * float(j);
  std::vector<quant::BlockQ8_0> ref(std::size_t(tokens * blocks));
  for (std::int64_t t = 0; t < tokens; ++t)
    quant::quantize_q8_0_blocks(x.data() + t * blocks * 32, ref.data() + t * blocks, blocks);
  EXPECT_EQ(ref[1].qs[1], 2) << "1.5 rounds away from zero";
  EXPECT_EQ(ref[1].qs[2], -3) << "-2.5 rounds away from zero";
  for (const std::string& kernel : quant::available_kernels()) {
    std::vector<quant::BlockQ8_0> got(ref.size());
    std::vector<float> scales(ref.size());
    quant::quantize_activations(workers(), kernel, x.data(), got.data(), scales.data(), tokens, blocks);
    EXPECT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * sizeof(quant::BlockQ8_0))) << kernel;
    for (std::size_t b = 0; b < ref.size(); ++b) EXPECT_EQ(scales[b], f16_to_f32(ref[b].d)) << kernel << " " << b;
    for (int bias : {8, 128}) {
      std::vector<std::int32_t> starts(ref.size(), 12345);
      std::fill(scales.begin(), scales.end(), -1.0f);
      quant::quantize_activations(workers(), kernel, x.data(), got.data(), scales.data(), tokens, blocks, starts.data(),
                                  bias);
      EXPECT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * sizeof(quant::BlockQ8_0))) << kernel;
      for (std::size_t b = 0; b < ref.size(); ++b) {
        int sum = 0;
        for (int j = 0; j < 32; ++j) sum += ref[b].qs[j];
        EXPECT_EQ(starts[b], -bias * sum) << kernel << " bias " << bias << " block " << b;
        EXPECT_EQ(scales[b], f16_to_f32(ref[b].d)) << kernel << " bias " << bias << " block " << b;
      }
    }
  }
  EXPECT_EQ(ref[3].d & 0x7c00, 0) << "an f16 subnormal d";
  EXPECT_NE(ref[3].d, 0);
  EXPECT_EQ(ref[4].d, 0x7c00) << "d past f16's range: inf";
}

TEST(Quant, ForcedScalarKernel) {
  setenv("STRATA_QUANT_KERNEL", "scalar", 1);
  EXPECT_EQ(quant::kernel_name(), "scalar");
  unsetenv("STRATA_QUANT_KERNEL");
  setenv("STRATA_QUANT_KERNEL", "sse9", 1);
  EXPECT_THROW(quant::kernel_name(), Error) << "a kernel that does not exist";
  unsetenv("STRATA_QUANT_KERNEL");
  EXPECT_THROW(quant::row_dot_products_with(workers(), "avx512", nullptr, nullptr, Format::Q8_0, nullptr, 0, 0, 32),
               Error);
  EXPECT_THROW(quant::row_dot_products_with(workers(), "scalar", nullptr, nullptr, Format::Q8_0, nullptr, 0, 0, 32,
                                            Layout::Interleaved16),
               Error)
      << "only the AVX-512 kernel reads the interleaved layout";
}
