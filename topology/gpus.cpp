// GPU discovery through NVML (dlopen, no NVML headers: the few functions and types used are declared here),
// CUDA_VISIBLE_DEVICES filtering, and device binding.
#include "topology/gpus.h"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <sstream>

#include "runtime/base/error.h"

namespace strata {
namespace {

// The slice of the NVML C API strata uses (stable ABI since CUDA 10; the versioned names are the current ones).
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr unsigned kNvmlMaxLinks = 18;  // NVML_NVLINK_MAX_LINKS
struct nvmlMemory_t {
  unsigned long long total, free, used;
};
struct nvmlPciInfo_t {
  char bus_id_legacy[16];
  unsigned domain, bus, device, pci_device_id, pci_subsystem_id;
  char bus_id[32];
  char reserved[64];  // slack in case a driver writes a longer structure
};

struct Nvml {
  void* handle = nullptr;
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  const char* (*error_string)(nvmlReturn_t) = nullptr;
  nvmlReturn_t (*count)(unsigned*) = nullptr;
  nvmlReturn_t (*by_index)(unsigned, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned) = nullptr;
  nvmlReturn_t (*uuid)(nvmlDevice_t, char*, unsigned) = nullptr;
  nvmlReturn_t (*memory)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
  nvmlReturn_t (*pci)(nvmlDevice_t, nvmlPciInfo_t*) = nullptr;
  nvmlReturn_t (*nvlink_state)(nvmlDevice_t, unsigned, int*) = nullptr;
  nvmlReturn_t (*nvlink_remote_pci)(nvmlDevice_t, unsigned, nvmlPciInfo_t*) = nullptr;
  nvmlReturn_t (*common_ancestor)(nvmlDevice_t, nvmlDevice_t, int*) = nullptr;

