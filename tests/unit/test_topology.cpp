// Topology: the description format (round trip, every kind of bad input named), the fabric summary, and node
// description from a fake sysfs tree; GPUs (NVLink islands, CUDA_VISIBLE_DEVICES, device binding) and auto placement.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "runtime/base/error.h"
#include "tests/unit/error_of.h"
#include "topology/gpus.h"
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
  // A network namespace: only a veth (up) and a bridge; the veth is the node's link.
  fs::remove_all(root / "class");
  for (const char* nic : {"eth0", "br0"}) {
    fs::create_directories(root / "class/net" / nic);
    std::ofstream(root / "class/net" / nic / "type") << "1\n";
    std::ofstream(root / "class/net" / nic / "operstate") << "up\n";
  }
  fs::create_directories(root / "class/net/br0/bridge");
  const NodeTopology in_namespace = describe_this_node(root.string());
  ASSERT_EQ(in_namespace.links.size(), 1u);
  EXPECT_EQ(in_namespace.links[0].name, "eth0");
  EXPECT_EQ(in_namespace.links[0].kind, "ethernet");
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

namespace {
// A node of `n` GPUs (`memory` bytes each); `nvlink(a, b)` says whether a and b share an NVLink.
template <typename Linked>
nlohmann::json gpu_node(const std::string& host, std::vector<int> ranks, int n, std::int64_t memory, Linked nvlink) {
  nlohmann::json node = {{"hostname", host}, {"ranks", ranks}, {"devices", nlohmann::json::array()}};
  for (int d = 0; d < n; ++d) {
    nlohmann::json links = nlohmann::json::array();
    for (int q = 0; q < n; ++q)
      if (q != d)
        links.push_back(
            {{"peer", q}, {"kind", nvlink(d, q) ? "nvlink" : "pcie-system"}, {"nvlinks", nvlink(d, q) ? 4 : 0}});
    node["devices"].push_back({{"id", d}, {"name", "GPU"}, {"memory_bytes", memory}, {"links", links}});
  }
  return node;
}

std::vector<int> range(int from, int to) {
  std::vector<int> v;
  for (int i = from; i < to; ++i) v.push_back(i);
  return v;
}

// A model whose busiest rank needs `weights` / (tp * pp) plus a fixed 1 GiB, split valid when tp divides 8 heads.
ModelFit fake_model(std::int64_t weights) {
  ModelFit fit;
  fit.split_problem = [](int tp, int) { return 8 % tp == 0 ? std::string() : "heads do not divide"; };
  fit.bytes_per_rank = [weights](int tp, int pp) { return weights / (tp * pp) + (1ll << 30); };
  fit.on_gpus = true;
  return fit;
}
constexpr std::int64_t GiB = 1ll << 30;
}  // namespace

TEST(Gpus, NvlinkIslandsFromTheLinkMatrix) {
  // 0-1 and 2-3 linked, 4 alone, 5-6 linked through 5's link list only.
  std::vector<Device> devices(7);
  for (int d = 0; d < 7; ++d) devices[std::size_t(d)].id = d;
  devices[0].nvlink_peers = {1};
  devices[1].nvlink_peers = {0};
  devices[2].nvlink_peers = {3};
  devices[3].nvlink_peers = {2};
  devices[5].nvlink_peers = {6};
  EXPECT_EQ(nvlink_islands(devices), (std::vector<std::vector<int>>{{0, 1}, {2, 3}, {4}, {5, 6}}));
  const Topology t = Topology::from_json(
      {{"nodes", {gpu_node("n", range(0, 8), 8, 80 * GiB, [](int a, int b) { return a / 4 == b / 4; })}}}, "x");
  const auto islands = nvlink_islands(t.nodes[0].devices);
  EXPECT_EQ(islands, (std::vector<std::vector<int>>{{0, 1, 2, 3}, {4, 5, 6, 7}}))
      << "links of kind nvlink make the peers";
  EXPECT_EQ(t.nodes[0].devices[0].links[0].nvlinks, 4);
  EXPECT_EQ(Topology::from_json(t.to_json(), "again").to_json(), t.to_json());
}

