// The CPU backend's weight products alone (row_dot_products_with and _many, kernels.h), for docs/performance.md:
//   strata_products_bench [--in K] [--mb M] [--cache-kb C] [--tokens T1,T2,...] [--threads N] [--kernel NAME]
//                         [--layout rows|interleaved] [--split R1,R2,...]
// y = x w^T for each token count T over bf16 weights of K columns: once over M MB of rows, more than any cache
// holds (read from memory, as a decode step reads its weights; one call per 4096 rows, each writing the same
// outputs, as a model's products), and over C KB of rows called again and again, so
// that each thread's share stays in its L2 (the arithmetic without the memory traffic). Both are printed as the time
// the M MB would take, so they compare directly; T = 1 is the rate at which the kernel streams the weights. The
// weights are in the layout the backend gives them at load (interleaved by 16 rows for the avx512bf16 kernel), or
// the one --layout names. With --split, the memory matrix is cut into runs of products of R1, R2, ... rows (a
// layer's q, k and v: 768,256,256 for the 100M model), timed one call per product and one call per run
// (row_dot_products_many: one parallel loop).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/workers.h"
#include "runtime/base/dtype.h"
#include "runtime/tensor/tensor.h"

namespace {

struct Options {
  std::int64_t in = 768;
  double mb = 200, cache_kb = 768;
  std::vector<std::int64_t> tokens{1, 16, 64};
  int threads = 2;
  std::string kernel;               // empty: the one the backend uses
  std::string layout;               // empty: the one the backend uses
  std::vector<std::int64_t> split;  // rows of the products of a run; empty: one product of all rows
};

[[noreturn]] void usage(const char* program, const std::string& why) {
  std::fprintf(stderr,
               "%s: %s\nusage: %s [--in K] [--mb M] [--cache-kb C] [--tokens T1,T2,...] [--threads N] "
               "[--kernel NAME] [--layout rows|interleaved] [--split R1,R2,...]\n",
               program, why.c_str(), program);
  std::exit(2);
}

double positive(const char* program, const std::string& option, const std::string& value) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (end == value.c_str() || *end != '\0' || !(v > 0)) usage(program, option + " must be a positive number");
  return v;
}

std::int64_t count(const char* program, const std::string& option, const std::string& value) {
  char* end = nullptr;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (end == value.c_str() || *end != '\0' || v < 1) usage(program, option + " must be a whole number >= 1");
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value after " + a);
    const std::string v = argv[++i];
    if (a == "--in") {
      o.in = count(argv[0], a, v);
    } else if (a == "--mb") {
      o.mb = positive(argv[0], a, v);
    } else if (a == "--cache-kb") {
      o.cache_kb = positive(argv[0], a, v);
    } else if (a == "--threads") {
      o.threads = int(count(argv[0], a, v));
    } else if (a == "--kernel") {
      o.kernel = v;
    } else if (a == "--layout") {
      if (v != "rows" && v != "interleaved") usage(argv[0], "--layout is rows or interleaved");
      o.layout = v;
    } else if (a == "--tokens" || a == "--split") {
      std::vector<std::int64_t>& numbers = a == "--tokens" ? o.tokens : o.split;
      numbers.clear();
      std::stringstream list(v);
      for (std::string t; std::getline(list, t, ',');) numbers.push_back(count(argv[0], a, t));
    } else {
      usage(argv[0], "unknown option " + a);
    }
  }
  if (o.kernel.empty()) o.kernel = strata::cpu::row_kernel_name();
  const auto kernels = strata::cpu::row_kernels();
  if (std::find(kernels.begin(), kernels.end(), o.kernel) == kernels.end())
    usage(argv[0], "--kernel " + o.kernel + " is not one this CPU runs");
  const bool interleaves = strata::cpu::interleaves_bf16(o.kernel, o.in);
  if (o.layout.empty()) o.layout = interleaves ? "interleaved" : "rows";
  if (o.layout == "interleaved" && !interleaves)
    usage(argv[0], "--layout interleaved needs the avx512bf16 kernel and an even --in (the " + o.kernel +
                       " kernel reads these rows only in row layout)");
  for (const std::int64_t r : o.split)  // products cut from one interleaved matrix must start on a group
    if (o.layout == "interleaved" && r % 16 != 0)
      usage(argv[0], "--split rows must be multiples of 16 in the interleaved layout (or give --layout rows)");
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// bf16 values near 1 (random low mantissa bits): no denormals, no overflow whatever the token count; interleaved
// by 16 rows where the layout is. In memory allocate_host gives, as loaded weights are (64-byte aligned, huge pages).
strata::Buffer random_bf16_rows(strata::cpu::Workers& workers, const Options& o, std::int64_t rows) {
  const std::size_t count = std::size_t(rows * o.in);
  std::vector<std::uint16_t> w(count);
  std::mt19937 rng(1);
  for (auto& v : w) v = std::uint16_t(0x3f80 ^ (rng() & 0x7f));
  strata::Buffer buffer = strata::allocate_host(count * sizeof(std::uint16_t));
  auto* out = static_cast<std::uint16_t*>(buffer.data());
  if (o.layout == "rows")
    std::copy(w.begin(), w.end(), out);
  else
    strata::cpu::interleave_bf16_rows(workers, w.data(), out, rows, o.in);
  return buffer;
}

