// Element-type conversion between f32 staging and the backend's storage dtypes (upload / download), and the
// launch check every launcher uses.
#include "runtime/backend/cuda/cuda_check.h"
#include "runtime/backend/cuda/kernels/common.cuh"

namespace strata::cuda {
namespace {

template <typename T>
__global__ void from_f32_kernel(const float* src, T* dst, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    store(dst, i, src[i]);
}

template <typename T>
__global__ void to_f32_kernel(const T* src, float* dst, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    dst[i] = load(src, i);
}

}  // namespace

void check_launch(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw Error(ErrorKind::Cuda, cat("CUDA kernel launch ", kernel, " failed: ", cudaGetErrorName(status), ": ",
                                     cudaGetErrorString(status)));
}

void convert_from_f32(const float* src, void* dst, Elem dst_elem, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch(dst_elem, [&](auto t) {
    using T = decltype(t);
    from_f32_kernel<T><<<blocks_for(n, 256), 256, 0, stream>>>(src, static_cast<T*>(dst), n);
  });
  check_launch("convert_from_f32");
}

void convert_to_f32(const void* src, Elem src_elem, float* dst, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch(src_elem, [&](auto t) {
    using T = decltype(t);
    to_f32_kernel<T><<<blocks_for(n, 256), 256, 0, stream>>>(static_cast<const T*>(src), dst, n);
  });
  check_launch("convert_to_f32");
}

}  // namespace strata::cuda
