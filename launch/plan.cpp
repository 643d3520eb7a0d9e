// `strata plan`: where every rank would go for a model and a layout, before anything loads: host, coordinates,
// layers, memory, and traffic per generated token. From a description file (no MPI) or detected under mpirun.
#include <cstdio>

#include "io/checkpoint.h"
#include "launch/job.h"
#include "runtime/base/log.h"

namespace strata {
namespace {

std::string plan_for(const Topology& topology, const PlanOptions& o) {
  const Manifest manifest = Manifest::read(o.model);
  const ModelConfig config = ModelConfig::from_json(manifest.model, manifest_path(o.model));
  const StageLimits limits = stage_limits(o.limits, config);
  const ModelFit fit = model_fit(config, limits, o.parallel.device == "cuda", manifest.dtype);
  const Placement placement =
      place_ranks(topology, {o.parallel.dp, o.parallel.pp, o.parallel.tp}, o.parallel.force, &fit);
  check_split(config, placement.sizes.tp, placement.sizes.pp);
  const ParallelLayout layout(placement.sizes, placement.ranks_by_position, 0);
  std::string text;
  for (const auto& note : placement.notes) text += "auto: " + note + "\n";
  for (const auto& warning : placement.warnings) text += "warning: " + warning + " (running anyway: --force)\n";
  return text + plan_table(topology, layout, config, limits, o.parallel.device == "cuda", manifest.dtype);
}

}  // namespace

int run_plan(const PlanOptions& o, int argc, char** argv) {
  return with_topology(o.parallel.topology, argc, argv,
                       [&](const Topology& topology) { std::printf("%s", plan_for(topology, o).c_str()); });
}

}  // namespace strata
