// Register-tiled kernels take their token count as a template parameter (their accumulators live in registers);
// with_tile_count turns the run-time count of a tile into that constant.
#pragma once
#include <cstdint>
#include <type_traits>

namespace strata::cpu {

// Calls f(std::integral_constant<int, n>{}) for 1 <= n <= Max (a larger n is called as Max).
template <int Max, typename F>
inline void with_tile_count(std::int64_t n, F&& f) {
  if constexpr (Max > 1) {
    if (n < Max) return with_tile_count<Max - 1>(n, f);
  }
  f(std::integral_constant<int, Max>{});
}

}  // namespace strata::cpu
