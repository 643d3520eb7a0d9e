// The rank formula and group membership; see parallel_layout.h.
#include "runtime/base/parallel_layout.h"

#include <algorithm>

#include "runtime/base/error.h"

namespace strata {

ParallelLayout::ParallelLayout(LayoutSizes sizes, int world_size, int world_rank)
    : sizes_(sizes), world_rank_(world_rank) {
  STRATA_CHECK(sizes.dp >= 1 && sizes.pp >= 1 && sizes.tp >= 1, Usage, "parallel sizes must be >= 1 (got dp ", sizes.dp,
               ", pp ", sizes.pp, ", tp ", sizes.tp, ")");
  STRATA_CHECK(world_size == sizes.world(), Usage, "world size ", world_size,
               " does not equal data-parallel x pipeline-parallel x tensor-parallel = ", sizes.dp, " x ", sizes.pp,
               " x ", sizes.tp, " = ", sizes.world(), "; launch ", sizes.world(),
               " ranks or change --tensor-parallel-size/--pipeline-parallel-size/--data-parallel-size");
  STRATA_CHECK(world_rank >= 0 && world_rank < world_size, Internal, "rank ", world_rank, " outside world of ",
               world_size);
  tp_rank_ = world_rank % sizes.tp;
  pp_rank_ = (world_rank / sizes.tp) % sizes.pp;
  dp_rank_ = world_rank / (sizes.tp * sizes.pp);
  rank_at_.resize(std::size_t(world_size));
  for (int r = 0; r < world_size; ++r) rank_at_[std::size_t(r)] = r;
}

ParallelLayout::ParallelLayout(LayoutSizes sizes, std::vector<int> ranks_by_position, int world_rank)
    : ParallelLayout(sizes, int(ranks_by_position.size()), world_rank) {
  std::vector<bool> seen(ranks_by_position.size(), false);
  for (int r : ranks_by_position) {
    STRATA_CHECK(r >= 0 && r < int(seen.size()) && !seen[std::size_t(r)], Internal,
                 "placement is not a permutation of the world's ranks");
    seen[std::size_t(r)] = true;
  }
  rank_at_ = std::move(ranks_by_position);
  const int position = int(std::find(rank_at_.begin(), rank_at_.end(), world_rank) - rank_at_.begin());
  tp_rank_ = position % sizes.tp;
  pp_rank_ = (position / sizes.tp) % sizes.pp;
  dp_rank_ = position / (sizes.tp * sizes.pp);
}

int ParallelLayout::rank_of(int dp_rank, int pp_rank, int tp_rank) const {
  return rank_at_[std::size_t((dp_rank * sizes_.pp + pp_rank) * sizes_.tp + tp_rank)];
}

int ParallelLayout::replica_of(int world_rank) const {
  const auto at = std::find(rank_at_.begin(), rank_at_.end(), world_rank);
  STRATA_CHECK(at != rank_at_.end(), Internal, "rank ", world_rank, " outside world of ", rank_at_.size());
  return int(at - rank_at_.begin()) / (sizes_.tp * sizes_.pp);
}

std::vector<int> ParallelLayout::replica_ranks(int dp_rank) const {
  const auto per_replica = std::size_t(sizes_.tp * sizes_.pp);
  const auto first = rank_at_.begin() + std::int64_t(std::size_t(dp_rank) * per_replica);
  return std::vector<int>(first, first + std::int64_t(per_replica));
}

std::vector<int> ParallelLayout::tp_group() const {
  std::vector<int> ranks;
  for (int t = 0; t < sizes_.tp; ++t) ranks.push_back(rank_of(dp_rank_, pp_rank_, t));
  return ranks;
}

std::vector<int> ParallelLayout::pp_group() const {
  std::vector<int> ranks;
  for (int p = 0; p < sizes_.pp; ++p) ranks.push_back(rank_of(dp_rank_, p, tp_rank_));
  return ranks;
}

std::vector<int> ParallelLayout::dp_group() const {
  std::vector<int> ranks;
  for (int d = 0; d < sizes_.dp; ++d) ranks.push_back(rank_of(d, pp_rank_, tp_rank_));
  return ranks;
}

int ParallelLayout::next_stage_rank() const {
  STRATA_CHECK(!is_last_stage(), Internal, "the last stage has no next stage");
  return rank_of(dp_rank_, pp_rank_ + 1, tp_rank_);
}

int ParallelLayout::prev_stage_rank() const {
  STRATA_CHECK(!is_first_stage(), Internal, "the first stage has no previous stage");
  return rank_of(dp_rank_, pp_rank_ - 1, tp_rank_);
}

std::string ParallelLayout::coordinates() const { return cat("dp ", dp_rank_, " pp ", pp_rank_, " tp ", tp_rank_); }

}  // namespace strata
