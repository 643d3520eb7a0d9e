// Sequence parallelism's activations (layers/transformer.h): the rows (tokens) of a product's input split over the
// ranks of a tensor-parallel group, each rank computing the norm before the product for its own rows only. Rank r
// holds rows [r * per_rank, (r + 1) * per_rank) of the step's `tokens` (the last ranks' shares may be short, or
// empty); a buffer of the rows has room for ranks * per_rank of them. gather() brings every rank's rows into every
// rank's buffer, in whatever form the products read them: a backend that rounds or quantizes the activations first
// does that for its own rows only, and the ranks exchange the result (a quarter of f32's bytes for q8_0 blocks).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace strata {

struct RowShares {
  int rank = 0, ranks = 1;
  std::int64_t per_rank = 0;
  // In place, collective over the group: rows [r * per_rank, (r + 1) * per_rank) of the buffer at `rows` (row_bytes
  // each, back to back) from rank r's buffer, for every r.
  std::function<void(void* rows, std::size_t row_bytes)> gather;

  // This rank's rows of a step of `tokens`: [begin, end).
  std::int64_t begin(std::int64_t tokens) const { return std::min(tokens, rank * per_rank); }
  std::int64_t end(std::int64_t tokens) const { return std::min(tokens, (rank + 1) * per_rank); }
  std::int64_t padded() const { return ranks * per_rank; }
};

}  // namespace strata
