// What the CUDA runtime sees on this node. Compiled only when nvcc is present (STRATA_CUDA); free of CUDA headers
// so launch/ can call it without them.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace strata {

struct CudaDevice {
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  std::size_t memory_bytes = 0;
  std::string pci_bus_id;  // "0000:3B:00.0"
};

// The devices visible to this process (after CUDA_VISIBLE_DEVICES); empty when there is no driver or no GPU.
std::vector<CudaDevice> cuda_devices();

// For every ordered pair of visible devices (a, b): whether a reaches b's memory directly (cudaDeviceCanAccessPeer)
// and whether that path carries atomics natively (cudaDevP2PAttrNativeAtomicSupported, true over NVLink).
// topology/ turns this into links where NVML is missing. Empty without a driver.
struct CudaPeerAccess {
  bool access = false;
  bool native_atomics = false;
};
std::vector<std::vector<CudaPeerAccess>> cuda_peer_access();

struct CudaMemoryInfo {
  std::size_t free_bytes = 0, total_bytes = 0;
};
// Free and total memory of `device` now (cudaMemGetInfo; makes the device current for the calling thread).
CudaMemoryInfo cuda_memory_info(int device);

}  // namespace strata
