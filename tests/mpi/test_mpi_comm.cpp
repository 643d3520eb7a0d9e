// The MPI communicator on 4 ranks: collectives with exactly known results, ordered variable-size point-to-point,
// and the tp/pp/dp groups built from a ParallelLayout.
#include <gtest/gtest.h>

#include <numeric>

#include "runtime/comm/mpi/mpi_communicator.h"

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
