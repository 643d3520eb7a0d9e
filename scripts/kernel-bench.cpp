// The CPU product kernels alone, each kernel this CPU has, alternating (docs/performance.md): a 2048 x 768 weight
// that stays in cache, bf16 through cpu::row_dot_products_with and q8_0 / q4_0 through quant::row_dot_products_with,
// at 1-128 tokens; prints GFLOP/s (2 operations per weight per token). Built against the build tree's libraries
// (-O3 as the build's own: at -O2 GCC kept a throwaway kernel's accumulators on the stack):
//   g++ -O3 -std=c++20 -fopenmp -I. scripts/kernel-bench.cpp build/runtime/libstrata_backend_cpu.a \
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

}  // namespace

int main(int argc, char** argv) {
  cpu::Workers workers(argc > 1 ? std::atoi(argv[1]) : 2);
  const std::int64_t out = 2048, in = 768;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> w(std::size_t(out * in)), x(std::size_t(128 * in)), y(std::size_t(128 * out));
  for (float& v : w) v = normal(rng);
  for (float& v : x) v = normal(rng);
  std::vector<std::uint16_t> bf16(w.size()), bf16_interleaved(w.size());
  convert_from_f32(DType::BF16, w.data(), bf16.data(), w.size());
  cpu::interleave_bf16_rows(workers, bf16.data(), bf16_interleaved.data(), out, in);
  for (const std::int64_t tokens : {1, 8, 16, 64, 128}) {
    const std::int64_t ops = 2 * out * in * tokens;
    for (int round = 0; round < 2; ++round)
      for (const std::string& k : cpu::row_kernels()) {
        if (k == "scalar") continue;
        std::printf("bf16 tokens %3ld %-10s %7.1f GFLOP/s (row layout)\n", long(tokens), k.c_str(), rate(ops, [&] {
                      cpu::row_dot_products_with(workers, k, x.data(), bf16.data(), DType::BF16, y.data(), tokens, out,
                                                 in);
                    }));
        if (cpu::interleaves_bf16(k, in))
          std::printf("bf16 tokens %3ld %-10s %7.1f GFLOP/s (interleaved, as strata runs it)\n", long(tokens),
                      k.c_str(), rate(ops, [&] {
                        cpu::row_dot_products_with(workers, k, x.data(), bf16_interleaved.data(), DType::BF16, y.data(),
                                                   tokens, out, in, Layout::Interleaved16);
                      }));
      }
  }
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
