// The MPI communicator on 4 ranks: collectives with exactly known results, ordered variable-size point-to-point,
// the tp/pp/dp groups built from a ParallelLayout, and the shared-memory all-reduce its groups use on one node.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <iterator>
#include <numeric>
#include <string>

#include "runtime/comm/mpi/mpi_communicator.h"
#include "runtime/comm/mpi/shm_all_reduce.h"

using namespace strata;

namespace {
std::vector<float> values(std::size_t n, float fill) { return std::vector<float>(n, fill); }
TensorView view_of(std::vector<float>& v) { return TensorView{v.data(), {std::int64_t(v.size())}, DType::F32}; }
}  // namespace

TEST(MpiCommunicator, AllReduceSumsExactly) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  ASSERT_EQ(world->size(), 4);
  auto data = values(1000, float(world->rank() + 1));
  data[7] = float(1 << world->rank());
  world->all_reduce_sum(view_of(data));
  EXPECT_EQ(data[0], 10.0f);  // 1 + 2 + 3 + 4
  EXPECT_EQ(data[999], 10.0f);
  EXPECT_EQ(data[7], 15.0f);  // 1 + 2 + 4 + 8
  EXPECT_EQ(world->all_reduce_max(std::int64_t(world->rank() * 10)), 30);
}

TEST(MpiCommunicator, AllGatherAndBroadcast) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  const std::int32_t mine[2] = {world->rank(), world->rank() * world->rank()};
  std::vector<std::int32_t> all(8);
  world->all_gather(mine, all.data(), sizeof mine);
  EXPECT_EQ(all, (std::vector<std::int32_t>{0, 0, 1, 1, 2, 4, 3, 9}));
  std::string text = world->rank() == 2 ? "from rank two" : std::string(13, '?');
  world->broadcast(text.data(), text.size(), 2);
  EXPECT_EQ(text, "from rank two");
}

TEST(MpiCommunicator, PointToPointKeepsOrderAndSize) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  const int next = (world->rank() + 1) % 4, prev = (world->rank() + 3) % 4;
  std::vector<std::unique_ptr<SendRequest>> sends;
  for (int i = 0; i < 5; ++i)
    sends.push_back(world->isend(std::vector<char>(std::size_t(i * 1000 + 1), char('a' + i)), next, Tag::Activations));
  for (int i = 0; i < 5; ++i) {
    const auto m = world->recv(prev, Tag::Activations);
    ASSERT_EQ(m.size(), std::size_t(i * 1000 + 1));
    EXPECT_EQ(m.front(), char('a' + i));
  }
  for (auto& s : sends) s->wait();
  std::vector<char> none;
  int src = -1;
  EXPECT_FALSE(world->try_recv_any(Tag::Result, none, src)) << "nothing was sent with this tag";
  world->barrier();
}

TEST(MpiCommunicator, GroupsFollowTheLayout) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const ParallelLayout layout({1, 2, 2}, 4, rank);  // tp groups {0,1},{2,3}; pp groups {0,2},{1,3}
  CommGroups groups = make_mpi_groups(layout);
  EXPECT_EQ(groups.tp->rank(), layout.tp_rank());
  EXPECT_EQ(groups.pp->rank(), layout.pp_rank());
  EXPECT_EQ(groups.dp->size(), 1);
  std::vector<float> who = {float(rank)};
  groups.tp->all_reduce_sum(view_of(who));
  EXPECT_EQ(who[0], rank < 2 ? 1.0f : 5.0f);
  who = {float(rank)};
  groups.pp->all_reduce_sum(view_of(who));
  EXPECT_EQ(who[0], rank % 2 == 0 ? 2.0f : 4.0f);
}

TEST(MpiCommunicator, SplitMakesOrderedSubGroups) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  // even and odd ranks, ordered by descending world rank
  auto half = world->split(world->rank() % 2, -world->rank());
  EXPECT_EQ(half->size(), 2);
  EXPECT_EQ(half->rank(), world->rank() < 2 ? 1 : 0);
  std::vector<float> v = {float(world->rank())};
  half->all_reduce_sum(view_of(v));
  EXPECT_EQ(v[0], world->rank() % 2 == 0 ? 2.0f : 4.0f);
}

