// Topology detection (MPI + sysfs), the description file, and the human table.
#include "topology/topology.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "io/prompts.h"
#include "runtime/comm/mpi/mpi_communicator.h"
#include "topology/gpus.h"

namespace strata {
namespace fs = std::filesystem;

namespace {

std::string read_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

void check_keys(const nlohmann::json& object, std::initializer_list<const char*> known, const std::string& where) {
  STRATA_CHECK(object.is_object(), Config, where, ": expected a JSON object");
  for (const auto& [key, value] : object.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || key == k;
    STRATA_CHECK(ok, Config, where, ": unknown field '", key, "'");
  }
}

template <typename T>
T get(const nlohmann::json& object, const char* key, const std::string& where, T fallback, bool required = false) {
  if (!object.contains(key)) {
    STRATA_CHECK(!required, Config, where, ": missing field '", key, "'");
    return fallback;
  }
  try {
    return object.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorKind::Config, cat(where, ": field '", key, "' has the wrong type (", object.at(key).dump(), ")"));
  }
}

}  // namespace

int Topology::world_size() const {
  int n = 0;
  for (const auto& node : nodes) n += int(node.ranks.size());
  return n;
}

const NodeTopology& Topology::node_of(int rank) const {
  for (const auto& node : nodes)
    if (std::find(node.ranks.begin(), node.ranks.end(), rank) != node.ranks.end()) return node;
  throw Error(ErrorKind::Config, cat("no node holds rank ", rank));
}

std::int64_t Topology::rank_memory_bytes(bool on_gpus) const {
  std::int64_t smallest = 0;
  for (const auto& node : nodes) {
    std::int64_t each = node.ranks.empty() || on_gpus ? 0 : node.memory_bytes / std::int64_t(node.ranks.size());
    if (on_gpus && !node.devices.empty()) {
      each = node.devices.front().memory_bytes;
      for (const auto& d : node.devices) each = std::min(each, d.memory_bytes);
    }
    if (each <= 0) return 0;
    smallest = smallest == 0 ? each : std::min(smallest, each);
  }
  return smallest;
}

std::string Topology::fabric() const {
  if (nodes.size() < 2) return "none";
  bool all_infiniband = true, all_ethernet = true;
  for (const auto& node : nodes) {
    bool has_ib = false, has_eth = false;
    for (const auto& link : node.links) (link.kind == "infiniband" ? has_ib : has_eth) = true;
    all_infiniband = all_infiniband && has_ib;
    all_ethernet = all_ethernet && has_eth;
  }
  return all_infiniband ? "infiniband" : all_ethernet ? "ethernet" : "none";
}

nlohmann::json Topology::to_json() const {
  nlohmann::json j = {{"nodes", nlohmann::json::array()}};
  for (const auto& node : nodes) {
    nlohmann::json n = {{"hostname", node.hostname},         {"ranks", node.ranks},
                        {"numa_nodes", node.numa_nodes},     {"cpu_cores", node.cpu_cores},
                        {"memory_bytes", node.memory_bytes}, {"devices", nlohmann::json::array()},
                        {"links", nlohmann::json::array()}};
    if (!node.gpu_status.empty()) n["gpu_status"] = node.gpu_status;
    for (const auto& d : node.devices) {
      nlohmann::json device = {
          {"id", d.id}, {"name", d.name}, {"memory_bytes", d.memory_bytes}, {"nvlink_peers", d.nvlink_peers}};
      if (!d.pci_bus_id.empty()) device["pci_bus_id"] = d.pci_bus_id;
      if (!d.uuid.empty()) device["uuid"] = d.uuid;
      if (!d.links.empty()) device["links"] = nlohmann::json::array();
      for (const auto& l : d.links)
        device["links"].push_back({{"peer", l.peer}, {"kind", l.kind}, {"nvlinks", l.nvlinks}});
      n["devices"].push_back(device);
    }
    for (const auto& l : node.links)
      n["links"].push_back({{"name", l.name}, {"kind", l.kind}, {"speed_mbps", l.speed_mbps}});
    j["nodes"].push_back(n);
  }
  return j;
}

