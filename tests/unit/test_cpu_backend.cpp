// Every CPU backend op against a plain double-precision reference written here (tolerance: 1e-5 relative, fp32
// accumulation over at most a few hundred terms), plus a negative control showing the attention comparison
// does detect a wrong head mapping, and the 16-bit weight paths (linear, embedding) with their own control.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>

#include "runtime/backend/backend.h"
#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/quant.h"
#include "runtime/backend/host_candidates.h"
#include "runtime/base/error.h"
#include "test_support.h"
#include "tests/unit/error_of.h"

using namespace strata;

namespace {
// The kernels' threads in these tests: two, so that every parallel loop is split (a hand-over, not inline).
cpu::Workers& workers() {
  static cpu::Workers two(2);
  return two;
}
}  // namespace
using test::relative_error;

namespace {

constexpr double kTolerance = 1e-5;

struct Fixture {
  std::unique_ptr<Backend> backend = make_cpu_backend(1);
  std::mt19937 rng{42};
  Tensor random(Shape shape, float scale = 1.0f) {
    Tensor t = backend->allocate(shape, DType::F32);
    std::normal_distribution<float> normal(0.0f, scale);
    for (std::int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = normal(rng);
    return t;
  }
  std::vector<double> values(const Tensor& t) { return test::as_double(t.f32(), std::size_t(t.numel())); }
};

// Causal GQA attention in double for one sequence: q [n, Hq, D] at positions start..start+n-1 over keys/values
// [start+n, Hkv, D]. kv_head_of maps a query head to its kv head. window > 0: query position p sees keys
// p - window + 1 .. p; softcap > 0: scores become softcap * tanh(score / softcap).
std::vector<double> reference_attention(const float* q, const std::vector<double>& k, const std::vector<double>& v,
                                        int n, int start, int hq, int hkv, int d,
                                        const std::function<int(int)>& kv_head_of, int window = 0, double softcap = 0) {
  std::vector<double> out(std::size_t(n * hq * d), 0.0);
  for (int i = 0; i < n; ++i) {
    for (int h = 0; h < hq; ++h) {
      const int kvh = kv_head_of(h), visible = start + i + 1;
      std::vector<double> score(static_cast<std::size_t>(visible));
      double best = -1e300, total = 0;
      const int first = window > 0 ? std::max(0, visible - window) : 0;
      for (int j = first; j < visible; ++j) {
        double dot = 0;
        for (int e = 0; e < d; ++e) dot += double(q[(i * hq + h) * d + e]) * k[std::size_t((j * hkv + kvh) * d + e)];
        score[std::size_t(j)] = dot / std::sqrt(double(d));
        if (softcap > 0) score[std::size_t(j)] = softcap * std::tanh(score[std::size_t(j)] / softcap);
        best = std::max(best, score[std::size_t(j)]);
      }
      for (int j = first; j < visible; ++j) total += (score[std::size_t(j)] = std::exp(score[std::size_t(j)] - best));
      for (int j = first; j < visible; ++j)
        for (int e = 0; e < d; ++e)
          out[std::size_t((i * hq + h) * d + e)] +=
              score[std::size_t(j)] / total * v[std::size_t((j * hkv + kvh) * d + e)];
    }
  }
  return out;
}

}  // namespace

// A step may hold zero tokens for a tensor (an empty fill): its row size is still the trailing dims' product
// (numel() / rows() divided by zero and killed the CUDA test with SIGFPE), and storing nothing is a no-op.
TEST(CpuBackend, ZeroRowTensorsHaveTheirRowSizeAndStoreNothing) {
  auto backend = make_cpu_backend(1);
  Tensor k = backend->allocate({0, 2, 8}, DType::F32), v = backend->allocate({0, 2, 8}, DType::F32);
  EXPECT_EQ(k.view().rows(), 0);
  EXPECT_EQ(k.view().row_elems(), 16);
  Tensor cache_k = backend->allocate({1, 4, 2, 8}, DType::F32), cache_v = backend->allocate({1, 4, 2, 8}, DType::F32);
  std::fill(cache_k.f32(), cache_k.f32() + cache_k.numel(), 7.0f);
  backend->kv_store({}, {}, k.view().reshaped({0, 16}), v.view().reshaped({0, 16}), cache_k.view(), cache_v.view());
  EXPECT_EQ(cache_k.f32()[0], 7.0f);
}

TEST(CpuBackend, LinearIsEquivalentToRefForOneAndManyTokens) {
  Fixture f;
  for (int tokens : {1, 5}) {
    Tensor x = f.random({tokens, 48}), w = f.random({36, 48}), b = f.random({36}), y = f.random({tokens, 36});
    f.backend->linear(x.view(), w.view(), b.view(), y.view());
    std::vector<double> ref(std::size_t(tokens * 36));
    for (int t = 0; t < tokens; ++t)
      for (int n = 0; n < 36; ++n) {
        double sum = b.f32()[n];
        for (int k = 0; k < 48; ++k) sum += double(x.f32()[t * 48 + k]) * w.f32()[n * 48 + k];
        ref[std::size_t(t * 36 + n)] = sum;
      }
    EXPECT_LT(relative_error(f.values(y), ref), kTolerance) << tokens << " tokens";
  }
}

// The product kernels (scalar, AVX2, AVX-512: each this CPU has) on odd shapes: rows not a multiple of the 16-row
// work items nor of the AVX-512 kernel's 4-row tiles, 1 to 13 tokens (its tiles are 6), widths with and without a
// tail past the 16 lanes; f32, bf16 and f16 weights. Every kernel gives the scalar kernel's bits (one order of
// additions, kernels.cpp), 16-bit weights the bits of f32 weights holding the same values, and all of them the
// double reference within 1e-5 (a kernel skipping the tail or a row would be off by far more).
TEST(CpuBackend, RowKernelsMatchTheReferenceAndEachOtherBitForBit) {
  const std::vector<std::string> kernels = cpu::row_kernels();
  ASSERT_GE(kernels.size(), 2u) << "this test machine's CPU has AVX2 at least: a vector kernel must be tested";
  std::string names;
  for (const std::string& k : kernels) names += (names.empty() ? "" : ", ") + k;
  std::printf("row kernels on this CPU: %s\n", names.c_str());
  if (kernels.size() < 3) std::printf("  (no AVX-512 here: that kernel is tested on machines that have it)\n");
  Fixture f;
  for (const std::int64_t in : {48, 77})
    for (const std::int64_t tokens : {1, 2, 5, 6, 7, 13, 200}) {  // 200: three passes (tiles.h)
      const std::int64_t out = 39;
      Tensor w = f.random({out, in}), x = f.random({tokens, in});
      for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
        std::vector<std::uint16_t> bits(std::size_t(out * in));
        std::vector<float> exact(bits.size());
        convert_from_f32(dtype == DType::F32 ? DType::BF16 : dtype, w.f32(), bits.data(), bits.size());
        convert_to_f32(dtype == DType::F32 ? DType::BF16 : dtype, bits.data(), exact.data(), bits.size());
        const void* stored = dtype == DType::F32 ? static_cast<const void*>(exact.data()) : bits.data();
        std::vector<float> scalar(std::size_t(tokens * out)), from_f32(scalar.size());
        cpu::row_dot_products_with(workers(), "scalar", x.f32(), stored, dtype, scalar.data(), tokens, out, in);
        cpu::row_dot_products_with(workers(), "scalar", x.f32(), exact.data(), DType::F32, from_f32.data(), tokens, out,
                                   in);
        EXPECT_EQ(0, std::memcmp(scalar.data(), from_f32.data(), scalar.size() * 4)) << dtype_name(dtype);
        for (const std::string& kernel : kernels) {
          if (kernel == "avx512bf16" && dtype == DType::BF16) continue;  // bf16 activations: the next test
          std::vector<float> got(scalar.size(), -1.0f);
          cpu::row_dot_products_with(workers(), kernel, x.f32(), stored, dtype, got.data(), tokens, out, in);
          EXPECT_EQ(0, std::memcmp(scalar.data(), got.data(), scalar.size() * 4))
              << kernel << " differs from scalar: " << dtype_name(dtype) << " in " << in << " tokens " << tokens;
        }
        std::vector<double> ref(scalar.size());
        for (std::int64_t t = 0; t < tokens; ++t)
          for (std::int64_t n = 0; n < out; ++n) {
            double sum = 0;
            for (std::int64_t k = 0; k < in; ++k) sum += double(x.f32()[t * in + k]) * exact[std::size_t(n * in + k)];
            ref[std::size_t(t * out + n)] = sum;
          }
        EXPECT_LT(relative_error(test::as_double(scalar.data(), scalar.size()), ref), kTolerance)
            << dtype_name(dtype) << " in " << in << " tokens " << tokens;
      }
    }
  setenv("STRATA_ROW_KERNEL", "scalar", 1);
  EXPECT_EQ(cpu::row_kernel_name(), "scalar");
  setenv("STRATA_ROW_KERNEL", "sse9", 1);
  EXPECT_THROW(cpu::row_kernel_name(), Error) << "a kernel that does not exist";
  unsetenv("STRATA_ROW_KERNEL");
}

// Several products of one input in one parallel loop (q, k and v): with every row kernel, weight type and layout,
// each product's outputs are the bits of its own call, for products of no 16-row group, of groups and a rest, and of
// many groups (work items of several groups split across products and threads), at decode and prefill sizes.
TEST(CpuBackend, SeveralProductsOfOneInputGiveEachProductsOwnBits) {
  if (!cpu::interleaves_bf16(cpu::row_kernels().front()))
    std::printf("(no AVX512_BF16 here: the interleaved bf16 products are tested on machines that have it)\n");
  Fixture f;
  const std::int64_t in = 96;
  const std::vector<std::int64_t> outs = {37, 5, 275};
  std::vector<Tensor> w32;
  for (const std::int64_t out : outs) w32.push_back(f.random({out, in}));
  for (const std::string& kernel : cpu::row_kernels())
    for (DType dtype : {DType::F32, DType::BF16, DType::F16})
      for (const bool interleaved : {false, true}) {
        if (interleaved && !(dtype == DType::BF16 && cpu::interleaves_bf16(kernel, in))) continue;
        std::vector<std::vector<std::uint16_t>> bits, layout;
        std::vector<std::vector<float>> exact;
        std::vector<cpu::Product> products;
        for (std::size_t i = 0; i < outs.size(); ++i) {
          const std::size_t n = std::size_t(outs[i] * in);
          bits.emplace_back(n);
          exact.emplace_back(n);
          convert_from_f32(dtype == DType::F32 ? DType::BF16 : dtype, w32[i].f32(), bits[i].data(), n);
          convert_to_f32(dtype == DType::F32 ? DType::BF16 : dtype, bits[i].data(), exact[i].data(), n);
          layout.emplace_back(n);
          if (interleaved) cpu::interleave_bf16_rows(workers(), bits[i].data(), layout[i].data(), outs[i], in);
          const void* w = dtype == DType::F32 ? static_cast<const void*>(exact[i].data())
                          : interleaved       ? layout[i].data()
                                              : bits[i].data();
          products.push_back({w, interleaved ? Layout::Interleaved16 : Layout::Rows, nullptr, outs[i]});
        }
        for (const std::int64_t tokens : {1, 6, 13, 100}) {
          const std::string where = kernel + " " + dtype_name(dtype) + (interleaved ? " interleaved" : " rows") +
                                    " tokens " + std::to_string(tokens);
          Tensor x = f.random({tokens, in});
          std::vector<std::vector<float>> together, alone;
          for (std::size_t i = 0; i < outs.size(); ++i) {
            together.emplace_back(std::size_t(tokens * outs[i]), -1.0f);
            alone.emplace_back(together[i].size(), -2.0f);
            products[i].y = together[i].data();
            cpu::row_dot_products_with(workers(), kernel, x.f32(), products[i].w, dtype, alone[i].data(), tokens,
                                       outs[i], in, products[i].layout);
          }
          cpu::row_dot_products_many(workers(), kernel, x.f32(), dtype, tokens, in, products);
          for (std::size_t i = 0; i < outs.size(); ++i)
            EXPECT_EQ(0, std::memcmp(together[i].data(), alone[i].data(), alone[i].size() * 4))
                << where << " product " << i;
        }
      }
  // More products than cpu::ProductItems keeps without an allocation (8), with the kernel and layout the backend uses.
  {
    const std::string kernel = cpu::row_kernel_name();
    const bool interleaved = cpu::interleaves_bf16(kernel, in);
    std::vector<std::vector<std::uint16_t>> weights;
    std::vector<std::vector<float>> together, alone;
    std::vector<cpu::Product> products;
    Tensor x = f.random({6, in});
    for (std::int64_t i = 0; i < 11; ++i) {
      const std::int64_t out = 5 + 16 * i;  // 5 rows after 0..10 groups
      Tensor w = f.random({out, in});
      std::vector<std::uint16_t> bits(std::size_t(out * in));
      convert_from_f32(DType::BF16, w.f32(), bits.data(), bits.size());
      weights.emplace_back(bits.size());
      if (interleaved)
        cpu::interleave_bf16_rows(workers(), bits.data(), weights.back().data(), out, in);
      else
        weights.back() = bits;
      together.emplace_back(std::size_t(6 * out), -1.0f);
      alone.emplace_back(std::size_t(6 * out), -2.0f);
      products.push_back(
          {weights.back().data(), interleaved ? Layout::Interleaved16 : Layout::Rows, together.back().data(), out});
    }
    cpu::row_dot_products_many(workers(), kernel, x.f32(), DType::BF16, 6, in, products);
    for (std::size_t i = 0; i < products.size(); ++i) {
      cpu::row_dot_products_with(workers(), kernel, x.f32(), products[i].w, DType::BF16, alone[i].data(), 6,
                                 products[i].out, in, products[i].layout);
      EXPECT_EQ(0, std::memcmp(together[i].data(), alone[i].data(), alone[i].size() * 4)) << "of 11, product " << i;
    }
  }
  // Through the backend, with a bias on one product: linears gives each linear's bits.
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    std::unique_ptr<Backend> backend = make_cpu_backend(2, dtype);
    std::vector<Tensor> ws;
    for (std::size_t i = 0; i < outs.size(); ++i) {
      Tensor w = backend->allocate({outs[i], in}, dtype);
      backend->upload(w32[i].f32(), w.view());
      ws.push_back(backend->prepare_weight(std::move(w)));
    }
    Tensor bias = f.random({outs[2]});
    for (const std::int64_t tokens : {1, 13, 100}) {
      Tensor x = f.random({tokens, in});
      std::vector<Tensor> together, alone;
      for (const std::int64_t out : outs) {
        together.push_back(f.random({tokens, out}));
        alone.push_back(f.random({tokens, out}));
      }
      const TensorView w_views[] = {ws[0].view(), ws[1].view(), ws[2].view()}, biases[] = {{}, {}, bias.view()};
      const TensorView ys[] = {together[0].view(), together[1].view(), together[2].view()};
      backend->linears(x.view(), w_views, biases, ys);
      for (std::size_t i = 0; i < outs.size(); ++i) {
        backend->linear(x.view(), w_views[i], biases[i], alone[i].view());
        EXPECT_EQ(0, std::memcmp(together[i].f32(), alone[i].f32(), std::size_t(alone[i].numel()) * 4))
            << dtype_name(dtype) << " product " << i << " tokens " << tokens;
      }
    }
  }
}

