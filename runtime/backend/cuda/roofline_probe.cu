// GPU roofline probe: a device-to-device copy for HBM bandwidth (counted as read + written bytes, which is what
// a weight-streaming decode step does with half of them) and cuBLAS bf16 GEMMs for the tensor-core rate.
// Timed with CUDA events around the work only; the best of several repeats after a warm-up.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>

#include "runtime/backend/cuda/cuda_check.h"
#include "runtime/backend/cuda/roofline_probe.h"

#define STRATA_PROBE_CUBLAS_CHECK(statement)                                                                  \
  STRATA_LIBRARY_CHECK(                                                                                       \
      "cuBLAS", Cuda, statement, cublasStatus_t, [](cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }, \
      [](cublasStatus_t s) { return std::string(cublasGetStatusString(s)); })

namespace strata {
namespace {

// Device memory freed on scope exit (never throws).
struct DeviceBuffer {
  explicit DeviceBuffer(std::size_t bytes) { STRATA_CUDA_CHECK(cudaMalloc(&data, bytes)); }
  ~DeviceBuffer() { cudaFree(data); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data = nullptr;
};

struct Events {
  Events() {
    STRATA_CUDA_CHECK(cudaEventCreate(&start));
    STRATA_CUDA_CHECK(cudaEventCreate(&stop));
  }
  ~Events() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  // Seconds between the two events after `work` ran between them on `stream`.
  template <typename Work>
  double time(cudaStream_t stream, Work&& work) {
    STRATA_CUDA_CHECK(cudaEventRecord(start, stream));
    work();
    STRATA_CUDA_CHECK(cudaEventRecord(stop, stream));
    STRATA_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    STRATA_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return double(ms) * 1e-3;
  }
  cudaEvent_t start = nullptr, stop = nullptr;
};

struct Stream {
  Stream() { STRATA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t stream = nullptr;
};

double copy_bandwidth(cudaStream_t stream, std::size_t bytes, int repeats) {
  DeviceBuffer from(bytes), to(bytes);
  STRATA_CUDA_CHECK(cudaMemsetAsync(from.data, 1, bytes, stream));
  Events events;
  double best = 1e30;
  for (int r = 0; r <= repeats; ++r) {  // r == 0 warms up
    const double seconds = events.time(stream, [&] {
      STRATA_CUDA_CHECK(cudaMemcpyAsync(to.data, from.data, bytes, cudaMemcpyDeviceToDevice, stream));
    });
    if (r > 0) best = std::min(best, seconds);
  }
  return 2.0 * double(bytes) / best;
}

double bf16_gemm_rate(cudaStream_t stream, int n, int repeats) {
  const std::size_t bytes = std::size_t(n) * std::size_t(n) * sizeof(__nv_bfloat16);
  DeviceBuffer a(bytes), b(bytes), c(bytes);
  // Every bf16 is 0x3c3c (about 0.0115: finite, nonzero). Random data runs a few per cent slower than constants on
  // an H100; the probe reports the rate the tensor cores reach, which is what bounds prefill.
  STRATA_CUDA_CHECK(cudaMemsetAsync(a.data, 0x3c, bytes, stream));
  STRATA_CUDA_CHECK(cudaMemsetAsync(b.data, 0x3c, bytes, stream));
  cublasHandle_t handle = nullptr;
  STRATA_PROBE_CUBLAS_CHECK(cublasCreate(&handle));
  struct HandleOwner {
    cublasHandle_t h;
    ~HandleOwner() { cublasDestroy(h); }
  } owner{handle};
  STRATA_PROBE_CUBLAS_CHECK(cublasSetStream(handle, stream));
  const float alpha = 1.0f, beta = 0.0f;
  Events events;
  double best = 1e30;
  for (int r = 0; r <= repeats; ++r) {
    const double seconds = events.time(stream, [&] {
      STRATA_PROBE_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a.data, CUDA_R_16BF, n,
                                             b.data, CUDA_R_16BF, n, &beta, c.data, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT));
    });
    if (r > 0) best = std::min(best, seconds);
  }
  return 2.0 * double(n) * double(n) * double(n) / best;
}

}  // namespace

GpuRoofline measure_gpu_roofline(std::size_t copy_bytes, int gemm_n, int repeats) {
  int device = 0;
  STRATA_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp properties{};
  STRATA_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  Stream stream;
  GpuRoofline roof;
  roof.device_name = properties.name;
  roof.copy_bytes_per_second = copy_bandwidth(stream.stream, copy_bytes, repeats);
  roof.bf16_flops_per_second = bf16_gemm_rate(stream.stream, gemm_n, repeats);
  return roof;
}

}  // namespace strata