Topology Topology::from_json(const nlohmann::json& j, const std::string& where, bool one_rank_per_device) {
  check_keys(j, {"nodes"}, where);
  STRATA_CHECK(j.contains("nodes") && j["nodes"].is_array() && !j["nodes"].empty(), Config, where,
               ": 'nodes' must be a non-empty list");
  Topology t;
  std::set<int> seen_ranks;
  std::set<std::string> seen_hosts;
  for (std::size_t i = 0; i < j["nodes"].size(); ++i) {
    const auto& n = j["nodes"][i];
    const std::string at = cat(where, ": nodes[", i, "]");
    check_keys(n, {"hostname", "ranks", "numa_nodes", "cpu_cores", "memory_bytes", "devices", "links", "gpu_status"},
               at);
    NodeTopology node;
    node.hostname = get<std::string>(n, "hostname", at, "", true);
    STRATA_CHECK(seen_hosts.insert(node.hostname).second, Config, at, ": hostname '", node.hostname, "' appears twice");
    node.ranks = get<std::vector<int>>(n, "ranks", at, {}, true);
    STRATA_CHECK(!node.ranks.empty(), Config, at, ": a node needs at least one rank");
    for (int r : node.ranks)
      STRATA_CHECK(r >= 0 && seen_ranks.insert(r).second, Config, at, ": rank ", r,
                   r < 0 ? " is negative" : " is already on another node");
    node.numa_nodes = get<int>(n, "numa_nodes", at, 1);
    node.cpu_cores = get<int>(n, "cpu_cores", at, 1);
    node.memory_bytes = get<std::int64_t>(n, "memory_bytes", at, 0);
    node.gpu_status = get<std::string>(n, "gpu_status", at, "");
    STRATA_CHECK(node.memory_bytes >= 0, Config, at, ": memory_bytes ", node.memory_bytes, " is negative");
    STRATA_CHECK(node.numa_nodes >= 1 && node.cpu_cores >= node.numa_nodes, Config, at, ": numa_nodes ",
                 node.numa_nodes, " and cpu_cores ", node.cpu_cores, " are impossible (1 <= numa_nodes <= cpu_cores)");
    std::set<int> ids;
    for (const auto& d : n.value("devices", nlohmann::json::array())) {
      check_keys(d, {"id", "name", "memory_bytes", "nvlink_peers", "pci_bus_id", "uuid", "links"}, at + ": device");
      Device device{get<int>(d, "id", at, 0, true),
                    get<std::string>(d, "name", at, ""),
                    get<std::int64_t>(d, "memory_bytes", at, 0),
                    get<std::vector<int>>(d, "nvlink_peers", at, {}),
                    get<std::string>(d, "pci_bus_id", at, ""),
                    get<std::string>(d, "uuid", at, ""),
                    {}};
      STRATA_CHECK(device.memory_bytes >= 0, Config, at, ": device ", device.id, " has negative memory_bytes");
      for (const auto& l : d.value("links", nlohmann::json::array())) {
        const std::string link_at = cat(at, ": device ", device.id, ": link");
        check_keys(l, {"peer", "kind", "nvlinks"}, link_at);
        DeviceLink link{get<int>(l, "peer", link_at, 0, true), get<std::string>(l, "kind", link_at, "", true),
                        get<int>(l, "nvlinks", link_at, 0)};
        static const std::set<std::string> kinds = {"nvlink", "pcie-switch", "pcie-hostbridge", "pcie-numa",
                                                    "pcie-system"};
        STRATA_CHECK(kinds.count(link.kind), Config, link_at, " kind '", link.kind,
                     "' (expected nvlink, pcie-switch, pcie-hostbridge, pcie-numa or pcie-system)");
        STRATA_CHECK((link.kind == "nvlink") == (link.nvlinks > 0), Config, link_at, " to device ", link.peer,
                     ": an nvlink link needs nvlinks >= 1 and a PCIe link none (nvlinks ", link.nvlinks, ")");
        if (link.kind == "nvlink" &&
            std::find(device.nvlink_peers.begin(), device.nvlink_peers.end(), link.peer) == device.nvlink_peers.end())
          device.nvlink_peers.push_back(link.peer);
        device.links.push_back(link);
      }
      STRATA_CHECK(device.id >= 0 && ids.insert(device.id).second, Config, at, ": device id ", device.id,
                   " is negative or repeated");
      node.devices.push_back(device);
    }
    for (const auto& d : node.devices) {
      for (int peer : d.nvlink_peers)
        STRATA_CHECK(ids.count(peer) && peer != d.id, Config, at, ": device ", d.id, " has an NVLink to device ", peer,
                     ", which is not another device of this node");
      for (const auto& l : d.links)
        STRATA_CHECK(ids.count(l.peer) && l.peer != d.id, Config, at, ": device ", d.id, " has a ", l.kind,
                     " link to device ", l.peer, ", which is not another device of this node");
    }
    STRATA_CHECK(!one_rank_per_device || node.devices.empty() || node.ranks.size() <= node.devices.size(), Config, at,
                 ": ", node.ranks.size(), " ranks but only ", node.devices.size(), " devices (one rank per device)");
    for (const auto& l : n.value("links", nlohmann::json::array())) {
      check_keys(l, {"name", "kind", "speed_mbps"}, at + ": link");
      NetworkLink link{get<std::string>(l, "name", at, "", true), get<std::string>(l, "kind", at, "", true),
                       get<std::int64_t>(l, "speed_mbps", at, -1)};
      STRATA_CHECK(link.kind == "infiniband" || link.kind == "ethernet", Config, at, ": link kind '", link.kind,
                   "' (expected infiniband or ethernet)");
      node.links.push_back(link);
    }
    t.nodes.push_back(std::move(node));
  }
  const int world = int(seen_ranks.size());
  STRATA_CHECK(*seen_ranks.rbegin() == world - 1, Config, where, ": ranks must be 0..", world - 1,
               " with none missing (rank ", *seen_ranks.rbegin(), " is listed)");
  return t;
}