// Double references for products of bf16 weights `bits` [out, in] with x [tokens, in] (plus bias, if any): over the
// activations rounded to bf16 (f32_to_bf16) and over them as they are, each [tokens, out].
static std::pair<std::vector<double>, std::vector<double>> bf16_input_references(const float* x,
                                                                                 const std::vector<std::uint16_t>& bits,
                                                                                 const float* bias, std::int64_t tokens,
                                                                                 std::int64_t out, std::int64_t in) {
  std::vector<double> rounded(std::size_t(tokens * out)), unrounded(rounded.size());
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t n = 0; n < out; ++n) {
      double sum = bias ? bias[n] : 0, plain = sum;
      for (std::int64_t k = 0; k < in; ++k) {
        const double wk = bf16_to_f32(bits[std::size_t(n * in + k)]);
        sum += double(bf16_to_f32(f32_to_bf16(x[t * in + k]))) * wk;
        plain += double(x[t * in + k]) * wk;
      }
      rounded[std::size_t(t * out + n)] = sum;
      unrounded[std::size_t(t * out + n)] = plain;
    }
  return {rounded, unrounded};
}

// The avx512bf16 kernel on bf16 weights rounds the activations to bf16 and multiplies with VDPBF16PS: on odd shapes
// (widths below, between and past the 32 values of one instruction; rows and tokens not multiples of its 4 x 6
// tiles) it gives the double reference over the rounded activations within 1e-5, while the reference over the
// unrounded ones is far outside that (negative control: a kernel that skipped the rounding, or read the tail wrong,
// fails one or the other). Each token's results are the same bits alone or in any batch, on one thread or two.
TEST(CpuBackend, Bf16DotKernelGivesTheProductsOfBf16RoundedActivations) {
  const std::vector<std::string> kernels = cpu::row_kernels();
  if (std::find(kernels.begin(), kernels.end(), "avx512bf16") == kernels.end())
    GTEST_SKIP() << "this CPU has no AVX512_BF16: the avx512bf16 kernel is tested on machines that have it";
  Fixture f;
  cpu::Workers one(1);
  for (const std::int64_t in : {20, 48, 77, 96})
    for (const std::int64_t tokens : {1, 5, 6, 13, 100, 200}) {  // 100, 200: two and three passes in one loop (tiles.h)
      const std::int64_t out = 39;
      Tensor w = f.random({out, in}), x = f.random({tokens, in});
      std::vector<std::uint16_t> bits(std::size_t(out * in));
      convert_from_f32(DType::BF16, w.f32(), bits.data(), bits.size());
      std::vector<float> got(std::size_t(tokens * out), -1.0f), alone(got.size(), -2.0f);
      cpu::row_dot_products_with(workers(), "avx512bf16", x.f32(), bits.data(), DType::BF16, got.data(), tokens, out,
                                 in);
      for (std::int64_t t = 0; t < tokens; ++t)  // y's rows are `out` apart: one token's products alone
        cpu::row_dot_products_with(t % 2 ? one : workers(), "avx512bf16", x.f32() + t * in, bits.data(), DType::BF16,
                                   alone.data() + t * out, 1, out, in);
      EXPECT_EQ(0, std::memcmp(got.data(), alone.data(), got.size() * 4)) << "in " << in << " tokens " << tokens;
      const auto [rounded, unrounded] = bf16_input_references(x.f32(), bits, nullptr, tokens, out, in);
      const std::vector<double> values = test::as_double(got.data(), got.size());
      EXPECT_LT(relative_error(values, rounded), kTolerance) << "in " << in << " tokens " << tokens;
      EXPECT_GT(relative_error(values, unrounded), 10 * kTolerance) << "in " << in << " tokens " << tokens;
    }
}

TEST(CpuBackend, RmsNormIsEquivalentToRef) {
  Fixture f;
  Tensor x = f.random({3, 40}), w = f.random({40}), y = f.random({3, 40});
  f.backend->rms_norm(x.view(), w.view(), 1e-5f, y.view());
  std::vector<double> ref;
  for (int t = 0; t < 3; ++t) {
    double ms = 0;
    for (int i = 0; i < 40; ++i) ms += double(x.f32()[t * 40 + i]) * x.f32()[t * 40 + i] / 40;
    for (int i = 0; i < 40; ++i) ref.push_back(x.f32()[t * 40 + i] / std::sqrt(ms + 1e-5) * w.f32()[i]);
  }
  EXPECT_LT(relative_error(f.values(y), ref), kTolerance);
}

TEST(CpuBackend, RopeRotatesHalvesByPositionTimesFrequency) {
  Fixture f;
  const int heads = 3, d = 8;
  Tensor x = f.random({4, heads, d});
  const std::vector<double> before = f.values(x);
  const std::vector<std::int32_t> positions = {0, 1, 7, 300};
  RopeParams params{{}, d};
  for (int i = 0; i < d / 2; ++i) params.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / d)));
  f.backend->rope(x.view(), positions, params);
  std::vector<double> ref(before.size());
  for (int t = 0; t < 4; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < d / 2; ++i) {
        const double angle = positions[std::size_t(t)] * std::pow(10000.0, -2.0 * i / d);
        const std::size_t a = std::size_t((t * heads + h) * d + i), b = a + d / 2;
        // (a + ib) * e^{i angle}: the rotate-half convention pairs element i with element i + d/2
        ref[a] = before[a] * std::cos(angle) - before[b] * std::sin(angle);
        ref[b] = before[b] * std::cos(angle) + before[a] * std::sin(angle);
      }
  EXPECT_LT(relative_error(f.values(x), ref), 1e-5);
  for (int i = 0; i < heads * d; ++i) EXPECT_EQ(x.f32()[i], float(before[std::size_t(i)])) << "position 0 is identity";
}

// The angles are kept from one call to the next (every layer of a step rotates by the same ones): a call with other
// positions, or the same positions and other frequencies, rotates by its own, and a repeated call as a fresh
// backend would.
TEST(CpuBackend, RopeAnglesFollowEachCallsPositionsAndFrequencies) {
  Fixture f;
  const int heads = 2, d = 8;
  RopeParams base{{}, d}, scaled{{}, d};
  for (int i = 0; i < d / 2; ++i) {
    base.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / d)));
    scaled.inv_freq.push_back(base.inv_freq.back() / 4.0f);
  }
  const Tensor x = f.random({3, heads, d});
  const std::vector<std::int32_t> first = {5, 6, 7}, second = {9, 10, 11};
  auto rotated = [&](Backend& backend, const std::vector<std::int32_t>& positions, const RopeParams& params) {
    Tensor y = f.random({3, heads, d});
    std::memcpy(y.f32(), x.f32(), std::size_t(x.numel()) * 4);
    backend.rope(y.view(), positions, params);
    return std::vector<float>(y.f32(), y.f32() + y.numel());
  };
  const auto fresh = [&](const std::vector<std::int32_t>& positions, const RopeParams& params) {
    std::unique_ptr<Backend> backend = make_cpu_backend(1);
    return rotated(*backend, positions, params);
  };
  const auto a = rotated(*f.backend, first, base);
  EXPECT_EQ(rotated(*f.backend, first, base), a) << "the same call again";
  const auto b = rotated(*f.backend, second, base);
  EXPECT_EQ(b, fresh(second, base));
  EXPECT_NE(b, a);
  const auto c = rotated(*f.backend, second, scaled);
  EXPECT_EQ(c, fresh(second, scaled));
  EXPECT_NE(c, b);
  EXPECT_EQ(rotated(*f.backend, first, base), a);
}

TEST(CpuBackend, SwigluIsEquivalentToRef) {
  Fixture f;
  Tensor gu = f.random({2, 20}), out = f.random({2, 10});
  f.backend->swiglu(gu.view(), out.view());
  std::vector<double> ref;
  for (int t = 0; t < 2; ++t)
    for (int i = 0; i < 10; ++i) {
      const double g = gu.f32()[t * 20 + i], u = gu.f32()[t * 20 + 10 + i];
      ref.push_back(g / (1 + std::exp(-g)) * u);
    }
  EXPECT_LT(relative_error(f.values(out), ref), kTolerance);
}

// Matrix weights kept 16-bit (as bf16/f16 checkpoints store them): the decode kernel (1-4 tokens) and the blocked
// prefill GEMM (300 rows: two blocks of up to 256; 100 columns: not a multiple of the vector width) against a
// double reference over the same 16-bit values, and bit for bit against f32 weights holding those values. Negative
// control: the reference over the unrounded f32 weights is far outside the tolerance, so the comparison sees a
// kernel that reads other values than the stored ones. With the f32 kernels: on a CPU with AVX512_BF16 the default
// kernel rounds the activations of bf16 weights (the next test).
TEST(CpuBackend, SixteenBitWeightsGiveTheResultsOfF32Weights) {
  Fixture f;
  const int in = 100, out = 300;
  std::vector<std::string> f32_kernels = cpu::row_kernels();
  std::erase(f32_kernels, "avx512bf16");
  setenv("STRATA_ROW_KERNEL", f32_kernels.front().c_str(), 1);  // read once, by make_cpu_backend
  for (DType dtype : {DType::BF16, DType::F16}) {
    std::unique_ptr<Backend> backend = make_cpu_backend(2, dtype);
    unsetenv("STRATA_ROW_KERNEL");
    EXPECT_EQ(backend->weight_dtype(), dtype);
    Tensor w32 = f.random({out, in}), exact32 = f.random({out, in});
    std::vector<std::uint16_t> bits(std::size_t(out * in));
    convert_from_f32(dtype, w32.f32(), bits.data(), bits.size());
    convert_to_f32(dtype, bits.data(), exact32.f32(), bits.size());  // the values the 16-bit tensor holds
    Tensor w16 = backend->allocate({out, in}, dtype);
    backend->upload(w32.f32(), w16.view());
    for (int tokens : {1, 2, 3, 4, 5, 37}) {
      Tensor x = f.random({tokens, in}), b = f.random({out}), y = f.random({tokens, out}),
             y32 = f.random({tokens, out});
      backend->linear(x.view(), w16.view(), b.view(), y.view());
      f.backend->linear(x.view(), exact32.view(), b.view(), y32.view());
      std::vector<double> ref(std::size_t(tokens * out)), unrounded(ref.size());
      for (int t = 0; t < tokens; ++t)
        for (int n = 0; n < out; ++n) {
          double sum = b.f32()[n], wrong = b.f32()[n];
          for (int k = 0; k < in; ++k) {
            sum += double(x.f32()[t * in + k]) * exact32.f32()[n * in + k];
            wrong += double(x.f32()[t * in + k]) * w32.f32()[n * in + k];
          }
          ref[std::size_t(t * out + n)] = sum;
          unrounded[std::size_t(t * out + n)] = wrong;
        }
      EXPECT_LT(relative_error(f.values(y), ref), kTolerance) << dtype_name(dtype) << " " << tokens << " tokens";
      EXPECT_GT(relative_error(f.values(y), unrounded), 10 * kTolerance) << dtype_name(dtype) << " " << tokens;
      if (tokens <= 4) {  // the decode kernel: the same products in the same order as with f32 weights
        EXPECT_EQ(std::memcmp(y.f32(), y32.f32(), std::size_t(tokens * out) * 4), 0) << dtype_name(dtype) << tokens;
      }
    }
    // The embedding gather widens the rows it reads; rows outside the shard are zero.
    Tensor out_rows = f.random({3, in});
    const std::vector<std::int32_t> ids = {107, 9, 100};  // shard holds ids 100..399
    backend->embedding(ids, w16.view(), 100, out_rows.view());
    for (int e = 0; e < in; ++e) {
      EXPECT_EQ(out_rows.f32()[e], exact32.f32()[7 * in + e]);
      EXPECT_EQ(out_rows.f32()[in + e], 0.0f);
      EXPECT_EQ(out_rows.f32()[2 * in + e], exact32.f32()[e]);
    }
    std::vector<float> back(std::size_t(out * in));
    backend->download(w16.view(), back.data());
    EXPECT_EQ(std::memcmp(back.data(), exact32.f32(), back.size() * 4), 0) << dtype_name(dtype);
    setenv("STRATA_ROW_KERNEL", f32_kernels.front().c_str(), 1);
  }
  unsetenv("STRATA_ROW_KERNEL");
}

