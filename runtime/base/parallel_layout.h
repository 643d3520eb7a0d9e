// ParallelLayout: the one value that says how the world is split into data-parallel replicas, pipeline stages and
// tensor-parallel ranks, and where this rank sits. No MPI in here; unit-tested rank by rank without MPI.
//
// The default rank formula (written once, here): world_rank = (dp_rank * pp + pp_rank) * tp + tp_rank.
// TP ranks are consecutive (so a TP group shares a node when ranks are packed by node), then PP stages, then
// DP replicas outermost. A placement (topology/placement) may instead give every world rank its coordinates
// explicitly, e.g. when the launcher numbered ranks round-robin over nodes.
#pragma once
#include <string>
#include <vector>

namespace strata {

struct LayoutSizes {
  int dp = 1;
  int pp = 1;
  int tp = 1;
  int world() const { return dp * pp * tp; }
};

class ParallelLayout {
 public:
  // Throws Error(Usage) when world_size != dp*pp*tp or any size < 1, naming the numbers.
  ParallelLayout(LayoutSizes sizes, int world_size, int world_rank);
  // Explicit placement: ranks_by_position[(dp * pp + pp_rank) * tp + tp_rank] is the world rank at those
  // coordinates. Throws Error(Internal) unless it is a permutation of 0..world-1.
  ParallelLayout(LayoutSizes sizes, std::vector<int> ranks_by_position, int world_rank);

  const LayoutSizes& sizes() const { return sizes_; }
  int world_size() const { return sizes_.world(); }
  int world_rank() const { return world_rank_; }
  int dp_rank() const { return dp_rank_; }
  int pp_rank() const { return pp_rank_; }
  int tp_rank() const { return tp_rank_; }
  bool is_first_stage() const { return pp_rank_ == 0; }
  bool is_last_stage() const { return pp_rank_ == sizes_.pp - 1; }
  // Stage 0, tp 0: the rank that speaks for its replica (sends its results, heartbeats, its end marker).
  bool is_replica_leader() const { return pp_rank_ == 0 && tp_rank_ == 0; }

  int rank_of(int dp_rank, int pp_rank, int tp_rank) const;
  // World ranks of this rank's groups, in group-rank order.
  std::vector<int> tp_group() const;
  std::vector<int> pp_group() const;
  std::vector<int> dp_group() const;
  // The world rank of the same tp_rank in the next/previous stage of this replica.
  int next_stage_rank() const;
  int prev_stage_rank() const;
  // The data-parallel replica any world rank belongs to, and all world ranks of replica `dp_rank` (stage-major),
  // from the placement: never from rank arithmetic, since a placement may put a replica's ranks anywhere.
  int replica_of(int world_rank) const;
  std::vector<int> replica_ranks(int dp_rank) const;
  // "dp 0 pp 1 tp 0"
  std::string coordinates() const;

 private:
  LayoutSizes sizes_;
  int world_rank_;
  int dp_rank_, pp_rank_, tp_rank_;
  std::vector<int> rank_at_;  // world rank at each position (coordinates in formula order)
};

}  // namespace strata