Topology Topology::load(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Config, cat(path, ": not valid JSON (", e.what(), ")"));
  }
  return from_json(j, path);
}

NodeTopology describe_this_node(const std::string& sys_root, const std::string& proc_root) {
  NodeTopology node;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  node.hostname = host;
  node.cpu_cores = std::max(1, int(std::thread::hardware_concurrency()));
  const std::regex numa_dir("node[0-9]+");
  int numa = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::path(sys_root) / "devices/system/node", ec))
    if (std::regex_match(entry.path().filename().string(), numa_dir)) ++numa;
  node.numa_nodes = std::max(1, numa);
  std::ifstream meminfo(fs::path(proc_root) / "meminfo");
  std::string key, unit;
  std::int64_t kib = 0;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemTotal:") node.memory_bytes = kib * 1024;
  for (const auto& entry : fs::directory_iterator(fs::path(sys_root) / "class/infiniband", ec)) {
    // ports/1/rate reads like "100 Gb/sec (4X EDR)"
    const std::string rate = read_line(entry.path() / "ports/1/rate");
    std::int64_t gbps = -1;
    std::istringstream(rate) >> gbps;
    node.links.push_back({entry.path().filename().string(), "infiniband", gbps > 0 ? gbps * 1000 : -1});
  }
  // Ethernet-type (ARPHRD_ETHER = 1) interfaces backed by a device; loopback and virtual ones are not links, except
  // where a node has no device at all (a container or network namespace, whose eth0 is a veth): then the virtual
  // interfaces that are up and not bridges are its links.
  std::vector<NetworkLink> virtual_links;
  for (const auto& entry : fs::directory_iterator(fs::path(sys_root) / "class/net", ec)) {
    const std::string name = entry.path().filename().string();
    if (read_line(entry.path() / "type") != "1") continue;
    std::int64_t speed = -1;
    std::istringstream(read_line(entry.path() / "speed")) >> speed;
    const NetworkLink link{name, "ethernet", speed > 0 ? speed : -1};
    if (fs::exists(entry.path() / "device"))
      node.links.push_back(link);
    else if (read_line(entry.path() / "operstate") == "up" && !fs::exists(entry.path() / "bridge"))
      virtual_links.push_back(link);
  }
  if (node.links.empty()) node.links = virtual_links;
  std::sort(node.links.begin(), node.links.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return node;
}