// A bf16 backend on a CPU with AVX512_BF16 runs its products with the avx512bf16 kernel by default, prefill-sized
// ones too: linear gives the double reference over bf16-rounded activations (plus the bias), not the unrounded one.
TEST(CpuBackend, Bf16WeightsUseTheBf16DotKernelByDefault) {
  if (cpu::row_kernel_name() != "avx512bf16") GTEST_SKIP() << "this CPU has no AVX512_BF16";
  Fixture f;
  const int in = 100, out = 70;
  std::unique_ptr<Backend> backend = make_cpu_backend(2, DType::BF16);
  Tensor w32 = f.random({out, in});
  Tensor w16 = backend->allocate({out, in}, DType::BF16);
  backend->upload(w32.f32(), w16.view());
  std::vector<std::uint16_t> bits(std::size_t(out * in));
  convert_from_f32(DType::BF16, w32.f32(), bits.data(), bits.size());
  for (int tokens : {1, 37}) {
    Tensor x = f.random({tokens, in}), b = f.random({out}), y = f.random({tokens, out});
    backend->linear(x.view(), w16.view(), b.view(), y.view());
    const auto [rounded, unrounded] = bf16_input_references(x.f32(), bits, b.f32(), tokens, out, in);
    EXPECT_LT(relative_error(f.values(y), rounded), kTolerance) << tokens << " tokens";
    EXPECT_GT(relative_error(f.values(y), unrounded), 10 * kTolerance) << tokens << " tokens";
  }
}

// The interleaved bf16 layout (any CPU: the copy and the row reads are portable) holds every row: each read back
// equals the row widened, in the groups and after them.
TEST(CpuBackend, InterleavedBf16MatricesHoldEveryRow) {
  Fixture f;
  for (const std::int64_t out : {5, 16, 37})
    for (const std::int64_t in : {2, 48, 100}) {
      Tensor w32 = f.random({out, in});
      std::vector<std::uint16_t> rows(std::size_t(out * in)), interleaved(rows.size(), 0xffff);
      convert_from_f32(DType::BF16, w32.f32(), rows.data(), rows.size());
      cpu::interleave_bf16_rows(workers(), rows.data(), interleaved.data(), out, in);
      std::vector<float> got(static_cast<std::size_t>(in)), want(static_cast<std::size_t>(in));
      for (std::int64_t r = 0; r < out; ++r) {
        cpu::widen_interleaved_bf16_row(interleaved.data(), r, out, in, got.data());
        cpu::widen(DType::BF16, rows.data() + r * in, want.data(), in);
        EXPECT_EQ(got, want) << "row " << r << " of " << out << " x " << in;
      }
    }
}

// With the avx512bf16 kernel, bf16 matrices of an even width come back from prepare_weight interleaved by 16 rows
// (kernels.h), a copy. On shapes with whole groups, a partial one, and none (out 5), widths past and between the
// 64-byte vectors, token counts that fill and split the 4 x 6 group tiles and a prefill's passes: linear gives
// the double reference over the bf16-rounded activations within 1e-5 and is far from the unrounded one (negative
// control); each token's results are the same bits alone or in any batch, on one thread or two; embedding reads the
// rows the row layout holds; ops that would read the rows as rows refuse the layout, as does another kernel. Odd
// widths stay in rows.
TEST(CpuBackend, Bf16WeightsInterleavedForTheBf16KernelGiveTheBf16Products) {
  if (cpu::row_kernel_name() != "avx512bf16") GTEST_SKIP() << "this CPU has no AVX512_BF16: bf16 weights stay rows";
  Fixture f;
  cpu::Workers one(1);
  std::unique_ptr<Backend> backend = make_cpu_backend(2, DType::BF16);
  for (const std::int64_t in : {20, 48, 100, 4096})  // 4096: a lane sums 2048 pairs in order, within 1e-5 too
    // No group, 2 groups, 4, 9 (work items of one group on 2 threads), 17 (items of 4, 4, 4, 4 and 1).
    for (const std::int64_t out : {5, 37, 70, 147, 275}) {
      Tensor w32 = f.random({out, in}), rows = backend->allocate({out, in}, DType::BF16);
      Tensor copy = backend->allocate({out, in}, DType::BF16);
      backend->upload(w32.f32(), rows.view());
      backend->upload(w32.f32(), copy.view());
      const Tensor prepared = backend->prepare_weight(std::move(copy));
      ASSERT_EQ(prepared.layout(), Layout::Interleaved16) << "in " << in << " out " << out;
      std::vector<std::uint16_t> bits(std::size_t(out * in));
      convert_from_f32(DType::BF16, w32.f32(), bits.data(), bits.size());
      for (const std::int64_t tokens : {1, 5, 6, 13, 100, 200}) {  // 100, 200: two and three passes (tiles.h)
        if (tokens > 100 && in > 100) continue;                    // (the double references' time)
        const std::string where =
            "in " + std::to_string(in) + " out " + std::to_string(out) + " tokens " + std::to_string(tokens);
        Tensor x = f.random({tokens, in}), y = f.random({tokens, out});
        backend->linear(x.view(), prepared.view(), TensorView{}, y.view());
        const auto [rounded, unrounded] = bf16_input_references(x.f32(), bits, nullptr, tokens, out, in);
        EXPECT_LT(relative_error(f.values(y), rounded), kTolerance) << where;
        EXPECT_GT(relative_error(f.values(y), unrounded), 10 * kTolerance) << where;
        std::vector<float> alone(std::size_t(tokens * out), -2.0f);
        for (std::int64_t t = 0; t < tokens; ++t)
          cpu::row_dot_products_with(t % 2 ? one : workers(), "avx512bf16", x.f32() + t * in, prepared.view().data,
                                     DType::BF16, alone.data() + t * out, 1, out, in, Layout::Interleaved16);
        EXPECT_EQ(0, std::memcmp(y.f32(), alone.data(), alone.size() * 4)) << where;
      }
      // Group ends and starts, the rows after the groups, outside the table (ids past out read as zeros).
      const std::vector<std::int32_t> ids = {0,
                                             15,
                                             16,
                                             17,
                                             std::int32_t(out / 16 * 16) - 1,
                                             std::int32_t(out / 16 * 16),
                                             std::int32_t(out - 1),
                                             std::int32_t(out)};
      const std::int64_t n = std::int64_t(ids.size());
      Tensor got = f.random({n, in}), want = f.random({n, in});
      backend->embedding(ids, prepared.view(), 0, got.view());
      backend->embedding(ids, rows.view(), 0, want.view());
      EXPECT_EQ(0, std::memcmp(want.f32(), got.f32(), std::size_t(n * in) * 4)) << "in " << in << " out " << out;
      std::vector<float> products(static_cast<std::size_t>(out));
      EXPECT_THROW(cpu::row_dot_products_with(workers(), "avx512", w32.f32(), prepared.view().data, DType::BF16,
                                              products.data(), 1, out, in, Layout::Interleaved16),
                   Error);
      EXPECT_THROW(prepared.view().slice_rows(0, 1), Error);
      EXPECT_THROW(prepared.view().reshaped({in, out}), Error);
      std::vector<float> back(std::size_t(out * in));
      EXPECT_THROW(backend->download(prepared.view(), back.data()), Error);
    }
  Tensor odd = backend->allocate({32, 77}, DType::BF16);
  EXPECT_EQ(backend->prepare_weight(std::move(odd)).layout(), Layout::Rows) << "odd widths stay in rows";
}

// swiglu_linear (the MLP's SwiGLU and down projection in one op) gives the bits of swiglu then linear, for bf16
// weights (with the avx512bf16 kernel: fused, each token's SwiGLU rounded to bf16 as it is made, act never written;
// interleaved and in rows), quantized ones (fused, quantized as it is made) and f32 ones (the two ops), over token
// counts of one tile, several and a prefill's passes.
TEST(CpuBackend, SwigluLinearGivesTheBitsOfSwigluThenLinear) {
  Fixture f;
  const bool fuses = cpu::row_kernel_name() == "avx512bf16";
  std::printf("swiglu_linear: %s\n", fuses ? "fused for bf16 weights (avx512bf16)" : "the two ops (no avx512bf16)");
  for (DType dtype : {DType::BF16, DType::F32, DType::Q8_0, DType::Q4_0})
    for (const std::int64_t in : {64, 96, 77})  // 77: an odd width, whose bf16 rows stay rows (and no q8_0 blocks)
      for (const bool prepare : {true, false}) {
        if (is_quantized(dtype) && in % 32 != 0) continue;  // blocks of 32
        std::unique_ptr<Backend> backend = make_cpu_backend(2, dtype);
        const std::int64_t out = 37;
        Tensor w32 = f.random({out, in}), w = backend->allocate({out, in}, dtype);
        backend->upload(w32.f32(), w.view());
        if (prepare) w = backend->prepare_weight(std::move(w));
        for (const std::int64_t tokens : {1, 13, 100, 200}) {
          const std::string where = std::string(dtype_name(dtype)) + " in " + std::to_string(in) + " tokens " +
                                    std::to_string(tokens) + (prepare ? " prepared" : " rows");
          Tensor gate_up = f.random({tokens, 2 * in}), act = f.random({tokens, in}), unfused = f.random({tokens, in});
          Tensor y = f.random({tokens, out}), want = f.random({tokens, out});
          std::fill(act.f32(), act.f32() + act.numel(), 7.0f);
          backend->swiglu(gate_up.view(), unfused.view());
          backend->linear(unfused.view(), w.view(), TensorView{}, want.view());
          backend->swiglu_linear(gate_up.view(), act.view(), w.view(), y.view());
          EXPECT_EQ(0, std::memcmp(want.f32(), y.f32(), std::size_t(want.numel()) * 4)) << where;
          const bool untouched = std::all_of(act.f32(), act.f32() + act.numel(), [](float v) { return v == 7.0f; });
          EXPECT_EQ(untouched, is_quantized(dtype) || (fuses && dtype == DType::BF16))
              << where << ": fused exactly where the kernels round or quantize the activations";
        }
      }
}

// Quantized matrices go through prepare_weight at load: with the AVX-512 kernel they come back interleaved by 16
// rows (quant.h), and linear and embedding on them give the row layout's results bit for bit (against the scalar
// kernel on the rows: the same arithmetic); ops that would read the rows as rows refuse them.
TEST(CpuBackend, QuantizedWeightsInTheKernelsLayoutGiveTheRowsResults) {
  Fixture f;
  const std::int64_t out = 37, in = 96;  // 2 groups of 16 and 5 rows after them
  for (DType dtype : {DType::Q8_0, DType::Q4_0}) {
    std::unique_ptr<Backend> backend = make_cpu_backend(2, dtype);
    const auto format = dtype == DType::Q8_0 ? quant::Format::Q8_0 : quant::Format::Q4_0;
    Tensor w32 = f.random({out, in}), rows = backend->allocate({out, in}, dtype),
           copy = backend->allocate({out, in}, dtype);
    backend->upload(w32.f32(), rows.view());
    backend->upload(w32.f32(), copy.view());
    const Tensor prepared = backend->prepare_weight(std::move(copy));
    const bool interleaves = quant::interleaves(quant::kernel_name());
    std::printf("%s: kernel %s, weights %s\n", dtype_name(dtype), quant::kernel_name().c_str(),
                interleaves ? "interleaved" : "in rows");
    EXPECT_EQ(prepared.layout(), interleaves ? Layout::Interleaved16 : Layout::Rows);
    for (std::int64_t tokens : {1, 9}) {
      Tensor x = f.random({tokens, in}), y = f.random({tokens, out});
      std::vector<float> want(std::size_t(tokens * out));
      quant::row_dot_products_with(workers(), "scalar", x.f32(), rows.view().data, format, want.data(), tokens, out,
                                   in);
      backend->linear(x.view(), prepared.view(), TensorView{}, y.view());
      EXPECT_EQ(0, std::memcmp(want.data(), y.f32(), want.size() * 4)) << dtype_name(dtype) << " " << tokens;
    }
    // Several products of one input in one call (q, k, v): each with the bits of its own linear, biases included.
    Tensor w2 = backend->allocate({5, in}, dtype), w3 = backend->allocate({48, in}, dtype);
    Tensor w2_32 = f.random({5, in}), w3_32 = f.random({48, in}), bias3 = f.random({48});
    backend->upload(w2_32.f32(), w2.view());
    backend->upload(w3_32.f32(), w3.view());
    const Tensor p2 = backend->prepare_weight(std::move(w2)), p3 = backend->prepare_weight(std::move(w3));
    if (interleaves) {  // the copies one after another in the backend's weight arena (HostArena)
      const auto end = [](const Tensor& t) { return static_cast<char*>(t.view().data) + (t.bytes() + 63) / 64 * 64; };
      EXPECT_EQ(p2.view().data, end(prepared));
      EXPECT_EQ(p3.view().data, end(p2));
    }
    for (std::int64_t tokens : {1, 9, 100}) {  // 100: a prefill's two passes
      Tensor x = f.random({tokens, in});
      Tensor y1 = f.random({tokens, out}), y2 = f.random({tokens, 5}), y3 = f.random({tokens, 48});
      Tensor s1 = f.random({tokens, out}), s2 = f.random({tokens, 5}), s3 = f.random({tokens, 48});
      const TensorView ws[] = {prepared.view(), p2.view(), p3.view()}, biases[] = {{}, {}, bias3.view()};
      const TensorView together[] = {y1.view(), y2.view(), y3.view()}, alone[] = {s1.view(), s2.view(), s3.view()};
      backend->linears(x.view(), ws, biases, together);
      for (int i = 0; i < 3; ++i) backend->linear(x.view(), ws[i], biases[i], alone[i]);
      for (int i = 0; i < 3; ++i)
        EXPECT_EQ(0, std::memcmp(together[i].data, alone[i].data, std::size_t(together[i].numel()) * 4))
            << dtype_name(dtype) << " product " << i << " tokens " << tokens;
    }
    const std::vector<std::int32_t> ids = {3, 20, 36, 40};  // in the groups, in the last rows, outside the shard
    Tensor got = f.random({4, in}), want = f.random({4, in});
    backend->embedding(ids, prepared.view(), 0, got.view());
    backend->embedding(ids, rows.view(), 0, want.view());
    EXPECT_EQ(0, std::memcmp(want.f32(), got.f32(), std::size_t(4 * in) * 4)) << dtype_name(dtype);
    if (!interleaves) continue;
    EXPECT_THROW(prepared.view().slice_rows(0, 16), Error);
    EXPECT_THROW(prepared.view().reshaped({in, out}), Error);
    std::vector<float> back(std::size_t(out * in));
    EXPECT_THROW(backend->download(prepared.view(), back.data()), Error);
  }
  Tensor vector = make_cpu_backend(1, DType::Q4_0)->prepare_weight(f.random({64}));
  EXPECT_EQ(vector.layout(), Layout::Rows) << "vectors (norms, biases) stay f32 rows";
}