  ~Nvml() {
    if (shutdown) shutdown();
    if (handle) dlclose(handle);
  }
  template <typename F>
  bool bind(F& f, const char* symbol) {
    f = reinterpret_cast<F>(dlsym(handle, symbol));
    return f != nullptr;
  }
};

std::string pcie_kind(int level) {
  // nvmlGpuTopologyLevel_t: INTERNAL 0, SINGLE 10, MULTIPLE 20, HOSTBRIDGE 30, NODE 40, SYSTEM 50
  if (level <= 20) return "pcie-switch";
  if (level <= 30) return "pcie-hostbridge";
  if (level <= 40) return "pcie-numa";
  return "pcie-system";
}

// NVLink links of every device: to which other device each active link leads; links to no GPU lead to an NVSwitch.
void add_links(Nvml& nvml, const std::vector<nvmlDevice_t>& handles, const std::vector<nvmlPciInfo_t>& pci,
               std::vector<Device>& devices) {
  const std::size_t n = devices.size();
  std::vector<std::vector<int>> count(n, std::vector<int>(n, 0));
  std::vector<int> to_switch(n, 0);
  for (std::size_t d = 0; d < n; ++d) {
    if (!nvml.nvlink_state || !nvml.nvlink_remote_pci) break;
    for (unsigned link = 0; link < kNvmlMaxLinks; ++link) {
      int active = 0;
      nvmlPciInfo_t remote{};
      if (nvml.nvlink_state(handles[d], link, &active) != kNvmlSuccess || active != 1) continue;
      if (nvml.nvlink_remote_pci(handles[d], link, &remote) != kNvmlSuccess) continue;
      bool gpu = false;
      for (std::size_t p = 0; p < n; ++p)
        if (p != d && pci[p].domain == remote.domain && pci[p].bus == remote.bus && pci[p].device == remote.device) {
          ++count[d][p];
          gpu = true;
        }
      if (!gpu) ++to_switch[d];
    }
  }
  for (std::size_t a = 0; a < n; ++a)
    for (std::size_t b = 0; b < n; ++b) {
      if (a == b) continue;
      // Through NVSwitches every switched GPU reaches every other at the bandwidth of the fewer links.
      const int links = count[a][b] + std::min(to_switch[a], to_switch[b]);
      DeviceLink link{int(b), "nvlink", links};
      if (links > 0) {
        devices[a].nvlink_peers.push_back(int(b));
      } else {
        int level = 50;
        if (nvml.common_ancestor) nvml.common_ancestor(handles[a], handles[b], &level);
        link.kind = pcie_kind(level);
      }
      devices[a].links.push_back(link);
    }
}

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// The device an entry of CUDA_VISIBLE_DEVICES names (-1: none, with `why`).
int resolve_entry(const std::string& entry, const std::vector<Device>& all, std::string& why) {
  if (!entry.empty() && std::all_of(entry.begin(), entry.end(), [](char c) { return std::isdigit(c); })) {
    const long index = std::stol(entry);
    if (index < long(all.size())) return int(index);
    why = cat("index ", index, " but the node has ", all.size(), " GPU(s)");
    return -1;
  }
  if (lower(entry).rfind("mig-", 0) == 0) {
    why = "a MIG instance (strata binds whole GPUs)";
    return -1;
  }
  std::string want = lower(entry);
  if (want.rfind("gpu-", 0) != 0) want = "gpu-" + want;
  int found = -1;
  for (std::size_t d = 0; d < all.size(); ++d)
    if (lower(all[d].uuid).rfind(want, 0) == 0 && want.size() > 4) {
      if (found >= 0) {
        why = "a UUID prefix that matches several GPUs";
        return -1;
      }
      found = int(d);
    }
  if (found < 0) why = "no GPU of this node has that index or UUID";
  return found;
}

}  // namespace

GpuScan gpus_from_cuda(const std::vector<CudaGpu>& gpus, const std::vector<std::vector<CudaPeer>>& peers) {
  const std::size_t n = gpus.size();
  STRATA_CHECK(peers.size() == n, Internal, "a CUDA peer matrix of ", peers.size(), " rows for ", n, " GPUs");
  GpuScan scan;
  scan.visible_only = true;
  bool nvlink = false;
  for (std::size_t a = 0; a < n; ++a) {
    STRATA_CHECK(peers[a].size() == n, Internal, "CUDA peer matrix row ", a, " has ", peers[a].size(), " entries");
    Device device{int(a), gpus[a].name, gpus[a].memory_bytes, {}, gpus[a].pci_bus_id, {}, {}};
    for (std::size_t b = 0; b < n; ++b) {
      if (a == b) continue;
      // Both directions must agree: a link used for all-reduces carries traffic both ways.
      const bool access = peers[a][b].access && peers[b][a].access;
      const bool atomics = access && peers[a][b].native_atomics && peers[b][a].native_atomics;
      device.links.push_back(DeviceLink{int(b),
                                        atomics  ? "nvlink"
                                        : access ? "pcie-hostbridge"
                                                 : "pcie-system",
                                        atomics ? 1 : 0});
      if (atomics) device.nvlink_peers.push_back(int(b));
      nvlink = nvlink || atomics;
    }
    scan.devices.push_back(std::move(device));
  }
  scan.status = cat(n, " GPU(s) via CUDA peer attributes", nvlink ? " (NVLink link counts unknown)" : "");
  return scan;
}

GpuScan scan_gpus(const std::string& library) {
  GpuScan scan;
  auto nvml = std::make_unique<Nvml>();
  nvml->handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!nvml->handle) {
    scan.status = "no NVML (no NVIDIA driver): " + library + " cannot be loaded";
    return scan;
  }
  nvmlReturn_t (*init)() = nullptr;
  if (!nvml->bind(init, "nvmlInit_v2") || !nvml->bind(nvml->count, "nvmlDeviceGetCount_v2") ||
      !nvml->bind(nvml->by_index, "nvmlDeviceGetHandleByIndex_v2") || !nvml->bind(nvml->name, "nvmlDeviceGetName") ||
      !nvml->bind(nvml->memory, "nvmlDeviceGetMemoryInfo") || !nvml->bind(nvml->pci, "nvmlDeviceGetPciInfo_v3")) {
    scan.status = "NVML in " + library + " lacks the functions strata uses (driver too old)";
    return scan;
  }
  nvml->bind(nvml->error_string, "nvmlErrorString");
  nvml->bind(nvml->uuid, "nvmlDeviceGetUUID");
  nvml->bind(nvml->nvlink_state, "nvmlDeviceGetNvLinkState");
  nvml->bind(nvml->nvlink_remote_pci, "nvmlDeviceGetNvLinkRemotePciInfo_v2");
  nvml->bind(nvml->common_ancestor, "nvmlDeviceGetTopologyCommonAncestor");
  auto failed = [&](const char* what, nvmlReturn_t code) {
    return cat("NVML ", what, " failed: ", nvml->error_string ? nvml->error_string(code) : "", " (code ", code, ")");
  };
  if (const nvmlReturn_t code = init(); code != kNvmlSuccess) {
    scan.status = failed("nvmlInit", code) + "; is the NVIDIA driver loaded?";
    return scan;
  }
  nvml->bind(nvml->shutdown, "nvmlShutdown");
  unsigned count = 0;
  if (const nvmlReturn_t code = nvml->count(&count); code != kNvmlSuccess) {
    scan.status = failed("nvmlDeviceGetCount", code);
    return scan;
  }
  std::vector<nvmlDevice_t> handles(count);
  std::vector<nvmlPciInfo_t> pci(count);
  for (unsigned i = 0; i < count; ++i) {
    Device device;
    device.id = int(i);
    char text[96] = {};
    nvmlMemory_t memory{};
    if (const nvmlReturn_t code = nvml->by_index(i, &handles[i]); code != kNvmlSuccess) {
      scan.status = failed("nvmlDeviceGetHandleByIndex", code);
      scan.devices.clear();
      return scan;
    }
    if (nvml->name(handles[i], text, sizeof text - 1) == kNvmlSuccess) device.name = text;
    if (nvml->uuid && nvml->uuid(handles[i], text, sizeof text - 1) == kNvmlSuccess) device.uuid = text;
    if (nvml->memory(handles[i], &memory) == kNvmlSuccess) device.memory_bytes = std::int64_t(memory.total);
    if (nvml->pci(handles[i], &pci[i]) == kNvmlSuccess) device.pci_bus_id = pci[i].bus_id;
    scan.devices.push_back(device);
  }
  add_links(*nvml, handles, pci, scan.devices);
  scan.status = cat(count, " GPU(s) via NVML");
  return scan;
}

