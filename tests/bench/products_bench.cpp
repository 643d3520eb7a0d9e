// The CPU backend's weight products alone (row_dot_products_with and _many, kernels.h and quant.h), for
// docs/performance.md:
//   strata_products_bench [--weights bf16|q8_0|q4_0] [--in K] [--mb M] [--cache-kb C] [--tokens T1,T2,...]
//                         [--threads N] [--kernel NAME] [--layout rows|interleaved] [--split R1,R2,...]
// y = x w^T for each token count T over weights of K columns (bf16, or Q8_0 / Q4_0 blocks of normal random values,
// with their kernels: --kernel names a row kernel for bf16, a quantized kernel otherwise, and only bf16 takes
// --layout; rates in GFLOP/s, or GOP/s of the int8 products): once over M MB of rows, more than any cache
// holds (read from memory, as a decode step reads its weights; one call per 4096 rows, each writing the same
// outputs, as a model's products), and over C KB of rows called again and again, so
// that each thread's share stays in its L2 (the arithmetic without the memory traffic). Both are printed as the time
// the M MB would take, so they compare directly; T = 1 is the rate at which the kernel streams the weights. The
// weights are in the layout the backend gives them at load (interleaved by 16 rows for the avx512bf16 kernel), or
// the one --layout names. With --split, the memory matrix is cut into runs of products of R1, R2, ... rows (a
// layer's q, k and v: 768,256,256 for the 100M model), timed one call per product and one call per run
// (row_dot_products_many: one parallel loop). With --placement each,arena the products of the runs are copied into
// memory of their own (each: one allocate_host mapping per product, as weights were kept before the twenty-fourth
// session, huge pages for its whole 2 MiB pages only; arena: one after another in a HostArena, as prepare_weight
// keeps them) and timed one call per run, the placements alternating.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/quant.h"
#include "runtime/backend/cpu/workers.h"
#include "runtime/base/dtype.h"
#include "runtime/tensor/tensor.h"