namespace {
// Ranks as threads of one process, for RowShares::gather: each publishes its buffer, then copies every other
// rank's rows out of theirs.
struct ThreadRanks {
  explicit ThreadRanks(int n) : sync(n), buffers(std::size_t(n)) {}
  std::barrier<> sync;
  std::vector<void*> buffers;
  std::mutex mutex;
  std::vector<std::size_t> row_bytes;  // of every gather, by every rank
  RowShares shares(int rank, std::vector<std::int64_t> starts) {
    RowShares s{rank, std::move(starts), {}};
    s.gather = [this, s](void* rows, std::size_t bytes) {
      buffers[std::size_t(s.rank)] = rows;
      {
        std::lock_guard<std::mutex> lock(mutex);
        row_bytes.push_back(bytes);
      }
      sync.arrive_and_wait();
      for (int r = 0; r < s.ranks(); ++r) {
        const std::size_t at = std::size_t(s.starts[std::size_t(r)]) * bytes;
        if (r != s.rank)
          std::memcpy(static_cast<char*>(rows) + at, static_cast<const char*>(buffers[std::size_t(r)]) + at,
                      std::size_t(s.starts[std::size_t(r) + 1]) * bytes - at);
      }
      sync.arrive_and_wait();  // no rank reuses its buffer before every rank has copied from it
    };
    return s;
  }
};
}  // namespace

namespace {
// Ranks as threads of one process, for RowShares::rounds (runtime/base/shared_rows.h): each rank's memory a vector
// here, its flags atomics, the protocol's waits spins. `published` records every hand-over (reader, at, count) by
// every rank.
struct ThreadRounds {
  struct Rank final : SharedRows {
    ThreadRounds* group = nullptr;
    int me = 0;
    std::uint64_t round = 0;
    int rank() const override { return me; }
    int size() const override { return int(group->memory.size()); }
    std::size_t bytes() const override { return group->bytes; }
    void await_readers() override {
      for (int r = 0; r < size(); ++r)
        while (r != me && group->taken[std::size_t(r)].load() < round) std::this_thread::yield();
    }
    void* begin_round() override {
      await_readers();
      ++round;
      return group->memory[std::size_t(me)].data();
    }
    void publish(int reader, std::int64_t at, std::int64_t count) override {
      {
        std::lock_guard<std::mutex> lock(group->mutex);
        group->published.push_back({me, reader, at, count});
      }
      group->ready[std::size_t(me * size() + reader)].store(round);
    }
    const void* rows_from(int writer, std::int64_t, std::int64_t) override {
      while (writer != me && group->ready[std::size_t(writer * size() + me)].load() < round) std::this_thread::yield();
      return group->memory[std::size_t(writer)].data();
    }
    void end_reading() override { group->taken[std::size_t(me)].store(round); }
  };
  struct HandOver {
    int writer, reader;
    std::int64_t at, count;
  };
  ThreadRounds(int n, std::size_t size)
      : bytes(size),
        memory(std::size_t(n), std::vector<char>(size)),
        taken(std::size_t(n)),
        ready(std::size_t(n * n)),
        ranks(std::size_t(n)) {
    for (int r = 0; r < n; ++r) ranks[std::size_t(r)].group = this, ranks[std::size_t(r)].me = r;
  }
  std::size_t bytes;
  std::vector<std::vector<char>> memory;
  std::vector<std::atomic<std::uint64_t>> taken, ready;
  std::vector<Rank> ranks;
  std::mutex mutex;
  std::vector<HandOver> published;
};
}  // namespace

// Sequence parallelism's products: ranks (threads here, each with its own backend) holding only their own rows of
// x, the other rows NaN, give every row the bits linears gives when one rank holds all of them, with 2 and 3 ranks
// (shares of unequal and empty rows), split evenly and not (a balanced step's shares: rank 0's most of the rows). Where
// the kernels read the activations rounded to bf16 or quantized, the ranks exchange those (fewer bytes a row than f32:
// checked, so a backend that fell back to gathering x fails); elsewhere x's f32 rows. Those kernels also take the rows
// through rounds (RowShares::rounds, each rank reading the others' in their memory), with the same bits, each rank
// handing its rows to every other rank once a product.
TEST(CpuBackend, LinearsOfSharesGiveTheBitsOfLinearsOfEveryRow) {
  Fixture f;
  const std::int64_t in = 96;
  const std::vector<std::int64_t> outs = {37, 48};
  std::vector<Tensor> w32;
  for (const std::int64_t out : outs) w32.push_back(f.random({out, in}));
  const Tensor bias = f.random({outs[1]});
  // Each quantized kernel (the backend reads STRATA_QUANT_KERNEL when made): each makes the other ranks' scales
  // (and the AVX-512 one's starts) from their blocks.
  std::vector<std::pair<DType, std::string>> cases = {{DType::F32, ""}, {DType::BF16, ""}};
  for (const std::string& kernel : quant::available_kernels())
    for (DType dtype : {DType::Q8_0, DType::Q4_0}) cases.emplace_back(dtype, kernel);
  for (const auto& [dtype, kernel] : cases) {
    if (!kernel.empty()) setenv("STRATA_QUANT_KERNEL", kernel.c_str(), 1);
    // The weights as each backend keeps them (prepare_weight: interleaved where its kernels read that).
    const auto weights_of = [&](Backend& backend) {
      std::vector<Tensor> ws;
      for (std::size_t i = 0; i < outs.size(); ++i) {
        Tensor w = backend.allocate({outs[i], in}, dtype);
        backend.upload(w32[i].f32(), w.view());
        ws.push_back(backend.prepare_weight(std::move(w)));
      }
      return ws;
    };
    const bool reduced =
        is_quantized(dtype) || (dtype == DType::BF16 && cpu::gathers_shares(cpu::row_kernel_name(), DType::BF16));
    for (const int ranks : {2, 3})
      for (const std::int64_t tokens : {1, 7, 100})
        for (const bool even : {true, false}) {
          std::vector<std::int64_t> starts = even_row_starts(ranks, tokens);
          if (!even) {
            const std::vector<double> skewed =
                ranks == 2 ? std::vector<double>{0.7, 0.3} : std::vector<double>{0.6, 0.1, 0.3};
            row_starts_of(skewed, tokens, starts);
          }
          const std::string where = std::string(dtype_name(dtype)) + " " + kernel + " ranks " + std::to_string(ranks) +
                                    " tokens " + std::to_string(tokens) + (even ? " even" : " uneven");
          const Tensor x = f.random({tokens, in});
          std::unique_ptr<Backend> one = make_cpu_backend(1, dtype);
          const std::vector<Tensor> ws = weights_of(*one);
          std::vector<Tensor> want;
          for (const std::int64_t out : outs) want.push_back(f.random({tokens, out}));
          const TensorView w_views[] = {ws[0].view(), ws[1].view()}, biases[] = {{}, bias.view()};
          const TensorView want_views[] = {want[0].view(), want[1].view()};
          one->linears(x.view(), w_views, biases, want_views);
          const std::size_t round_bytes = one->shared_rows_bytes(tokens, in, dtype);
          EXPECT_EQ(round_bytes > 0, reduced) << where << ": rounds where the kernels exchange their own rows";
          for (const bool in_rounds : {false, true}) {
            if (in_rounds && !reduced) continue;
            ThreadRanks group(ranks);
            ThreadRounds rounds(ranks, round_bytes);
            std::vector<std::vector<Tensor>> got{std::size_t(ranks)};
            std::vector<std::thread> threads;
            for (int r = 0; r < ranks; ++r)
              threads.emplace_back([&, r] {
                std::unique_ptr<Backend> backend = make_cpu_backend(1, dtype);
                const std::vector<Tensor> mine = weights_of(*backend);
                RowShares shares = group.shares(r, starts);
                if (in_rounds) shares.rounds = &rounds.ranks[std::size_t(r)];
                std::vector<float> rows(std::size_t(tokens * in), std::numeric_limits<float>::quiet_NaN());
                for (std::int64_t t = shares.begin(tokens); t < shares.end(tokens); ++t)
                  std::copy_n(x.f32() + t * in, in, rows.data() + t * in);
                for (const std::int64_t out : outs)
                  got[std::size_t(r)].push_back(backend->allocate({tokens, out}, DType::F32));
                const TensorView own_ws[] = {mine[0].view(), mine[1].view()};
                const TensorView ys[] = {got[std::size_t(r)][0].view(), got[std::size_t(r)][1].view()};
                backend->linears_of_shares(TensorView{rows.data(), {tokens, in}, DType::F32}, shares, own_ws, biases,
                                           ys);
              });
            for (auto& t : threads) t.join();
            for (int r = 0; r < ranks; ++r)
              for (std::size_t i = 0; i < outs.size(); ++i)
                EXPECT_EQ(0, std::memcmp(want[i].f32(), got[std::size_t(r)][i].f32(), std::size_t(want[i].numel()) * 4))
                    << where << " rank " << r << " product " << i << (in_rounds ? " in rounds" : "");
            if (in_rounds) {
              EXPECT_TRUE(group.row_bytes.empty()) << where << ": no gather beside the rounds";
              ASSERT_EQ(rounds.published.size(), std::size_t(ranks * (ranks - 1))) << where;
              for (const auto& h : rounds.published) {
                EXPECT_NE(h.writer, h.reader) << where;
                EXPECT_EQ(h.at, starts[std::size_t(h.writer)]) << where << " rank " << h.writer;
                EXPECT_EQ(h.count, starts[std::size_t(h.writer) + 1] - starts[std::size_t(h.writer)]) << where;
              }
              for (int r = 0; r < ranks; ++r)
                EXPECT_EQ(rounds.taken[std::size_t(r)].load(), 1u) << where << " rank " << r;
              continue;
            }
            ASSERT_FALSE(group.row_bytes.empty()) << where;
            for (const std::size_t bytes : group.row_bytes)
              if (reduced)
                EXPECT_LT(bytes, std::size_t(in) * 4) << where << ": the rows as the kernels read them, not f32";
              else
                EXPECT_EQ(bytes, std::size_t(in) * 4) << where;
          }
        }
    unsetenv("STRATA_QUANT_KERNEL");
  }
}

TEST(CpuBackend, EmbeddingLooksUpOnlyItsVocabularyShard) {
  Fixture f;
  Tensor table = f.random({10, 6}), out = f.random({3, 6});
  const std::vector<std::int32_t> ids = {25, 9, 20};  // shard holds ids 20..29
  f.backend->embedding(ids, table.view(), 20, out.view());
  for (int e = 0; e < 6; ++e) {
    EXPECT_EQ(out.f32()[e], table.f32()[5 * 6 + e]);
    EXPECT_EQ(out.f32()[6 + e], 0.0f);
    EXPECT_EQ(out.f32()[12 + e], table.f32()[e]);
  }
}

