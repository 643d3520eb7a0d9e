// One rank's memory, estimated once per run for the device it runs on: the bytes of its weights, KV cache and step
// workspace in the dtypes that device keeps them in, what the backend holds outside those, and what is kept free
// for others (NCCL, CUDA graphs). Placement sizes `auto` layouts with it, `strata plan` prints it, the memory check
// compares it with what is free, and the CUDA backend's arena is sized from it: one estimate, not one per use.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "layers/shard_plan.h"
#include "layers/transformer.h"
#include "runtime/base/dtype.h"

namespace strata {

enum class DeviceKind { Cpu, Cuda };
DeviceKind parse_device(const std::string& name);  // "cpu" | "cuda"; Error(Usage) otherwise
const char* device_name(DeviceKind kind);

// The dtypes a device keeps a checkpoint stored as `stored` in. CPU: matrix weights as stored, activations f32.
// CUDA: f16 stays f16, bf16 and f32 become bf16 (weights and activations).
DType weight_dtype(DeviceKind device, DType stored);
DType activation_dtype(DeviceKind device, DType stored);
// The KV cache's dtype for --kv-cache-dtype `option` (auto, f16 or f32). CUDA: the activation dtype only. CPU: auto
// is f32 for an f32 checkpoint and f16 for any other (16-bit or quantized weights); f16 halves the cache (the
// attention kernels widen the halves as they load them: the arithmetic of an f32 cache holding the rounded values).
// Error(Usage) naming the option otherwise.
DType kv_cache_dtype(DeviceKind device, DType stored, const std::string& option);

struct MemoryPlan {
  DType weights_dtype = DType::F32, activations_dtype = DType::F32, kv_dtype = DType::F32;
  std::int64_t weights = 0, kv_cache = 0, workspace = 0;
  std::int64_t kv_windows = 0;  // sliding-window layers' per-sequence caches (fixed, beside the paged pool)
  std::int64_t backend = 0;     // CUDA: cuBLAS workspace, staging, decode partials, sampling candidates; CPU: the
                                // kernels' bf16 or q8_0 copy of a step's product input
  std::int64_t reserve = 0;     // CUDA: kept free for NCCL's buffers and CUDA graphs (--gpu-reserve-mib)
  std::int64_t stage() const { return weights + kv_cache + kv_windows + workspace; }  // what the stage allocates
  std::int64_t total() const { return stage() + backend + reserve; }
  // The CUDA backend's device arena: the stage's tensors, each rounded up to 256 bytes (~15 per layer).
  std::int64_t arena(std::int64_t local_layers) const {
    return stage() + (std::int64_t(256) << 10) * (local_layers + 4);
  }
};

// Bytes a backend allocates per step outside the stage's tensors (the CUDA backend's decode partials and sampling
// candidates), supplied by launch/, which alone names concrete backends; empty: none.
using StepBufferBytes = std::function<std::int64_t(const ShardPlan& shard, const StageLimits& limits)>;

// gpu_reserve_mib < 0: the defaults (64 MiB for graphs, +512 MiB for NCCL when tp > 1).
// kv: kv_cache_dtype's answer.
MemoryPlan plan_memory(const ShardPlan& shard, const StageLimits& limits, DeviceKind device, DType stored, DType kv,
                       int gpu_reserve_mib = -1, const StepBufferBytes& step_buffers = {});

std::string gib(std::int64_t bytes);  // "1.25 GiB"

}  // namespace strata
