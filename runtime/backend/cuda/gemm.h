// The CUDA backend's GEMMs through cuBLAS: y[T,N] = x[T,K] . w[N,K]^T with w a row-major Hugging Face Linear
// weight, bf16/f16 inputs, fp32 compute (tensor cores), y in the activation dtype or f32 (logits).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/backend/cuda/cuda_resources.h"
#include "runtime/backend/cuda/kernels/kernels.h"

namespace strata::cuda {

class Gemm {
 public:
  // One handle and one workspace, bound to `stream` for the backend's lifetime.
  explicit Gemm(cudaStream_t stream);
  // x and w must share a dtype (cuBLAS mixed-input GEMMs want equal A/B types); y is that dtype or F32.
  void linear(const void* x, const void* w, void* y, Elem in, Elem out, std::int64_t tokens, std::int64_t n,
              std::int64_t k);

 private:
  CublasHandle handle_;
  DeviceMemory workspace_;
};

}  // namespace strata::cuda