TEST(Gpus, CudaVisibleDevicesLikeCuda) {
  std::vector<Device> all(4);
  const char* uuids[] = {"GPU-aaaa1111", "GPU-bbbb2222", "GPU-bbbc3333", "GPU-dddd4444"};
  for (int d = 0; d < 4; ++d) {
    all[std::size_t(d)].id = d;
    all[std::size_t(d)].uuid = uuids[d];
    all[std::size_t(d)].pci_bus_id = "0000:0" + std::to_string(d) + ":00.0";
    for (int q = 0; q < 4; ++q)
      if (q != d) all[std::size_t(d)].links.push_back({q, d / 2 == q / 2 ? "nvlink" : "pcie-system", d / 2 == q / 2});
  }
  EXPECT_EQ(apply_visible_devices(all, std::nullopt).physical, (std::vector<int>{0, 1, 2, 3}));
  const VisibleGpus two = apply_visible_devices(all, std::string("3, 2"));
  EXPECT_EQ(two.physical, (std::vector<int>{3, 2}));
  ASSERT_EQ(two.devices.size(), 2u);
  EXPECT_EQ(two.devices[0].id, 0) << "renumbered in the order listed";
  EXPECT_EQ(two.devices[0].pci_bus_id, "0000:03:00.0");
  EXPECT_EQ(two.devices[0].nvlink_peers, std::vector<int>{1}) << "3 and 2 share an NVLink; now 0 and 1";
  EXPECT_EQ(two.devices[0].links.size(), 1u) << "links to hidden devices are dropped";
  EXPECT_TRUE(two.note.empty());
  EXPECT_EQ(apply_visible_devices(all, std::string("GPU-dddd,aaaa1")).physical, (std::vector<int>{3, 0}))
      << "UUID prefixes, with or without GPU-";
  const VisibleGpus ambiguous = apply_visible_devices(all, std::string("1,GPU-bbb,0"));
  EXPECT_EQ(ambiguous.physical, std::vector<int>{1}) << "CUDA stops at the first bad entry";
  EXPECT_NE(ambiguous.note.find("entry 'GPU-bbb' is a UUID prefix that matches several GPUs"), std::string::npos)
      << ambiguous.note;
  EXPECT_NE(apply_visible_devices(all, std::string("0,7")).note.find("index 7 but the node has 4 GPU(s)"),
            std::string::npos);
  EXPECT_NE(apply_visible_devices(all, std::string("0,0")).note.find("listed twice"), std::string::npos);
  EXPECT_NE(apply_visible_devices(all, std::string("MIG-1234")).note.find("MIG"), std::string::npos);
  EXPECT_TRUE(apply_visible_devices(all, std::string("")).devices.empty()) << "empty hides every GPU";
}

TEST(Gpus, BindDeviceOneRankPerVisibleGpuOrSayWhy) {
  std::vector<Device> all(4);
  for (int d = 0; d < 4; ++d)
    all[std::size_t(d)] = {d, "H100", 80 * GiB, {}, "0000:0" + std::to_string(d) + ":00.0", {}, {}};
  BindRequest r{"nodeb", {4, 5, 6}, 2, apply_visible_devices(all, std::string("1,2,3")), 4, "1,2,3", "4 GPU(s)"};
  const DeviceBinding b = bind_device(r);
  EXPECT_EQ(b.index, 2);
  EXPECT_EQ(b.pci_bus_id, "0000:03:00.0");
  auto error = [](const BindRequest& req) { return test::error_of([&] { bind_device(req); }); };
  r.cuda_visible_devices = "1,2";
  r.visible = apply_visible_devices(all, r.cuda_visible_devices);
  EXPECT_NE(error(r).find("host nodeb runs 3 ranks (4,5,6) but only 2 of its 4 GPU(s) are visible "
                          "(CUDA_VISIBLE_DEVICES=1,2), so rank 6 (local rank 2) has no device"),
            std::string::npos)
      << error(r);
  r.cuda_visible_devices = "";
  r.visible = apply_visible_devices(all, r.cuda_visible_devices);
  EXPECT_NE(error(r).find("CUDA_VISIBLE_DEVICES= hides all 4 GPU(s), so rank 6 has none"), std::string::npos)
      << error(r);
  r.physical_count = 0;
  r.gpu_status = "no NVML (no NVIDIA driver)";
  EXPECT_NE(error(r).find("host nodeb (ranks 4,5,6) has no GPU: no NVML (no NVIDIA driver)"), std::string::npos);
}

