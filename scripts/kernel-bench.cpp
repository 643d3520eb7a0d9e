// The CPU product kernels alone, each kernel this CPU has, alternating (docs/performance.md): a 2048 x 768 weight
// that stays in cache, bf16 through cpu::row_dot_products_with and q8_0 / q4_0 through quant::row_dot_products_with,
// at 1-128 tokens; prints GFLOP/s (2 operations per weight per token). Where the CPU has AVX512_BF16, also the
// kernel strata does not use: the same 4 x 6 register tiles with VDPBF16PS on bf16 activations (the rounding of the
// activations aside, whether the bf16 dot product would pay). Built against the build tree's libraries:
//   g++ -O2 -std=c++20 -fopenmp -I. scripts/kernel-bench.cpp build/runtime/libstrata_backend_cpu.a \
//     build/runtime/libstrata_base.a -lpthread -o build/kernel-bench && build/kernel-bench [threads, default 2]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace strata;

namespace {

double rate(std::int64_t ops_per_call, const std::function<void()>& call) {
  const int calls = int(std::max<std::int64_t>(20, 4'000'000'000 / ops_per_call));
  call();  // warm-up
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) call();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return double(ops_per_call) * calls / seconds / 1e9;
}

#if defined(__x86_64__)
#define BF16_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma"
template <int Rows, int Tokens>
__attribute__((target(BF16_TARGET))) void bf16_dot_tile(const std::uint16_t* x, const std::uint16_t* w, float* y,
                                                        std::int64_t out, std::int64_t in) {
  __m512 acc[Rows][Tokens];
  for (int r = 0; r < Rows; ++r)
    for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_setzero_ps();
  for (std::int64_t i = 0; i + 32 <= in; i += 32) {
    __m512bh wv[Rows];
    for (int r = 0; r < Rows; ++r) wv[r] = (__m512bh)_mm512_loadu_si512(w + r * in + i);
    for (int t = 0; t < Tokens; ++t) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + t * in + i);
      for (int r = 0; r < Rows; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], xv);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int t = 0; t < Tokens; ++t) y[t * out + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// tokens a multiple of 6, out of 16, in of 32
__attribute__((target(BF16_TARGET))) void bf16_dot_products(const std::uint16_t* x, const std::uint16_t* w, float* y,
                                                            std::int64_t tokens, std::int64_t out, std::int64_t in,
                                                            cpu::Workers& workers) {
  workers.split(out / 16, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t item = first; item < last; ++item)
      for (std::int64_t t0 = 0; t0 < tokens; t0 += 6)
        for (std::int64_t r = item * 16; r < item * 16 + 16; r += 4)
          bf16_dot_tile<4, 6>(x + t0 * in, w + r * in, y + t0 * out + r, out, in);
  });
}
#endif

}  // namespace

int main(int argc, char** argv) {
  cpu::Workers workers(argc > 1 ? std::atoi(argv[1]) : 2);
  const std::int64_t out = 2048, in = 768;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> w(std::size_t(out * in)), x(std::size_t(128 * in)), y(std::size_t(128 * out));
  for (float& v : w) v = normal(rng);
  for (float& v : x) v = normal(rng);
  std::vector<std::uint16_t> bf16(w.size());
  convert_from_f32(DType::BF16, w.data(), bf16.data(), w.size());
  for (const std::int64_t tokens : {1, 8, 16, 64, 128}) {
    const std::int64_t ops = 2 * out * in * tokens;
    for (int round = 0; round < 2; ++round)
      for (const std::string& k : cpu::row_kernels())
        if (k != "scalar")
          std::printf("bf16 tokens %3ld %-10s %7.1f GFLOP/s\n", long(tokens), k.c_str(), rate(ops, [&] {
                        cpu::row_dot_products_with(workers, k, x.data(), bf16.data(), DType::BF16, y.data(), tokens,
                                                   out, in);
                      }));
  }
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512bf16")) {
    std::vector<std::uint16_t> x16(x.size());
    convert_from_f32(DType::BF16, x.data(), x16.data(), x.size());
    for (const std::int64_t tokens : {6, 18, 66, 126})
      for (int round = 0; round < 2; ++round)
        std::printf("bf16 tokens %3ld %-10s %7.1f GFLOP/s (VDPBF16PS, not used by strata)\n", long(tokens),
                    "avx512bf16", rate(2 * out * in * tokens, [&] {
                      bf16_dot_products(x16.data(), bf16.data(), y.data(), tokens, out, in, workers);
                    }));
  }
#endif
  for (const quant::Format f : {quant::Format::Q8_0, quant::Format::Q4_0}) {
    std::vector<std::uint8_t> blocks(quant::row_bytes(f, in) * std::size_t(out));
    for (std::int64_t r = 0; r < out; ++r)
      quant::quantize_row(f, w.data() + r * in, blocks.data() + std::size_t(r) * quant::row_bytes(f, in), in);
    std::vector<std::uint8_t> interleaved(blocks.size());
    quant::interleave_rows(workers, f, blocks.data(), interleaved.data(), out, in);
    for (const std::int64_t tokens : {1, 8, 16}) {
      const std::int64_t ops = 2 * out * in * tokens;
      for (int round = 0; round < 2; ++round)
        for (const std::string& k : quant::available_kernels()) {
          if (k == "scalar") continue;
          std::printf("%s tokens %3ld %-10s %7.1f GOP/s (row layout)\n", quant::format_name(f).c_str(), long(tokens),
                      k.c_str(), rate(ops, [&] {
                        quant::row_dot_products_with(workers, k, x.data(), blocks.data(), f, y.data(), tokens, out, in);
                      }));
          if (quant::interleaves(k))
            std::printf("%s tokens %3ld %-10s %7.1f GOP/s (interleaved, as strata runs it)\n",
                        quant::format_name(f).c_str(), long(tokens), k.c_str(), rate(ops, [&] {
                          quant::row_dot_products_with(workers, k, x.data(), interleaved.data(), f, y.data(), tokens,
                                                       out, in, Layout::Interleaved16);
                        }));
        }
    }
  }
}
