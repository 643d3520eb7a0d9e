// The rank formula, walked rank by rank on a dp 2 x pp 2 x tp 2 grid, and the size check's message.
#include <gtest/gtest.h>

#include "runtime/base/error.h"
#include "runtime/base/parallel_layout.h"
#include "runtime/base/row_starts.h"

using namespace strata;

TEST(ParallelLayout, EveryRankOfA2x2x2Grid) {
  struct Expected {
    int dp, pp, tp;
    std::vector<int> tp_group, pp_group, dp_group;
  };
  // world_rank = (dp * pp_size + pp) * tp_size + tp
  const std::vector<Expected> expected = {{0, 0, 0, {0, 1}, {0, 2}, {0, 4}}, {0, 0, 1, {0, 1}, {1, 3}, {1, 5}},
                                          {0, 1, 0, {2, 3}, {0, 2}, {2, 6}}, {0, 1, 1, {2, 3}, {1, 3}, {3, 7}},
                                          {1, 0, 0, {4, 5}, {4, 6}, {0, 4}}, {1, 0, 1, {4, 5}, {5, 7}, {1, 5}},
                                          {1, 1, 0, {6, 7}, {4, 6}, {2, 6}}, {1, 1, 1, {6, 7}, {5, 7}, {3, 7}}};
  for (int rank = 0; rank < 8; ++rank) {
    const ParallelLayout layout({2, 2, 2}, 8, rank);
    const auto& e = expected[std::size_t(rank)];
    EXPECT_EQ(layout.dp_rank(), e.dp) << rank;
    EXPECT_EQ(layout.pp_rank(), e.pp) << rank;
    EXPECT_EQ(layout.tp_rank(), e.tp) << rank;
    EXPECT_EQ(layout.tp_group(), e.tp_group) << rank;
    EXPECT_EQ(layout.pp_group(), e.pp_group) << rank;
    EXPECT_EQ(layout.dp_group(), e.dp_group) << rank;
    EXPECT_EQ(layout.rank_of(e.dp, e.pp, e.tp), rank);
    if (e.pp == 0) {
      EXPECT_EQ(layout.next_stage_rank(), rank + 2);
    } else {
      EXPECT_EQ(layout.prev_stage_rank(), rank - 2);
    }
  }
}

TEST(ParallelLayout, WorldSizeMismatchNamesTheNumbers) {
  try {
    ParallelLayout({1, 2, 2}, 6, 0);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("world size 6"), std::string::npos) << m;
    EXPECT_NE(m.find("1 x 2 x 2 = 4"), std::string::npos) << m;
  }
}

TEST(ParallelLayout, ExplicitPlacementIsFollowedEverywhere) {
  // Round-robin launch over 2 nodes: even ranks on node A, odd on node B. The placement puts TP groups {0,2}
  // and {1,3} inside the nodes: stage 0 = ranks 0,2 (node A), stage 1 = ranks 1,3 (node B).
  const std::vector<int> placement = {0, 2, 1, 3};
  const ParallelLayout r1({1, 2, 2}, placement, 1);
  EXPECT_EQ(r1.pp_rank(), 1);
  EXPECT_EQ(r1.tp_rank(), 0);
  EXPECT_EQ(r1.tp_group(), (std::vector<int>{1, 3}));
  EXPECT_EQ(r1.pp_group(), (std::vector<int>{0, 1}));
  EXPECT_EQ(r1.prev_stage_rank(), 0);
  const ParallelLayout r2({1, 2, 2}, placement, 2);
  EXPECT_EQ(r2.pp_rank(), 0);
  EXPECT_EQ(r2.tp_rank(), 1);
  EXPECT_EQ(r2.next_stage_rank(), 3);
  EXPECT_THROW(ParallelLayout({1, 2, 2}, std::vector<int>{0, 2, 2, 3}, 0), Error);
}

// Ranks {0,2} on one node and {1,3} on the other with tp 2 x dp 2 (mpirun --map-by node): replica 1 is ranks 1 and
// 3, whatever rank / (tp * pp) says (that formula marked replica 0 done when replica 1 finished, and the job hung).
TEST(ParallelLayout, ReplicaOfFollowsThePlacementNotTheRankNumber) {
  const std::vector<int> placement = {0, 2, 1, 3};  // replica 0 = ranks 0, 2; replica 1 = ranks 1, 3
  const ParallelLayout any({2, 1, 2}, placement, 0);
  EXPECT_EQ(any.replica_of(0), 0);
  EXPECT_EQ(any.replica_of(2), 0);
  EXPECT_EQ(any.replica_of(1), 1);
  EXPECT_EQ(any.replica_of(3), 1);
  EXPECT_NE(any.replica_of(1), 1 / (1 * 2)) << "the rank formula would say replica 0";
  EXPECT_EQ(any.replica_ranks(1), (std::vector<int>{1, 3}));
  EXPECT_EQ(any.rank_of(1, 0, 0), 1) << "replica 1's leader";
  EXPECT_THROW((void)any.replica_of(4), Error);
}