TEST(Gpus, CudaPeerFallbackFindsNvlinkIslands) {
  // Four GPUs: 0-1 and 2-3 peer over NVLink (native atomics), 1-2 peer over PCIe, 3 cannot reach 0's memory while
  // 0 claims it can reach 3's (an asymmetric report must not count as a link).
  auto peer = [](int a, int b) {
    const bool same = a / 2 == b / 2;
    const bool access = same || (a + b == 3 && a != 0 && a != 3) || (a == 0 && b == 3);
    return CudaPeer{access, same};
  };
  std::vector<std::vector<CudaPeer>> peers(4, std::vector<CudaPeer>(4));
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b)
      if (a != b) peers[std::size_t(a)][std::size_t(b)] = peer(a, b);
  std::vector<CudaGpu> gpus(4, CudaGpu{"H100", 80 * GiB, ""});
  const GpuScan scan = gpus_from_cuda(gpus, peers);
  ASSERT_EQ(scan.devices.size(), 4u);
  EXPECT_TRUE(scan.visible_only) << "CUDA's view already applies CUDA_VISIBLE_DEVICES";
  EXPECT_EQ(nvlink_islands(scan.devices), (std::vector<std::vector<int>>{{0, 1}, {2, 3}}));
  auto kind = [&](int a, int b) {
    for (const auto& link : scan.devices[std::size_t(a)].links)
      if (link.peer == b) return link.kind;
    return std::string("missing");
  };
  EXPECT_EQ(kind(0, 1), "nvlink");
  EXPECT_EQ(kind(1, 2), "pcie-hostbridge");
  EXPECT_EQ(kind(0, 3), "pcie-system") << "access one way only is no link";
  EXPECT_NE(scan.status.find("4 GPU(s) via CUDA peer attributes"), std::string::npos) << scan.status;
  // A description written from it reads back the same (links of kind nvlink need a count: 1).
  const Topology t{{NodeTopology{"n", {0, 1, 2, 3}, 1, 1, 0, scan.devices, {}, scan.status}}};
  EXPECT_EQ(Topology::from_json(t.to_json(), "cuda").to_json(), t.to_json());
  peers[0].pop_back();
  EXPECT_THROW(gpus_from_cuda(gpus, peers), Error) << "a ragged matrix is refused";
}

TEST(Gpus, NoDriverIsAStatusNotAnError) {
  const GpuScan scan = scan_gpus("libstrata-no-such-nvml.so.1");
  EXPECT_TRUE(scan.devices.empty());
  EXPECT_NE(scan.status.find("no NVML (no NVIDIA driver)"), std::string::npos) << scan.status;
}

TEST(Topology, BadDeviceLinksAreNamed) {
  nlohmann::json j = {{"nodes", {gpu_node("n", {0, 1}, 2, GiB, [](int, int) { return true; })}}};
  j["nodes"][0]["devices"][0]["links"][0] = {{"peer", 5}, {"kind", "pcie-system"}};
  EXPECT_NE(error_of(j).find("device 0 has a pcie-system link to device 5, which is not another device"),
            std::string::npos)
      << error_of(j);
  j = {{"nodes", {gpu_node("n", {0, 1}, 2, GiB, [](int, int) { return true; })}}};
  j["nodes"][0]["devices"][1]["links"][0]["kind"] = "infinity-fabric";
  EXPECT_NE(error_of(j).find("kind 'infinity-fabric'"), std::string::npos) << error_of(j);
  j["nodes"][0]["devices"][1]["links"][0]["kind"] = "pcie-switch";
  EXPECT_NE(error_of(j).find("an nvlink link needs nvlinks >= 1 and a PCIe link none"), std::string::npos);
  j = {{"nodes", {{{"hostname", "n"}, {"ranks", {0}}, {"memory_bytes", -5}}}}};
  EXPECT_NE(error_of(j).find("memory_bytes -5 is negative"), std::string::npos);
}

