// The MPI communicator on 4 ranks: collectives with exactly known results, ordered variable-size point-to-point,
// the tp/pp/dp groups built from a ParallelLayout, and the shared-memory all-reduce its groups use on one node.
#include <gtest/gtest.h>

#include <cstdlib>
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
// same bits on every rank. The values make the order matter (1e8 + 1 rounds back to 1e8 in float): pairwise, as
// recursive doubling adds, gives 0 where rank order gives 3.
namespace {
float order_value(int rank, std::int64_t i) {
  const float base[4] = {1e8f, 1.0f, -1e8f, 3.0f};
  return base[rank] * float(1 + i % 5);
}
float in_rank_order(std::int64_t i) {
  float sum = order_value(0, i);
  for (int r = 1; r < 4; ++r) sum += order_value(r, i);
  return sum;
}
std::vector<float> order_values(int rank, std::int64_t n) {
  std::vector<float> v;
  for (std::int64_t i = 0; i < n; ++i) v.push_back(order_value(rank, i));
  return v;
}
}  // namespace

TEST(ShmAllReduce, SumsInRankOrderOnEveryRank) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const float pairwise = (order_value(0, 0) + order_value(1, 0)) + (order_value(2, 0) + order_value(3, 0));
  ASSERT_NE(pairwise, in_rank_order(0)) << "the values must tell the orders apart";
  auto shm = ShmAllReduce::create(MPI_COMM_WORLD);
  ASSERT_NE(shm, nullptr) << "4 ranks on one node: the segment must be made";
  // Fewer values than ranks (empty shares), odd sizes, a full slot; each size twice, so both slots are reused.
  for (const std::int64_t n : {std::int64_t(1), std::int64_t(3), std::int64_t(1001), ShmAllReduce::kSlotFloats,
                               std::int64_t(2), std::int64_t(1001), std::int64_t(3), ShmAllReduce::kSlotFloats}) {
    std::vector<float> v = order_values(rank, n);
    shm->sum(v.data(), n);
    std::int64_t wrong = 0;
    for (std::int64_t i = 0; i < n; ++i) wrong += v[std::size_t(i)] != in_rank_order(i);
    EXPECT_EQ(wrong, 0) << n << " values on rank " << rank;
  }
}

TEST(ShmAllReduce, ACountMismatchIsNamedOnEveryRank) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  auto shm = ShmAllReduce::create(MPI_COMM_WORLD);
  ASSERT_NE(shm, nullptr);
  std::vector<float> v(12, 1.0f);
  try {
    shm->sum(v.data(), rank < 2 ? 10 : 12);
    ADD_FAILURE() << "rank " << rank << ": a sum of different counts must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("every rank must give the same count"), std::string::npos) << e.what();
  }
  std::vector<float> ones(5, 1.0f);  // and the next sum is whole
  shm->sum(ones.data(), 5);
  EXPECT_EQ(ones, std::vector<float>(5, 4.0f));
}

TEST(ShmAllReduce, TurnedOffByTheEnvironment) {
  setenv("STRATA_MPI_SHM_ALLREDUCE", "0", 1);
  EXPECT_EQ(ShmAllReduce::create(MPI_COMM_WORLD), nullptr);
  unsetenv("STRATA_MPI_SHM_ALLREDUCE");
}

TEST(MpiCommunicator, AllReduceUsesSharedMemoryUpToASlot) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  std::vector<float> small = order_values(world->rank(), 7);
  world->all_reduce_sum(view_of(small));
  for (std::int64_t i = 0; i < 7; ++i) EXPECT_EQ(small[std::size_t(i)], in_rank_order(i)) << i;
  // More than a slot: MPI_Allreduce, exact on small integers in any order.
  std::vector<float> large = values(std::size_t(ShmAllReduce::kSlotFloats + 5), float(world->rank() + 1));
  world->all_reduce_sum(view_of(large));
  EXPECT_EQ(large.front(), 10.0f);
  EXPECT_EQ(large.back(), 10.0f);
}