Topology detect_topology(MPI_Comm world, const DetectOptions& options) {
  int rank = 0, size = 0;
  STRATA_MPI_CHECK(MPI_Comm_rank(world, &rank));
  STRATA_MPI_CHECK(MPI_Comm_size(world, &size));
  MPI_Comm node_comm = MPI_COMM_NULL;
  STRATA_MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node_comm));
  int local_rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_rank(node_comm, &local_rank));
  // Each rank names its node by the world rank of the node's first rank; leaders describe their node.
  int leader = rank;
  STRATA_MPI_CHECK(MPI_Bcast(&leader, 1, MPI_INT, 0, node_comm));
  STRATA_MPI_CHECK(MPI_Comm_free(&node_comm));
  std::vector<int> leaders(std::size_t(size), 0);
  STRATA_MPI_CHECK(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, world));

  std::string mine = "null";
  if (local_rank == 0) {
    NodeTopology node = describe_this_node();
    GpuScan scan = scan_gpus(options.nvml_library);
    if (scan.devices.empty() && options.cuda_fallback) {
      GpuScan cuda = options.cuda_fallback();
      if (!cuda.devices.empty()) scan = GpuScan{std::move(cuda.devices), cat(scan.status, "; ", cuda.status), true};
    }
    VisibleGpus visible = scan.visible_only ? VisibleGpus{scan.devices, {}, ""}
                                            : apply_visible_devices(scan.devices, options.cuda_visible_devices);
    node.devices = std::move(visible.devices);
    node.gpu_status = scan.status;
    if (!scan.devices.empty() && !scan.visible_only && options.cuda_visible_devices)
      node.gpu_status +=
          cat("; ", node.devices.size(), " visible (CUDA_VISIBLE_DEVICES=", *options.cuda_visible_devices, ")");
    if (!visible.note.empty()) node.gpu_status += "; " + visible.note;
    // A description with more ranks than devices is refused; detection reports it and leaves the refusal to
    // --device cuda (CPU ranks on a GPU node are fine).
    nlohmann::json j = Topology{{node}}.to_json()["nodes"][0];
    mine = j.dump();
  }
  int length = int(mine.size()), longest = 0;
  STRATA_MPI_CHECK(MPI_Allreduce(&length, &longest, 1, MPI_INT, MPI_MAX, world));
  mine.resize(std::size_t(longest), ' ');
  std::vector<char> all(std::size_t(longest) * std::size_t(size));
  STRATA_MPI_CHECK(MPI_Allgather(mine.data(), longest, MPI_CHAR, all.data(), longest, MPI_CHAR, world));

  nlohmann::json nodes = nlohmann::json::array();
  for (int r = 0; r < size; ++r) {
    if (leaders[std::size_t(r)] != r) continue;  // not a node leader
    nlohmann::json n = nlohmann::json::parse(std::string(all.data() + std::size_t(r) * longest, std::size_t(longest)));
    n["ranks"] = nlohmann::json::array();
    for (int q = 0; q < size; ++q)
      if (leaders[std::size_t(q)] == r) n["ranks"].push_back(q);
    nodes.push_back(n);
  }
  // The same checks as a description file, except one rank per device: CPU ranks may outnumber a node's GPUs, and
  // --device cuda refuses that with the host and ranks named (bind_device).
  return Topology::from_json({{"nodes", nodes}}, "detected topology", false);
}

std::string topology_table(const Topology& t) {
  std::ostringstream out;
  out << t.nodes.size() << " node(s), " << t.world_size() << " rank(s); inter-node fabric: " << t.fabric() << "\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-5s %-20s %-12s %-6s %-5s %-6s %-8s %s\n", "node", "host", "ranks", "local",
                "numa", "cores", "devices", "links");
  out << line;
  for (std::size_t i = 0; i < t.nodes.size(); ++i) {
    const auto& n = t.nodes[i];
    std::ostringstream ranks, links;
    for (std::size_t k = 0; k < n.ranks.size(); ++k) ranks << (k ? "," : "") << n.ranks[k];
    for (std::size_t k = 0; k < n.links.size(); ++k) {
      links << (k ? ", " : "") << n.links[k].name << " " << n.links[k].kind;
      if (n.links[k].speed_mbps > 0) links << " " << n.links[k].speed_mbps << " Mb/s";
    }
    const std::string link_text = links.str().empty() ? "-" : links.str();
    std::snprintf(line, sizeof line, "%-5zu %-20s %-12s %-6zu %-5d %-6d %-8zu %s\n", i, n.hostname.c_str(),
                  ranks.str().c_str(), n.ranks.size(), n.numa_nodes, n.cpu_cores, n.devices.size(), link_text.c_str());
    out << line;
  }
  bool uneven = false;
  std::string counts;
  for (const auto& n : t.nodes) {
    uneven = uneven || n.ranks.size() != t.nodes.front().ranks.size();
    counts += cat(counts.empty() ? "" : ", ", n.hostname, " ", n.ranks.size());
  }
  if (uneven)
    out << "ranks per node differ (" << counts
        << "): placement still keeps every TP group inside one node, so -tp must divide each node's rank count\n";
  for (const auto& n : t.nodes) {
    if (!n.gpu_status.empty()) out << n.hostname << " GPUs: " << n.gpu_status << "\n";
    for (const auto& d : n.devices) {
      std::snprintf(line, sizeof line, "  %s gpu%d %s %.1f GiB %s", n.hostname.c_str(), d.id, d.name.c_str(),
                    double(d.memory_bytes) / double(1ll << 30), d.pci_bus_id.c_str());
      out << line;
      if (!d.links.empty()) out << " links:";
      for (std::size_t k = 0; k < d.links.size(); ++k)
        out << (k ? ", gpu" : " gpu") << d.links[k].peer << " "
            << (d.links[k].kind == "nvlink" ? cat("NVLink x", d.links[k].nvlinks) : d.links[k].kind);
      if (d.links.empty() && !d.nvlink_peers.empty()) out << " NVLink to:";
      for (int peer : d.links.empty() ? d.nvlink_peers : std::vector<int>{}) out << " gpu" << peer;
      out << "\n";
    }
  }
  return out.str();
}

}  // namespace strata
