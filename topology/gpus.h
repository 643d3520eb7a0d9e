// The GPUs of this node: found through NVML loaded at run time (libnvidia-ml ships with the driver; strata never
// links it, so one binary runs with or without a driver), filtered by CUDA_VISIBLE_DEVICES the way CUDA does, and
// the device each rank binds to, with clear refusals when ranks outnumber the visible devices.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "topology/topology.h"

namespace strata {

// Loads `library` with dlopen; a missing library or driver is a status, not an error.
GpuScan scan_gpus(const std::string& library);

// NVML's fallback: what the CUDA runtime says of its visible devices and of each ordered pair of them.
struct CudaGpu {
  std::string name;
  std::int64_t memory_bytes = 0;
  std::string pci_bus_id;
};
struct CudaPeer {
  bool access = false;          // cudaDeviceCanAccessPeer: direct loads/stores to the peer's memory
  bool native_atomics = false;  // cudaDevP2PAttrNativeAtomicSupported: only NVLink carries atomics natively
};
// Devices with links from the CUDA runtime's peer attributes, for nodes where NVML is missing: a pair with peer
// access and native atomics is NVLink (CUDA gives no link count: counted as 1), peer access alone is PCIe through a
// host bridge, no peer access is PCIe across the system. `peers[a][b]` for every ordered pair.
GpuScan gpus_from_cuda(const std::vector<CudaGpu>& gpus, const std::vector<std::vector<CudaPeer>>& peers);

struct VisibleGpus {
  std::vector<Device> devices;  // renumbered 0.. in CUDA_VISIBLE_DEVICES order; links to hidden devices dropped
  std::vector<int> physical;    // the NVML index of each
  std::string note;             // entries CUDA would ignore, and why ("" when none)
};
// CUDA_VISIBLE_DEVICES semantics: unset shows every device; a comma-separated list of indices or GPU UUIDs (a
// unique prefix is enough, "GPU-" included) shows those, in that order; CUDA stops at the first entry that names no
// device (or repeats one), so everything from there on is hidden too; an empty value hides all.
VisibleGpus apply_visible_devices(const std::vector<Device>& all,
                                  const std::optional<std::string>& cuda_visible_devices);

struct DeviceBinding {
  int index = 0;           // for cudaSetDevice: position among this rank's visible devices
  std::string pci_bus_id;  // for cudaDeviceGetByPCIBusId, which does not depend on CUDA_DEVICE_ORDER
  std::string name;
};

struct BindRequest {
  std::string host;
  std::vector<int> node_ranks;  // world ranks on this node; local rank = index here
  int local_rank = 0;
  VisibleGpus visible;  // what this rank sees
  int physical_count = 0;
  std::optional<std::string> cuda_visible_devices;
  std::string gpu_status;
};
// One rank per GPU: node-local rank i drives visible device i. Throws Error(Usage) naming the host, its ranks, the
// visible and physical devices and CUDA_VISIBLE_DEVICES when there are more ranks than visible devices.
DeviceBinding bind_device(const BindRequest& request);

}  // namespace strata
