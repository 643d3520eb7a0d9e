// `strata topo`: what strata sees of the machine (detected over MPI, or read from a description file), as a table
// or as the JSON description format (which --topology FILE reads back).
#include <cstdio>

#include "launch/commands.h"
#include "launch/mpi_job.h"
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
  return with_topology(o.topology, argc, argv, [&](const Topology& topology) { print(topology, o.json); });
}

}  // namespace strata