// The shared-memory all-reduce (all 4 ranks share this node): the sums in rank order, ((v0 + v1) + v2) + v3, the
// same bits on every rank. The values make the order matter (floats near 1e8 are 8 apart): rank order gives 11 x m
// where pairwise, as recursive doubling adds, gives 8 x m, and no rank's own value is the sum. They change with the
// call `k`, so a result left in a slot by an earlier call cannot pass for this one's.
namespace {
float order_value(int rank, std::int64_t i, int k) {
  const float base[4] = {1e8f, 1.0f, -99999992.0f, 3.0f};
  return base[rank] * float(1 + (i + k) % 5);
}
float in_rank_order(std::int64_t i, int k) {
  float sum = order_value(0, i, k);
  for (int r = 1; r < 4; ++r) sum += order_value(r, i, k);
  return sum;
}
std::vector<float> order_values(int rank, std::int64_t n, int k) {
  std::vector<float> v;
  for (std::int64_t i = 0; i < n; ++i) v.push_back(order_value(rank, i, k));
  return v;
}
// Elements of the first n whose rank-order sum is wrong in v.
std::int64_t wrong_sums(const std::vector<float>& v, std::int64_t n, int k) {
  std::int64_t wrong = 0;
  for (std::int64_t i = 0; i < n; ++i) wrong += v[std::size_t(i)] != in_rank_order(i, k);
  return wrong;
}
}  // namespace

TEST(ShmAllReduce, SumsInRankOrderOnEveryRank) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const float pairwise = (order_value(0, 0, 0) + order_value(1, 0, 0)) + (order_value(2, 0, 0) + order_value(3, 0, 0));
  ASSERT_NE(pairwise, in_rank_order(0, 0)) << "the values must tell the orders apart";
  for (int r = 0; r < 4; ++r) ASSERT_NE(order_value(r, 0, 0), in_rank_order(0, 0)) << "rank " << r;
  auto shm = ShmAllReduce::create(MPI_COMM_WORLD);
  ASSERT_NE(shm, nullptr) << "4 ranks on one node: the segment must be made";
  // Fewer values than ranks (empty shares), none, odd sizes, a full slot; sizes alternating, both slots reused.
  const std::int64_t sizes[] = {1, 3, 1001, ShmAllReduce::kSlotFloats, 0, 2, 1001, 3, ShmAllReduce::kSlotFloats, 7};
  for (int k = 0; k < int(std::size(sizes)); ++k) {
    std::vector<float> v = order_values(rank, sizes[k], k);
    shm->sum(v.data(), sizes[k]);
    EXPECT_EQ(wrong_sums(v, sizes[k], k), 0) << sizes[k] << " values on rank " << rank << ", call " << k;
  }
}

TEST(ShmAllReduce, ACountMismatchIsNamedOnEveryRankAndTheSumsAroundItAreWhole) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  auto shm = ShmAllReduce::create(MPI_COMM_WORLD);
  ASSERT_NE(shm, nullptr);
  // A full slot before the mismatch, so that its sums take a while to copy back: a rank that left the mismatched
  // call early would overwrite that slot with the next sum while a slower rank still copies from it.
  const std::int64_t n = ShmAllReduce::kSlotFloats;
  for (int round = 0; round < 20; ++round) {
    std::vector<float> before = order_values(rank, n, round);
    shm->sum(before.data(), n);
    std::vector<float> v(12, 1.0f);
    try {
      shm->sum(v.data(), rank < 2 ? 10 : 12);
      ADD_FAILURE() << "rank " << rank << ": a sum of different counts must fail";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("every rank must give the same count"), std::string::npos) << e.what();
    }
    EXPECT_EQ(wrong_sums(before, n, round), 0) << "the sum before the mismatch, rank " << rank;
    std::vector<float> after = order_values(rank, 998, round + 1);
    shm->sum(after.data(), 998);
    EXPECT_EQ(wrong_sums(after, 998, round + 1), 0) << "the sum after the mismatch, rank " << rank;
  }
}

TEST(ShmAllReduce, TurnedOffByTheEnvironmentOfAnyRank) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 2) setenv("STRATA_MPI_SHM_ALLREDUCE", "0", 1);  // one rank only: the group agrees on none
  EXPECT_EQ(ShmAllReduce::create(MPI_COMM_WORLD), nullptr);
  unsetenv("STRATA_MPI_SHM_ALLREDUCE");
  EXPECT_NE(ShmAllReduce::create(MPI_COMM_WORLD), nullptr);
}

