// `strata plan`: the RunPlan a job would run, before anything loads: where every rank goes (host, coordinates,
// layers), its memory, and traffic per generated token. From a description file (no MPI) or detected under mpirun.
#include <cstdio>

#include "io/checkpoint.h"
#include "launch/mpi_job.h"
#include "launch/session.h"

namespace strata {
namespace {

std::string plan_for(const Topology& topology, const PlanOptions& o) {
  const Manifest manifest = Manifest::read(o.model);
  const ModelConfig config = ModelConfig::from_json(manifest.model, manifest_path(o.model));
  const RunPlan plan = make_run_plan(plan_request(manifest, config, topology, o.parallel, o.limits));
  std::string text;
  for (const auto& note : plan.notes) text += "auto: " + note + "\n";
  for (const auto& warning : plan.warnings) text += "warning: " + warning + " (running anyway: --force)\n";
  return text + plan.table();
}

}  // namespace

int run_plan(const PlanOptions& o, int argc, char** argv) {
  return with_topology(o.parallel.topology, argc, argv,
                       [&](const Topology& topology) { std::printf("%s", plan_for(topology, o).c_str()); });
}

}  // namespace strata
