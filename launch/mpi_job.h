// Running a command as an MPI job: MPI up, the node discovered, and one policy for failures: any exception on any
// rank prints one line naming the rank, host and coordinates and ends every rank of the job (MPI_Abort), so no
// rank is left waiting in a collective. SIGTERM (mpirun or Slurm ending the job) is reported by each rank before
// it exits.
#pragma once
#include <exception>
#include <functional>
#include <string>

#include "topology/node.h"
#include "topology/topology.h"

namespace strata {

// The line a command prints for an exception: its message, then where strata checked it for a strata::Error
// ("... (at io/results.cpp:57)").
std::string describe_error(const std::exception& e);

int run_as_mpi_job(int argc, char** argv, const std::function<int(const NodeInfo& node)>& body);

// Names this rank in every later log line and in its SIGTERM report ("rank 3 (dp 0 pp 1 tp 1) node7").
void name_this_rank(const std::string& prefix);

// The one place detection reads the process environment (CUDA_VISIBLE_DEVICES, STRATA_NVML_LIBRARY).
DetectOptions detect_options();

// For commands that only look at the machine (topo, plan): the topology from `description` when given (no MPI, no
// hardware), else detected under MPI; `show` runs once (on world rank 0). Returns the process exit code.
int with_topology(const std::string& description, int argc, char** argv,
                  const std::function<void(const Topology&)>& show);

}  // namespace strata
