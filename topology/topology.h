// The machine as strata sees it: nodes (hostname, the world ranks on it, CPU NUMA domains and cores, GPUs), and
// the inter-node network links. One object whether detected (collectively over MPI) or read from a cluster
// description file (--topology FILE: planning without the hardware, clusters where detection is wrong, tests).
// Placement (which ranks form TP groups and PP stages) builds on it.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata {

struct NetworkLink {
  std::string name;              // "mlx5_0", "eth0"
  std::string kind;              // "infiniband" or "ethernet"
  std::int64_t speed_mbps = -1;  // -1: unknown
};

// How two GPUs of a node reach each other: "nvlink" (with the number of links), else over PCIe, named by their
// nearest common ancestor as NVML reports it: "pcie-switch" (one or more PCIe switches), "pcie-hostbridge",
// "pcie-numa" (the same CPU socket / NUMA node) or "pcie-system" (across the CPU sockets).
struct DeviceLink {
  int peer = 0;
  std::string kind;
  int nvlinks = 0;  // NVLink links between the two (kind "nvlink")
};

struct Device {
  int id = 0;  // index among the node's visible devices (what cudaSetDevice takes)
  std::string name;
  std::int64_t memory_bytes = 0;
  std::vector<int> nvlink_peers;  // ids of devices this one reaches over NVLink
  std::string pci_bus_id;         // "00000000:17:00.0" (detected; optional in a description)
  std::string uuid;               // "GPU-..." (detected; optional)
  std::vector<DeviceLink> links;  // every other device and the link to it (detected; optional)
};

struct NodeTopology {
  std::string hostname;
  std::vector<int> ranks;  // world ranks on this node; a rank's node-local rank is its index here
  int numa_nodes = 1;      // CPU NUMA domains (sockets or core groups)
  int cpu_cores = 1;
  std::int64_t memory_bytes = 0;   // host memory (0: unknown); a CPU rank's share is this / ranks
  std::vector<Device> devices;     // the GPUs visible to the node's ranks; empty on CPU nodes
  std::vector<NetworkLink> links;  // candidates for inter-node traffic
  std::string gpu_status;          // what GPU detection found ("no NVML (no NVIDIA driver)", ...); "" in a description
};

struct Topology {
  std::vector<NodeTopology> nodes;
  int world_size() const;
  // The node holding `rank` (throws when none does).
  const NodeTopology& node_of(int rank) const;
  // The fastest inter-node link kind present on every node ("infiniband", "ethernet", or "none").
  std::string fabric() const;
  // Memory one rank may use: the smallest GPU's memory (on_gpus), or the host memory shared by the node's ranks;
  // the minimum over nodes; 0 when some node does not say.
  std::int64_t rank_memory_bytes(bool on_gpus) const;

  nlohmann::json to_json() const;
  // Validates everything: unknown fields, ranks missing or duplicated, impossible counts, NVLink peers that are
  // not devices of the node. `where` names the source in errors.
  // `one_rank_per_device`: refuse a node with devices but more ranks than devices (descriptions; detection reports
  // what it finds and leaves that refusal to --device cuda).
  static Topology from_json(const nlohmann::json& j, const std::string& where, bool one_rank_per_device = true);
  static Topology load(const std::string& path);
};

// What detection needs from the process environment, read once in launch/ and passed in.
struct GpuScan {
  std::vector<Device> devices;  // every GPU NVML reports, id = NVML index (PCI bus order), links filled
  std::string status;           // "2 GPU(s) via NVML", "no NVML (no NVIDIA driver)", or the NVML error
  bool visible_only = false;    // the devices are already those CUDA_VISIBLE_DEVICES leaves (the CUDA fallback)
};

struct DetectOptions {
  std::optional<std::string> cuda_visible_devices;  // unset: every GPU is visible
  std::string nvml_library = "libnvidia-ml.so.1";
  // Asked when NVML finds no GPU (missing library, old driver): the CUDA runtime's view (gpus_from_cuda). Set by
  // launch/ in CUDA builds, so topology/ itself never needs CUDA.
  std::function<GpuScan()> cuda_fallback;
};

// Collective over `world`: every rank learns the whole topology. Node membership comes from
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED), so it is right under mpirun, srun and others alike; each node's
// first rank reads the node's NUMA domains, memory and network links from sysfs and its GPUs from NVML.
Topology detect_topology(MPI_Comm world, const DetectOptions& options);

// The node's CPU NUMA domains, cores, memory and network links, from sysfs and /proc (roots replaceable for
// tests). No GPUs: see gpus.h.
NodeTopology describe_this_node(const std::string& sys_root = "/sys", const std::string& proc_root = "/proc");

// A table for people: one line per node, the fabric, then every GPU and its links.
std::string topology_table(const Topology& topology);

}  // namespace strata
