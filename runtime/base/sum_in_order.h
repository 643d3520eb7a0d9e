// The elementwise sum of a reduce-scatter's parts (one per rank) in rank order: the order every sum of the
// tensor-parallel group adds in (the MPI communicator's reduce-scatter, the backends' fused sums), so that each gives
// the same bits.
#pragma once
#include <cstdint>
#include <cstring>
#include <span>

namespace strata {

// sum[0, count) = (parts[0] + parts[1]) + parts[2] + ..., in that order.
inline void sum_in_order(std::span<const float* const> parts, std::int64_t count, float* sum) {
  const float* first = parts[0];
  if (parts.size() == 1) return static_cast<void>(std::memcpy(sum, first, std::size_t(count) * sizeof(float)));
  const float* second = parts[1];
  for (std::int64_t i = 0; i < count; ++i) sum[i] = first[i] + second[i];  // no pass copying the first part alone
  for (std::size_t r = 2; r < parts.size(); ++r) {
    const float* next = parts[r];
    for (std::int64_t i = 0; i < count; ++i) sum[i] += next[i];
  }
}

}  // namespace strata
