// `strata topo`: what strata sees of the machine (detected over MPI, or read from a description file), as a table
// or as the JSON description format (which --topology FILE reads back).
#include <cstdio>

#include "launch/job.h"
#include "runtime/base/log.h"
#include "topology/topology.h"

namespace strata {
namespace {
void print(const Topology& topology, bool json) {
  if (json)
    std::printf("%s\n", topology.to_json().dump(2).c_str());
  else
    std::printf("%s", topology_table(topology).c_str());
  std::fflush(stdout);
}
}  // namespace

int run_topo(const TopoOptions& o, int argc, char** argv) {
  if (!o.topology.empty()) {  // a description needs no MPI and no hardware
    try {
      print(Topology::load(o.topology), o.json);
      return 0;
    } catch (const std::exception& e) {
      log_line(LogLevel::Error, e.what());
      return 1;
    }
  }
  return run_as_mpi_job(argc, argv, [&](Job& job) {
    const Topology topology = detect_topology(MPI_COMM_WORLD, detect_options());
    int rank = 0;
    STRATA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    if (rank == 0) print(topology, o.json);
    return 0;
  });
}

}  // namespace strata
