// Session: the composition root of `generate` and `bench` (the one place that names concrete backends and
// communicators). Built from one RunPlan, it owns, in order of construction, the MPI communicators of this rank's
// groups, the GPU binding, the backend (CPU or CUDA), the device communicators (NCCL) and the loaded stage, and
// releases them in reverse order.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "launch/commands.h"
#include "layers/transformer.h"
#include "plan/run_plan.h"
#include "runtime/backend/backend.h"
#include "runtime/comm/communicator.h"
#include "runtime/comm/timed_collectives.h"
#include "topology/gpus.h"
#include "topology/node.h"

namespace strata {

struct LoadReport {
  std::vector<std::string> files;  // the shard files read, in order
  std::int64_t mapped_bytes = 0;   // weights used in place from the page cache (CPU backend, format 2 shards)
  std::int64_t read_bytes = 0;     // weights read into memory
  // Of those, rearranged by the backend into its own layout (a copy; CPU AVX-512 quantized kernel)
  std::int64_t rearranged_bytes = 0;
};

// The plan's inputs from a checkpoint, a topology and the flags (pure: no MPI).
PlanRequest plan_request(const Manifest& manifest, const ModelConfig& config, const Topology& topology,
                         const ParallelOptions& parallel, const RunLimits& limits);

class Session {
 public:
  // Collective over the world: reads the manifest, detects (or loads) the topology, computes the RunPlan (the
  // same on every rank), builds the MPI groups from it, binds this rank's GPU and checks the tokenizer: everything
  // checkable before loading. Nothing is allocated for the model yet.
  Session(const NodeInfo& node, const std::string& model_dir, const ParallelOptions& parallel, const RunLimits& limits);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const RunPlan& plan() const { return plan_; }
  const ParallelLayout& layout() const { return *layout_; }
  const RankPlan& me() const { return plan_.rank(layout_->world_rank()); }
  const ModelConfig& config() const { return plan_.config; }
  const Manifest& manifest() const { return manifest_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const NodeInfo& node() const { return node_; }
  Communicator& world() { return *groups_.world; }
  Communicator& tp() { return *groups_.tp; }

  // Refuses (Error(Memory), numbers named) when this rank's memory plan does not fit what is free now: its share of
  // the node's available memory, or its GPU's free memory. Collective over the world: every rank learns whether
  // any failed, and each says so.
  void check_memory();
  // Builds the backend (once) and loads this rank's shard (again on a second call, after freeing the first).
  LoadReport load();
  // Whether load() used the weights in place from the page cache (--mmap, or the default there), or copied them.
  bool weights_mapped() const;
  void unload() { stage_.reset(); }
  TransformerStage& stage() { return *stage_; }
  // Seconds the stage spent in its tensor-parallel collectives since loading (for --metrics).
  double stage_communication_seconds() const { return timed_tp_ ? timed_tp_->seconds() : 0; }
  Backend& backend() { return *backend_; }

 private:
  void bind_gpu(const DetectOptions& options);
  void attach_device_groups();  // launch/device_groups.cpp
  NodeInfo node_;
  std::string model_dir_;
  ParallelOptions parallel_;
  Manifest manifest_;
  RunPlan plan_;
  std::unique_ptr<ParallelLayout> layout_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<DeviceBinding> gpu_binding_;  // --device cuda, where NVML sees the GPUs
  int gpu_ = -1;                              // --device cuda: the CUDA device this rank drives
  // Destroyed in reverse: the stage, then the backend (whose wait monitor polls tp_device), then the groups.
  CommGroups groups_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<TimedCollectives> timed_tp_;  // the stage's TP group (NCCL or MPI), timed
  std::unique_ptr<TransformerStage> stage_;
};

}  // namespace strata