VisibleGpus apply_visible_devices(const std::vector<Device>& all,
                                  const std::optional<std::string>& cuda_visible_devices) {
  VisibleGpus visible;
  if (!cuda_visible_devices) {
    for (std::size_t d = 0; d < all.size(); ++d) visible.physical.push_back(int(d));
  } else {
    const std::string& list = *cuda_visible_devices;
    std::vector<std::string> entries;
    std::stringstream split(list);
    for (std::string entry; !trim(list).empty() && std::getline(split, entry, ',');) entries.push_back(trim(entry));
    for (const auto& entry : entries) {
      std::string why;
      int device = resolve_entry(entry, all, why);
      if (device >= 0 && std::count(visible.physical.begin(), visible.physical.end(), device)) {
        why = "a device listed twice";
        device = -1;
      }
      if (device < 0) {
        visible.note = cat("CUDA_VISIBLE_DEVICES=", list, ": entry '", entry, "' is ", why,
                           "; CUDA ignores it and every entry after it");
        break;
      }
      visible.physical.push_back(device);
    }
  }
  // Renumber: visible position replaces the NVML index everywhere, links to hidden devices disappear.
  auto position = [&](int physical) {
    const auto it = std::find(visible.physical.begin(), visible.physical.end(), physical);
    return it == visible.physical.end() ? -1 : int(it - visible.physical.begin());
  };
  for (int physical : visible.physical) {
    Device device = all[std::size_t(physical)];
    device.id = position(physical);
    device.nvlink_peers.clear();
    device.links.clear();
    for (DeviceLink link : all[std::size_t(physical)].links) {
      link.peer = position(link.peer);
      if (link.peer < 0) continue;
      if (link.kind == "nvlink") device.nvlink_peers.push_back(link.peer);
      device.links.push_back(link);
    }
    for (int peer : all[std::size_t(physical)].nvlink_peers)  // described devices may give only the peers
      if (position(peer) >= 0 && !std::count(device.nvlink_peers.begin(), device.nvlink_peers.end(), position(peer)))
        device.nvlink_peers.push_back(position(peer));
    std::sort(device.nvlink_peers.begin(), device.nvlink_peers.end());
    visible.devices.push_back(device);
  }
  return visible;
}

DeviceBinding bind_device(const BindRequest& r) {
  std::string ranks;
  for (int rank : r.node_ranks) {
    if (!ranks.empty()) ranks += ',';
    ranks += std::to_string(rank);
  }
  STRATA_CHECK(r.local_rank >= 0 && std::size_t(r.local_rank) < r.node_ranks.size(), Internal, "local rank ",
               r.local_rank, " is not one of host ", r.host, "'s ", r.node_ranks.size(), " ranks");
  const int world_rank = r.node_ranks[std::size_t(r.local_rank)];
  const std::string env = r.cuda_visible_devices ? "CUDA_VISIBLE_DEVICES=" + *r.cuda_visible_devices
                                                 : std::string("CUDA_VISIBLE_DEVICES unset");
  const std::size_t visible = r.visible.devices.size();
  STRATA_CHECK(r.physical_count > 0, Usage, "--device cuda: host ", r.host, " (ranks ", ranks,
               ") has no GPU: ", r.gpu_status.empty() ? "none detected" : r.gpu_status);
  STRATA_CHECK(visible > 0, Usage, "--device cuda: on host ", r.host, " ", env, " hides all ", r.physical_count,
               " GPU(s), so rank ", world_rank, " has none", r.visible.note.empty() ? "" : " (" + r.visible.note + ")");
  STRATA_CHECK(
      std::size_t(r.local_rank) < visible, Usage, "--device cuda: host ", r.host, " runs ", r.node_ranks.size(),
      " ranks (", ranks, ") but only ", visible, " of its ", r.physical_count, " GPU(s) are visible (", env,
      r.visible.note.empty() ? "" : "; " + r.visible.note, "), so rank ", world_rank, " (local rank ", r.local_rank,
      ") has no device of its own; launch one rank per visible GPU on each node (e.g. --ntasks-per-node=", visible,
      ")");
  const Device& device = r.visible.devices[std::size_t(r.local_rank)];
  return {device.id, device.pci_bus_id, device.name};
}

}  // namespace strata
