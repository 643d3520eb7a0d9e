// RAII owners of the CUDA objects the backend holds: device memory, pinned host memory, a stream, events, a cuBLAS
// handle and CUDA graphs. Each frees in its destructor without throwing (a failed free at teardown is not worth an
// abort).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "runtime/backend/cuda/cublas_check.h"
#include "runtime/backend/cuda/cuda_check.h"

namespace strata::cuda {

// Move-only owner of a handle with a no-throw release function.
template <typename Handle, void (*Release)(Handle)>
class Owned {
 public:
  Owned() = default;
  explicit Owned(Handle h) : h_(h) {}
  Owned(Owned&& o) noexcept : h_(std::exchange(o.h_, Handle{})) {}
  Owned& operator=(Owned&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, Handle{});
    }
    return *this;
  }
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() { reset(); }
  Handle get() const { return h_; }
  explicit operator bool() const { return h_ != Handle{}; }
  void reset() {
    if (h_ != Handle{}) Release(std::exchange(h_, Handle{}));
  }

 private:
  Handle h_{};
};

inline void free_device(void* p) { cudaFree(p); }
inline void free_pinned(void* p) { cudaFreeHost(p); }
inline void destroy_stream(cudaStream_t s) { cudaStreamDestroy(s); }
inline void destroy_event(cudaEvent_t e) { cudaEventDestroy(e); }
inline void destroy_cublas(cublasHandle_t h) { cublasDestroy(h); }
inline void destroy_graph(cudaGraph_t g) { cudaGraphDestroy(g); }
inline void destroy_graph_exec(cudaGraphExec_t g) { cudaGraphExecDestroy(g); }

using DeviceMemory = Owned<void*, free_device>;
using PinnedMemory = Owned<void*, free_pinned>;
using Stream = Owned<cudaStream_t, destroy_stream>;
using Event = Owned<cudaEvent_t, destroy_event>;
using CublasHandle = Owned<cublasHandle_t, destroy_cublas>;
using Graph = Owned<cudaGraph_t, destroy_graph>;
using GraphExec = Owned<cudaGraphExec_t, destroy_graph_exec>;

inline DeviceMemory device_alloc(std::size_t bytes) {
  void* p = nullptr;
  if (bytes) STRATA_CUDA_CHECK(cudaMalloc(&p, bytes));
  return DeviceMemory(p);
}
inline PinnedMemory pinned_alloc(std::size_t bytes) {
  void* p = nullptr;
  if (bytes) STRATA_CUDA_CHECK(cudaMallocHost(&p, bytes));
  return PinnedMemory(p);
}
inline Stream make_stream() {
  cudaStream_t s = nullptr;
  STRATA_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return Stream(s);
}
inline Event make_event() {
  cudaEvent_t e = nullptr;
  STRATA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return Event(e);
}
inline CublasHandle make_cublas() {
  cublasHandle_t h = nullptr;
  STRATA_CUBLAS_CHECK(cublasCreate(&h));
  return CublasHandle(h);
}

}  // namespace strata::cuda
