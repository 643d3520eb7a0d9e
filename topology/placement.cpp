// Rank placement from the topology; see placement.h.
#include "topology/placement.h"

#include <algorithm>
#include <functional>
#include <numeric>

#include "runtime/base/error.h"

namespace strata {
namespace {

// Groups of ranks on one node that may share a TP group: NVLink islands (connected components of the NVLink graph,
// rank i of the node driving device i), or the whole node when it has no NVLink.
std::vector<std::vector<int>> islands_of(const NodeTopology& node) {
  bool any_nvlink = false;
  for (const auto& d : node.devices) any_nvlink = any_nvlink || !d.nvlink_peers.empty();
  if (!any_nvlink) return {node.ranks};
  std::vector<int> component(node.devices.size(), -1);
  std::function<void(std::size_t, int)> mark = [&](std::size_t device, int label) {
    if (component[device] >= 0) return;
    component[device] = label;
    for (int peer : node.devices[device].nvlink_peers)
      for (std::size_t k = 0; k < node.devices.size(); ++k)
        if (node.devices[k].id == peer) mark(k, label);
  };
  int labels = 0;
  for (std::size_t d = 0; d < node.devices.size(); ++d)
    if (component[d] < 0) mark(d, labels++);
  std::vector<std::vector<int>> islands(static_cast<std::size_t>(labels));
  for (std::size_t local = 0; local < node.ranks.size(); ++local)
    islands[std::size_t(component[local])].push_back(node.ranks[local]);
  islands.erase(std::remove_if(islands.begin(), islands.end(), [](const auto& i) { return i.empty(); }), islands.end());
  return islands;
}

// The largest tp that divides every island's size (1 always does).
int largest_fitting_tp(const std::vector<std::vector<int>>& islands) {
  int g = 0;
  for (const auto& island : islands) g = std::gcd(g, int(island.size()));
  return std::max(g, 1);
}

}  // namespace

Placement place_ranks(const Topology& topology, LayoutSizes sizes, bool force) {
  const int world = topology.world_size();
  if (sizes.dp == 0) {
    STRATA_CHECK(world % (sizes.pp * sizes.tp) == 0, Usage, "world size ", world,
                 " is not a multiple of pipeline-parallel x tensor-parallel = ", sizes.pp, " x ", sizes.tp, " = ",
                 sizes.pp * sizes.tp, "; launch a multiple of ", sizes.pp * sizes.tp, " ranks");
    sizes.dp = world / (sizes.pp * sizes.tp);
  }
  STRATA_CHECK(sizes.world() == world, Usage, "world size ", world,
               " does not equal data-parallel x pipeline-parallel x tensor-parallel = ", sizes.dp, " x ", sizes.pp,
               " x ", sizes.tp, " = ", sizes.world());

  Placement placement{sizes, {}, {}};
  std::vector<std::string> problems;
  std::vector<std::vector<int>> all_islands;
  for (const auto& node : topology.nodes) {
    for (auto island : islands_of(node)) {
      std::sort(island.begin(), island.end());
      if (int(island.size()) % sizes.tp != 0)
        problems.push_back(cat(island.size() == node.ranks.size() ? "node " : "an NVLink island of node ",
                               node.hostname, " has ", island.size(),
                               " rank(s), not a multiple of tensor-parallel size ", sizes.tp, ": a TP group would ",
                               island.size() == node.ranks.size() ? "span nodes" : "communicate over PCIe"));
      all_islands.push_back(island);
    }
  }
  if (!problems.empty()) {
    std::string reason;
    for (const auto& p : problems) reason += (reason.empty() ? "" : "; ") + p;
    // Suggest the largest TP every island can hold, trading the lost TP ranks for pipeline stages when they divide.
    const int tp = largest_fitting_tp(all_islands);
    const int pp = sizes.tp % tp == 0 ? sizes.pp * (sizes.tp / tp) : sizes.pp;
    STRATA_CHECK(force, Usage, reason, ". A layout that keeps every TP group together: -tp ", tp, " -pp ", pp,
                 " (or pass --force to run this one anyway)");
    placement.warnings = problems;
    placement.ranks_by_position.resize(std::size_t(world));
    std::iota(placement.ranks_by_position.begin(), placement.ranks_by_position.end(), 0);
    return placement;
  }
  // TP groups: consecutive ranks of each island, islands in node order; group g becomes (dp, pp) = (g / pp, g % pp).
  for (const auto& island : all_islands)
    placement.ranks_by_position.insert(placement.ranks_by_position.end(), island.begin(), island.end());
  return placement;
}

}  // namespace strata
