// CUDA device enumeration. A machine without a driver (CI) reports no devices rather than failing.
#include "runtime/backend/cuda/device_info.h"

#include "runtime/backend/cuda/cuda_check.h"

namespace strata {

std::vector<CudaDevice> cuda_devices() {
  std::vector<CudaDevice> devices;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the sticky error, report none
    return devices;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    STRATA_CUDA_CHECK(cudaGetDeviceProperties(&prop, i));
    char bus[32] = {};
    STRATA_CUDA_CHECK(cudaDeviceGetPCIBusId(bus, int(sizeof bus), i));
    devices.push_back(CudaDevice{i, prop.name, prop.major, prop.minor, prop.totalGlobalMem, bus});
  }
  return devices;
}

std::vector<std::vector<CudaPeerAccess>> cuda_peer_access() {
  const std::size_t n = cuda_devices().size();
  std::vector<std::vector<CudaPeerAccess>> peers(n, std::vector<CudaPeerAccess>(n));
  for (std::size_t a = 0; a < n; ++a)
    for (std::size_t b = 0; b < n; ++b) {
      if (a == b) continue;
      int access = 0, atomics = 0;
      STRATA_CUDA_CHECK(cudaDeviceCanAccessPeer(&access, int(a), int(b)));
      if (access)
        STRATA_CUDA_CHECK(cudaDeviceGetP2PAttribute(&atomics, cudaDevP2PAttrNativeAtomicSupported, int(a), int(b)));
      peers[a][b] = CudaPeerAccess{access != 0, atomics != 0};
    }
  return peers;
}

CudaMemoryInfo cuda_memory_info(int device) {
  CudaMemoryInfo info;
  STRATA_CUDA_CHECK(cudaSetDevice(device));
  STRATA_CUDA_CHECK(cudaMemGetInfo(&info.free_bytes, &info.total_bytes));
  return info;
}

}  // namespace strata