// The communicator's small sums go through the segment: rank order (with STRATA_MPI_SHM_ALLREDUCE=0, Open MPI 4.1's
// order gives other bits here: checked). A sum over a slot goes to MPI_Allreduce: exact on small integers in any
// order.
TEST(MpiCommunicator, AllReduceUsesSharedMemoryUpToASlot) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  std::vector<float> small = order_values(world->rank(), 7, 0);
  world->all_reduce_sum(view_of(small));
  EXPECT_EQ(wrong_sums(small, 7, 0), 0);
  std::vector<float> large = values(std::size_t(ShmAllReduce::kSlotFloats + 5), float(world->rank() + 1));
  world->all_reduce_sum(view_of(large));
  EXPECT_EQ(large.front(), 10.0f);
  EXPECT_EQ(large.back(), 10.0f);
}

namespace {
// Shares of `rows` over 4 ranks: even, and uneven (rank 1's empty, rank 2's most of them: the starts a balanced
// step may give).
std::vector<std::vector<std::int64_t>> shares_of(std::int64_t rows) {
  return {even_row_starts(4, rows), {0, rows / 5, rows / 5, rows - rows / 10, rows}};
}
}  // namespace

// Sequence parallelism's reduce-scatter: rank r gets the rank-order sums of its rows [starts[r], starts[r + 1])
// (the values tell the orders apart, as above), rows of several elements included, shares even or not; a share of
// no rows is a no-op. The in-place all-gather of rows that follows it gives every rank every share.
TEST(MpiCommunicator, ReduceScatterSumsEachRanksRowsInRankOrderAndAllGatherGathersInPlace) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  const int rank = world->rank();
  for (const std::int64_t rows : {1, 5, 300})
    for (const std::vector<std::int64_t>& starts : shares_of(4 * rows)) {
      const std::int64_t width = 3, n = 4 * rows * width;  // every rank's rows, in elements
      const std::int64_t first = starts[std::size_t(rank)], own = starts[std::size_t(rank) + 1] - first;
      std::vector<float> data = order_values(rank, n, int(rows)), share(std::size_t(own * width) + 1, -1.0f);
      world->reduce_scatter_sum(TensorView{data.data(), {4 * rows, width}, DType::F32}, starts,
                                TensorView{share.data(), {own, width}, DType::F32});
      std::int64_t wrong = 0;
      for (std::int64_t i = 0; i < own * width; ++i)
        wrong += share[std::size_t(i)] != in_rank_order(first * width + i, int(rows));
      EXPECT_EQ(wrong, 0) << rows << " rows of " << width << " on rank " << rank << " from row " << first;
      EXPECT_EQ(share.back(), -1.0f) << "past the share, rank " << rank;
      std::vector<float> all(std::size_t(n), -1.0f);
      std::copy_n(share.begin(), own * width, all.begin() + first * width);
      world->all_gather_rows(all.data(), width * sizeof(float), starts);
      EXPECT_EQ(wrong_sums(all, n, int(rows)), 0) << rows << " rows gathered on rank " << rank;
    }
  float none = 0;
  world->reduce_scatter_sum(TensorView{&none, {0, 1}, DType::F32}, even_row_starts(4, 0),
                            TensorView{&none, {0, 1}, DType::F32});
  EXPECT_EQ(none, 0.0f);
  const std::int64_t backwards[] = {0, 3, 2, 4, 4};  // starts out of order are refused, naming them
  EXPECT_THROW(world->reduce_scatter_sum(TensorView{&none, {4, 1}, DType::F32}, backwards,
                                         TensorView{&none, {0, 1}, DType::F32}),
               Error);
}

// The group's default all-gather of rows (through all_to_all, for groups without MPI_Allgatherv) agrees with MPI's.
TEST(MpiCommunicator, DefaultAllGatherOfRowsGathersUnevenShares) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  const int rank = world->rank();
  for (const std::vector<std::int64_t>& starts : shares_of(40)) {
    std::vector<std::int32_t> rows(80, -1);  // 2 values a row
    for (std::int64_t t = starts[std::size_t(rank)]; t < starts[std::size_t(rank) + 1]; ++t)
      rows[std::size_t(2 * t)] = rank, rows[std::size_t(2 * t + 1)] = std::int32_t(t);
    world->Collectives::all_gather_rows(rows.data(), 2 * sizeof(std::int32_t), starts);
    for (int r = 0; r < 4; ++r)
      for (std::int64_t t = starts[std::size_t(r)]; t < starts[std::size_t(r) + 1]; ++t)
        ASSERT_TRUE(rows[std::size_t(2 * t)] == r && rows[std::size_t(2 * t + 1)] == t)
            << "row " << t << " of rank " << r << " on rank " << rank;
  }
}

