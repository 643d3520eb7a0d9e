// The machine as strata sees it: nodes (hostname, the world ranks on it, CPU NUMA domains and cores, GPUs), and
// the inter-node network links. One object whether detected (collectively over MPI) or read from a cluster
// description file (--topology FILE: planning without the hardware, clusters where detection is wrong, tests).
// Placement (which ranks form TP groups and PP stages) builds on it.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata {

struct NetworkLink {
  std::string name;              // "mlx5_0", "eth0"
  std::string kind;              // "infiniband" or "ethernet"
  std::int64_t speed_mbps = -1;  // -1: unknown
};

struct Device {
  int id = 0;  // index among the node's visible devices
  std::string name;
  std::int64_t memory_bytes = 0;
  std::vector<int> nvlink_peers;  // ids of devices this one reaches over NVLink
};

struct NodeTopology {
  std::string hostname;
  std::vector<int> ranks;  // world ranks on this node; a rank's node-local rank is its index here
  int numa_nodes = 1;      // CPU NUMA domains (sockets or core groups)
  int cpu_cores = 1;
  std::vector<Device> devices;     // GPUs (the CUDA backend fills these); empty on CPU nodes
  std::vector<NetworkLink> links;  // candidates for inter-node traffic
};

struct Topology {
  std::vector<NodeTopology> nodes;
  int world_size() const;
  // The node holding `rank` (throws when none does).
  const NodeTopology& node_of(int rank) const;
  // The fastest inter-node link kind present on every node ("infiniband", "ethernet", or "none").
  std::string fabric() const;

  nlohmann::json to_json() const;
  // Validates everything: unknown fields, ranks missing or duplicated, impossible counts, NVLink peers that are
  // not devices of the node. `where` names the source in errors.
  static Topology from_json(const nlohmann::json& j, const std::string& where);
  static Topology load(const std::string& path);
};

// Collective over `world`: every rank learns the whole topology. Node membership comes from
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED), so it is right under mpirun, srun and others alike; each node's
// first rank reads the node's NUMA domains and network links from sysfs.
Topology detect_topology(MPI_Comm world);

// The node's CPU NUMA domains, cores and network links, from sysfs (`sys_root` replaceable for tests).
NodeTopology describe_this_node(const std::string& sys_root = "/sys");

// A table for people: one line per node, then the fabric.
std::string topology_table(const Topology& topology);

}  // namespace strata