// Sequence parallelism's shares of a step's rows (runtime/base/row_starts.h).
namespace {
// rebalance_fractions on a copy of `fractions`.
std::vector<double> rebalanced(std::span<const double> fractions, std::span<const ShareTiming> timings, double gain,
                               double band, double lowest, double highest) {
  std::vector<double> next(fractions.begin(), fractions.end());
  rebalance_fractions(next, timings, gain, band, lowest, highest);
  return next;
}
}  // namespace

TEST(RowStarts, EvenSharesAreCeilingsWithTheLastShort) {
  EXPECT_EQ(even_row_starts(2, 7), (std::vector<std::int64_t>{0, 4, 7}));
  EXPECT_EQ(even_row_starts(4, 2), (std::vector<std::int64_t>{0, 1, 2, 2, 2}));
  EXPECT_EQ(even_row_starts(3, 0), (std::vector<std::int64_t>{0, 0, 0, 0}));
  const double fractions[] = {0.7, 0.1, 0.2};
  std::vector<std::int64_t> starts = {5, 5, 5, 5, 5, 5};  // whatever it held before
  row_starts_of(fractions, 10, starts);
  EXPECT_EQ(starts, (std::vector<std::int64_t>{0, 7, 8, 10}));
  row_starts_of(fractions, 1, starts);
  EXPECT_EQ(starts, (std::vector<std::int64_t>{0, 1, 1, 1}));
  even_row_starts(2, 7, starts);
  EXPECT_EQ(starts, (std::vector<std::int64_t>{0, 4, 7}));
}

// The rank that waited (finished its part first) takes rows over from the one the group waited for: at a gain of 1
// and no band exactly the rows its wait was worth at the measured cost a row, split so that the waits would have
// been level.
TEST(RowStarts, RowsMoveToTheRankThatWaited) {
  const double even[] = {0.5, 0.5};
  // 1000 rows, 10 ms of own work (10 us a row); rank 0 waited 4 ms more than rank 1: 2 ms from the mean each.
  const ShareTiming timings[] = {{0.005, 0.005, 500}, {0.001, 0.005, 500}};
  const std::vector<double> moved = rebalanced(even, timings, 1.0, 0.0, 0.1, 0.9);
  EXPECT_NEAR(moved[0], 0.7, 1e-12);  // 200 rows (2 ms at 10 us a row) of the 1000 taken over
  EXPECT_NEAR(moved[1], 0.3, 1e-12);
  const std::vector<double> damped = rebalanced(even, timings, 0.25, 0.0, 0.1, 0.9);
  EXPECT_NEAR(damped[0], 0.55, 1e-12);
  // Only what the waits differ by beyond the band moves rows: a band of 0.2 of a rank's own-rows work (5 ms here)
  // leaves 2 ms - 1 ms = 1 ms of rank 0's 2 ms (100 rows); waits within the band move none.
  const std::vector<double> banded = rebalanced(even, timings, 1.0, 0.2, 0.1, 0.9);
  EXPECT_NEAR(banded[0], 0.6, 1e-12);
  const std::vector<double> within = rebalanced(even, timings, 1.0, 0.5, 0.1, 0.9);
  EXPECT_NEAR(within[0], 0.5, 1e-12);
  // Within the bounds, summing to one; level waits or nothing measured leave the shares.
  const std::vector<double> bounded = rebalanced(even, timings, 10, 0.0, 0.25, 0.75);
  EXPECT_NEAR(bounded[0], 0.75, 1e-12);
  EXPECT_NEAR(bounded[0] + bounded[1], 1.0, 1e-12);
  const ShareTiming level[] = {{0.002, 0.005, 500}, {0.002, 0.005, 500}};
  const std::vector<double> kept = rebalanced(moved, level, 1.0, 0.0, 0.1, 0.9);
  EXPECT_NEAR(kept[0], moved[0], 1e-12);
  EXPECT_NEAR(kept[1], moved[1], 1e-12);
  const ShareTiming none[] = {{}, {}};
  EXPECT_EQ(rebalanced(moved, none, 1.0, 0.0, 0.1, 0.9), moved);
  // Three ranks: the one the others waited for gives rows to both.
  const double thirds[] = {1.0 / 3, 1.0 / 3, 1.0 / 3};
  const ShareTiming three[] = {{0.003, 0.003, 300}, {0.003, 0.003, 300}, {0.0, 0.003, 300}};
  const std::vector<double> shared = rebalanced(thirds, three, 0.5, 0.0, 0.1, 0.9);
  EXPECT_GT(shared[0], 1.0 / 3);
  EXPECT_NEAR(shared[0], shared[1], 1e-12);
  EXPECT_LT(shared[2], 1.0 / 3);
  EXPECT_NEAR(shared[0] + shared[1] + shared[2], 1.0, 1e-12);
}
