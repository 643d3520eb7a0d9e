// The work dispatcher without MPI: prompts handed out in input order from a streamed feed that is read at most a
// look-ahead window ahead; a replica gets prompts starting like its last one first; the static split gives replica
// r exactly the prompts i % dp == r; the end of the work is reported once everything is handed out.
#include <gtest/gtest.h>

#include <set>

#include "engine/dispatch.h"

using namespace strata;

namespace {
// A feed of `count` prompts; prompt i starts with prefix key keys(i); `read` counts what was read.
WorkFeed counting_feed(std::int64_t count, std::function<std::uint64_t(std::int64_t)> keys, std::int64_t& read) {
  return [count, keys, &read](WorkItem& item) {
    if (read == count) return false;
    item.index = read;
    item.line_number = std::uint64_t(read + 1);
    item.line = "prompt " + std::to_string(read);
    item.key = keys(read);
    ++read;
    return true;
  };
}
}  // namespace

TEST(WorkDispatcher, HandsOutInOrderAndReadsOnlyAWindowAhead) {
  std::int64_t read = 0;
  WorkDispatcher d(counting_feed(
                       100000, [](std::int64_t) { return 0; }, read),
                   2, false);
  const auto a = d.take(0, 3);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[0].index, 0);
  EXPECT_EQ(a[2].index, 2);
  EXPECT_EQ(a[1].line, "prompt 1");
  EXPECT_EQ(a[1].line_number, 2u);
  EXPECT_LE(read, 1100) << "a stream: at most the look-ahead window read ahead";
  const auto b = d.take(1, 2);
  EXPECT_EQ(b[0].index, 3);
  EXPECT_FALSE(d.exhausted(0));
  std::int64_t total = 5;
  while (!d.exhausted(0)) total += std::int64_t(d.take(0, 1000).size());
  EXPECT_EQ(total, 100000);
  EXPECT_TRUE(d.exhausted(1));
  EXPECT_TRUE(d.take(1, 5).empty());
  EXPECT_EQ(d.handed_to(1), 2);
}

TEST(WorkDispatcher, PrefersPromptsStartingLikeTheReplicasLastOne) {
  std::int64_t read = 0;
  // Prompts alternate between two system prompts (keys 7 and 9).
  WorkDispatcher d(counting_feed(
                       40, [](std::int64_t i) { return i % 2 ? 9u : 7u; }, read),
                   2, false);
  const auto first = d.take(0, 1);   // prompt 0 (key 7)
  const auto second = d.take(1, 1);  // prompt 1 (key 9)
  const auto more0 = d.take(0, 4), more1 = d.take(1, 4);
  ASSERT_EQ(more0.size(), 4u);
  ASSERT_EQ(more1.size(), 4u);
  for (const auto& item : more0) EXPECT_EQ(item.index % 2, 0) << "replica 0 keeps the key-7 prompts";
  for (const auto& item : more1) EXPECT_EQ(item.index % 2, 1) << "replica 1 keeps the key-9 prompts";
  EXPECT_EQ(more0.front().index, 2) << "in input order within the key";
}

// The oldest prompt is handed out at the next request whatever its prefix: a prompt of another prefix never waits
// behind a long run of matching ones (the writer would hold every later record meanwhile).
TEST(WorkDispatcher, TheOldestPromptNeverWaitsBehindAffinity) {
  std::int64_t read = 0;
  // Prompt 1 has its own prefix; all others share one.
  WorkDispatcher d(counting_feed(
                       5000, [](std::int64_t i) { return i == 1 ? 3u : 5u; }, read),
                   2, false);
  EXPECT_EQ(d.take(0, 1).front().index, 0);
  const auto next = d.take(0, 8);
  ASSERT_EQ(next.size(), 8u);
  EXPECT_EQ(next.front().index, 1) << "the oldest went first although replica 0 prefers key 5";
}

TEST(WorkDispatcher, StaticSplitGivesReplicaRTheIndicesIModDp) {
  std::int64_t read = 0;
  WorkDispatcher d(counting_feed(
                       30, [](std::int64_t) { return 5; }, read),
                   3, true);
  std::set<std::int64_t> seen;
  for (int r = 0; r < 3; ++r) {
    while (!d.exhausted(r))
      for (const auto& item : d.take(r, 4)) {
        EXPECT_EQ(item.index % 3, r);
        seen.insert(item.index);
      }
    EXPECT_EQ(d.handed_to(r), 10);
  }
  EXPECT_EQ(seen.size(), 30u);
}