namespace {

struct Options {
  std::string weights = "bf16";  // or q8_0, q4_0
  std::int64_t in = 768;
  double mb = 200, cache_kb = 768;
  std::vector<std::int64_t> tokens{1, 16, 64};
  int threads = 2;
  std::string kernel;                  // empty: the one the backend uses
  std::string layout;                  // empty: the one the backend uses
  std::vector<std::int64_t> split;     // rows of the products of a run; empty: one product of all rows
  std::vector<std::string> placement;  // with split: where each product's weights are copied (each, arena)
};

[[noreturn]] void usage(const char* program, const std::string& why) {
  std::fprintf(stderr,
               "%s: %s\nusage: %s [--weights bf16|q8_0|q4_0] [--in K] [--mb M] [--cache-kb C] [--tokens T1,T2,...] "
               "[--threads N] [--kernel NAME] [--layout rows|interleaved] [--split R1,R2,...] "
               "[--placement each,arena]\n",
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

bool quantized(const Options& o) { return o.weights != "bf16"; }
strata::quant::Format format(const Options& o) {
  return o.weights == "q8_0" ? strata::quant::Format::Q8_0 : strata::quant::Format::Q4_0;
}
std::size_t row_bytes(const Options& o) {
  return quantized(o) ? strata::quant::row_bytes(format(o), o.in) : std::size_t(o.in) * sizeof(std::uint16_t);
}

// The quantized weights' kernel (the backend's, or --kernel's) and the layout it reads.
Options quantized_options(const char* program, Options o) {
  if (!o.layout.empty()) usage(program, "--layout is for bf16 weights (a quantized kernel reads its own layout)");
  if (o.in % 32 != 0) usage(program, "--in must be a multiple of 32 (the blocks' size) for quantized weights");
  if (o.kernel.empty()) o.kernel = strata::quant::kernel_name();
  const auto kernels = strata::quant::available_kernels();
  if (std::find(kernels.begin(), kernels.end(), o.kernel) == kernels.end())
    usage(program, "--kernel " + o.kernel + " is not a quantized kernel this CPU runs");
  o.layout = strata::quant::interleaves(o.kernel) ? "interleaved" : "rows";
  for (const std::int64_t r : o.split)
    if (o.layout == "interleaved" && r % 16 != 0) usage(program, "--split rows must be multiples of 16");
  return o;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value after " + a);
    const std::string v = argv[++i];
    if (a == "--weights") {
      if (v != "bf16" && v != "q8_0" && v != "q4_0") usage(argv[0], "--weights is bf16, q8_0 or q4_0");
      o.weights = v;
    } else if (a == "--in") {
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
    } else if (a == "--placement") {
      std::stringstream list(v);
      for (std::string p; std::getline(list, p, ',');) {
        if (p != "each" && p != "arena") usage(argv[0], "--placement lists each and arena");
        o.placement.push_back(p);
      }
    } else if (a == "--tokens" || a == "--split") {
      std::vector<std::int64_t>& numbers = a == "--tokens" ? o.tokens : o.split;
      numbers.clear();
      std::stringstream list(v);
      for (std::string t; std::getline(list, t, ',');) numbers.push_back(count(argv[0], a, t));
    } else {
      usage(argv[0], "unknown option " + a);
    }
  }
  if (!o.placement.empty() && o.split.empty()) usage(argv[0], "--placement needs --split");
  if (o.weights != "bf16") return quantized_options(argv[0], std::move(o));
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

// Quantized weights: `chunk` rows of normal random values quantized once, repeated (each copy in the kernel's
// layout on its own: the products are called on chunks of at most that many rows, and a larger product cut at a
// multiple of 16 rows reads the same layout).
strata::Buffer random_quantized_rows(strata::cpu::Workers& workers, const Options& o, std::int64_t rows,
                                     std::int64_t chunk) {
  const std::size_t rb = row_bytes(o);
  chunk = std::min(chunk, rows);
  std::vector<char> quantized(rb * std::size_t(chunk));
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> row(std::size_t(o.in));
  for (std::int64_t r = 0; r < chunk; ++r) {
    for (float& v : row) v = normal(rng);
    strata::quant::quantize_row(format(o), row.data(), quantized.data() + std::size_t(r) * rb, o.in);
  }
  strata::Buffer buffer = strata::allocate_host(rb * std::size_t(rows));
  for (std::int64_t first = 0; first < rows; first += chunk) {
    char* out = static_cast<char*>(buffer.data()) + std::size_t(first) * rb;
    const std::int64_t n = std::min(chunk, rows - first);
    if (o.layout == "rows")
      std::copy(quantized.begin(), quantized.begin() + std::ptrdiff_t(std::size_t(n) * rb), out);
    else
      strata::quant::interleave_rows(workers, format(o), quantized.data(), out, n, o.in);
  }
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
    const auto* base = static_cast<const char*>(w.data());
    double best = 1e30;
    for (int attempt = 0; attempt < 5; ++attempt) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int c = 0; c < calls; ++c)
        for (std::int64_t first = 0; first < rows; first += kCallRows)
          one({base + std::size_t(first) * row_bytes(o), layout(), y.data(), std::min(kCallRows, rows - first)},
              tokens);
      best = std::min(best, seconds_since(t0));
    }
    return best;
  }
  strata::Layout layout() const { return o.layout == "rows" ? strata::Layout::Rows : strata::Layout::Interleaved16; }
  void one(const strata::cpu::Product& p, std::int64_t tokens) {
    if (quantized(o))
      strata::quant::row_dot_products_with(workers, o.kernel, x.data(), p.w, format(o), p.y, tokens, p.out, o.in,
                                           p.layout);
    else
      strata::cpu::row_dot_products_with(workers, o.kernel, x.data(), p.w, strata::DType::BF16, p.y, tokens, p.out,
                                         o.in, p.layout);
  }
  void many(std::span<const strata::cpu::Product> run, std::int64_t tokens) {
    if (quantized(o))
      strata::quant::row_dot_products_many(workers, o.kernel, x.data(), format(o), tokens, o.in, run);
    else
      strata::cpu::row_dot_products_many(workers, o.kernel, x.data(), strata::DType::BF16, tokens, o.in, run);
  }
  // Rows a product: the 100m's gate and up together (a 7B's are 22016, whose outputs at a decode step's tokens still
  // stay in cache); a multiple of 16 (interleaved groups).
  static constexpr std::int64_t kCallRows = 4096;

  // Best time, over five tries, of the products of `tokens` tokens over the first `rows` rows of w cut into runs of
  // o.split: one call per product (together: false) or one per run (true).
  // With `copies`, product i's weights are copies[i] (its rows copied there) instead of w's rows.
  double split_seconds(const strata::Buffer& w, std::int64_t rows, std::int64_t tokens, bool together,
                       const std::vector<strata::Buffer>* copies = nullptr) {
    std::vector<std::vector<strata::cpu::Product>> runs;
    const auto* base = static_cast<const char*>(w.data());
    std::size_t product = 0;
    for (std::int64_t at = 0;;) {
      std::vector<strata::cpu::Product> run;
      for (const std::int64_t r : o.split) {
        const char* rows_at = base + std::size_t(at) * row_bytes(o);
        if (copies && product < copies->size()) rows_at = static_cast<const char*>((*copies)[product].data());
        run.push_back({rows_at, layout(), nullptr, r}), at += r, ++product;
      }
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
          many(run, tokens);
        else
          for (const auto& p : run) one(p, tokens);
      }
      best = std::min(best, seconds_since(t0));
    }
    return best;
  }
};