// The same in the group's shared workspace (shm_rows.h: each rank sums its rows out of every rank's memory): rank
// order, data anywhere in the workspace, repeated calls reusing the memory; ranks giving different rows all get an
// error naming them, and the calls around it are whole. Without shared memory (STRATA_MPI_SHM_ALLREDUCE=0 on any
// rank) the workspace is empty and the sends serve. All of every rank's values can be handed over unsummed
// (all_reduce_with).
TEST(MpiCommunicator, ReduceScatterInTheSharedWorkspaceSumsInPlaceInRankOrder) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  const int rank = world->rank();
  const std::int64_t width = 3, most = 300 * width;
  Buffer workspace = world->shared_workspace(std::size_t(7 + 4 * most) * sizeof(float));
  ASSERT_NE(workspace.data(), nullptr) << "4 ranks on one node: the workspace must be made";
  auto* floats = static_cast<float*>(workspace.data());
  for (int round = 0; round < 3; ++round)
    for (const std::int64_t rows : {1, 5, 300})
      for (const std::int64_t at : {0, 7})
        for (const std::vector<std::int64_t>& starts : shares_of(4 * rows)) {
          const std::int64_t n = 4 * rows * width, first = starts[std::size_t(rank)];
          const std::int64_t own = starts[std::size_t(rank) + 1] - first;
          const std::vector<float> mine = order_values(rank, n, int(rows + at + round));
          std::copy(mine.begin(), mine.end(), floats + at);
          std::vector<float> share(std::size_t(own * width), -1.0f);
          world->reduce_scatter_sum(TensorView{floats + at, {4 * rows, width}, DType::F32}, starts,
                                    TensorView{share.data(), {own, width}, DType::F32});
          std::int64_t wrong = 0;
          for (std::int64_t i = 0; i < own * width; ++i)
            wrong += share[std::size_t(i)] != in_rank_order(first * width + i, int(rows + at + round));
          EXPECT_EQ(wrong, 0) << rows << " rows at " << at << " on rank " << rank << " from row " << first << ", round "
                              << round;
        }
  // Shares that do not follow one another (rank 1's ending past rank 2's start) are refused on every rank.
  std::vector<float> share(12);
  try {
    const std::vector<std::int64_t> starts =
        rank == 1 ? std::vector<std::int64_t>{0, 10, 21, 30, 40} : std::vector<std::int64_t>{0, 10, 20, 30, 40};
    const std::int64_t rows = starts[std::size_t(rank) + 1] - starts[std::size_t(rank)];
    world->reduce_scatter_sum(TensorView{floats, {40}, DType::F32}, starts,
                              TensorView{share.data(), {rows}, DType::F32});
    ADD_FAILURE() << "rank " << rank << ": a reduce-scatter of different rows must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("every rank must give the same rows"), std::string::npos) << e.what();
  }
  const std::vector<float> mine = order_values(rank, 8, 9);
  std::copy(mine.begin(), mine.end(), floats);
  world->reduce_scatter_sum(TensorView{floats, {8}, DType::F32}, even_row_starts(4, 8),
                            TensorView{share.data(), {2}, DType::F32});
  EXPECT_EQ(share[0], in_rank_order(rank * 2, 9));
  EXPECT_EQ(share[1], in_rank_order(rank * 2 + 1, 9));
  std::vector<float> elsewhere(8);
  // An all-reduce's operands handed over unsummed: parts[r] is all of rank r's data, on every rank.
  std::copy(mine.begin(), mine.end(), floats + 3);
  std::vector<float> seen;
  EXPECT_TRUE(world->all_reduce_with(TensorView{floats + 3, {2, 4}, DType::F32}, [&](auto parts) {
    for (const float* part : parts) seen.insert(seen.end(), part, part + 8);
  }));
  ASSERT_EQ(seen.size(), 32u);
  for (int r = 0; r < 4; ++r)
    for (int i = 0; i < 8; ++i) EXPECT_EQ(seen[std::size_t(8 * r + i)], order_value(r, i, 9)) << r << i;
  EXPECT_FALSE(world->all_reduce_with(TensorView{elsewhere.data(), {8}, DType::F32}, [](auto) {}));
  // Ranks in different calls over the same values (an all-reduce against a reduce-scatter) all get an error.
  try {
    const TensorView data{floats, {8}, DType::F32};
    if (rank == 2)
      world->reduce_scatter_sum(data, even_row_starts(4, 8), TensorView{share.data(), {2}, DType::F32});
    else
      world->all_reduce_with(data, [](auto) {});
    ADD_FAILURE() << "rank " << rank << ": an all-reduce beside a reduce-scatter must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("every rank must give the same rows"), std::string::npos) << e.what();
  }
  if (rank == 1) setenv("STRATA_MPI_SHM_ALLREDUCE", "0", 1);
  EXPECT_EQ(world->shared_workspace(4096).data(), nullptr) << "one rank turned shared memory off";
  unsetenv("STRATA_MPI_SHM_ALLREDUCE");
}

