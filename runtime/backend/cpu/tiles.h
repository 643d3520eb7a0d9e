// Register-tiled kernels take their token count as a template parameter (their accumulators live in registers);
// with_tile_count turns the run-time count of a tile into that constant. And the two pieces the row kernels
// (kernels.cpp) and the quantized ones (quant.cpp) share for products of several weights in one loop: the work items
// of each product, and a prefill's token passes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "runtime/backend/cpu/cpu_features.h"
#include "runtime/backend/cpu/workers.h"

namespace strata::cpu {

// Tokens per pass of a product's rows (kernels.cpp, quant.cpp): a product of more tokens (a prefill step) goes over
// the rows in passes of at most this many (TokenPasses), whose activations stay in a core's L2 beside a work item's
// rows (96 tokens of a 2048-wide input: 384 KB of bf16, 768 KB of f32); all 2048 tokens of a step at once were read
// again from L3 by each work item. 96 and 192 measured level, both 15-35% faster than one pass (docs/performance.md).
constexpr std::int64_t kTokenPass = 96;

// Calls f(std::integral_constant<int, n>{}) for 1 <= n <= Max (a larger n is called as Max).
template <int Max, typename F>
inline void with_tile_count(std::int64_t n, F&& f) {
  if constexpr (Max > 1) {
    if (n < Max) return with_tile_count<Max - 1>(n, f);
  }
  f(std::integral_constant<int, Max>{});
}

// The work items of one loop over several products (cpu::Product): each product's items numbered from 0, the
// products' one after another. Without an allocation for up to kInline products (dozens of calls a decode step).
class ProductItems {
 public:
  // count(product): the number of items of that product.
  template <typename Product, typename Count>
  ProductItems(std::span<const Product> products, Count count) : n_(products.size()) {
    if (n_ > kInline) heap_.resize(n_ + 1);
    std::int64_t* start = starts();
    start[0] = 0;
    for (std::size_t p = 0; p < n_; ++p) start[p + 1] = start[p] + count(products[p]);
  }
  ProductItems(const ProductItems&) = delete;
  ProductItems& operator=(const ProductItems&) = delete;

  std::int64_t size() const { return starts()[n_]; }
  // f(p, from, to) for each product p with items in the loop's [first, last), as p's own item numbers.
  template <typename F>
  void for_each(std::int64_t first, std::int64_t last, F&& f) const {
    const std::int64_t* start = starts();
    for (std::size_t p = 0; p < n_; ++p) {
      const std::int64_t from = std::max(first, start[p]), to = std::min(last, start[p + 1]);
      if (from < to) f(p, from - start[p], to - start[p]);
    }
  }

 private:
  static constexpr std::size_t kInline = 8;
  std::int64_t* starts() { return n_ > kInline ? heap_.data() : inline_; }
  const std::int64_t* starts() const { return n_ > kInline ? heap_.data() : inline_; }
  std::size_t n_;
  std::int64_t inline_[kInline + 1];
  std::vector<std::int64_t> heap_;
};

// Workers::forecast for a loop of products under Workers::balance over `items` in one token pass: what thread t
// reads first is its own part of the items, from its first, up to 3/4 of an L2 (the first bytes of a larger part;
// a quarter left for the activations and whatever else the core keeps there; with 1 MiB of L2, 256 KiB a thread
// measured level with none at q4_0 batch 1, 768 KiB ahead). item_bytes(p, i) gives the bytes [begin, end) from p.w
// of product p's item i; a product's items lie one after another. Returns what it wrote (empty where the team
// forecasts nothing).
template <typename Product, typename ItemBytes>
std::span<const LoopForecast::Reads> forecast_balanced(Workers& workers, const ProductItems& items,
                                                       std::span<const Product> products, ItemBytes item_bytes) {
  if (products.empty()) return {};
  const std::span<LoopForecast::Reads> reads = workers.forecast(products[0].w);
  if (reads.empty()) return {};
  const std::int64_t own = items.size() * 3 / 4 / workers.size();  // as Workers::balance
  const std::size_t cap = std::size_t(l2_bytes()) / 4 * 3;
  for (int t = 0; t < workers.size(); ++t) {
    LoopForecast::Reads* mine = reads.data() + t * LoopForecast::kReadsPerThread;
    std::size_t left = cap;
    int used = 0;
    items.for_each(t * own, (t + 1) * own, [&](std::size_t p, std::int64_t a, std::int64_t b) {
      if (left == 0 || used == LoopForecast::kReadsPerThread) return;
      const std::size_t begin = item_bytes(products[p], a).first, end = item_bytes(products[p], b - 1).second;
      const std::size_t bytes = std::min(left, end - begin);
      mine[used++] = {static_cast<const char*>(products[p].w) + begin, bytes};
      left -= bytes;
    });
  }
  return reads;
}

// forecast_balanced for items of `rows` rows each (a product's last item may have fewer), in a layout whose rows of
// `row_bytes` lie one after another.
template <typename Product>
void forecast_balanced_rows(Workers& workers, const ProductItems& items, std::span<const Product> products,
                            std::int64_t rows, std::size_t row_bytes) {
  forecast_balanced(workers, items, products, [&](const Product& p, std::int64_t i) {
    return std::pair(std::size_t(i * rows) * row_bytes, std::size_t(std::min(p.out, (i + 1) * rows)) * row_bytes);
  });
}

// A prefill's tokens in passes of at most kTokenPass, all of about the same size (128 tokens: two of 64; 96 and 32
// left the second pass's items a third of the first's, and one loop over both passes unbalanced).
class TokenPasses {
 public:
  explicit TokenPasses(std::int64_t tokens)
      : tokens_(tokens), size_((tokens + count() - 1) / std::max<std::int64_t>(1, count())) {}
  std::int64_t count() const { return (tokens_ + kTokenPass - 1) / kTokenPass; }
  std::int64_t start(std::int64_t pass) const { return pass * size_; }
  std::int64_t tokens(std::int64_t pass) const { return std::min(size_, tokens_ - start(pass)); }

  // One loop over every pass's work items, pass by pass, `per_pass` items each: f(t0, n, from, to) for the items
  // [from, to) of the pass of tokens t0 .. t0 + n within the loop's [first, last).
  template <typename F>
  void for_each(std::int64_t per_pass, std::int64_t first, std::int64_t last, F&& f) const {
    for (std::int64_t pass = first / per_pass; pass * per_pass < last; ++pass) {
      const std::int64_t base = pass * per_pass;
      f(start(pass), tokens(pass), std::max(first, base) - base, std::min(last, base + per_pass) - base);
    }
  }

 private:
  std::int64_t tokens_, size_;
};

// A prefill's products in TokenPasses, one call of `pass` each (for the kernels that run each pass as a loop of its
// own): pass(t0, n, part) for tokens t0 .. t0 + n, with `part` the products whose outputs start at token t0 (each y
// offset by t0 of its rows).
template <typename Product, typename Pass>
void in_token_passes(std::int64_t tokens, std::span<const Product> products, Pass&& pass) {
  std::vector<Product> part(products.begin(), products.end());
  const TokenPasses passes(tokens);
  for (std::int64_t k = 0; k < passes.count(); ++k) {
    const std::int64_t t0 = passes.start(k);
    for (std::size_t p = 0; p < products.size(); ++p) part[p].y = products[p].y + t0 * products[p].out;
    pass(t0, passes.tokens(k), std::span<const Product>(part));
  }
}

}  // namespace strata::cpu