namespace {
// Two sequences in one step: sequence A decodes one token after 5 cached, sequence B prefills 4 tokens. The cache is
// paged with blocks of 4 positions, handed out out of order: A holds blocks 7 then 2 (its position 5 is row 1 of
// block 2), B holds block 5.
// window / softcap: what the backend is asked for; the reference uses reference_window (-1: the same window).
void run_attention_case(Fixture& f, const std::function<int(int)>& reference_kv_head, double* error_out, int window = 0,
                        float softcap = 0, int reference_window = -1) {
  const int ref_window = reference_window < 0 ? window : reference_window;
  const int hq = 4, hkv = 2, d = 8, blocks = 12, block_size = 4;
  Tensor kc = f.backend->allocate({blocks, block_size, hkv, d}, DType::F32);
  Tensor vc = f.backend->allocate({blocks, block_size, hkv, d}, DType::F32);
  std::fill(kc.f32(), kc.f32() + kc.numel(), 1e3f);  // any read of a position no sequence wrote shows
  std::fill(vc.f32(), vc.f32() + vc.numel(), 1e3f);
  const std::vector<std::int32_t> table = {7, 2, 5};  // A from entry 0, B from entry 2
  // History of A (positions 0-4) stored through kv_store as an earlier step would.
  Tensor hist_k = f.random({5, hkv, d}), hist_v = f.random({5, hkv, d});
  const std::vector<SeqChunk> history = {{0, 0, 5, 0}};
  f.backend->kv_store(history, table, hist_k.view().reshaped({5, hkv * d}), hist_v.view().reshaped({5, hkv * d}),
                      kc.view(), vc.view());
  EXPECT_EQ(kc.f32()[(7 * block_size + 0) * hkv * d], hist_k.f32()[0]);            // position 0: row 0 of block 7
  EXPECT_EQ(kc.f32()[(2 * block_size + 0) * hkv * d], hist_k.f32()[4 * hkv * d]);  // position 4: row 0 of block 2

  Tensor q = f.random({5, hq, d}), k = f.random({5, hkv, d}), v = f.random({5, hkv, d}), out = f.random({5, hq, d});
  const std::vector<SeqChunk> chunks = {{0, 5, 1, 0}, {2, 0, 4, 1}};
  f.backend->kv_store(chunks, table, k.view().reshaped({5, hkv * d}), v.view().reshaped({5, hkv * d}), kc.view(),
                      vc.view());
  const AttentionParams params{float(1 / std::sqrt(double(d))), window, softcap};
  f.backend->attention(chunks, table, q.view(), kc.view(), vc.view(), params, out.view());

  // Reference: A sees its 5 history rows + its new row; B sees its own 4 rows causally.
  std::vector<double> ka = f.values(hist_k), va = f.values(hist_v);
  for (int i = 0; i < hkv * d; ++i) {
    ka.push_back(k.f32()[i]);
    va.push_back(v.f32()[i]);
  }
  const std::vector<double> kb(k.f32() + hkv * d, k.f32() + 5 * hkv * d), vb(v.f32() + hkv * d, v.f32() + 5 * hkv * d);
  std::vector<double> ref =
      reference_attention(q.f32(), ka, va, 1, 5, hq, hkv, d, reference_kv_head, ref_window, softcap);
  const std::vector<double> ref_b =
      reference_attention(q.f32() + hq * d, kb, vb, 4, 0, hq, hkv, d, reference_kv_head, ref_window, softcap);
  ref.insert(ref.end(), ref_b.begin(), ref_b.end());
  *error_out = relative_error(f.values(out), ref);
}
}  // namespace

TEST(CpuBackend, AttentionWithKvCacheIsEquivalentToRef) {
  Fixture f;
  double error = 1;
  run_attention_case(
      f, [](int h) { return h / 2; }, &error);  // GQA: heads 0,1 -> kv 0; heads 2,3 -> kv 1
  EXPECT_LT(error, kTolerance);
}

// Attention's scratch is kept between calls (a part per thread, sized by the step's longest sequence): a short
// step, a longer one (the buffer grows), then the short one again (its parts now lie closer together than the
// buffer's size), each against the reference, on two threads.
TEST(CpuBackend, AttentionOfStepsOfDifferentLengthsOnOneBackend) {
  Fixture f;
  f.backend = make_cpu_backend(2);
  const auto gqa = [](int h) { return h / 2; };
  double error = 1;
  run_attention_case(f, gqa, &error);
  EXPECT_LT(error, kTolerance) << "first short step";

  const int n = 40, hq = 4, hkv = 2, d = 8, block_size = 4, blocks = n / block_size;
  Tensor kc = f.backend->allocate({blocks, block_size, hkv, d}, DType::F32);
  Tensor vc = f.backend->allocate({blocks, block_size, hkv, d}, DType::F32);
  std::vector<std::int32_t> table(static_cast<std::size_t>(blocks));
  for (int b = 0; b < blocks; ++b) table[std::size_t(b)] = blocks - 1 - b;  // handed out in reverse
  Tensor q = f.random({n, hq, d}), k = f.random({n, hkv, d}), v = f.random({n, hkv, d}), out = f.random({n, hq, d});
  const std::vector<SeqChunk> prefill = {{0, 0, n, 0}};
  f.backend->kv_store(prefill, table, k.view().reshaped({n, hkv * d}), v.view().reshaped({n, hkv * d}), kc.view(),
                      vc.view());
  const AttentionParams params{float(1 / std::sqrt(double(d))), 0, 0};
  f.backend->attention(prefill, table, q.view(), kc.view(), vc.view(), params, out.view());
  const std::vector<double> ref = reference_attention(q.f32(), f.values(k), f.values(v), n, 0, hq, hkv, d, gqa);
  EXPECT_LT(relative_error(f.values(out), ref), kTolerance) << "longer step";

  run_attention_case(f, gqa, &error);
  EXPECT_LT(error, kTolerance) << "short step after the longer one";
}

// Long contexts are attended in segments of 256 positions whose softmax parts are merged (CpuBackend::attend): a
// decode step of one sequence runs each segment as its own item (too few (token, KV head) pairs for the threads), a
// step of several goes token by token through the segments, or pair by pair, or segment by segment (see below).
// Sequence A's token at position P (window 0, or 300 with soft-capped scores: its positions then start mid-segment)
// alone and batched with three other sequences: the same bits both ways, each against the double reference; and a
// 60-token chunk of A's positions 230-289 (by pairs, the chunk's own positions in its last segments) against the
// reference, its last row the bits of position 289 alone. Blocks of 12 positions, so segments end inside blocks.
void check_long_context_attention(int threads, int hkv, DType kv) {
  SCOPED_TRACE(testing::Message() << threads << " threads, " << hkv << " KV heads, " << dtype_name(kv) << " cache");
  Fixture f;
  f.backend = make_cpu_backend(threads, DType::F32, kv);
  const int hq = 6, d = 64, block_size = 12, sequences = 4, per_seq = 64;  // 768 positions each
  const int positions[sequences] = {700, 300, 40, 530};
  const auto kv_head_of = [&](int h) { return h / (hq / hkv); };
  Tensor kc = f.backend->allocate({sequences * per_seq, block_size, hkv, d}, kv);
  Tensor vc = f.backend->allocate({sequences * per_seq, block_size, hkv, d}, kv);
  std::vector<std::int32_t> table(static_cast<std::size_t>(sequences * per_seq));
  for (std::size_t b = 0; b < table.size(); ++b) table[b] = std::int32_t((b * 37) % table.size());  // scattered
  // Each sequence's history (its positions 0..P) stored as one prefill, keys scaled up so that scores spread; the
  // reference gets the values the cache holds (an f16 cache: rounded).
  std::vector<std::vector<double>> ks, vs;
  for (int s = 0; s < sequences; ++s) {
    const int n = positions[s] + 1;
    Tensor k = f.random({n, hkv, d}, 0.6f), v = f.random({n, hkv, d});
    const std::vector<SeqChunk> prefill = {{s * per_seq, 0, n, 0}};
    f.backend->kv_store(prefill, table, k.view().reshaped({n, hkv * d}), v.view().reshaped({n, hkv * d}), kc.view(),
                        vc.view());
    for (Tensor* t : {&k, &v}) {
      std::vector<cpu::Half> halves(std::size_t(t->numel()));
      cpu::narrow(DType::F16, t->f32(), halves.data(), t->numel());
      if (kv == DType::F16) cpu::widen(DType::F16, halves.data(), t->f32(), t->numel());
    }
    ks.push_back(f.values(k));
    vs.push_back(f.values(v));
  }
  const double tolerance = kv == DType::F16 ? 1e-4 : kTolerance;  // f16 keys and values round q . k's sum
  Tensor q = f.random({sequences, hq, d}), chunk_q = f.random({60, hq, d});
  for (const auto& [window, softcap] : {std::pair{0, 0.0f}, std::pair{300, 30.0f}}) {
    SCOPED_TRACE(testing::Message() << "window " << window);
    const AttentionParams params{float(1 / std::sqrt(double(d))), window, softcap};
    const auto attend = [&](const std::vector<SeqChunk>& chunks, TensorView queries) {
      Tensor out = f.random({queries.rows(), hq, d});
      f.backend->attention(chunks, table, queries, kc.view(), vc.view(), params, out.view());
      return out;
    };
    const auto expect_reference = [&](const float* got, int rows, int s, const float* queries, int start) {
      const std::vector<double> ref = reference_attention(queries, ks[std::size_t(s)], vs[std::size_t(s)], rows, start,
                                                          hq, hkv, d, kv_head_of, window, softcap);
      EXPECT_LT(relative_error(test::as_double(got, std::size_t(rows * hq * d)), ref), tolerance)
          << "sequence " << s << " from position " << start;
    };
    std::vector<SeqChunk> all;
    for (int s = 0; s < sequences; ++s) all.push_back({s * per_seq, positions[s], 1, s});
    const Tensor alone = attend({{0, positions[0], 1, 0}}, q.view().slice_rows(0, 1));
    const Tensor batched = attend(all, q.view());
    EXPECT_EQ(0, std::memcmp(alone.f32(), batched.f32(), std::size_t(hq * d) * 4)) << "alone and batched";
    // Two sequences at a time: A and B's, or C and D's, five and four segments without a window (on two threads
    // each an item through every KV head), B and C's three (by pairs where there are enough of them): the bits of
    // the batch of four.
    for (int s = 0; s + 1 < sequences; ++s) {
      const Tensor two = attend({{s * per_seq, positions[s], 1, 0}, {(s + 1) * per_seq, positions[s + 1], 1, 1}},
                                q.view().slice_rows(s, s + 2));
      EXPECT_EQ(0, std::memcmp(two.f32(), batched.f32() + s * hq * d, std::size_t(2 * hq * d) * 4))
          << "sequences " << s << " and " << s + 1 << " alone and batched";
    }
    for (int s = 0; s < sequences; ++s)
      expect_reference(batched.f32() + s * hq * d, 1, s, q.f32() + s * hq * d, positions[s]);
    const Tensor chunk = attend({{0, 230, 60, 0}}, chunk_q.view());
    const Tensor last = attend({{0, 289, 1, 0}}, chunk_q.view().slice_rows(59, 60));
    expect_reference(chunk.f32(), 60, 0, chunk_q.f32(), 230);
    EXPECT_EQ(0, std::memcmp(chunk.f32() + 59 * hq * d, last.f32(), std::size_t(hq * d) * 4)) << "chunk and alone";
  }
}

// Two and three threads (a pair's segments then split between threads), one and two KV heads, f32 and f16 caches.
TEST(CpuBackend, LongContextAttentionInSegmentsIsTheSameAloneAndBatched) {
  check_long_context_attention(2, 2, DType::F32);
  check_long_context_attention(3, 1, DType::F32);
  check_long_context_attention(2, 1, DType::F16);
}

// Long contexts' steps by tokens with items of fewer KV heads than a token's (each item's softmax parts bounded:
// here to one head's): the same bits and the reference, as above.
TEST(CpuBackend, LongContextAttentionInItemsOfFewerHeads) {
  setenv("STRATA_ATTENTION_ITEM_PARTS_BYTES", "1", 1);
  check_long_context_attention(2, 2, DType::F32);
  check_long_context_attention(2, 2, DType::F16);
  for (const char* bad : {"0", "-5", "256k", "abc"}) {
    setenv("STRATA_ATTENTION_ITEM_PARTS_BYTES", bad, 1);
    EXPECT_THROW(make_cpu_backend(2), Error) << bad;
  }
  unsetenv("STRATA_ATTENTION_ITEM_PARTS_BYTES");
}

// Gemma-style attention: a sliding window of 3 (sequence A at position 5 sees 3..5 only, B's later rows lose their
// first keys) and soft-capped scores. A comparison against the unwindowed reference must fail, so the window matters.
// Attention's passes: dots gives, bit for bit, the row kernels' order written out here (16 lanes of FMAs, the
// pairwise tree, the tail fused in order) whether a run has 16 positions or fewer (AVX-512: one padded pass) or more,
// with and without a tail, rows apart or side by side (a head-major KV block); weighted_sum gives axpy's bits row by
// row.
float dot_in_the_row_kernels_order(const float* q, const float* k, std::int64_t n) {
  float a[16] = {};
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) a[j] = std::fma(k[i + j], q[i + j], a[j]);
  for (int s = 8; s >= 1; s /= 2)
    for (int j = 0; j < s; ++j) a[j] = a[j] + a[j + s];
  for (; i < n; ++i) a[0] = std::fma(k[i], q[i], a[0]);
  return a[0];
}