// Rounds on a shared workspace (SharedRows): each rank hands every other rank its rows of a round and reads its own
// rows out of every other rank's memory, with no meeting of the group. Rank 3 reads slowly every round: the others,
// which begin their next round at once, must wait for it before writing again (else it reads the next round's
// values). A writer that hands over other rows than the reader takes is named to that reader, and the rounds go on.
TEST(MpiCommunicator, RoundsHandEachRankItsRowsInPlace) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  const int rank = world->rank(), ranks = world->size();
  ASSERT_EQ(ranks, 4);
  const std::int64_t per_rank = 64;
  Buffer workspace = world->shared_workspace(std::size_t(ranks * per_rank) * sizeof(float));
  ASSERT_NE(workspace.data(), nullptr) << "4 ranks on one node: the workspace must be made";
  SharedRows* rounds = world->shared_rows(workspace.data());
  ASSERT_NE(rounds, nullptr);
  EXPECT_EQ(world->shared_rows(static_cast<char*>(workspace.data()) + 4), nullptr) << "only a workspace's start";
  EXPECT_EQ(rounds->rank(), rank);
  EXPECT_EQ(rounds->bytes(), std::size_t(ranks * per_rank) * sizeof(float));
  const auto value = [](int writer, int reader, std::int64_t i, int round) {
    return float(writer * 1000000 + reader * 10000 + round * 100 + i);
  };
  std::int64_t wrong = 0;
  for (int round = 0; round < 20; ++round) {
    auto* mine = static_cast<float*>(rounds->begin_round());
    for (int k = 1; k < ranks; ++k) {  // every other rank's rows, each handed over once written
      const int reader = (rank + k) % ranks;
      for (std::int64_t i = 0; i < per_rank; ++i) mine[reader * per_rank + i] = value(rank, reader, i, round);
      rounds->publish(reader, reader * per_rank, per_rank);
    }
    if (rank == 3) usleep(2000);
    for (int writer = 0; writer < ranks; ++writer) {
      if (writer == rank) continue;
      const auto* theirs = static_cast<const float*>(rounds->rows_from(writer, rank * per_rank, per_rank));
      for (std::int64_t i = 0; i < per_rank; ++i) wrong += theirs[rank * per_rank + i] != value(writer, rank, i, round);
    }
    rounds->end_reading();
  }
  EXPECT_EQ(wrong, 0) << "rank " << rank << " read rows of another round";
  // Rank 2 hands rank 1 rows 0..5 where rank 1 takes its own 64.
  rounds->begin_round();
  for (int k = 1; k < ranks; ++k) {
    const int reader = (rank + k) % ranks;
    rounds->publish(reader, rank == 2 && reader == 1 ? 0 : reader * per_rank, rank == 2 && reader == 1 ? 5 : per_rank);
  }
  std::string error;
  for (int writer = 0; writer < ranks && error.empty(); ++writer) {
    if (writer == rank) continue;
    try {
      rounds->rows_from(writer, rank * per_rank, per_rank);
    } catch (const Error& e) {
      error = e.what();
    }
  }
  if (error.empty()) rounds->end_reading();
  if (rank == 1)
    EXPECT_NE(error.find("rank 2 gave rank 1 rows 0..5 where rank 1 takes 64..128"), std::string::npos) << error;
  else
    EXPECT_EQ(error, "") << "rank " << rank;
  // After the rounds, the workspace serves the collectives again once no rank still reads it.
  rounds->await_readers();
  auto* floats = static_cast<float*>(workspace.data());
  const std::vector<float> ordered = order_values(rank, 8, 11);
  std::copy(ordered.begin(), ordered.end(), floats);
  std::vector<float> share(2);
  world->reduce_scatter_sum(TensorView{floats, {8}, DType::F32}, even_row_starts(4, 8),
                            TensorView{share.data(), {2}, DType::F32});
  EXPECT_EQ(share[0], in_rank_order(rank * 2, 11));
  EXPECT_EQ(share[1], in_rank_order(rank * 2 + 1, 11));
  std::vector<float> elsewhere(8);
  EXPECT_EQ(world->shared_rows(elsewhere.data()), nullptr) << "memory outside a workspace has no rounds";
}
