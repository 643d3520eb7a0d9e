// What one GPU can do at most, measured in the run that reports against it (`strata bench --device cuda`): HBM
// bandwidth from device-to-device copies (bounds decode, which reads every weight once per step) and the bf16
// cuBLAS GEMM rate (bounds prefill). Free of CUDA headers; implemented in roofline_probe.cu.
#pragma once
#include <cstddef>
#include <string>

namespace strata {

struct GpuRoofline {
  std::string device_name;
  double copy_bytes_per_second = 0;  // bytes read + bytes written per second by cudaMemcpyDeviceToDevice
  double bf16_flops_per_second = 0;  // cuBLAS bf16 GEMM, fp32 accumulation
};

// Measures the calling thread's current device: best of `repeats` copies of a `copy_bytes` buffer, and of GEMMs
// of size gemm_n^3. Allocates 2 x copy_bytes and 3 gemm_n^2 bf16 matrices (freed before returning).
GpuRoofline measure_gpu_roofline(std::size_t copy_bytes, int gemm_n = 8192, int repeats = 10);

}  // namespace strata
