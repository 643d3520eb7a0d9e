// See memory_plan.h.
#include "plan/memory_plan.h"

#include <algorithm>
#include <cstdio>

#include "runtime/base/error.h"

namespace strata {
namespace {
// Device memory the CUDA backend holds outside its arena besides its step buffers: cuBLAS workspace (32 MiB), f32
// staging (16 MiB), step inputs (KiBs), with room for the allocator's granularity.
constexpr std::int64_t kCudaBackendFixed = std::int64_t(64) << 20;
// Kept free beyond the estimate for device memory taken after the check and outside the arena. NCCL: its
// communicator is created after the arena and its buffers and proxy state take hundreds of MiB on an H100
// (channels x peers x NCCL_BUFFSIZE, NVLS). Graphs: instantiated step graphs and cuBLAS's work under capture.
constexpr std::int64_t kNcclReserve = std::int64_t(512) << 20;
constexpr std::int64_t kGraphReserve = std::int64_t(64) << 20;

}  // namespace

DeviceKind parse_device(const std::string& name) {
  if (name == "cpu") return DeviceKind::Cpu;
  if (name == "cuda") return DeviceKind::Cuda;
  throw Error(ErrorKind::Usage, cat("--device ", name, ": expected cpu or cuda"));
}

const char* device_name(DeviceKind kind) { return kind == DeviceKind::Cuda ? "cuda" : "cpu"; }

DType weight_dtype(DeviceKind device, DType stored) {
  if (device == DeviceKind::Cpu) return stored;
  return stored == DType::F16 ? DType::F16 : DType::BF16;
}

DType activation_dtype(DeviceKind device, DType stored) {
  return device == DeviceKind::Cpu ? DType::F32 : weight_dtype(device, stored);
}

DType kv_cache_dtype(DeviceKind device, DType stored, const std::string& option) {
  const DType activations = activation_dtype(device, stored);
  STRATA_CHECK(option == "auto" || option == "f16" || option == "f32", Usage, "--kv-cache-dtype ", option,
               ": expected auto, f16 or f32");
  if (device == DeviceKind::Cuda) {
    STRATA_CHECK(option == "auto" || option == dtype_name(activations), Usage, "--kv-cache-dtype ", option,
                 ": the CUDA backend keeps its KV cache in its activation dtype (", dtype_name(activations),
                 " for this checkpoint); use auto");
    return activations;
  }
  if (option == "f16") return DType::F16;
  if (option == "f32") return DType::F32;
  // auto on a CPU: the cache keeps the precision of the weights. A 16-bit or quantized checkpoint gets f16 (as
  // llama.cpp's default cache and vLLM's "auto", which is the model's dtype): half the memory, so twice the
  // sequences in a budget, and half the bytes every decode step's attention reads. An f32 checkpoint keeps f32,
  // so its results stay those of the f32 reference.
  return stored == DType::F32 ? DType::F32 : DType::F16;
}

MemoryPlan plan_memory(const ShardPlan& shard, const StageLimits& limits, DeviceKind device, DType stored, DType kv,
                       int gpu_reserve_mib, const StepBufferBytes& step_buffers) {
  MemoryPlan m;
  m.weights_dtype = weight_dtype(device, stored);
  m.activations_dtype = activation_dtype(device, stored);
  m.kv_dtype = kv;
  const StageMemory stage = estimate_stage_memory(shard, limits, m.weights_dtype, m.activations_dtype, kv);
  m.weights = stage.weights;
  m.kv_cache = stage.kv_cache;
  m.kv_windows = stage.kv_windows;
  m.workspace = stage.workspace;
  if (device == DeviceKind::Cuda) {
    m.backend = kCudaBackendFixed + (step_buffers ? step_buffers(shard, limits) : 0);
    m.reserve = gpu_reserve_mib >= 0 ? std::int64_t(gpu_reserve_mib) << 20
                                     : kGraphReserve + (shard.coordinates().tp > 1 ? kNcclReserve : 0);
  } else {
    // The CPU kernels' copy of a product's input for all of a step's tokens: rounded to bf16 (2 bytes a value, rows
    // padded by up to 64 bytes), or quantized to q8_0 blocks with their scales (42 bytes for 32 values).
    const auto& c = shard.config();
    const std::int64_t widest = std::max({c.hidden_size, shard.local_intermediate(), shard.local_expert_intermediate(),
                                          shard.local_shared_intermediate()});
    m.backend = limits.max_tokens * (2 * widest + 64);
  }
  return m;
}

std::string gib(std::int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB", double(bytes) / double(1ll << 30));
  return text;
}

}  // namespace strata