struct Product {
  strata::cpu::Workers& workers;
  const Options& o;
  std::vector<float> x, y;

  // Best time of `calls` passes over `rows` rows of w with `tokens` tokens, over five tries. A pass is one product
  // per kCallRows rows, each writing the same outputs, as a model's products do: outputs for every row of a large
  // matrix (one call over all of it, before the twenty-first session) pass the caches at many tokens (64 tokens of
  // 384-wide rows: 33 MB of outputs beside 100 MB of weights), a cost no model's step has, which made narrow rows
  // look 20-30% slower from memory than in cache.
  double seconds(const strata::Buffer& w, std::int64_t rows, std::int64_t tokens, int calls) {
    const auto* base = static_cast<const std::uint16_t*>(w.data());
    double best = 1e30;
    for (int attempt = 0; attempt < 5; ++attempt) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int c = 0; c < calls; ++c)
        for (std::int64_t first = 0; first < rows; first += kCallRows)
          strata::cpu::row_dot_products_with(workers, o.kernel, x.data(), base + first * o.in, strata::DType::BF16,
                                             y.data(), tokens, std::min(kCallRows, rows - first), o.in,
                                             o.layout == "rows" ? strata::Layout::Rows : strata::Layout::Interleaved16);
      best = std::min(best, seconds_since(t0));
    }
    return best;
  }
  // Rows a product: the 100m's gate and up together (a 7B's are 22016, whose outputs at a decode step's tokens still
  // stay in cache); a multiple of 16 (interleaved groups).
  static constexpr std::int64_t kCallRows = 4096;

  // Best time, over five tries, of the products of `tokens` tokens over the first `rows` rows of w cut into runs of
  // o.split: one call per product (together: false) or one per run (true).
  double split_seconds(const strata::Buffer& w, std::int64_t rows, std::int64_t tokens, bool together) {
    const auto layout = o.layout == "rows" ? strata::Layout::Rows : strata::Layout::Interleaved16;
    std::vector<std::vector<strata::cpu::Product>> runs;
    const auto* base = static_cast<const std::uint16_t*>(w.data());
    for (std::int64_t at = 0;;) {
      std::vector<strata::cpu::Product> run;
      for (const std::int64_t r : o.split) run.push_back({base + at * o.in, layout, nullptr, r}), at += r;
      if (at > rows) break;
      runs.push_back(std::move(run));
    }
    for (auto& run : runs)  // each product its own outputs (y holds tokens x all rows)
      for (std::size_t p = 0, offset = 0; p < run.size(); offset += std::size_t(tokens * run[p].out), ++p)
        run[p].y = y.data() + offset;
    double best = 1e30;
    for (int attempt = 0; attempt < 5; ++attempt) {
      const auto t0 = std::chrono::steady_clock::now();
      for (const auto& run : runs) {
        if (together)
          strata::cpu::row_dot_products_many(workers, o.kernel, x.data(), strata::DType::BF16, tokens, o.in, run);
        else
          for (const auto& p : run)
            strata::cpu::row_dot_products_with(workers, o.kernel, x.data(), p.w, strata::DType::BF16, p.y, tokens,
                                               p.out, o.in, layout);
      }
      best = std::min(best, seconds_since(t0));
    }
    return best;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const std::int64_t memory_rows = std::max<std::int64_t>(1, std::int64_t(o.mb * 1e6 / 2) / o.in);
  const std::int64_t cache_rows = std::max<std::int64_t>(1, std::int64_t(o.cache_kb * 1024 / 2) / o.in);
  strata::cpu::Workers workers(o.threads);
  const auto memory_w = random_bf16_rows(workers, o, memory_rows), cache_w = random_bf16_rows(workers, o, cache_rows);
  const std::int64_t most = *std::max_element(o.tokens.begin(), o.tokens.end());
  std::int64_t split_rows = 0;  // rows of one run of --split's products
  for (const std::int64_t r : o.split) split_rows += r;
  Product product{workers, o, std::vector<float>(std::size_t(most * o.in), 0.5f),
                  std::vector<float>(std::size_t(
                      most * std::max({std::min(memory_rows, Product::kCallRows), cache_rows, split_rows})))};
  // The in-cache figure scaled to the memory matrix's rows: calls enough to take about as long as one memory call.
  const int cache_calls = int(std::max<std::int64_t>(1, memory_rows / cache_rows));
  const double scale = double(memory_rows) / double(cache_rows * cache_calls);
  if (!o.split.empty()) {
    const std::int64_t run_rows = split_rows;
    const std::int64_t runs = memory_rows / run_rows;
    if (runs < 1) usage(argv[0], "--split's products do not fit in --mb");
    // Only whole runs are timed: the bytes they cover (compare runs of different sizes at the same bytes, since
    // less of a matrix may stay in a large L3).
    const double bytes = double(runs * run_rows * o.in * 2);
    std::printf("%s kernel, %d threads, bf16 rows of %lld (%s): %lld runs of %zu products, %.1f MB from memory\n",
                o.kernel.c_str(), o.threads, static_cast<long long>(o.in), o.layout.c_str(),
                static_cast<long long>(runs), o.split.size(), bytes / 1e6);
    for (int round = 1; round <= 3; ++round)
      for (const std::int64_t tokens : o.tokens) {
        const bool together_first = round % 2 == 0;  // alternating: this kind of machine drifts
        const double first = product.split_seconds(memory_w, memory_rows, tokens, together_first);
        const double second = product.split_seconds(memory_w, memory_rows, tokens, !together_first);
        const double alone = together_first ? second : first, together = together_first ? first : second;
        std::printf(
            "round %d, %3lld tokens: one call each %7.2f ms (%5.1f GB/s), one per run %7.2f ms (%5.1f GB/s, "
            "%+.1f%%)\n",
            round, static_cast<long long>(tokens), alone * 1e3, bytes / alone / 1e9, together * 1e3,
            bytes / together / 1e9, (together / alone - 1) * 100);
      }
    return 0;
  }
  std::printf(
      "%s kernel, %d threads, bf16 rows of %lld (%s): %.1f MB from memory, %.0f KB in cache (called %d "
      "times)\n",
      o.kernel.c_str(), o.threads, static_cast<long long>(o.in), o.layout.c_str(), double(memory_rows * o.in * 2) / 1e6,
      double(cache_rows * o.in * 2) / 1024, cache_calls);
  for (int round = 1; round <= 3; ++round) {  // alternating: this kind of machine drifts between runs
    for (const std::int64_t tokens : o.tokens) {
      const double memory = product.seconds(memory_w, memory_rows, tokens, 1);
      const double cache = product.seconds(cache_w, cache_rows, tokens, cache_calls) * scale;
      const double flops = 2.0 * double(memory_rows * o.in) * double(tokens);
      std::printf(
          "round %d, %3lld tokens: from memory %7.2f ms (%6.1f GFLOP/s, %5.1f GB/s of weights); in cache %7.2f ms "
          "(%6.1f GFLOP/s)\n",
          round, static_cast<long long>(tokens), memory * 1e3, flops / memory / 1e9,
          double(memory_rows * o.in * 2) / memory / 1e9, cache * 1e3, flops / cache / 1e9);
    }
  }
}
