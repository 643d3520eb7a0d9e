// Placement: which world ranks form each tensor-parallel group and pipeline stage, from the topology. TP groups
// (one all-reduce per layer half, the heaviest traffic) stay inside one node, and inside one NVLink island where a
// node has several; the stages of a replica take consecutive groups in node order, so pipeline neighbours are on the
// same node or the next; data-parallel replicas take the rest. A layout the hardware cannot serve well is refused
// with the reason and a layout that would work, unless forced.
#pragma once
#include <string>
#include <vector>

#include "runtime/base/parallel_layout.h"
#include "topology/topology.h"

namespace strata {

struct Placement {
  LayoutSizes sizes;
  std::vector<int> ranks_by_position;  // world rank at position (dp * pp + pp_rank) * tp + tp_rank
  std::vector<std::string> warnings;   // problems accepted with force
};

// sizes.dp == 0: world / (pp * tp). Throws Error(Usage) naming the problem and a working layout when a TP group
// would span nodes or NVLink islands, unless `force` (then the problems become warnings and the default formula
// order is used).
Placement place_ranks(const Topology& topology, LayoutSizes sizes, bool force);

}  // namespace strata
