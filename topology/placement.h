// Placement: which world ranks form each tensor-parallel group and pipeline stage, from the topology. TP groups
// (one all-reduce per layer half, the heaviest traffic) stay inside one node, and inside one NVLink island where a
// node has several; the stages of a replica take consecutive groups in node order, so pipeline neighbours are on the
// same node or the next; data-parallel replicas take the rest. Sizes may be `auto`: the smallest TP that fits the
// model's memory within a node, then pipeline stages across nodes, then data parallelism for what is left. A layout
// the hardware cannot serve well (a TP group across nodes or NVLink islands, a model that does not fit) is refused
// with the reason and a layout that would work, unless forced.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/base/parallel_layout.h"
#include "topology/topology.h"

namespace strata {

// The model's side of placement, supplied by launch/ (topology/ knows nothing of models).
struct ModelFit {
  // "" when the model splits into tp x pp (heads, KV heads and layers divide); otherwise why it does not.
  std::function<std::string(int tp, int pp)> split_problem;
  // Bytes the busiest rank of a tp x pp layout allocates (weights, KV-cache budget, workspace).
  std::function<std::int64_t(int tp, int pp)> bytes_per_rank;
  bool on_gpus = false;  // compare against GPU memory rather than the host memory shared by a node's ranks
};

struct Placement {
  LayoutSizes sizes;
  std::vector<int> ranks_by_position;  // world rank at position (dp * pp + pp_rank) * tp + tp_rank
  std::vector<std::string> warnings;   // problems accepted with force
  std::vector<std::string> notes;      // how `auto` sizes were chosen
};

// A size of 0 means `auto` (dp 0: world / (pp * tp) when tp and pp are given). Throws Error(Usage) naming the
// problem and a working layout when a TP group would span nodes or NVLink islands, or (with `model` and a topology
// that states memory) when the busiest rank would not fit, unless `force` (then the problems become warnings; a TP
// problem falls back to the default formula order).
Placement place_ranks(const Topology& topology, LayoutSizes sizes, bool force, const ModelFit* model = nullptr);

// NVLink islands: connected components of the devices' NVLink graph, as lists of device positions (index into
// `devices`), in order of their first device. Devices without NVLink are islands of one.
std::vector<std::vector<int>> nvlink_islands(const std::vector<Device>& devices);

}  // namespace strata
