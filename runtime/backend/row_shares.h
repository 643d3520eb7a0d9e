// Sequence parallelism's activations (layers/transformer.h): the rows (tokens) of a product's input split over the
// ranks of a tensor-parallel group, each rank computing the norm before the product for its own rows only. Rank r
// holds rows [starts[r], starts[r + 1]) of the step's tokens (runtime/base/row_starts.h: evenly, or by the ranks'
// measured speeds). gather() brings every rank's rows into every rank's buffer, in whatever form the products read
// them: a backend that rounds or quantizes the activations first does that for its own rows only, and the ranks
// exchange the result (a quarter of f32's bytes for q8_0 blocks). Where the group shares memory, `rounds` takes
// gather's place for the kernels that can (Backend::shared_rows_bytes): each rank writes its rows into its part of
// the rounds' memory, hands them over, and computes its own rows' products while the other ranks' arrive
// (runtime/base/shared_rows.h).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/base/row_starts.h"
#include "runtime/base/shared_rows.h"

namespace strata {

struct RowShares {
  int rank = 0;
  std::vector<std::int64_t> starts = {0, 0};  // ranks + 1 entries, the last the step's tokens
  // In place, collective over the group: rows [starts[r], starts[r + 1]) of the buffer at `rows` (row_bytes each,
  // back to back) from rank r's buffer, for every r.
  std::function<void(void* rows, std::size_t row_bytes)> gather;
  // Null where the group cannot (then gather): rows at the same places in every rank's memory (row t of the step at
  // t times the row's bytes), each rank's own written by it.
  SharedRows* rounds = nullptr;

  int ranks() const { return int(starts.size()) - 1; }
  // This rank's rows of a step of `tokens`: [begin, end).
  std::int64_t begin(std::int64_t tokens) const { return begin_of(rank, tokens); }
  std::int64_t end(std::int64_t tokens) const { return end_of(rank, tokens); }
  // Rank r's rows of a step of `tokens`.
  std::int64_t begin_of(int r, std::int64_t tokens) const { return std::min(tokens, starts[std::size_t(r)]); }
  std::int64_t end_of(int r, std::int64_t tokens) const { return std::min(tokens, starts[std::size_t(r) + 1]); }
  // f(r, begin, end) for every other rank r and its rows of a step of `tokens`, starting with the next one: the
  // order in which each rank takes the others' rows, so that no two ranks wait on the same one first.
  template <typename F>
  void for_each_other(std::int64_t tokens, F&& f) const {
    for (int k = 1; k < ranks(); ++k) {
      const int r = (rank + k) % ranks();
      f(r, begin_of(r, tokens), end_of(r, tokens));
    }
  }
};

}  // namespace strata