// --placement: the runs' products copied into memory of their own, each placement timed one call per run, the
// placements in turn (their order turning from round to round).
int time_placements(Product& product, const strata::Buffer& w, std::int64_t rows, std::int64_t products, double bytes) {
  const Options& o = product.o;
  std::vector<std::vector<strata::Buffer>> copies(o.placement.size());
  strata::HostArena arena;
  for (std::size_t p = 0; p < o.placement.size(); ++p) {
    std::int64_t at = 0;
    for (std::int64_t i = 0; i < products; ++i) {
      const std::int64_t r = o.split[std::size_t(i) % o.split.size()];
      const std::size_t size = std::size_t(r) * row_bytes(o);
      copies[p].push_back(o.placement[p] == "arena" ? arena.allocate(size) : strata::allocate_host(size));
      std::copy_n(static_cast<const char*>(w.data()) + std::size_t(at) * row_bytes(o), size,
                  static_cast<char*>(copies[p].back().data()));
      at += r;
    }
  }
  for (int round = 1; round <= 5; ++round)
    for (const std::int64_t tokens : o.tokens) {
      std::printf("round %d, %3lld tokens:", round, static_cast<long long>(tokens));
      for (std::size_t i = 0; i < o.placement.size(); ++i) {
        const std::size_t p = (i + std::size_t(round)) % o.placement.size();
        const double t = product.split_seconds(w, rows, tokens, true, &copies[p]);
        std::printf(" %s %7.2f ms (%5.1f GB/s)", o.placement[p].c_str(), t * 1e3, bytes / t / 1e9);
      }
      std::printf("\n");
    }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const double rb = double(row_bytes(o));
  const std::int64_t memory_rows = std::max<std::int64_t>(1, std::int64_t(o.mb * 1e6 / rb));
  const std::int64_t cache_rows = std::max<std::int64_t>(1, std::int64_t(o.cache_kb * 1024 / rb));
  strata::cpu::Workers workers(o.threads);
  const auto weights = [&](std::int64_t rows) {
    return quantized(o) ? random_quantized_rows(workers, o, rows, Product::kCallRows)
                        : random_bf16_rows(workers, o, rows);
  };
  const auto memory_w = weights(memory_rows), cache_w = weights(cache_rows);
  const char* rate = quantized(o) ? "GOP/s" : "GFLOP/s";
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
    const double bytes = double(runs * run_rows) * rb;
    std::printf("%s kernel, %d threads, %s rows of %lld (%s): %lld runs of %zu products, %.1f MB from memory\n",
                o.kernel.c_str(), o.threads, o.weights.c_str(), static_cast<long long>(o.in), o.layout.c_str(),
                static_cast<long long>(runs), o.split.size(), bytes / 1e6);
    if (!o.placement.empty())
      return time_placements(product, memory_w, memory_rows, runs * std::int64_t(o.split.size()), bytes);
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
      "%s kernel, %d threads, %s rows of %lld (%s): %.1f MB from memory, %.0f KB in cache (called %d "
      "times)\n",
      o.kernel.c_str(), o.threads, o.weights.c_str(), static_cast<long long>(o.in), o.layout.c_str(),
      double(memory_rows) * rb / 1e6, double(cache_rows) * rb / 1024, cache_calls);
  for (int round = 1; round <= 3; ++round) {  // alternating: this kind of machine drifts between runs
    for (const std::int64_t tokens : o.tokens) {
      const double memory = product.seconds(memory_w, memory_rows, tokens, 1);
      const double cache = product.seconds(cache_w, cache_rows, tokens, cache_calls) * scale;
      const double flops = 2.0 * double(memory_rows * o.in) * double(tokens);
      std::printf(
          "round %d, %3lld tokens: from memory %7.2f ms (%6.1f %s, %5.1f GB/s of weights); in cache %7.2f ms "
          "(%6.1f %s)\n",
          round, static_cast<long long>(tokens), memory * 1e3, flops / memory / 1e9, rate,
          double(memory_rows) * rb / memory / 1e9, cache * 1e3, flops / cache / 1e9, rate);
    }
  }
}
