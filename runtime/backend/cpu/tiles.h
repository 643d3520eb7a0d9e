// Register-tiled kernels take their token count as a template parameter (their accumulators live in registers);
// with_tile_count turns the run-time count of a tile into that constant.
#pragma once
#include <cstdint>
#include <type_traits>

namespace strata::cpu {

// Tokens per pass of a product's rows (kernels.cpp, quant.cpp): a product of more tokens (a prefill step) goes over
// the rows in passes of this many, whose activations stay in a core's L2 beside a work item's rows (96 tokens of a
// 2048-wide input: 384 KB of bf16, 768 KB of f32); all 2048 tokens of a step at once were read again from L3 by each
// work item. 96 and 192 measured level, both 15-35% faster than one pass (docs/performance.md).
constexpr std::int64_t kTokenPass = 96;

// Calls f(std::integral_constant<int, n>{}) for 1 <= n <= Max (a larger n is called as Max).
template <int Max, typename F>
inline void with_tile_count(std::int64_t n, F&& f) {
  if constexpr (Max > 1) {
    if (n < Max) return with_tile_count<Max - 1>(n, f);
  }
  f(std::integral_constant<int, Max>{});
}

}  // namespace strata::cpu
