// See run_plan.h.
#include "plan/run_plan.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <sstream>

#include "runtime/base/error.h"
#include "topology/placement.h"

namespace strata {
namespace {

StageLimits stage_limits(const RunLimits& limits, const ModelConfig& config) {
  STRATA_CHECK(limits.max_batch_size >= 1, Usage, "--max-batch-size must be >= 1 (got ", limits.max_batch_size, ")");
  STRATA_CHECK(limits.max_num_batched_tokens >= 1, Usage, "--max-num-batched-tokens must be >= 1 (got ",
               limits.max_num_batched_tokens, ")");
  // A longrope model without long factors runs within its original context.
  std::int64_t longest = config.max_position_embeddings;
  const bool longrope = config.rope_scaling.type == "longrope" && config.rope_scaling.long_factor.empty();
  if (longrope) longest = std::min(longest, config.rope_scaling.original_max_position_embeddings);
  const auto model_len = std::int32_t(limits.max_model_len ? limits.max_model_len : longest);
  STRATA_CHECK(model_len >= 2, Usage, "--max-model-len must be >= 2 (got ", model_len, ")");
  STRATA_CHECK(!longrope || model_len <= config.rope_scaling.original_max_position_embeddings, Usage,
               "--max-model-len ", model_len, " exceeds the model's original_max_position_embeddings ",
               config.rope_scaling.original_max_position_embeddings,
               ": the model's longrope has no long_factor for positions beyond it; use --max-model-len <= ",
               config.rope_scaling.original_max_position_embeddings);
  STRATA_CHECK(model_len <= config.max_position_embeddings, Usage, "--max-model-len ", model_len,
               " exceeds the model's max_position_embeddings ", config.max_position_embeddings);
  STRATA_CHECK(limits.block_size >= 1, Usage, "--kv-block-size must be >= 1 (got ", limits.block_size, ")");
  StageLimits stage;
  // Chunked prefill splits prompts to the step's token budget; without it a step holds a whole context, so any
  // prompt that fits the context can be prefilled.
  stage.max_tokens =
      limits.chunked_prefill ? limits.max_num_batched_tokens : std::max(limits.max_num_batched_tokens, model_len);
  stage.max_seqs = limits.max_batch_size;
  stage.max_seq_len = model_len;
  stage.block_size = limits.block_size;
  stage.sequence_parallel_tokens = limits.sequence_parallel_tokens;
  stage.even_row_shares = limits.even_row_shares;
  return stage;
}

// The KV pool's blocks, the same on every rank of the run (a replica's scheduler names blocks for all its stages):
// the fewest that any rank's budget holds. A rank's block takes 2 (K, V) x its layers x block_size x its KV heads x
// head_dim x the activation dtype's bytes. Budget: --kv-cache-memory; by default on GPUs what 90% of the smallest
// GPU leaves after weights, workspace, backend buffers and the reserve; on CPUs max_batch_size whole contexts (the
// KV memory of a contiguous cache; a host backend does not take the node's RAM uninvited), fewer if the rank's share
// of the node's memory left after weights and workspace holds less.
std::int64_t kv_pool_blocks(const PlanRequest& request, const RunPlan& plan, std::string& basis) {
  const StageLimits& stage = plan.stage;
  const std::int64_t contiguous = stage.cache_blocks();  // kv_blocks is 0 here: max_seqs whole contexts
  const bool on_gpus = plan.device == DeviceKind::Cuda;
  const std::int64_t memory = plan.topology.rank_memory_bytes(on_gpus);
  std::int64_t fewest = -1;
  for (int r = 0; r < plan.world_size(); ++r) {
    const ShardPlan shard = plan.shard(r);
    StageLimits one = stage;
    one.kv_blocks = 1;
    const MemoryPlan m =
        plan_memory(shard, one, plan.device, plan.stored, plan.kv_dtype, request.gpu_reserve_mib, request.step_buffers);
    const std::int64_t per_block = std::max<std::int64_t>(m.kv_cache, 1);
    std::int64_t blocks = contiguous;
    if (m.kv_cache == 0) {  // every layer of the stage keeps only its window: the pool is bookkeeping there
      basis = "--max-batch-size whole contexts (sliding-window layers only)";
    } else if (request.limits.kv_cache_gib > 0) {
      const auto budget = std::int64_t(request.limits.kv_cache_gib * double(std::int64_t(1) << 30));
      blocks = budget / per_block;
      basis = cat("--kv-cache-memory ", request.limits.kv_cache_gib, " GiB per rank");
      STRATA_CHECK(blocks >= 1, Usage, "--kv-cache-memory ", request.limits.kv_cache_gib, " GiB (", budget,
                   " bytes) holds no KV-cache block on rank ", r, ": one block of ", stage.block_size,
                   " positions takes ", per_block, " bytes there (", shard.local_layers(), " layers x ",
                   shard.local_kv_heads(), " KV heads x ", plan.config.head_dim, " x 2 x ", dtype_size(m.kv_dtype),
                   " bytes per position)");
    } else if (memory > 0) {
      const std::int64_t usable = on_gpus ? memory / 10 * 9 : memory;
      const std::int64_t left = usable - (m.total() - m.kv_cache);
      blocks = on_gpus ? left / per_block : std::min(contiguous, left / per_block);
      basis = on_gpus               ? "90% of the GPU after weights and workspace"
              : blocks < contiguous ? "what the rank's share of host memory leaves"
                                    : "--max-batch-size whole contexts";
      STRATA_CHECK(blocks >= 1, Memory, "no memory left for the KV cache on rank ", r, ": ", gib(usable),
                   " usable, weights ", gib(m.weights), ", workspace ", gib(m.workspace + m.backend + m.reserve),
                   "; a block of ", stage.block_size, " positions takes ", per_block,
                   " bytes; try a larger -tp/-pp or a smaller --max-num-batched-tokens");
    } else {
      basis = "--max-batch-size whole contexts";
    }
    fewest = fewest < 0 ? blocks : std::min(fewest, blocks);
  }
  return std::min<std::int64_t>(fewest, std::numeric_limits<std::int32_t>::max());
}

// Placement's view of the model: which tp x pp splits work and what the busiest rank needs on this device.
ModelFit model_fit(const PlanRequest& r, const StageLimits& limits, DType kv) {
  ModelFit fit;
  fit.split_problem = [config = r.config, ep = r.ep](int tp, int pp) {
    try {
      check_split(config, tp, pp, ep);
      return std::string();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
  };
  fit.bytes_per_rank = [&r, limits, kv](int tp, int pp) {
    std::int64_t most = 0;  // stages differ (embedding, head): the busiest decides
    for (int stage = 0; stage < pp; ++stage)
      most = std::max(most, plan_memory(ShardPlan(r.config, {tp, 0, pp, stage, r.ep}), limits, r.device, r.stored, kv,
                                        r.gpu_reserve_mib, r.step_buffers)
                                .total());
    return most;
  };
  fit.on_gpus = r.device == DeviceKind::Cuda;
  return fit;
}

// Whether the GPUs of a TP group's ranks (node-local rank i drives device i) share one NVLink island.
bool group_in_one_island(const NodeTopology& node, const std::vector<int>& group) {
  for (const auto& island : nvlink_islands(node.devices)) {
    std::size_t inside = 0;
    for (int rank : group) {
      const auto local = std::find(node.ranks.begin(), node.ranks.end(), rank) - node.ranks.begin();
      inside += std::size_t(std::count(island.begin(), island.end(), int(local)));
    }
    if (inside == group.size()) return island.size() > 1;
  }
  return false;
}

std::string bytes_text(double b) {
  char text[32];
  if (b >= 1e6)
    std::snprintf(text, sizeof text, "%.1f MB", b / 1e6);
  else if (b >= 1e3)
    std::snprintf(text, sizeof text, "%.1f KB", b / 1e3);
  else
    std::snprintf(text, sizeof text, "%.0f B", b);
  return text;
}

int node_index(const Topology& topology, int rank) {
  for (std::size_t n = 0; n < topology.nodes.size(); ++n)
    for (int r : topology.nodes[n].ranks)
      if (r == rank) return int(n);
  return -1;
}

RankPlan plan_rank(const RunPlan& plan, int world_rank, const PlanRequest& request) {
  const ParallelLayout at = plan.layout(world_rank);
  const NodeTopology& node = plan.topology.node_of(world_rank);
  const ShardPlan shard = plan.shard(world_rank);
  RankPlan r;
  r.world_rank = world_rank;
  r.node = node_index(plan.topology, world_rank);
  r.local_rank = int(std::find(node.ranks.begin(), node.ranks.end(), world_rank) - node.ranks.begin());
  r.host = node.hostname;
  r.dp = at.dp_rank();
  r.pp = at.pp_rank();
  r.tp = at.tp_rank();
  r.layer_begin = int(shard.layer_begin());
  r.layer_end = int(shard.layer_end());
  r.memory = plan_memory(shard, plan.stage, plan.device, plan.stored, plan.kv_dtype, request.gpu_reserve_mib,
                         request.step_buffers);
  const bool on_gpus = plan.device == DeviceKind::Cuda;
  r.gpu = on_gpus ? r.local_rank : -1;
  const double hidden_bytes = double(plan.config.hidden_size) * double(dtype_size(r.memory.activations_dtype));
  // Ring all-reduce: each rank sends 2 (tp - 1) / tp of the buffer; two per layer (attention, MLP), one more for
  // the embedding on the first stage.
  const double reduces = 2.0 * double(shard.local_layers()) + (at.is_first_stage() ? 1 : 0);
  const int tp = plan.sizes.tp;
  r.tp_bytes_per_token = tp == 1 ? 0 : reduces * hidden_bytes * 2.0 * (tp - 1) / tp;
  bool tp_crosses = false;
  for (int peer : at.tp_group()) tp_crosses = tp_crosses || node_index(plan.topology, peer) != r.node;
  r.tp_link = tp == 1 ? "-" : tp_crosses ? "inter-node!" : "intra-node";
  if (on_gpus && tp > 1 && !tp_crosses && !node.devices.empty())
    r.tp_link = group_in_one_island(node, at.tp_group()) ? "NVLink" : "PCIe";
  r.pp_send = "-";
  if (!at.is_last_stage()) {
    const int next = at.next_stage_rank();
    const bool crosses = node_index(plan.topology, next) != r.node;
    r.pp_send = bytes_text(hidden_bytes) + " to rank " + std::to_string(next) +
                (crosses ? " (inter-node " + plan.topology.fabric() + ")" : " (intra-node)");
  }
  return r;
}

// World rank 0 writes the results and leads the end of the job, between its own scheduling steps: it must be the
// scheduler of a replica (dp 0, pp 0, tp 0). Placement may put it elsewhere (a description listing its node second):
// swap its replica with replica 0, rotate that replica's stages so rank 0's comes first (neighbours stay
// neighbours), and swap it with tp index 0 of its group. TP groups and the replicas' ranks are unchanged.
std::vector<int> lead_with_rank_zero(std::vector<int> order, const LayoutSizes& sizes) {
  const auto at = [&](int d, int p, int t) -> int& { return order[std::size_t((d * sizes.pp + p) * sizes.tp + t)]; };
  const int position = int(std::find(order.begin(), order.end(), 0) - order.begin());
  const int d0 = position / (sizes.tp * sizes.pp), p0 = (position / sizes.tp) % sizes.pp, t0 = position % sizes.tp;
  if (d0 != 0)
    for (int p = 0; p < sizes.pp; ++p)
      for (int t = 0; t < sizes.tp; ++t) std::swap(at(0, p, t), at(d0, p, t));
  if (p0 != 0) {
    std::vector<int> stages(order.begin(), order.begin() + sizes.pp * sizes.tp);
    for (int p = 0; p < sizes.pp; ++p)
      for (int t = 0; t < sizes.tp; ++t) at(0, p, t) = stages[std::size_t(((p + p0) % sizes.pp) * sizes.tp + t)];
  }
  if (t0 != 0) std::swap(at(0, 0, 0), at(0, 0, t0));
  return order;
}

}  // namespace

ShardPlan RunPlan::shard(int world_rank) const {
  const ParallelLayout at = layout(world_rank);
  return ShardPlan(config, StageCoordinates{sizes.tp, at.tp_rank(), sizes.pp, at.pp_rank(), ep});
}

RunPlan make_run_plan(const PlanRequest& request) {
  RunPlan plan;
  plan.config = request.config;
  plan.stored = request.stored;
  plan.topology = request.topology;
  plan.device = request.device;
  plan.stage = stage_limits(request.limits, request.config);
  plan.kv_dtype = kv_cache_dtype(request.device, request.stored, request.limits.kv_cache_dtype);
  plan.max_batch_size = request.limits.max_batch_size;
  ModelFit fit = model_fit(request, plan.stage, plan.kv_dtype);
  if (!request.fit_fixed_layout && request.sizes.tp && request.sizes.pp) fit.bytes_per_rank = nullptr;
  const Placement placement = place_ranks(request.topology, request.sizes, request.force, &fit);
  check_split(request.config, placement.sizes.tp, placement.sizes.pp, request.ep);  // with the numbers
  plan.sizes = placement.sizes;
  plan.ep = request.ep;
  plan.ranks_by_position = lead_with_rank_zero(placement.ranks_by_position, placement.sizes);
  plan.notes = placement.notes;
  plan.warnings = placement.warnings;
  STRATA_CHECK(request.limits.micro_batches >= 0, Usage, "--micro-batches must be >= 0 (got ",
               request.limits.micro_batches, ")");
  plan.micro_batches = request.limits.micro_batches ? request.limits.micro_batches : plan.sizes.pp;
  plan.stage.kv_blocks = std::int32_t(kv_pool_blocks(request, plan, plan.kv_basis));
  // A sliding-window layer keeps only its window per sequence: a cached prefix would have no window to continue from.
  const bool windows = sliding_ring_blocks(plan.config, plan.stage) > 0;
  plan.prefix_caching = request.limits.prefix_caching && !windows;
  if (request.limits.prefix_caching && windows)
    plan.notes.push_back("prefix caching is off: the sliding-window layers keep only their window of each sequence");
  plan.chunked_prefill = request.limits.chunked_prefill;
  for (int r = 0; r < plan.world_size(); ++r) plan.ranks.push_back(plan_rank(plan, r, request));
  return plan;
}

// Which experts each rank of a tensor-parallel group holds (the same in every group), and how tokens reach them.
std::string RunPlan::expert_placement() const {
  std::ostringstream out;
  const ShardPlan plan = shard(ranks_by_position.front());
  const int etp = plan.expert_tensor_parallel();
  out << "experts: " << config.num_experts << " per MoE layer, top " << config.experts_per_token
      << (config.shared_expert_intermediate_size > 0 ? " plus a shared expert" : "") << "; expert-parallel size " << ep
      << " inside each tensor-parallel group of " << sizes.tp;
  if (etp > 1) out << ", each expert split over " << etp << " ranks";
  out << "; "
      << (ep > 1         ? "outputs combined by all-to-all to each token's rank, then all-gathered"
          : sizes.tp > 1 ? "outputs combined by the MLP all-reduce"
                         : "no exchange")
      << "\n";
  for (int t = 0; t < sizes.tp; ++t) {
    const ShardPlan rank = ShardPlan(config, StageCoordinates{sizes.tp, t, sizes.pp, 0, ep});
    out << "  tp rank " << t << ": experts " << rank.expert_begin() << "-"
        << rank.expert_begin() + rank.local_experts() - 1;
    if (etp > 1)
      out << ", intermediate slice " << t % etp << " of " << etp << " (" << rank.local_expert_intermediate() << " of "
          << config.moe_intermediate_size << ")";
    out << "\n";
  }
  return out.str();
}

std::string RunPlan::table() const {
  std::ostringstream out;
  out << "plan: " << sizes.world() << " ranks = dp " << sizes.dp << " x pp " << sizes.pp << " x tp " << sizes.tp
      << " on " << topology.nodes.size() << " node(s), inter-node fabric " << topology.fabric() << "; "
      << device_name(device) << ", weights " << dtype_name(ranks.front().memory.weights_dtype) << ", activations "
      << dtype_name(ranks.front().memory.activations_dtype) << ", KV cache " << dtype_name(kv_dtype) << "\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-5s %-16s %-5s %-7s %-4s %-4s %-4s %-8s %-10s %-28s %s\n", "rank", "host", "local",
                "device", "dp", "pp", "tp", "layers", "memory", "TP all-reduce per token", "pipeline send per token");
  out << line;
  for (const RankPlan& r : ranks) {
    const NodeTopology& node = topology.nodes[std::size_t(r.node)];
    const std::string device_text = device == DeviceKind::Cpu                 ? "cpu"
                                    : r.local_rank < int(node.devices.size()) ? "gpu:" + std::to_string(r.gpu)
                                                                              : "gpu:?";
    const std::string tp_text = r.tp_link == "-" ? "-" : bytes_text(r.tp_bytes_per_token) + " (" + r.tp_link + ")";
    const std::string layers = std::to_string(r.layer_begin) + "-" + std::to_string(r.layer_end - 1);
    std::snprintf(line, sizeof line, "%-5d %-16s %-5d %-7s %-4d %-4d %-4d %-8s %-10s %-28s %s\n", r.world_rank,
                  r.host.c_str(), r.local_rank, device_text.c_str(), r.dp, r.pp, r.tp, layers.c_str(),
                  bytes_text(double(r.memory.stage())).c_str(), tp_text.c_str(), r.pp_send.c_str());
    out << line;
  }
  const MemoryPlan& m = ranks.front().memory;
  out << "KV cache: " << stage.kv_blocks << " blocks of " << stage.block_size << " positions per rank ("
      << std::int64_t(stage.kv_blocks) * stage.block_size << " tokens per replica, " << gib(m.kv_cache)
      << " on rank 0; " << kv_basis << "); prefix caching " << (prefix_caching ? "on" : "off") << ", chunked prefill "
      << (chunked_prefill ? "on (" + std::to_string(stage.max_tokens) + " tokens per step)" : "off") << "\n";
  if (m.kv_windows > 0)
    out << "sliding-window layers keep only their window: " << sliding_ring_blocks(config, stage)
        << " blocks per sequence, " << gib(m.kv_windows) << " on rank 0 for " << stage.max_seqs << " sequences\n";
  if (config.is_moe()) out << expert_placement();
  if (device == DeviceKind::Cuda)
    out << "memory: weights, KV cache and workspace; each GPU also needs " << gib(m.backend)
        << " for the backend and keeps " << gib(m.reserve) << " free for NCCL and CUDA graphs (--gpu-reserve-mib)\n";
  return out.str();
}

}  // namespace strata