TEST(CpuBackend, AttentionPassesFollowTheirDefinedOrder) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const std::int64_t n : {64, 80, 128, 13})
    for (const std::int64_t count : {1, 3, 16, 21, 40})
      for (const std::int64_t stride : {n + 5, n}) {  // n: rows side by side (head sizes 64 and 128: packed kernels)
        std::vector<float> q(static_cast<std::size_t>(n)), rows(static_cast<std::size_t>(stride * count)),
            weights(static_cast<std::size_t>(count));
        for (auto* v : {&q, &rows, &weights})
          for (float& x : *v) x = normal(rng);
        std::vector<float> scores(static_cast<std::size_t>(count), -1.0f), expected(scores.size());
        cpu::dots(q.data(), rows.data(), stride, count, n, scores.data());
        double worst = 0;
        for (std::int64_t r = 0; r < count; ++r) {
          const float* k = rows.data() + r * stride;
          expected[std::size_t(r)] = dot_in_the_row_kernels_order(q.data(), k, n);
          double exact = 0, magnitude = 0;
          for (std::int64_t i = 0; i < n; ++i) {
            exact += double(q[std::size_t(i)]) * k[i];
            magnitude += std::fabs(double(q[std::size_t(i)]) * k[i]);
          }
          worst = std::max(worst, std::fabs(scores[std::size_t(r)] - exact) / magnitude);
        }
        EXPECT_EQ(0, std::memcmp(scores.data(), expected.data(), scores.size() * 4))
            << "dots n " << n << " x " << count;
        EXPECT_LT(worst, 1e-6) << "dots n " << n << " x " << count;
        std::vector<float> o(static_cast<std::size_t>(n), 0.5f), o_expected = o;
        cpu::weighted_sum(weights.data(), rows.data(), stride, count, n, o.data());
        for (std::int64_t r = 0; r < count; ++r)
          cpu::axpy(weights[std::size_t(r)], rows.data() + r * stride, o_expected.data(), n);
        EXPECT_EQ(0, std::memcmp(o.data(), o_expected.data(), o.size() * 4))
            << "weighted_sum n " << n << " x " << count;
        // f16 rows (an f16 KV cache): exactly the f32 passes over the rounded values.
        std::vector<cpu::Half> halves(rows.size());
        std::vector<float> rounded(rows.size());
        cpu::narrow(DType::F16, rows.data(), halves.data(), std::int64_t(rows.size()));
        cpu::widen(DType::F16, halves.data(), rounded.data(), std::int64_t(rows.size()));
        std::vector<float> from_halves(scores.size()), from_rounded(scores.size());
        cpu::dots(q.data(), halves.data(), stride, count, n, from_halves.data());
        cpu::dots(q.data(), rounded.data(), stride, count, n, from_rounded.data());
        EXPECT_EQ(0, std::memcmp(from_halves.data(), from_rounded.data(), scores.size() * 4)) << "f16 dots n " << n;
        EXPECT_NE(0, std::memcmp(from_halves.data(), scores.data(), scores.size() * 4)) << "the rounding is real";
        std::vector<float> oh(static_cast<std::size_t>(n), 0.5f), orounded = oh;
        cpu::weighted_sum(weights.data(), halves.data(), stride, count, n, oh.data());
        cpu::weighted_sum(weights.data(), rounded.data(), stride, count, n, orounded.data());
        EXPECT_EQ(0, std::memcmp(oh.data(), orounded.data(), oh.size() * 4)) << "f16 weighted_sum n " << n;
        // A GQA group's heads together (1 to 6: sets of up to 4 and a rest for the sums, threes and a two or a one for
        // the scores): each head's scores as dots and its sums as weighted_sum alone.
        for (const std::int64_t heads : {1, 2, 3, 4, 5, 6}) {
          const std::int64_t score_stride = count + 2;  // a guard past each head's scores: must stay as it is
          std::vector<float> group_q(static_cast<std::size_t>(heads * n));
          for (float& x : group_q) x = normal(rng);
          std::vector<float> group_scores(static_cast<std::size_t>(heads * score_stride), -3.0f);
          std::vector<float> group_scores_f16 = group_scores, alone_scores = group_scores;
          std::vector<float> alone_scores_f16 = group_scores;
          cpu::group_dots(group_q.data(), heads, rows.data(), stride, count, n, group_scores.data(), score_stride);
          cpu::group_dots(group_q.data(), heads, halves.data(), stride, count, n, group_scores_f16.data(),
                          score_stride);
          for (std::int64_t g = 0; g < heads; ++g) {
            cpu::dots(group_q.data() + g * n, rows.data(), stride, count, n, alone_scores.data() + g * score_stride);
            cpu::dots(group_q.data() + g * n, halves.data(), stride, count, n,
                      alone_scores_f16.data() + g * score_stride);
          }
          EXPECT_EQ(0, std::memcmp(group_scores.data(), alone_scores.data(), alone_scores.size() * 4))
              << "group_dots heads " << heads << " n " << n << " x " << count << " stride " << stride;
          EXPECT_EQ(0, std::memcmp(group_scores_f16.data(), alone_scores_f16.data(), alone_scores.size() * 4))
              << "f16 group_dots heads " << heads << " n " << n << " x " << count << " stride " << stride;

          const std::int64_t weight_stride = count + 3;
          std::vector<float> group_weights(static_cast<std::size_t>(heads * weight_stride));
          for (float& w : group_weights) w = normal(rng);
          std::vector<float> together(static_cast<std::size_t>(heads * n), 0.25f), alone = together;
          std::vector<float> together_f16 = together, alone_f16 = together;
          cpu::weighted_sums(group_weights.data(), weight_stride, heads, rows.data(), stride, count, n,
                             together.data());
          cpu::weighted_sums(group_weights.data(), weight_stride, heads, halves.data(), stride, count, n,
                             together_f16.data());
          for (std::int64_t g = 0; g < heads; ++g) {
            cpu::weighted_sum(group_weights.data() + g * weight_stride, rows.data(), stride, count, n,
                              alone.data() + g * n);
            cpu::weighted_sum(group_weights.data() + g * weight_stride, halves.data(), stride, count, n,
                              alone_f16.data() + g * n);
          }
          EXPECT_EQ(0, std::memcmp(together.data(), alone.data(), alone.size() * 4)) << "heads " << heads << " n " << n;
          EXPECT_EQ(0, std::memcmp(together_f16.data(), alone_f16.data(), alone.size() * 4)) << "f16 heads " << heads;
        }
      }
}

// Softmax's exponentials: within 3 ulp of exp in double wherever exp is a normal float (below that, no larger than
// FLT_MIN), the sum within 1e-6; the vector path and the portable one give the same bits, for lengths around the
// 16-lane runs.
TEST(CpuBackend, SoftmaxExponentialsAreAccurateAndTheSameOnEveryPath) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> spread(-100.0f, 3.0f);
  for (const std::int64_t n : {1, 15, 16, 17, 100, 1100}) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (float& v : x) v = spread(rng);
    x[0] = 0.0f;
    if (n > 2) x[1] = -87.0f;
    const float max = 0.5f;
    std::vector<float> vector = x, portable = x;
    const float sum = cpu::exp_and_sum(vector.data(), n, max);
    const float sum_portable = cpu::exp_and_sum_without_vectors(portable.data(), n, max);
    EXPECT_EQ(std::memcmp(&sum, &sum_portable, 4), 0) << n;
    EXPECT_EQ(0, std::memcmp(vector.data(), portable.data(), vector.size() * 4)) << n;
    double exact_sum = 0, worst_ulps = 0;
    for (std::size_t j = 0; j < x.size(); ++j) {
      const double exact = std::exp(double(x[j] - max));  // of the f32 difference the kernel exponentiates
      exact_sum += exact;
      if (exact < 1.1754943508222875e-38) {
        EXPECT_LE(vector[j], 1.2e-38f) << x[j];
        continue;
      }
      const double ulp = std::ldexp(1.0, std::ilogb(exact) - 23);
      worst_ulps = std::max(worst_ulps, std::fabs(vector[j] - exact) / ulp);
    }
    EXPECT_LE(worst_ulps, 3.0) << n;
    EXPECT_LT(std::fabs(sum - exact_sum) / exact_sum, 1e-6) << n;
  }
}

// Host buffers from 2 MiB on start on a 2 MiB boundary (so that transparent huge pages can back them: copied
// weights, the KV cache), smaller ones on a cache line; every byte asked for is usable, odd sizes included.
TEST(CpuBackend, LargeHostBuffersStartOnHugePageBoundaries) {
  for (const std::size_t bytes : {std::size_t(100), std::size_t(300) << 10, std::size_t(1536) << 10,
                                  std::size_t(2) << 20, (std::size_t(5) << 20) + 12345}) {
    Buffer b = allocate_host(bytes);
    const auto address = reinterpret_cast<std::uintptr_t>(b.data());
    EXPECT_EQ(address % 64, 0u) << bytes;
    if (bytes >= (std::size_t(2) << 20)) {
      EXPECT_EQ(address % (std::size_t(2) << 20), 0u) << bytes;
    }
    std::memset(b.data(), 0x5a, bytes);
    EXPECT_EQ(static_cast<unsigned char*>(b.data())[bytes - 1], 0x5a);
  }
}

// The weight arena: buffers 64-byte aligned, one after another in a chunk that starts on a huge-page boundary; one
// that does not fit the chunk's rest starts the next chunk, one larger than a chunk gets its own mapping; none
// overlaps another (each filled with its own byte), and the memory stays while a buffer holds it, after the arena.
TEST(CpuBackend, HostArenaPacksBuffersInHugePageChunks) {
  constexpr std::size_t kChunk = std::size_t(4) << 20, kHuge = std::size_t(2) << 20;
  const auto address = [](const Buffer& b) { return reinterpret_cast<std::uintptr_t>(b.data()); };
  std::vector<Buffer> buffers;
  {
    HostArena arena(kChunk);
    for (const std::size_t bytes : {std::size_t(100), std::size_t(64), std::size_t(3000), std::size_t(1) << 20})
      buffers.push_back(arena.allocate(bytes));
    EXPECT_EQ(address(buffers[0]) % kHuge, 0u) << "a chunk starts on a huge-page boundary";
    EXPECT_EQ(address(buffers[1]), address(buffers[0]) + 128) << "100 bytes take two cache lines";
    EXPECT_EQ(address(buffers[2]), address(buffers[1]) + 64);
    EXPECT_EQ(address(buffers[3]), address(buffers[2]) + 3008);
    buffers.push_back(arena.allocate(std::size_t(3) << 20));  // past the first chunk's rest: the next chunk
    EXPECT_EQ(address(buffers[4]) % kHuge, 0u);
    EXPECT_TRUE(address(buffers[4]) >= address(buffers[0]) + kChunk ||
                address(buffers[4]) + kChunk <= address(buffers[0]));
    buffers.push_back(arena.allocate(kChunk + 1));  // its own mapping, the chunk left as it was
    buffers.push_back(arena.allocate(std::size_t(1) << 20));
    EXPECT_EQ(address(buffers[6]), address(buffers[4]) + (std::size_t(3) << 20));
  }
  for (std::size_t i = 0; i < buffers.size(); ++i) std::memset(buffers[i].data(), int(i + 1), buffers[i].bytes());
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const auto* bytes = static_cast<const unsigned char*>(buffers[i].data());
    EXPECT_EQ(bytes[0], i + 1) << i;
    EXPECT_EQ(bytes[buffers[i].bytes() - 1], i + 1) << i;
  }
}

namespace {
// The VmFlags of the mapping holding `p` in /proc/self/smaps ("" where none does).
std::string mapping_flags(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    std::uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2)  // a mapping's first line
      inside = begin <= at && at < end;
    else if (inside && line.rfind("VmFlags:", 0) == 0)
      return line;
  }
  return "";
}
}  // namespace

// A kernel's scratch: whole 2 MiB pages advised for transparent huge pages, the same memory while a request fits,
// new memory (on a huge-page boundary again) when it does not.
TEST(CpuBackend, HostScratchIsHugePageMemoryThatOnlyGrows) {
  constexpr std::uintptr_t kHuge = std::uintptr_t(2) << 20;
  // The advice is taken wherever the kernel has transparent huge pages at all (whatever `enabled` says).
  const bool kernel_has_thp = std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good();
  HostScratch scratch;
  float* first = scratch.get<float>(1000);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first) % kHuge, 0u);
  if (kernel_has_thp) {
    EXPECT_NE(mapping_flags(first).find(" hg"), std::string::npos) << mapping_flags(first);
  }
  EXPECT_EQ(scratch.get<float>(10), first);
  float* whole_page = scratch.get<float>(kHuge / sizeof(float));  // the rest of the first page: no new memory
  EXPECT_EQ(whole_page, first);
  std::fill(whole_page, whole_page + kHuge / sizeof(float), 1.0f);
  float* grown = scratch.get<float>(kHuge / sizeof(float) + 1);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(grown) % kHuge, 0u);
  std::fill(grown, grown + 2 * kHuge / sizeof(float), 2.0f);  // two whole pages, written to the end
  EXPECT_EQ(grown[2 * kHuge / sizeof(float) - 1], 2.0f);
  if (kernel_has_thp) {
    EXPECT_NE(mapping_flags(grown).find(" hg"), std::string::npos) << mapping_flags(grown);
  }
  EXPECT_EQ(scratch.get<std::uint16_t>(3), reinterpret_cast<std::uint16_t*>(grown));
}

