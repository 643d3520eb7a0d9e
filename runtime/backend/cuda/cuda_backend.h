// The CUDA backend's public face, free of CUDA headers so launch/, tests and the NCCL communicator can name it:
// construction, the stream it queues all work on, and the monitor its host waits call while they poll.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>

#include "runtime/backend/backend.h"

namespace strata {

struct CudaBackendOptions {
  int device = 0;               // CUDA device index as this process sees it (after CUDA_VISIBLE_DEVICES)
  DType dtype = DType::BF16;    // weights and activations: BF16 or F16 (see cuda_compute_dtype)
  std::size_t arena_bytes = 0;  // > 0: allocate() carves tensors out of one cudaMalloc of this size (sized from the
                                // stage's memory estimate); 0: one cudaMalloc per tensor (tests)
  bool graphs = true;  // record decode steps as CUDA graphs (Backend::begin_step) after one warm-up per batch size
};

// The dtype the CUDA backend computes in for a checkpoint stored as `stored`: f16 stays f16, bf16 and f32 run as
// bf16 (f32 weights are rounded once on upload; fp32 accumulation everywhere).
DType cuda_compute_dtype(DType stored);

// Device memory the CUDA backend takes outside its arena for reserve_step_buffers (decode attention partials,
// sampling candidates); add its fixed buffers (cuBLAS workspace 32 MiB, f32 staging 16 MiB) for a memory check.
std::size_t cuda_step_buffer_bytes(std::int64_t max_seqs, std::int64_t q_heads, std::int64_t head_dim,
                                   std::int64_t max_len);

// Binds the calling thread to options.device, creates the stream, cuBLAS handle, staging buffers and arena.
// Throws Error(Memory) when the arena does not fit (the caller checks free memory first, with a better message).
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

// The cudaStream_t every op of `backend` (a CUDA backend) is queued on, for communicators that work on device
// tensors (NCCL). Throws Error(Internal) for any other backend.
void* cuda_backend_stream(Backend& backend);

// Host waits of the backend (download, sample_candidates, staging reuse) poll the stream instead of blocking; each
// poll calls `monitor` (may throw, e.g. an NCCL async error) and after timeout_seconds (> 0) of waiting on one
// thing the wait throws Error(Communication) naming what it waited for. An empty monitor and 0 disable both.
void set_cuda_wait_monitor(Backend& backend, std::function<void()> monitor, double timeout_seconds);

}  // namespace strata