TEST(Placement, AutoPicksSmallestTpInANodeThenStagesAcrossNodesThenReplicas) {
  // Two nodes of 8 GPUs with 80 GiB each, NVLink between all GPUs of a node.
  const Topology t = Topology::from_json({{"nodes",
                                           {gpu_node("a", range(0, 8), 8, 80 * GiB, [](int, int) { return true; }),
                                            gpu_node("b", range(8, 16), 8, 80 * GiB, [](int, int) { return true; })}}},
                                         "cluster.json");
  EXPECT_EQ(t.rank_memory_bytes(true), 80 * GiB);
  auto sizes = [&](std::int64_t weights, LayoutSizes asked) {
    const ModelFit model = fake_model(weights);
    const LayoutSizes s = place_ranks(t, asked, false, &model).sizes;
    return std::vector<int>{s.tp, s.pp, s.dp};
  };
  EXPECT_EQ(sizes(10 * GiB, {0, 0, 0}), (std::vector<int>{1, 1, 16})) << "fits one GPU: all replicas";
  EXPECT_EQ(sizes(150 * GiB, {0, 0, 0}), (std::vector<int>{2, 1, 8})) << "needs 2 GPUs: tp 2 inside a node";
  EXPECT_EQ(sizes(500 * GiB, {0, 0, 0}), (std::vector<int>{8, 1, 2})) << "tp 8 fills a node";
  EXPECT_EQ(sizes(1000 * GiB, {0, 0, 0}), (std::vector<int>{8, 2, 1})) << "more than a node: stages across nodes";
  EXPECT_EQ(sizes(500 * GiB, {0, 2, 0}), (std::vector<int>{4, 2, 2})) << "pp fixed: smallest tp for it";
  EXPECT_EQ(sizes(150 * GiB, {2, 0, 0}), (std::vector<int>{8, 1, 2})) << "dp fixed: tp x pp = 8, tp first";
  EXPECT_EQ(sizes(150 * GiB, {4, 0, 0}), (std::vector<int>{4, 1, 4}));
  EXPECT_EQ(sizes(1000 * GiB, {0, 0, 4}), (std::vector<int>{4, 4, 1})) << "tp fixed: the fewest stages that fit";
  // Refusals: nothing fits (auto) and a fixed layout that does not fit, each naming a way out; --force warns.
  const ModelFit huge = fake_model(5000 * GiB);
  std::string message;
  try {
    place_ranks(t, {0, 0, 0}, false, &huge);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("the model does not fit: even -tp 8 -pp 2 -dp 1 needs 313.50 GiB"), std::string::npos)
      << message;
  EXPECT_EQ(place_ranks(t, {0, 0, 0}, true, &huge).warnings.size(), 1u);
  const ModelFit big = fake_model(500 * GiB);
  message.clear();
  try {
    place_ranks(t, {0, 1, 2}, false, &big);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("does not fit at -tp 2 -pp 1 -dp 8: its busiest rank needs 251.00 GiB but ranks have "
                         "80.00 GiB. A layout that fits: -tp 8 -pp 1 -dp 2"),
            std::string::npos)
      << message;
  EXPECT_EQ(place_ranks(t, {0, 1, 2}, true, &big).warnings.size(), 1u);
}

TEST(Placement, AutoKeepsTensorGroupsInsideIslandsAndHonoursTheModelSplit) {
  // One node of 8 GPUs in two NVLink islands of 4, 24 GiB each: a model needing ~3.5 GPUs gets tp 4, not 8.
  const Topology t = Topology::from_json(
      {{"nodes", {gpu_node("dgx", range(0, 8), 8, 24 * GiB, [](int a, int b) { return a / 4 == b / 4; })}}}, "x");
  const ModelFit model = fake_model(80 * GiB);
  const Placement p = place_ranks(t, {0, 0, 0}, false, &model);
  EXPECT_EQ(p.sizes.tp, 4);
  EXPECT_EQ(p.sizes.dp, 2);
  ASSERT_EQ(p.notes.size(), 1u);
  EXPECT_NE(p.notes[0].find("-tp auto -pp auto -dp auto -> -tp 4 -pp 1 -dp 2"), std::string::npos) << p.notes[0];
  // 8 heads: tp 3 never qualifies; on 6 CPU ranks, auto goes to tp 2 (tp 3 and 6 do not divide the heads).
  const Topology cpus = described(R"({"nodes": [{"hostname": "c", "ranks": [0, 1, 2, 3, 4, 5],
                                                  "memory_bytes": 60000000000}]})");
  const ModelFit cpu_model = [] {
    ModelFit m = fake_model(12 * GiB);
    m.on_gpus = false;
    return m;
  }();
  EXPECT_EQ(cpus.rank_memory_bytes(false), 10000000000);
  EXPECT_EQ(place_ranks(cpus, {0, 0, 0}, false, &cpu_model).sizes.tp, 2);
}