// Greedy sampling's pick: the first of the greatest values, NaN below every number, index 0 when nothing is above
// -inf; the vector path and the portable loop against a plain reference, for lengths around the 16-lane runs, rows
// of few distinct values (ties everywhere), NaNs, infinities and signed zeros, the greatest value in a masked tail,
// and a guard past the row that is greater than all (never read).
TEST(CpuBackend, GreedyIndexIsTheFirstGreatestOnEveryPath) {
  const auto reference = [](const std::vector<float>& x, std::int64_t n) {
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < n; ++i) {
      const float v = std::isnan(x[std::size_t(i)]) ? -INFINITY : x[std::size_t(i)];
      const float b = std::isnan(x[std::size_t(best)]) ? -INFINITY : x[std::size_t(best)];
      if (v > b) best = i;
    }
    return best;
  };
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> level(-3, 3), pick(0, 9);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  int checked = 0;
  for (const std::int64_t n : {1, 2, 15, 16, 17, 33, 100, 1100, 32000}) {
    for (int kind = 0; kind < 6; ++kind) {
      std::vector<float> x(static_cast<std::size_t>(n) + 1);
      for (float& v : x) {
        const int p = pick(rng);
        v = p == 0 ? nan : p == 1 ? -INFINITY : p == 2 ? -0.0f : float(level(rng));
      }
      if (kind == 1) std::fill(x.begin(), x.end() - 1, nan);  // nothing above -inf: index 0
      if (kind == 2) std::fill(x.begin(), x.end() - 1, -INFINITY);
      if (kind == 3) x[std::size_t(n - 1)] = 7.0f;  // the greatest last, in the tail when n % 16 != 0
      if (kind == 4)
        for (float& v : x) v = std::isnan(v) || v > 0 ? -0.0f : v;  // the greatest a zero of either sign
      if (kind == 5) x[std::size_t(n / 2)] = INFINITY;
      x[std::size_t(n)] = 1e30f;  // past the row
      const std::int64_t expected = reference(x, n);
      EXPECT_EQ(cpu::greedy_index(x.data(), n), expected) << n << " kind " << kind;
      EXPECT_EQ(cpu::greedy_index_without_vectors(x.data(), n), expected) << n << " kind " << kind;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 54);
}

// A batch's sampling rows go over the threads (2 here, with rows x vocab past the size shared out): every row's
// candidates, whatever its mode, are those host_candidates gives for that row alone, written at its offset.
TEST(CpuBackend, SampleCandidatesOverThreadsAreEachRowsOwn) {
  auto backend = make_cpu_backend(2);
  const std::int64_t rows = 12, vocab = 3001;
  Tensor logits = backend->allocate({rows, vocab}, DType::F32);
  std::mt19937 rng(12);
  std::uniform_int_distribution<int> level(-40, 40);
  for (std::int64_t i = 0; i < logits.numel(); ++i) logits.f32()[i] = float(level(rng)) / 8;  // many ties
  logits.f32()[5 * vocab + 17] = std::numeric_limits<float>::quiet_NaN();
  // Greedy rows with nothing above -inf: all NaN (the pick's value is -inf, not NaN), all -inf.
  std::fill(logits.f32() + 8 * vocab, logits.f32() + 9 * vocab, std::numeric_limits<float>::quiet_NaN());
  std::fill(logits.f32() + 11 * vocab, logits.f32() + 12 * vocab, -INFINITY);
  std::vector<CandidateRequest> requests(static_cast<std::size_t>(rows));
  std::vector<std::int64_t> offsets;
  std::int64_t total = 0;
  for (std::int64_t i = 0; i < rows; ++i) {
    CandidateRequest& r = requests[std::size_t(i)];
    r = i % 3 == 0   ? CandidateRequest{CandidateMode::TopK, 0.7f, std::int32_t(1 + i), 0, 0}
        : i % 3 == 1 ? CandidateRequest{CandidateMode::Gumbel, 1.3f, 1, std::uint64_t(100 + i), i}
                     : CandidateRequest{CandidateMode::Greedy, 1.0f, 1, 0, 0};
    offsets.push_back(total);
    total += r.mode == CandidateMode::TopK ? r.count : 1;
  }
  std::vector<SampleCandidate> out(static_cast<std::size_t>(total), SampleCandidate{0.0f, -1});
  backend->sample_candidates(logits.view(), 500, requests, offsets, out.data());
  for (std::int64_t i = 0; i < rows; ++i) {
    const CandidateRequest& r = requests[std::size_t(i)];
    std::vector<SampleCandidate> alone(static_cast<std::size_t>(r.mode == CandidateMode::TopK ? r.count : 1));
    host_candidates(logits.f32() + i * vocab, vocab, 500, r, alone.data());
    for (std::size_t k = 0; k < alone.size(); ++k) {
      const SampleCandidate& got = out[std::size_t(offsets[std::size_t(i)]) + k];
      EXPECT_EQ(got.id, alone[k].id) << "row " << i << " candidate " << k;
      EXPECT_EQ(got.value, alone[k].value) << "row " << i << " candidate " << k;
    }
  }
}

// Softmax's scaling (with its maximum) and normalisation: the vector path, the portable one and the plain loops give
// the same bits, for lengths around the 16-lane runs (the tail masked: nothing past n is touched); an empty run's
// maximum is -inf.
TEST(CpuBackend, SoftmaxScaleMaxAndDivideAreTheSameOnEveryPath) {
  std::mt19937 rng(6);
  std::uniform_real_distribution<float> spread(-50.0f, 50.0f);
  for (const std::int64_t n : {0, 1, 15, 16, 17, 100, 1100}) {
    std::vector<float> x(static_cast<std::size_t>(n) + 1);
    for (float& v : x) v = spread(rng);
    x[std::size_t(n)] = 1e30f;  // a guard past the run, larger than every score: never read, never written
    std::vector<float> vector = x, portable = x, plain = x;
    const float scale = 0.125f * 1.0001f, denom = 3.7f;
    const float max = cpu::scale_and_max(vector.data(), n, scale);
    const float max_portable = cpu::scale_and_max_without_vectors(portable.data(), n, scale);
    float max_plain = -INFINITY;
    for (std::int64_t j = 0; j < n; ++j) max_plain = std::max(max_plain, plain[std::size_t(j)] *= scale);
    EXPECT_EQ(max, max_plain) << n;
    EXPECT_EQ(max_portable, max_plain) << n;
    cpu::divide_by(vector.data(), n, denom);
    cpu::divide_by_without_vectors(portable.data(), n, denom);
    for (std::int64_t j = 0; j < n; ++j) plain[std::size_t(j)] /= denom;
    EXPECT_EQ(0, std::memcmp(vector.data(), plain.data(), vector.size() * 4)) << n;
    EXPECT_EQ(0, std::memcmp(portable.data(), plain.data(), portable.size() * 4)) << n;
    EXPECT_EQ(vector[std::size_t(n)], 1e30f) << n;
  }
}

// SwiGLU's gate x up with the softmax's exp: the vector path and the portable one give the same bits (lengths
// around the 16-lane runs, gates from -120 to 120: both ends of exp's clamp), each within 4 ulp of g / (1 + e^-g) x u
// in double; below a gate of -88 (where exp(-g) is clamped) the result is below 1e-35 in magnitude, as the exact one.
TEST(CpuBackend, SiluTimesIsAccurateAndTheSameOnEveryPath) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> gates(-120.0f, 120.0f), ups(-2.0f, 2.0f);
  for (const std::int64_t n : {1, 15, 16, 17, 100, 2048}) {
    std::vector<float> gate(static_cast<std::size_t>(n)), up(gate.size()), vector(gate.size()), portable(gate.size());
    for (std::size_t i = 0; i < gate.size(); ++i) {
      gate[i] = i % 3 == 0 ? gates(rng) : gates(rng) / 30.0f;  // most where SiLU bends
      up[i] = ups(rng);
    }
    cpu::silu_times(gate.data(), up.data(), vector.data(), n);
    cpu::silu_times_without_vectors(gate.data(), up.data(), portable.data(), n);
    EXPECT_EQ(0, std::memcmp(vector.data(), portable.data(), vector.size() * 4)) << n;
    double worst_ulps = 0;
    for (std::size_t i = 0; i < gate.size(); ++i) {
      const double g = gate[i], exact = g / (1.0 + std::exp(-g)) * up[i];
      if (g < -88.0) {  // exp(-g) at its clamp (88.72): a result as small as the exact one, not the same
        EXPECT_LE(std::fabs(vector[i]), 1e-35f) << g;
        continue;
      }
      const double ulp = std::ldexp(1.0, std::ilogb(exact) - 23);
      worst_ulps = std::max(worst_ulps, std::fabs(vector[i] - exact) / ulp);
    }
    EXPECT_LE(worst_ulps, 4.0) << n;
  }
}

// RMSNorm's sum of squares: within n double roundings of the exact sum, for lengths around the 8 lanes; a row of 768
// ones sums to 768 exactly.
TEST(CpuBackend, SumOfSquaresIsTheDoubleSum) {
  std::mt19937 rng(10);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (const std::int64_t n : {1, 7, 8, 9, 43, 768, 4097}) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (float& v : x) v = normal(rng);
    long double exact = 0;
    for (const float v : x) exact += static_cast<long double>(v) * v;
    const double bound = double(n) * 1.2e-16;  // n roundings of a double sum at most
    EXPECT_LT(std::fabs(double(cpu::sum_of_squares(x.data(), n) - exact) / double(exact)), bound) << n;
  }
  const std::vector<float> ones(768, 1.0f);
  EXPECT_EQ(cpu::sum_of_squares(ones.data(), 768), 768.0);
}

// widen / narrow (F16C where the CPU has it) against the portable conversions: every f16 bit pattern widens to
// f16_to_f32's value (NaNs to a NaN), and f32 values of every kind (normal, subnormal, overflowing, halfway, zero)
// narrow to f32_to_f16's bits.
TEST(CpuBackend, HalfConversionsGiveThePortableValues) {
  std::vector<std::uint16_t> all(65536);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = std::uint16_t(i);
  std::vector<float> wide(all.size());
  cpu::widen(DType::F16, all.data(), wide.data(), std::int64_t(all.size()));
  for (std::size_t i = 0; i < all.size(); ++i) {
    const float want = f16_to_f32(all[i]);
    if (std::isnan(want))
      EXPECT_TRUE(std::isnan(wide[i])) << i;
    else
      EXPECT_EQ(std::memcmp(&want, &wide[i], 4), 0) << "f16 bits " << i;
  }
  std::mt19937 rng(3);
  std::vector<float> values = {0.0f,  -0.0f, 65504.0f, 65520.0f,       70000.0f,        -1e9f,
                               6e-8f, 3e-8f, 1e-5f,    1.00048828125f, 1.000732421875f, -2.0009765625f};
  for (int e = -30; e <= 17; ++e)
    for (int k = 0; k < 200; ++k)
      values.push_back(std::ldexp(std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng), e));
  std::vector<std::uint16_t> narrow(values.size());
  cpu::narrow(DType::F16, values.data(), narrow.data(), std::int64_t(values.size()));
  for (std::size_t i = 0; i < values.size(); ++i) EXPECT_EQ(narrow[i], f32_to_f16(values[i])) << values[i];
}

// An f16 KV cache (--kv-cache-dtype f16): kv_store rounds, attention reads the halves; the outputs equal those of an
// f32 cache holding the rounded values, bit for bit, over several blocks and a head size with a tail (80 = 64 + 16),
// and differ from the unrounded cache's.
TEST(CpuBackend, HalfKvCacheIsAnF32CacheOfTheRoundedValues) {
  Fixture f;
  const int hq = 4, hkv = 2, d = 80, block_size = 4, tokens = 11;
  std::unique_ptr<Backend> half = make_cpu_backend(2, DType::F32, DType::F16);
  EXPECT_EQ(half->kv_dtype(), DType::F16);
  EXPECT_EQ(f.backend->kv_dtype(), DType::F32);
  const std::vector<std::int32_t> table = {5, 1, 4};  // 11 positions: blocks 5, 1, 4
  const std::vector<SeqChunk> chunks = {{0, 0, tokens, 0}};
  Tensor q = f.random({tokens, hq, d}), k = f.random({tokens, hkv * d}), v = f.random({tokens, hkv * d});
  Tensor k_rounded = f.random({tokens, hkv * d}), v_rounded = f.random({tokens, hkv * d});
  for (Tensor* t : {&k, &v}) {
    Tensor& r = t == &k ? k_rounded : v_rounded;
    for (std::int64_t i = 0; i < t->numel(); ++i) r.f32()[i] = f16_to_f32(f32_to_f16(t->f32()[i]));
  }
  auto attend = [&](Backend& backend, const Tensor& keys, const Tensor& values) {
    Tensor kc = backend.allocate({6, block_size, hkv, d}, backend.kv_dtype());
    Tensor vc = backend.allocate({6, block_size, hkv, d}, backend.kv_dtype());
    backend.kv_store(chunks, table, keys.view(), values.view(), kc.view(), vc.view());
    Tensor out = f.random({tokens, hq, d});
    backend.attention(chunks, table, q.view(), kc.view(), vc.view(), AttentionParams{0.1f, 0, 0}, out.view());
    return f.values(out);
  };
  const std::vector<double> from_halves = attend(*half, k, v), from_rounded = attend(*f.backend, k_rounded, v_rounded);
  EXPECT_EQ(from_halves, from_rounded);
  EXPECT_GT(relative_error(from_halves, attend(*f.backend, k, v)), 1e-6) << "the rounding is real";
  EXPECT_LT(relative_error(from_halves, attend(*f.backend, k, v)), 1e-2);
}

