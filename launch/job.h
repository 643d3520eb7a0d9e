// The composition root shared by `generate` and `bench`: MPI up, layout checked, checkpoint and model validated
// before anything loads, then the concrete backend and communicators built and the stage loaded.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "io/checkpoint.h"
#include "io/tokenizer.h"
#include "launch/commands.h"
#include "layers/transformer.h"
#include "runtime/base/parallel_layout.h"
#include "runtime/comm/mpi/mpi_communicator.h"
#include "topology/gpus.h"
#include "topology/node.h"
#include "topology/placement.h"
#include "topology/topology.h"

namespace strata {

struct Job {
  ParallelOptions parallel;  // as launched (device, --nccl-timeout)
  NodeInfo node;
  Topology topology;
  std::unique_ptr<ParallelLayout> layout;
  std::optional<DeviceBinding> gpu_binding;  // --device cuda, where NVML sees the GPUs: the one this rank drives
  Manifest manifest;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  CommGroups groups;
  std::string device = "cpu";  // --device
  int gpu = -1;                // --device cuda: the CUDA device this rank is bound to (its node-local rank)
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ShardPlan> plan;
  std::unique_ptr<TransformerStage> stage;
};

// Runs `body` as an MPI job: any exception on any rank prints one line naming the rank, host and coordinates,
// and ends every rank of the job (MPI_Abort), so no rank is left waiting in a collective.
int run_as_mpi_job(int argc, char** argv, const std::function<int(Job&)>& body);

// The one place detection reads the process environment (CUDA_VISIBLE_DEVICES).
DetectOptions detect_options();

// The stage's limits from the flags: the context is --max-model-len or the model's; a step holds at least one
// whole context.
StageLimits stage_limits(const LimitOptions& limits, const ModelConfig& config);
// Placement's view of the model: which tp x pp splits work and what the busiest rank needs.
// `stored`: the checkpoint dtype, which the CPU backend keeps matrix weights in.
ModelFit model_fit(const ModelConfig& config, const StageLimits& limits, bool on_gpus, DType stored = DType::F32);

// Manifest and config, then the placement (auto sizes resolved with `limits_for`, the memory budget of a config;
// empty: no memory fit), layout and communicators, then the device, split and tokenizer: everything checkable
// before loading.
void prepare_job(Job& job, const std::string& model_dir, const ParallelOptions& parallel,
                 const std::function<StageLimits(const ModelConfig&)>& limits_for = {});
// For commands that only look at the machine (topo, plan): the topology from `description` when given (no MPI, no
// hardware), else detected under MPI; `show` runs once (on world rank 0). Returns the process exit code.
int with_topology(const std::string& description, int argc, char** argv,
                  const std::function<void(const Topology&)>& show);
// The plan table: every rank's host, local rank, device, coordinates, layers, memory estimate, and the bytes it
// sends per generated token over each kind of link (NVLink or PCIe inside a GPU node). `on_gpus`: --device cuda
// (16-bit weights and activations); otherwise the CPU backend keeps matrix weights as `stored` (the checkpoint
// dtype) and activations in f32. Pure: works from a description file without MPI.
std::string plan_table(const Topology& topology, const ParallelLayout& any_rank_layout, const ModelConfig& config,
                       const StageLimits& limits, bool on_gpus, DType stored = DType::F32);

// Refuses (Error(Memory), numbers named) when the stage will not fit in this rank's share of the node's memory, or
// with --device cuda in its GPU's free memory. Collective over the world: every rank learns whether any failed.
void check_memory(const Job& job, const StageLimits& limits);
// --device cuda with tensor parallelism: builds groups.tp_device, an NCCL communicator over the tp MPI group on the
// backend's stream, and registers its asynchronous-error poll as the backend's wait monitor with --nccl-timeout.
// Does nothing for the CPU backend or tp == 1. Collective over the tp group. (launch/device_groups.cpp)
void attach_device_groups(Job& job);
struct LoadReport {
  std::vector<std::string> files;  // the shard files read, in order
  std::int64_t mapped_bytes = 0;   // weights used in place from the page cache (CPU backend, format 2 shards)
  std::int64_t read_bytes = 0;     // weights read into memory
};
// Builds the backend and loads this rank's shard.
LoadReport load_stage(Job& job, const std::string& model_dir, const StageLimits& limits);

}  // namespace strata
