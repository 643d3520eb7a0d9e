// The rank formula, walked rank by rank on a dp 2 x pp 2 x tp 2 grid, and the size check's message.
#include <gtest/gtest.h>

#include "runtime/base/error.h"
#include "runtime/base/parallel_layout.h"

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
