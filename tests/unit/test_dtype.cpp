// f16/bf16 conversions against independent references: the compiler's _Float16 (IEEE half, round to nearest
// even) and a bf16 rounding computed in double arithmetic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "runtime/base/dtype.h"
#include "runtime/base/error.h"

using namespace strata;

namespace {
float from_bits(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Nearest bf16 by distance in double precision; ties go to the even mantissa.
std::uint16_t bf16_reference(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const std::uint16_t down = std::uint16_t(bits >> 16), up = std::uint16_t(down + 1);
  const double d_down = std::abs(double(x) - double(bf16_to_f32(down)));
  const double d_up = std::abs(double(x) - double(bf16_to_f32(up)));
  if (d_down < d_up) return down;
  if (d_up < d_down) return up;
  return (down & 1) ? up : down;
}
}  // namespace

TEST(DType, F16MatchesCompilerHalfOnRandomAndEdgeValues) {
  std::mt19937 rng(1);
  std::vector<float> values = {0.0f,     -0.0f,   1.0f,  -2.5f,    65504.0f, 65519.0f, 65520.0f, 1e-8f,
                               5.96e-8f, 6.1e-5f, 3e-5f, 2.98e-8f, 2.99e-8f, INFINITY, -INFINITY};
  std::uniform_int_distribution<std::uint32_t> any_bits;
  for (int i = 0; i < 200000; ++i) {
    const float f = from_bits(any_bits(rng));
    if (!std::isnan(f) && std::abs(f) < 1e6f) values.push_back(f);
  }
  for (float v : values) {
    const _Float16 h = static_cast<_Float16>(v);
    std::uint16_t expected;
    std::memcpy(&expected, &h, 2);
    ASSERT_EQ(f32_to_f16(v), expected) << "value " << v;
    ASSERT_EQ(f16_to_f32(expected), static_cast<float>(h)) << "bits " << expected;
  }
}

TEST(DType, F16ToF32IsExactForEveryHalf) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    _Float16 h;
    const std::uint16_t b = std::uint16_t(bits);
    std::memcpy(&h, &b, 2);
    const float expected = static_cast<float>(h);
    const float got = f16_to_f32(b);
    if (std::isnan(expected))
      ASSERT_TRUE(std::isnan(got));
    else
      ASSERT_EQ(got, expected) << "bits " << bits;
  }
}

TEST(DType, Bf16RoundsToNearestEven) {
  std::mt19937 rng(2);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  for (int i = 0; i < 200000; ++i) {
    const float f = from_bits(any_bits(rng));
    if (std::isnan(f) || std::isinf(f) || std::abs(f) > 3e38f) continue;
    ASSERT_EQ(f32_to_bf16(f), bf16_reference(f)) << "value " << f;
  }
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
}

TEST(DType, ParseNamesAndRefuseUnknown) {
  EXPECT_EQ(parse_dtype("bfloat16"), DType::BF16);
  EXPECT_EQ(parse_dtype("f16"), DType::F16);
  try {
    parse_dtype("int4");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("int4"), std::string::npos);
  }
}

// A failed STRATA_CHECK says where it failed, relative to the source root, for the error line launch/ prints.
TEST(Error, ChecksCarryTheirFileAndLine) {
  int line = 0;
  try {
    line = __LINE__ + 1;
    STRATA_CHECK(line < 0, Usage, "line is ", line);
    FAIL() << "the check did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "line is " + std::to_string(line));
    const std::string where = e.where();
    EXPECT_NE(where.find("test_dtype.cpp:" + std::to_string(line)), std::string::npos) << where;
    EXPECT_NE(where.front(), '/') << "relative to the source root: " << where;
  }
  EXPECT_EQ(Error(ErrorKind::Io, "no place").where(), "");
}
