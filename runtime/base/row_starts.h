// How the rows (tokens) of a step are shared over the ranks of a tensor-parallel group under sequence parallelism:
// rank r's rows are [starts[r], starts[r + 1]), starts holding ranks + 1 nondecreasing entries from 0 to the rows.
// Evenly at first; then (layers/transformer.h) by how fast each rank has been, so that the one on a faster core takes
// more of the rows and the group's step is not held at the slower core's pace.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

namespace strata {

using RowStarts = std::span<const std::int64_t>;

// ceil(rows / ranks) each, the last ranks' shares short or empty: into `starts` (its memory reused).
inline void even_row_starts(int ranks, std::int64_t rows, std::vector<std::int64_t>& starts) {
  const std::int64_t per_rank = ranks > 0 ? (rows + ranks - 1) / ranks : 0;
  starts.clear();
  for (int r = 0; r <= ranks; ++r) starts.push_back(std::min(rows, r * per_rank));
}
inline std::vector<std::int64_t> even_row_starts(int ranks, std::int64_t rows) {
  std::vector<std::int64_t> starts;
  even_row_starts(ranks, rows, starts);
  return starts;
}

// Starts of `rows` split by fractions (one a rank, summing to 1), each boundary rounded to the nearest row: into
// `starts` (its memory reused: a step's shares allocate nothing).
inline void row_starts_of(std::span<const double> fractions, std::int64_t rows, std::vector<std::int64_t>& starts) {
  starts.assign(1, 0);
  double before = 0;
  for (std::size_t r = 0; r + 1 < fractions.size(); ++r) {
    before += fractions[r];
    starts.push_back(std::clamp(std::int64_t(std::llround(before * double(rows))), starts.back(), rows));
  }
  starts.push_back(rows);
}

// What one rank did in a sequence-parallel step: seconds it waited for the group's exchanges (the time in them less
// its own work inside them), seconds of work on its own rows, and how many rows it had.
struct ShareTiming {
  double waited = 0, own_work = 0;
  double rows = 0;
};

// The next step's fractions from this one's timings, in place (the same on every rank: every rank computes them
// from the same numbers). A rank that waited longer than the group's mean finished its part early: it takes over rows
// worth `gain` times the difference beyond `band` (a fraction of a rank's mean work on its own rows: what the waits
// vary by without any rank being slower), at the group's measured cost a row; each fraction kept within [lowest,
// highest] of the rows, then all scaled to sum to 1. Unchanged where nothing was measured.
inline void rebalance_fractions(std::span<double> fractions, std::span<const ShareTiming> timings, double gain,
                                double band, double lowest, double highest) {
  double rows = 0, work = 0, waited = 0;
  for (const ShareTiming& t : timings) rows += t.rows, work += t.own_work, waited += t.waited;
  if (timings.size() != fractions.size() || rows <= 0 || work <= 0) return;
  const auto ranks = double(timings.size());
  const double per_row = work / rows, mean_waited = waited / ranks, noise = band * work / ranks;
  double total = 0;
  for (std::size_t r = 0; r < fractions.size(); ++r) {
    const double beyond = std::max(0.0, std::abs(timings[r].waited - mean_waited) - noise);
    const double moved = gain * std::copysign(beyond, timings[r].waited - mean_waited) / per_row;
    fractions[r] = std::clamp(fractions[r] + moved / rows, lowest, highest);
    total += fractions[r];
  }
  for (double& f : fractions) f /= total;
}

}  // namespace strata
