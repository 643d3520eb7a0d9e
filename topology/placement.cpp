// Rank placement from the topology; see placement.h.
#include "topology/placement.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <optional>

#include "runtime/base/error.h"

namespace strata {

std::vector<std::vector<int>> nvlink_islands(const std::vector<Device>& devices) {
  std::vector<int> component(devices.size(), -1);
  std::function<void(std::size_t, int)> mark = [&](std::size_t device, int label) {
    if (component[device] >= 0) return;
    component[device] = label;
    for (int peer : devices[device].nvlink_peers)
      for (std::size_t k = 0; k < devices.size(); ++k)
        if (devices[k].id == peer) mark(k, label);
  };
  int labels = 0;
  for (std::size_t d = 0; d < devices.size(); ++d)
    if (component[d] < 0) mark(d, labels++);
  std::vector<std::vector<int>> islands(static_cast<std::size_t>(labels));
  for (std::size_t d = 0; d < devices.size(); ++d) islands[std::size_t(component[d])].push_back(int(d));
  return islands;
}

namespace {

// Groups of ranks on one node that may share a TP group: NVLink islands (rank i of the node driving device i), or
// the whole node when it has no NVLink.
std::vector<std::vector<int>> rank_islands(const NodeTopology& node) {
  bool any_nvlink = false;
  for (const auto& d : node.devices) any_nvlink = any_nvlink || !d.nvlink_peers.empty();
  if (!any_nvlink) return {node.ranks};
  std::vector<std::vector<int>> islands;
  for (const auto& devices : nvlink_islands(node.devices)) {
    std::vector<int> ranks;
    for (int d : devices)
      if (std::size_t(d) < node.ranks.size()) ranks.push_back(node.ranks[std::size_t(d)]);
    if (!ranks.empty()) islands.push_back(ranks);
  }
  return islands;
}

struct Island {
  std::vector<int> ranks;  // sorted
  bool whole_node;
  std::string hostname;
};

std::vector<Island> all_islands(const Topology& topology) {
  std::vector<Island> islands;
  for (const auto& node : topology.nodes)
    for (auto ranks : rank_islands(node)) {
      std::sort(ranks.begin(), ranks.end());
      const bool whole = ranks.size() == node.ranks.size();
      islands.push_back({std::move(ranks), whole, node.hostname});
    }
  return islands;
}

void add_once(std::vector<std::string>& list, std::string item) {
  if (std::find(list.begin(), list.end(), item) == list.end()) list.push_back(std::move(item));
}

// Why TP groups of size `tp` cannot stay inside the islands (empty: they can; each reason once).
std::vector<std::string> tp_problems(const std::vector<Island>& islands, int tp) {
  std::vector<std::string> problems;
  for (const auto& island : islands)
    if (int(island.ranks.size()) % tp != 0)
      add_once(problems, cat(island.whole_node ? "node " : "an NVLink island of node ", island.hostname, " has ",
                             island.ranks.size(), " rank(s), not a multiple of tensor-parallel size ", tp,
                             ": a TP group would ", island.whole_node ? "span nodes" : "communicate over PCIe"));
  return problems;
}

std::string join(const std::vector<std::string>& parts) {
  std::string text;
  for (const auto& p : parts) text += (text.empty() ? "" : "; ") + p;
  return text;
}

std::string gib(std::int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB", double(bytes) / double(1ll << 30));
  return text;
}

struct Choice {
  LayoutSizes sizes;
  std::int64_t bytes = 0;  // per busiest rank; 0 without a model
};

// Every layout consistent with the fixed sizes that the islands and the model's split allow, in preference order:
// fewest pipeline stages first (TP grows inside a node before stages cross nodes), then smallest TP, DP the rest.
std::vector<Choice> candidates(const std::vector<Island>& islands, int world, LayoutSizes fixed,
                               const ModelFit* model) {
  std::vector<Choice> out;
  for (int pp = 1; pp <= world; ++pp) {
    if (fixed.pp && pp != fixed.pp) continue;
    for (int tp = 1; tp * pp <= world; ++tp) {
      if ((fixed.tp && tp != fixed.tp) || world % (tp * pp) != 0) continue;
      const int dp = world / (tp * pp);
      if ((fixed.dp && dp != fixed.dp) || !tp_problems(islands, tp).empty()) continue;
      if (model && model->split_problem && !model->split_problem(tp, pp).empty()) continue;
      out.push_back({{dp, pp, tp}, model && model->bytes_per_rank ? model->bytes_per_rank(tp, pp) : 0});
    }
  }
  return out;
}

std::string flags(const LayoutSizes& s) { return cat("-tp ", s.tp, " -pp ", s.pp, " -dp ", s.dp); }

// The first candidate that fits `capacity` bytes per rank (0: unknown, anything fits).
std::optional<Choice> first_fitting(const std::vector<Choice>& choices, std::int64_t capacity) {
  for (const auto& c : choices)
    if (capacity <= 0 || c.bytes <= capacity) return c;
  return std::nullopt;
}

// Resolves `auto` sizes (0) to the preferred layout that fits; the chosen sizes and a note saying why.
LayoutSizes resolve_auto(const Topology& topology, const std::vector<Island>& islands, LayoutSizes requested,
                         bool force, const ModelFit* model, Placement& placement) {
  const int world = topology.world_size();
  const std::vector<Choice> choices = candidates(islands, world, requested, model);
  const auto want = [&](int v) { return v ? std::to_string(v) : std::string("auto"); };
  const std::string asked = cat("-tp ", want(requested.tp), " -pp ", want(requested.pp), " -dp ", want(requested.dp));
  STRATA_CHECK(!choices.empty(), Usage, "no layout of ", world, " ranks matches ", asked,
               " with every TP group inside one node (or NVLink island) and the model's heads, KV heads and layers "
               "dividing evenly; launch a different number of ranks or fix fewer sizes");
  const std::int64_t capacity = topology.rank_memory_bytes(model && model->on_gpus);
  if (auto fit = first_fitting(choices, capacity)) {
    placement.notes.push_back(cat(asked, " -> ", flags(fit->sizes), ": the smallest TP that fits within a node",
                                  capacity > 0 ? cat(" (", gib(fit->bytes), " of ", gib(capacity), " per rank)") : "",
                                  ", then pipeline stages across nodes, then data parallelism"));
    return fit->sizes;
  }
  const Choice least = *std::min_element(choices.begin(), choices.end(),
                                         [](const Choice& a, const Choice& b) { return a.bytes < b.bytes; });
  const std::string problem = cat("the model does not fit: even ", flags(least.sizes), " needs ", gib(least.bytes),
                                  " on its busiest rank but ranks have ", gib(capacity),
                                  "; add ranks or nodes, or lower --max-batch-size / --max-model-len");
  STRATA_CHECK(force, Memory, problem, " (or pass --force to try anyway)");
  placement.warnings.push_back(problem);
  return least.sizes;
}

}  // namespace

Placement place_ranks(const Topology& topology, LayoutSizes sizes, bool force, const ModelFit* model) {
  const int world = topology.world_size();
  const std::vector<Island> islands = all_islands(topology);
  Placement placement;
  if (sizes.tp == 0 || sizes.pp == 0) {
    sizes = resolve_auto(topology, islands, sizes, force, model, placement);
  } else if (sizes.dp == 0) {
    STRATA_CHECK(world % (sizes.pp * sizes.tp) == 0, Usage, "world size ", world,
                 " is not a multiple of pipeline-parallel x tensor-parallel = ", sizes.pp, " x ", sizes.tp, " = ",
                 sizes.pp * sizes.tp, "; launch a multiple of ", sizes.pp * sizes.tp, " ranks");
    sizes.dp = world / (sizes.pp * sizes.tp);
  }
  STRATA_CHECK(sizes.world() == world, Usage, "world size ", world,
               " does not equal data-parallel x pipeline-parallel x tensor-parallel = ", sizes.dp, " x ", sizes.pp,
               " x ", sizes.tp, " = ", sizes.world());
  placement.sizes = sizes;

  const std::vector<std::string> problems = tp_problems(islands, sizes.tp);
  if (!problems.empty()) {
    // Suggest the largest TP every island can hold, trading the lost TP ranks for pipeline stages when they divide.
    int tp = 0;
    for (const auto& island : islands) tp = std::gcd(tp, int(island.ranks.size()));
    tp = std::max(tp, 1);
    const int pp = sizes.tp % tp == 0 ? sizes.pp * (sizes.tp / tp) : sizes.pp;
    STRATA_CHECK(force, Usage, join(problems), ". A layout that keeps every TP group together: -tp ", tp, " -pp ", pp,
                 " (or pass --force to run this one anyway)");
    placement.warnings.insert(placement.warnings.end(), problems.begin(), problems.end());
    placement.ranks_by_position.resize(std::size_t(world));
    std::iota(placement.ranks_by_position.begin(), placement.ranks_by_position.end(), 0);
    return placement;
  }
  // A fixed layout whose busiest rank needs more memory than the topology gives it: refused with the auto choice.
  const std::int64_t capacity = topology.rank_memory_bytes(model && model->on_gpus);
  if (model && model->bytes_per_rank && capacity > 0 && placement.notes.empty() && placement.warnings.empty()) {
    const std::int64_t need = model->bytes_per_rank(sizes.tp, sizes.pp);
    if (need > capacity) {
      const auto fit = first_fitting(candidates(islands, world, {0, 0, 0}, model), capacity);
      const std::string problem = cat("the model does not fit at ", flags(sizes), ": its busiest rank needs ",
                                      gib(need), " but ranks have ", gib(capacity));
      STRATA_CHECK(
          force, Memory, problem,
          fit ? cat(". A layout that fits: ", flags(fit->sizes)) : std::string(". No layout of these ranks fits"),
          " (or pass --force to run this one anyway)");
      placement.warnings.push_back(problem);
    }
  }
  // TP groups: consecutive ranks of each island, islands in node order; group g becomes (dp, pp) = (g / pp, g % pp).
  for (const auto& island : islands)
    placement.ranks_by_position.insert(placement.ranks_by_position.end(), island.ranks.begin(), island.ranks.end());
  return placement;
}

}  // namespace strata
