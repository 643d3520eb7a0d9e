// RunPlan: everything that decides a run, computed once as a pure value (no MPI, no hardware) from the model's
// config, the cluster's description and the options: the layout and placement (which world rank is which replica,
// stage and tensor-parallel index), each rank's shard and memory plan, and the limits the stage and the engine run
// with. `strata plan` prints exactly it; `generate` and `bench` compute the same plan on every rank from the same
// inputs and run exactly it: no code elsewhere recomputes a coordinate from a rank number.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layers/model_config.h"
#include "layers/shard_plan.h"
#include "layers/transformer.h"
#include "plan/memory_plan.h"
#include "runtime/base/parallel_layout.h"
#include "topology/topology.h"

namespace strata {

// What a replica holds at once (--max-batch-size, --max-num-batched-tokens, --max-model-len) and how its pipeline
// is cut into micro-batches (--micro-batches).
struct RunLimits {
  int max_batch_size = 16, max_num_batched_tokens = 2048, max_model_len = 0;  // 0: the model's context
  int micro_batches = 0;                                                      // 0: one per pipeline stage
  int block_size = 16;                                                        // positions per KV-cache block
  double kv_cache_gib = 0;              // KV cache per rank; 0: what the memory plan leaves (see kv_pool_blocks)
  std::string kv_cache_dtype = "auto";  // --kv-cache-dtype: auto, f16 or f32 (see kv_cache_dtype)
  bool prefix_caching = true, chunked_prefill = true;
  // --sequence-parallel-tokens: steps of at least this many tokens split the norms and activation quantization over
  // a CPU tensor-parallel group (StageLimits::sequence_parallel_tokens; 0: never).
  int sequence_parallel_tokens = 64;
  // --even-row-shares: those steps' rows split evenly over the ranks, not by their speeds (StageLimits).
  bool even_row_shares = false;
};

struct PlanRequest {
  ModelConfig config;
  DType stored = DType::F32;  // the checkpoint's dtype
  Topology topology;
  LayoutSizes sizes{0, 1, 1};  // 0: auto (dp 0: world / (tp x pp))
  int ep = 1;                  // expert-parallel size, inside each tensor-parallel group (it divides tp)
  bool force = false;          // run a layout placement refuses, with warnings
  DeviceKind device = DeviceKind::Cpu;
  RunLimits limits;
  int gpu_reserve_mib = -1;
  StepBufferBytes step_buffers;  // the device backend's per-step buffers (launch/ supplies the CUDA backend's)
  // Refuse a fixed layout whose busiest rank exceeds the memory the description states (`strata plan`). A job
  // checks what is free when it starts instead, so it leaves this off.
  bool fit_fixed_layout = true;
};

struct RankPlan {
  int world_rank = 0;
  int node = 0, local_rank = 0;
  std::string host;
  int gpu = -1;  // --device cuda: the device position on its node (node-local rank i drives visible GPU i)
  int dp = 0, pp = 0, tp = 0;
  int layer_begin = 0, layer_end = 0;
  MemoryPlan memory;
  double tp_bytes_per_token = 0;  // sent by this rank per generated token in its TP all-reduces
  std::string tp_link;            // "-", "intra-node", "inter-node!", "NVLink", "PCIe"
  std::string pp_send;            // "-" or "<bytes> to rank R (intra-node|inter-node <fabric>)"
};

struct RunPlan {
  ModelConfig config;
  DType stored = DType::F32;
  DType kv_dtype = DType::F32;  // the KV cache's (kv_cache_dtype of --kv-cache-dtype)
  Topology topology;
  DeviceKind device = DeviceKind::Cpu;
  LayoutSizes sizes;
  int ep = 1;                          // expert-parallel size inside each tensor-parallel group
  std::vector<int> ranks_by_position;  // world rank at position (dp * pp + pp_rank) * tp + tp_rank
  std::vector<std::string> notes;      // how `auto` sizes were chosen
  std::vector<std::string> warnings;   // problems accepted with --force
  StageLimits stage;                   // what each stage allocates for (its KV pool: stage.kv_blocks)
  std::string kv_basis;                // what sized the KV pool
  bool prefix_caching = true, chunked_prefill = true;
  int max_batch_size = 16, micro_batches = 1;
  std::vector<RankPlan> ranks;  // by world rank

  int world_size() const { return sizes.world(); }
  ParallelLayout layout(int world_rank) const { return ParallelLayout(sizes, ranks_by_position, world_rank); }
  ShardPlan shard(int world_rank) const;
  const RankPlan& rank(int world_rank) const { return ranks.at(std::size_t(world_rank)); }
  // The plan table: every rank's host, local rank, device, coordinates, layers, memory and traffic per token.
  std::string table() const;
  // For a mixture-of-experts model: the experts each rank of a tensor-parallel group holds.
  std::string expert_placement() const;
};

// Throws Error(Usage/Config) naming the numbers: an impossible split, a context longer than the model's, limits
// below 1, a layout placement refuses (unless force), a world that is not dp x pp x tp.
RunPlan make_run_plan(const PlanRequest& request);

}  // namespace strata
