// Which node this rank runs on and its node-local rank, derived from MPI itself (MPI_Comm_split_type with
// MPI_COMM_TYPE_SHARED), never from one launcher's environment variables, so it is right under mpirun, srun and
// others alike. Link detection and placement build on this (topology issue).
#pragma once
#include <mpi.h>

#include <string>

namespace strata {

struct NodeInfo {
  std::string hostname;
  int node_index = 0;  // nodes numbered by their lowest world rank
  int node_count = 1;
  int local_rank = 0;  // rank among the ranks of this node
  int local_size = 1;
  int cpu_cores = 1;  // cores this process may run on (its affinity mask)
};

// Collective over `world`.
NodeInfo discover_node(MPI_Comm world);

// BLAS threads for one rank: the node's cores shared evenly by its ranks (at least 1).
int cpu_threads_per_rank(const NodeInfo& node);

}  // namespace strata
