// Node discovery over MPI.
#include "topology/node.h"

#include <sched.h>
#include <unistd.h>

#include <thread>

#include "runtime/comm/mpi/mpi_communicator.h"

namespace strata {

NodeInfo discover_node(MPI_Comm world) {
  NodeInfo info;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  info.hostname = host;

  int world_rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_rank(world, &world_rank));
  MPI_Comm node = MPI_COMM_NULL;
  STRATA_MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node));
  STRATA_MPI_CHECK(MPI_Comm_rank(node, &info.local_rank));
  STRATA_MPI_CHECK(MPI_Comm_size(node, &info.local_size));

  // The node's leader (local rank 0) numbers nodes: leaders in world-rank order get 0, 1, ...
  int leader_world_rank = world_rank;
  STRATA_MPI_CHECK(MPI_Bcast(&leader_world_rank, 1, MPI_INT, 0, node));
  MPI_Comm leaders = MPI_COMM_NULL;
  STRATA_MPI_CHECK(MPI_Comm_split(world, info.local_rank == 0 ? 0 : MPI_UNDEFINED, world_rank, &leaders));
  if (leaders != MPI_COMM_NULL) {
    STRATA_MPI_CHECK(MPI_Comm_rank(leaders, &info.node_index));
    STRATA_MPI_CHECK(MPI_Comm_size(leaders, &info.node_count));
    STRATA_MPI_CHECK(MPI_Comm_free(&leaders));
  }
  int numbers[2] = {info.node_index, info.node_count};
  STRATA_MPI_CHECK(MPI_Bcast(numbers, 2, MPI_INT, 0, node));
  info.node_index = numbers[0];
  info.node_count = numbers[1];
  STRATA_MPI_CHECK(MPI_Comm_free(&node));

  cpu_set_t set;
  CPU_ZERO(&set);
  info.cpu_cores =
      sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : int(std::thread::hardware_concurrency());
  return info;
}

int cpu_threads_per_rank(const NodeInfo& node) {
  // A launcher that binds ranks (mpirun's default for few ranks, srun --cpu-bind) already gave each rank its own
  // cores; an unbound rank sees the whole machine and shares it with the node's other ranks.
  const int machine = int(std::thread::hardware_concurrency());
  if (node.cpu_cores < machine) return std::max(1, node.cpu_cores);
  return std::max(1, node.cpu_cores / std::max(1, node.local_size));
}

}  // namespace strata
