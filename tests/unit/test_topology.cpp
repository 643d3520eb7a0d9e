// Topology: the description format (round trip, every kind of bad input named), the fabric summary, and node
// description from a fake sysfs tree.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "runtime/base/error.h"
#include "topology/placement.h"
#include "topology/topology.h"

using namespace strata;
namespace fs = std::filesystem;

namespace {
nlohmann::json two_nodes() {
  return nlohmann::json::parse(R"({"nodes": [
    {"hostname": "a", "ranks": [0, 1], "numa_nodes": 2, "cpu_cores": 64,
     "devices": [{"id": 0, "name": "H100", "memory_bytes": 85899345920, "nvlink_peers": [1]},
                 {"id": 1, "name": "H100", "memory_bytes": 85899345920, "nvlink_peers": [0]}],
     "links": [{"name": "mlx5_0", "kind": "infiniband", "speed_mbps": 400000}]},
    {"hostname": "b", "ranks": [3, 2], "links": [{"name": "mlx5_0", "kind": "infiniband"}]}]})");
}

std::string error_of(const nlohmann::json& j) {
  try {
    Topology::from_json(j, "cluster.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Topology, DescriptionRoundTripsAndAnswersQuestions) {
  const Topology t = Topology::from_json(two_nodes(), "cluster.json");
  EXPECT_EQ(t.world_size(), 4);
  EXPECT_EQ(t.node_of(2).hostname, "b");
  EXPECT_EQ(t.node_of(2).ranks[1], 2) << "rank 2 is node b's local rank 1";
  EXPECT_EQ(t.fabric(), "infiniband");
  EXPECT_EQ(Topology::from_json(t.to_json(), "again").to_json(), t.to_json());
  nlohmann::json mixed = two_nodes();
  mixed["nodes"][1]["links"] = {{{"name", "eth0"}, {"kind", "ethernet"}}};
  EXPECT_EQ(Topology::from_json(mixed, "x").fabric(), "none") << "no fabric common to every node";
}

TEST(Topology, BadDescriptionsAreNamed) {
  auto broken = [](auto edit) {
    nlohmann::json j = two_nodes();
    edit(j);
    return error_of(j);
  };
  EXPECT_NE(broken([](auto& j) { j["nodes"][0]["gpus"] = 8; }).find("cluster.json: nodes[0]: unknown field 'gpus'"),
            std::string::npos);
  EXPECT_NE(broken([](auto& j) {
              j["nodes"][1]["ranks"] = {1, 2};
            }).find("rank 1 is already on another node"),
            std::string::npos);
  EXPECT_NE(broken([](auto& j) { j["nodes"][1]["ranks"] = {2, 5}; }).find("ranks must be 0..3"), std::string::npos);
  EXPECT_NE(broken([](auto& j) { j["nodes"][0]["numa_nodes"] = 0; }).find("impossible"), std::string::npos);
  EXPECT_NE(broken([](auto& j) {
              j["nodes"][0]["devices"][0]["nvlink_peers"] = {7};
            }).find("device 0 has an NVLink to device 7"),
            std::string::npos);
  EXPECT_NE(broken([](auto& j) {
              j["nodes"][0]["ranks"] = {0, 1, 2};
              j["nodes"][1]["ranks"] = {3};
            }).find("3 ranks but only 2 devices"),
            std::string::npos);
  EXPECT_NE(broken([](auto& j) { j["nodes"][1]["links"][0]["kind"] = "omnipath"; }).find("link kind 'omnipath'"),
            std::string::npos);
  EXPECT_NE(broken([](auto& j) { j["nodes"][1]["hostname"] = "a"; }).find("hostname 'a' appears twice"),
            std::string::npos);
  EXPECT_NE(broken([](auto& j) { j["nodes"][1]["ranks"] = "2-3"; }).find("field 'ranks' has the wrong type"),
            std::string::npos);
}

TEST(Topology, NodeDescriptionFromSysfs) {
  const fs::path root = fs::temp_directory_path() / ("strata_sysfs_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "devices/system/node/node0");
  fs::create_directories(root / "devices/system/node/node1");
  fs::create_directories(root / "devices/system/node/power");
  fs::create_directories(root / "class/infiniband/mlx5_0/ports/1");
  std::ofstream(root / "class/infiniband/mlx5_0/ports/1/rate") << "200 Gb/sec (4X HDR)\n";
  for (const char* nic : {"eth0", "lo", "veth9"}) fs::create_directories(root / "class/net" / nic);
  std::ofstream(root / "class/net/eth0/type") << "1\n";
  std::ofstream(root / "class/net/eth0/speed") << "25000\n";
  fs::create_directories(root / "class/net/eth0/device");
  std::ofstream(root / "class/net/lo/type") << "772\n";
  std::ofstream(root / "class/net/veth9/type") << "1\n";  // no device: virtual, not a link
  const NodeTopology node = describe_this_node(root.string());
  EXPECT_EQ(node.numa_nodes, 2);
  ASSERT_EQ(node.links.size(), 2u);
  EXPECT_EQ(node.links[0].name, "eth0");
  EXPECT_EQ(node.links[0].kind, "ethernet");
  EXPECT_EQ(node.links[0].speed_mbps, 25000);
  EXPECT_EQ(node.links[1].name, "mlx5_0");
  EXPECT_EQ(node.links[1].kind, "infiniband");
  EXPECT_EQ(node.links[1].speed_mbps, 200000);
  fs::remove_all(root);
}

namespace {
Topology described(const std::string& text) { return Topology::from_json(nlohmann::json::parse(text), "cluster.json"); }

std::string placement_error(const Topology& t, LayoutSizes sizes) {
  try {
    place_ranks(t, sizes, false);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Placement, TensorParallelGroupsStayInsideNodesWhateverTheLaunchOrder) {
  // Round-robin launch: even ranks on a, odd ranks on b.
  const Topology t =
      described(R"({"nodes": [{"hostname": "a", "ranks": [0, 2]}, {"hostname": "b", "ranks": [1, 3]}]})");
  const Placement p = place_ranks(t, {0, 2, 2}, false);
  EXPECT_EQ(p.sizes.dp, 1);
  EXPECT_EQ(p.ranks_by_position, (std::vector<int>{0, 2, 1, 3}));
  for (int rank = 0; rank < 4; ++rank) {
    const ParallelLayout layout(p.sizes, p.ranks_by_position, rank);
    for (int peer : layout.tp_group()) EXPECT_EQ(t.node_of(peer).hostname, t.node_of(rank).hostname) << rank;
  }
}

TEST(Placement, ReplicasTakeWholeNodesAndStagesNeighbouringGroups) {
  const Topology t = described(R"({"nodes": [{"hostname": "a", "ranks": [0, 1, 2, 3]},
                                              {"hostname": "b", "ranks": [4, 5, 6, 7]}]})");
  const Placement p = place_ranks(t, {2, 2, 2}, false);
  const ParallelLayout r0(p.sizes, p.ranks_by_position, 0);
  EXPECT_EQ(r0.pp_group(), (std::vector<int>{0, 2})) << "replica 0's two stages share node a";
  EXPECT_EQ(r0.dp_group(), (std::vector<int>{0, 4}));
}

TEST(Placement, RefusesTensorGroupsAcrossNodesOrIslandsAndSaysWhatWorks) {
  const Topology uneven = described(R"({"nodes": [{"hostname": "a", "ranks": [0]},
                                                   {"hostname": "b", "ranks": [1, 2, 3]}]})");
  const std::string message = placement_error(uneven, {0, 1, 2});
  EXPECT_NE(message.find("node a has 1 rank(s), not a multiple of tensor-parallel size 2: a TP group would span nodes"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("-tp 1 -pp 2"), std::string::npos) << message;
  const Placement forced = place_ranks(uneven, {0, 1, 2}, true);
  EXPECT_EQ(forced.warnings.size(), 2u) << "node a (1 rank) and node b (3 ranks)";

  // Two NVLink islands of 4 GPUs: TP 4 fits an island, TP 8 would cross PCIe.
  nlohmann::json node = {
      {"hostname", "dgx"}, {"ranks", {0, 1, 2, 3, 4, 5, 6, 7}}, {"devices", nlohmann::json::array()}};
  for (int d = 0; d < 8; ++d) {
    std::vector<int> peers;
    for (int q = d / 4 * 4; q < d / 4 * 4 + 4; ++q)
      if (q != d) peers.push_back(q);
    node["devices"].push_back({{"id", d}, {"name", "GPU"}, {"nvlink_peers", peers}});
  }
  const Topology islands = Topology::from_json({{"nodes", {node}}}, "dgx.json");
  EXPECT_EQ(placement_error(islands, {0, 1, 4}), "");
  EXPECT_NE(placement_error(islands, {0, 1, 8}).find("an NVLink island of node dgx has 4 rank(s)"), std::string::npos);
  EXPECT_NE(placement_error(islands, {0, 1, 8}).find("communicate over PCIe"), std::string::npos);
  EXPECT_NE(placement_error(islands, {3, 1, 1}).find("world size 8 does not equal"), std::string::npos);
}