// A key or value beyond f16's range would be stored as infinity and turn its sequence's scores into NaN: kv_store
// refuses it, naming the position and the remedy. The largest value that rounds to a finite half (65519) is stored.
TEST(CpuBackend, HalfKvCacheRefusesValuesBeyondHalfRange) {
  Fixture f;
  const int hkv = 2, d = 16, tokens = 3;
  std::unique_ptr<Backend> half = make_cpu_backend(1, DType::F32, DType::F16);
  const std::vector<std::int32_t> table = {0};
  const std::vector<SeqChunk> chunks = {{0, 5, tokens, 0}};  // positions 5, 6, 7
  Tensor kc = half->allocate({2, 8, hkv, d}, DType::F16), vc = half->allocate({2, 8, hkv, d}, DType::F16);
  Tensor k = f.random({tokens, hkv * d}), v = f.random({tokens, hkv * d});
  k.f32()[1 * hkv * d + 3] = 65519.0f;
  EXPECT_NO_THROW(half->kv_store(chunks, table, k.view(), v.view(), kc.view(), vc.view()));
  k.f32()[2 * hkv * d + 5] = 65520.0f;  // halfway to the next power of two: rounds to infinity
  EXPECT_NE(test::error_of([&] {
              half->kv_store(chunks, table, k.view(), v.view(), kc.view(), vc.view());
            }).find("a key of magnitude 65520 at position 7"),
            std::string::npos);
  k.f32()[2 * hkv * d + 5] = 1.0f;
  v.f32()[1 * hkv * d + d + 7] = -70000.0f;  // position 6, the second head
  const std::string why =
      test::error_of([&] { half->kv_store(chunks, table, k.view(), v.view(), kc.view(), vc.view()); });
  EXPECT_NE(why.find("KV cache (f16): a value of magnitude 70000 at position 6 is beyond f16's range (65504); run "
                     "with --kv-cache-dtype f32"),
            std::string::npos)
      << why;
  Tensor kf = f.backend->allocate({2, 8, hkv, d}, DType::F32), vf = f.backend->allocate({2, 8, hkv, d}, DType::F32);
  EXPECT_NO_THROW(f.backend->kv_store(chunks, table, k.view(), v.view(), kf.view(), vf.view())) << "f32 holds it";
}

TEST(CpuBackend, SlidingWindowAndSoftcappedAttentionMatchRef) {
  Fixture f;
  double error = 1;
  run_attention_case(
      f, [](int h) { return h / 2; }, &error, 3, 0.5f);
  EXPECT_LT(error, kTolerance);
  Fixture g;
  double windowless = 0;
  run_attention_case(
      g, [](int h) { return h / 2; }, &windowless, 3, 0.5f, 0);
  EXPECT_GT(windowless, 1e-2) << "the window must change the result";
}

TEST(CpuBackend, GegluScaleSoftcapAndScatterAddMatchRef) {
  Fixture f;
  Tensor gu = f.random({3, 14}, 2.0f), out = f.random({3, 7});
  f.backend->geglu(gu.view(), out.view());
  std::vector<double> ref;
  for (int t = 0; t < 3; ++t)
    for (int i = 0; i < 7; ++i) {
      const double g = gu.f32()[t * 14 + i], u = gu.f32()[t * 14 + 7 + i];
      // GELU's tanh form written out: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
      ref.push_back(0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g))) * u);
    }
  EXPECT_LT(relative_error(f.values(out), ref), kTolerance);

  Tensor x = f.random({2, 5}, 10.0f);
  const std::vector<double> before = f.values(x);
  f.backend->softcap(x.view(), 3.0f);
  for (std::size_t i = 0; i < before.size(); ++i) {
    EXPECT_NEAR(x.f32()[i], 3.0 * std::tanh(before[i] / 3.0), 1e-5);
    EXPECT_LT(std::fabs(x.f32()[i]), 3.0f);
  }
  f.backend->scale(x.view(), -2.0f);
  for (std::size_t i = 0; i < before.size(); ++i) EXPECT_NEAR(x.f32()[i], -6.0 * std::tanh(before[i] / 3.0), 1e-5);

  // Rows 2 and 0 of dst, row 2 twice (two experts of one token): added in order, weighted.
  Tensor src = f.random({3, 4}), dst = f.random({4, 4});
  const std::vector<double> d0 = f.values(dst), s0 = f.values(src);
  const std::vector<std::int32_t> rows = {2, 0, 2};
  const std::vector<float> weights = {0.25f, -1.0f, 2.0f};
  f.backend->scatter_add_rows(src.view(), rows, weights, dst.view());
  std::vector<double> expect = d0;
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (int e = 0; e < 4; ++e) expect[std::size_t(rows[i] * 4 + e)] += weights[i] * s0[i * 4 + std::size_t(e)];
  EXPECT_LT(relative_error(f.values(dst), expect), kTolerance);
  for (int e = 0; e < 4; ++e) EXPECT_EQ(dst.f32()[4 + e], float(d0[std::size_t(4 + e)])) << "row 1 untouched";
  f.backend->fill_zero(dst.view());
  for (std::int64_t i = 0; i < dst.numel(); ++i) EXPECT_EQ(dst.f32()[i], 0.0f);
}

TEST(CpuBackend, NegativeControlWrongHeadMappingIsDetected) {
  Fixture f;
  double error = 0;
  run_attention_case(
      f, [](int h) { return h % 2; }, &error);  // interleaved mapping: not what GQA means
  EXPECT_GT(error, 1e-2) << "the attention comparison must be able to fail";
}

TEST(CpuBackend, RmsNormResidualIsAddThenNormBitForBit) {
  Fixture f;
  Tensor r1 = f.random({3, 40}), x = f.random({3, 40}), w = f.random({40});
  Tensor r2 = f.backend->allocate({3, 40}, DType::F32), y1 = f.backend->allocate({3, 40}, DType::F32),
         y2 = f.backend->allocate({3, 40}, DType::F32);
  std::copy(r1.f32(), r1.f32() + r1.numel(), r2.f32());
  f.backend->rms_norm_residual(r1.view(), x.view(), w.view(), 1e-5f, y1.view());
  f.backend->add(r2.view(), x.view());
  f.backend->rms_norm(r2.view(), w.view(), 1e-5f, y2.view());
  // The decoder block now uses the fused op: the CPU results must not move by a bit.
  EXPECT_EQ(0, std::memcmp(r1.f32(), r2.f32(), r1.bytes()));
  EXPECT_EQ(0, std::memcmp(y1.f32(), y2.f32(), y1.bytes()));
  // ... and it really normalises (a wrong op would leave y equal to the residual).
  EXPECT_GT(std::abs(y1.f32()[0] - r1.f32()[0]), 1e-6);
}

// The ops of a sum never stored (sequence parallelism's reduce-scatter rows, layers/transformer.h): residual + the
// parts added in their order, then the norm, bit for bit the unfused ops on the stored sum, for 1, 2 and 3 parts
// (the values make the orders' roundings differ: checked), on enough rows for the threads.
TEST(CpuBackend, SumsOfPartsGiveTheBitsOfTheStoredSum) {
  Fixture f;
  auto backend = make_cpu_backend(2);
  const std::int64_t rows = 64, width = 96;
  std::vector<Tensor> parts;
  for (int p = 0; p < 3; ++p) parts.push_back(f.random({rows, width}, p == 1 ? 1e4f : 1.0f));
  const Tensor w = f.random({width}), start = f.random({rows, width});
  for (const std::size_t count : {1u, 2u, 3u}) {
    std::vector<const float*> ptrs;
    for (std::size_t p = 0; p < count; ++p) ptrs.push_back(parts[p].f32());
    Tensor sum = backend->allocate({rows, width}, DType::F32);
    std::copy_n(ptrs[0], rows * width, sum.f32());
    for (std::size_t p = 1; p < count; ++p) backend->add(sum.view(), parts[p].view());
    Tensor r1 = backend->allocate({rows, width}, DType::F32), r2 = backend->allocate({rows, width}, DType::F32);
    Tensor y1 = backend->allocate({rows, width}, DType::F32), y2 = backend->allocate({rows, width}, DType::F32);
    for (Tensor* r : {&r1, &r2}) std::copy_n(start.f32(), rows * width, r->f32());
    backend->rms_norm_residual_of_sum(r1.view(), ptrs, w.view(), 1e-5f, y1.view());
    backend->rms_norm_residual(r2.view(), sum.view(), w.view(), 1e-5f, y2.view());
    EXPECT_EQ(0, std::memcmp(r1.f32(), r2.f32(), r1.bytes())) << count << " parts";
    EXPECT_EQ(0, std::memcmp(y1.f32(), y2.f32(), y1.bytes())) << count << " parts";
    for (Tensor* r : {&r1, &r2}) std::copy_n(start.f32(), rows * width, r->f32());
    backend->add_sum(r1.view(), ptrs);
    backend->add(r2.view(), sum.view());
    EXPECT_EQ(0, std::memcmp(r1.f32(), r2.f32(), r1.bytes())) << count << " parts";
    if (count < 2) continue;
    // The negative control: the residual plus each part in turn rounds differently somewhere.
    for (Tensor* r : {&r1}) std::copy_n(start.f32(), rows * width, r->f32());
    for (std::size_t p = 0; p < count; ++p) backend->add(r1.view(), parts[p].view());
    EXPECT_NE(0, std::memcmp(r1.f32(), r2.f32(), r1.bytes())) << count << " parts: the orders must differ";
  }
}

TEST(CpuBackend, SampleCandidatesAreTheBestByModeWithTheShardOffset) {
  Fixture f;
  Tensor logits = f.backend->allocate({3, 6}, DType::F32);
  const float values[18] = {0, 5, 1, 5, -2, 3, 1, 2, 3, 4, 5, 6, 9, 8, 7, 6, 5, 4};
  std::copy(values, values + 18, logits.f32());
  std::vector<CandidateRequest> requests(3);
  requests[0] = {CandidateMode::Greedy, 1.0f, 1, 0, 0};
  requests[1] = {CandidateMode::TopK, 2.0f, 3, 0, 0};
  requests[2] = {CandidateMode::Gumbel, 1.0f, 1, 9, 4};
  const std::vector<std::int64_t> offsets{0, 1, 4};
  std::vector<SampleCandidate> out(5);
  f.backend->sample_candidates(logits.view(), 100, requests, offsets, out.data());
  EXPECT_EQ(out[0].id, 101);  // tie between ids 101 and 103: the lower id
  EXPECT_EQ(out[0].value, 5.0f);
  EXPECT_EQ(out[1].id, 105);  // top-3 of row 1 divided by T = 2, best first
  EXPECT_EQ(out[2].id, 104);
  EXPECT_EQ(out[3].id, 103);
  EXPECT_EQ(out[1].value, 3.0f);
  // Gumbel: the best of logit + noise(seed 9, step 4, global id), recomputed here independently.
  double best = -1e300;
  int best_id = -1;
  for (int i = 0; i < 6; ++i) {
    const double s = double(values[12 + i]) + gumbel_from_hash(9, 4, 100 + i);
    if (s > best) best = s, best_id = 100 + i;
  }
  EXPECT_EQ(out[4].id, best_id);
}

// Products of one token pass (a decode step's) key their loops for Workers::forecast, so a helper requests its share
// of the next loop's weights between loops; a prefill's products, in several passes, are not keyed: nothing is
// requested between them (their tiles stay in L2). The row kernels' path and the quantized one.
TEST(CpuKernels, DecodeProductsForecastTheNextLoopAndAPrefillsDoNot) {
  using namespace std::chrono_literals;
  const std::int64_t in = 64, out = 48;
  std::vector<float> w(std::size_t(2 * out * in), 0.25f), x(std::size_t(100 * in), 0.5f), y(std::size_t(100 * out));
  std::vector<std::uint16_t> bf16(w.size());
  convert_from_f32(DType::BF16, w.data(), bf16.data(), bf16.size());
  const std::size_t q8_row = quant::row_bytes(quant::Format::Q8_0, in);
  std::vector<std::uint8_t> q8(2 * std::size_t(out) * q8_row);
  for (std::int64_t r = 0; r < 2 * out; ++r)
    quant::quantize_row(quant::Format::Q8_0, w.data() + r * in, q8.data() + std::size_t(r) * q8_row, in);
  const auto product = [&](bool quantized, int which, std::int64_t tokens, cpu::Workers& team) {
    if (quantized)
      quant::row_dot_products_with(team, "scalar", x.data(), q8.data() + std::size_t(which * out) * q8_row,
                                   quant::Format::Q8_0, y.data(), tokens, out, in);
    else
      cpu::row_dot_products_with(team, "scalar", x.data(), bf16.data() + which * out * in, DType::BF16, y.data(),
                                 tokens, out, in, Layout::Rows);
    std::this_thread::sleep_for(1ms);  // the ops between two products: the helper's time to request
  };
  for (bool quantized : {false, true}) {
    cpu::Workers team(2, cpu::Workers::Team::Own, 0us);
    for (int step = 0; step < 20; ++step)
      for (int which : {0, 1}) product(quantized, which, 1, team);
    const std::uint64_t decoded = team.requested_bytes(1);
    EXPECT_GT(decoded, 0u) << (quantized ? "q8_0" : "bf16") << ": the helper requested nothing between decode loops";
    for (int step = 0; step < 20; ++step)
      for (int which : {0, 1}) product(quantized, which, 100, team);  // 100 tokens: two passes
    EXPECT_EQ(team.requested_bytes(1), decoded) << (quantized ? "q8_0" : "bf16") << ": requests between a prefill's";
  }
}
