// make_run_plan as the pure function it is: random clusters (nodes, launch orders, GPUs in NVLink islands, memory
// stated or not) and random small models, each plan checked against invariants computed here from its outputs
// (a permutation of the world, groups that partition it, TP groups inside a node and an NVLink island, stages that
// cut the layers contiguously, the busiest rank within the memory the cluster states, the device's weight dtype),
// each refusal checked to be a strata::Error that names its numbers; then the GPU memory regression (weights
// counted in the dtype the GPU keeps them in), the refusals one by one, and the plan table.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <tuple>

#include <algorithm>
#include <cctype>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "plan/run_plan.h"
#include "runtime/base/error.h"
#include "tests/unit/error_of.h"
#include "tests/unit/test_support.h"

using namespace strata;

namespace {

constexpr std::int64_t MiB = 1ll << 20, GiB = 1ll << 30;

int uniform(std::mt19937& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
bool chance(std::mt19937& rng, double p) { return std::bernoulli_distribution(p)(rng); }
template <typename T>
T pick(std::mt19937& rng, std::initializer_list<T> options) {
  return *(options.begin() + uniform(rng, 0, int(options.size()) - 1));
}

ModelConfig random_config(std::mt19937& rng) {
  ModelConfig c = test::tiny_config();
  c.num_attention_heads = pick<std::int64_t>(rng, {1, 2, 3, 4, 6, 8, 12, 16});
  std::vector<std::int64_t> kv;
  for (std::int64_t d = 1; d <= c.num_attention_heads; ++d)
    if (c.num_attention_heads % d == 0) kv.push_back(d);
  c.num_key_value_heads = kv[std::size_t(uniform(rng, 0, int(kv.size()) - 1))];
  c.head_dim = pick<std::int64_t>(rng, {8, 16});
  c.hidden_size = c.num_attention_heads * c.head_dim;
  c.intermediate_size = pick<std::int64_t>(rng, {48, 64, 96, 120, 144, 192});
  c.vocab_size = pick<std::int64_t>(rng, {258, 260, 264, 270, 288});
  c.num_hidden_layers = uniform(rng, 1, 8);
  c.max_position_embeddings = pick<std::int64_t>(rng, {64, 128, 256});
  c.tie_word_embeddings = chance(rng, 0.3);
  c.validate("random config");
  return c;
}

// The dtype the device keeps matrix weights in, as the request's contract states it.
DType expected_weight_dtype(DeviceKind device, DType stored) {
  if (device == DeviceKind::Cpu) return stored;
  return stored == DType::F16 ? DType::F16 : DType::BF16;
}

// A cluster and the truth about it the checks need: each node's NVLink island of every local rank (the device of
// the same index); empty where the node has no NVLink (the whole node is one island).
struct Cluster {
  Topology topology;
  std::vector<std::vector<int>> island;
};

// `capacity`: bytes per rank to state (scaled a little per node and device), 0 to state none.
Cluster random_cluster(std::mt19937& rng, bool gpus, std::int64_t capacity) {
  const int nodes = uniform(rng, 1, 4);
  std::vector<int> per_node(static_cast<std::size_t>(nodes));
  const int same = uniform(rng, 1, 8);
  for (auto& k : per_node) k = chance(rng, 0.6) ? same : uniform(rng, 1, 8);
  const int world = std::accumulate(per_node.begin(), per_node.end(), 0);
  std::vector<int> order(static_cast<std::size_t>(world));
  std::iota(order.begin(), order.end(), 0);
  if (chance(rng, 0.4)) std::shuffle(order.begin(), order.end(), rng);  // launcher numbering round-robin or worse
  const int unstated = capacity > 0 && chance(rng, 0.15) ? uniform(rng, 0, nodes - 1) : -1;
  auto scaled = [&](std::int64_t bytes) {
    return std::int64_t(double(bytes) * (1.0 + 0.3 * uniform(rng, 0, 10) / 10));
  };

  Cluster c;
  nlohmann::json j = {{"nodes", nlohmann::json::array()}};
  std::size_t next = 0;
  for (int n = 0; n < nodes; ++n) {
    const int k = per_node[std::size_t(n)];
    const std::vector<int> ranks(order.begin() + std::int64_t(next), order.begin() + std::int64_t(next) + k);
    next += std::size_t(k);
    nlohmann::json node = {{"hostname", "node" + std::to_string(n)}, {"ranks", ranks}};
    const bool states = capacity > 0 && n != unstated;
    if (states && !gpus) node["memory_bytes"] = scaled(capacity) * k;
    std::vector<int> island;
    if (gpus) {
      const int devices = k + (chance(rng, 0.2) ? uniform(rng, 1, 2) : 0);
      const int size = pick(rng, {1, 2, 2, 4, 4});  // 1: no NVLink
      std::vector<int> shuffled(static_cast<std::size_t>(devices));
      std::iota(shuffled.begin(), shuffled.end(), 0);
      if (chance(rng, 0.5)) std::shuffle(shuffled.begin(), shuffled.end(), rng);
      std::vector<int> of(static_cast<std::size_t>(devices));
      for (int i = 0; i < devices; ++i) of[std::size_t(shuffled[std::size_t(i)])] = i / size;
      node["devices"] = nlohmann::json::array();
      for (int d = 0; d < devices; ++d) {
        std::vector<int> peers;
        for (int q = 0; q < devices; ++q)
          if (q != d && size > 1 && of[std::size_t(q)] == of[std::size_t(d)]) peers.push_back(q);
        node["devices"].push_back(
            {{"id", d}, {"name", "GPU"}, {"memory_bytes", states ? scaled(capacity) : 0}, {"nvlink_peers", peers}});
      }
      if (size > 1) island.assign(of.begin(), of.begin() + k);
      if (capacity > 0 && chance(rng, 0.3)) node["memory_bytes"] = 64 * GiB;  // host memory: not what GPUs use
    }
    c.island.push_back(island);
    j["nodes"].push_back(node);
  }
  c.topology = Topology::from_json(j, "random cluster");
  return c;
}

// A rough size of one whole replica on one rank, to scale the memory a random cluster states (the plan's own
// estimate decides; this only makes "fits" and "does not fit" both common).
std::int64_t rough_replica_bytes(const PlanRequest& r) {
  const auto& c = r.config;
  const std::int64_t len = r.limits.max_model_len ? r.limits.max_model_len : c.max_position_embeddings;
  const std::int64_t weights =
      c.parameter_count() * std::int64_t(dtype_size(expected_weight_dtype(r.device, r.stored)));
  const std::int64_t kv =
      2 * c.num_hidden_layers * r.limits.max_batch_size * len * c.num_key_value_heads * c.head_dim * 4;
  const std::int64_t work = std::max<std::int64_t>(r.limits.max_num_batched_tokens, len) * 12 * c.hidden_size * 4;
  return weights + kv + work;
}

// One row of RunPlan::table(): rank, host, local rank, device, dp, pp, tp.
struct TableRow {
  int rank = -1, local = -1, dp = -1, pp = -1, tp = -1;
  std::string host, device, rest;
};

std::vector<TableRow> table_rows(const std::string& table) {
  std::istringstream in(table);
  std::string line;
  std::vector<TableRow> rows;
  bool body = false;
  while (std::getline(in, line)) {
    if (line.rfind("rank ", 0) == 0) {
      body = true;
      continue;
    }
    if (!body || line.empty() || !std::isdigit(static_cast<unsigned char>(line[0]))) continue;
    std::istringstream fields(line);
    TableRow row;
    fields >> row.rank >> row.host >> row.local >> row.device >> row.dp >> row.pp >> row.tp;
    std::getline(fields, row.rest);
    rows.push_back(row);
  }
  return rows;
}

// Every invariant of a plan that succeeded, computed from its outputs and the request.
void check_plan(const PlanRequest& request, const Cluster& cluster, const RunPlan& plan) {
  const Topology& topology = cluster.topology;
  const int world = topology.world_size();
  const LayoutSizes s = plan.sizes;
  ASSERT_GE(s.dp, 1);
  ASSERT_GE(s.pp, 1);
  ASSERT_GE(s.tp, 1);
  ASSERT_EQ(s.world(), world);
  if (request.sizes.tp) {
    EXPECT_EQ(s.tp, request.sizes.tp) << "a fixed size is kept";
  }
  if (request.sizes.pp) {
    EXPECT_EQ(s.pp, request.sizes.pp);
  }
  if (request.sizes.dp) {
    EXPECT_EQ(s.dp, request.sizes.dp);
  }
  if (!request.force) {
    EXPECT_TRUE(plan.warnings.empty()) << "warnings only with force";
  }

  // A permutation of the world.
  ASSERT_EQ(plan.ranks_by_position.size(), std::size_t(world));
  std::vector<int> sorted = plan.ranks_by_position;
  std::sort(sorted.begin(), sorted.end());
  for (int r = 0; r < world; ++r) ASSERT_EQ(sorted[std::size_t(r)], r) << "ranks_by_position is not a permutation";

  // Coordinates from the position, as documented: (dp * pp + pp_rank) * tp + tp_rank.
  struct Where {
    int dp, pp, tp;
  };
  std::vector<Where> where(static_cast<std::size_t>(world));
  for (int pos = 0; pos < world; ++pos)
    where[std::size_t(plan.ranks_by_position[std::size_t(pos)])] = {pos / (s.tp * s.pp), (pos / s.tp) % s.pp,
                                                                    pos % s.tp};
  ASSERT_EQ(plan.ranks.size(), std::size_t(world));
  std::map<std::string, int> tp_groups, pp_groups;  // group -> how many ranks named it as theirs
  auto key = [](std::vector<int> g) {
    std::sort(g.begin(), g.end());
    std::string k;
    for (int r : g) k += std::to_string(r) + ",";
    return k;
  };
  for (int r = 0; r < world; ++r) {
    const ParallelLayout at = plan.layout(r);
    const Where w = where[std::size_t(r)];
    const RankPlan& rp = plan.rank(r);
    EXPECT_EQ(rp.world_rank, r);
    EXPECT_EQ(at.dp_rank(), w.dp) << "rank " << r;
    EXPECT_EQ(at.pp_rank(), w.pp) << "rank " << r;
    EXPECT_EQ(at.tp_rank(), w.tp) << "rank " << r;
    EXPECT_EQ(rp.dp, w.dp) << "rank " << r;
    EXPECT_EQ(rp.pp, w.pp) << "rank " << r;
    EXPECT_EQ(rp.tp, w.tp) << "rank " << r;
    for (int x = 0; x < world; ++x) ASSERT_EQ(at.replica_of(x), where[std::size_t(x)].dp) << "replica_of(" << x << ")";
    const auto tp_group = at.tp_group(), pp_group = at.pp_group();
    ASSERT_EQ(tp_group.size(), std::size_t(s.tp));
    ASSERT_EQ(pp_group.size(), std::size_t(s.pp));
    EXPECT_NE(std::find(tp_group.begin(), tp_group.end(), r), tp_group.end());
    EXPECT_NE(std::find(pp_group.begin(), pp_group.end(), r), pp_group.end());
    for (std::size_t t = 0; t < tp_group.size(); ++t) {
      const Where p = where[std::size_t(tp_group[t])];
      EXPECT_TRUE(p.dp == w.dp && p.pp == w.pp && p.tp == int(t)) << "rank " << r << "'s TP group";
    }
    for (std::size_t q = 0; q < pp_group.size(); ++q) {
      const Where p = where[std::size_t(pp_group[q])];
      EXPECT_TRUE(p.dp == w.dp && p.pp == int(q) && p.tp == w.tp) << "rank " << r << "'s pipeline";
    }
    ++tp_groups[key(tp_group)];
    ++pp_groups[key(pp_group)];

    // Where the rank runs.
    const NodeTopology& node = topology.node_of(r);
    const auto local = int(std::find(node.ranks.begin(), node.ranks.end(), r) - node.ranks.begin());
    EXPECT_EQ(rp.host, node.hostname);
    EXPECT_EQ(topology.nodes[std::size_t(rp.node)].hostname, node.hostname);
    EXPECT_EQ(rp.local_rank, local);
    EXPECT_EQ(rp.gpu, request.device == DeviceKind::Cuda ? local : -1);
    EXPECT_EQ(rp.memory.weights_dtype, expected_weight_dtype(request.device, request.stored))
        << "device " << device_name(request.device) << ", stored " << dtype_name(request.stored);
    EXPECT_EQ(rp.memory.activations_dtype,
              request.device == DeviceKind::Cpu ? DType::F32 : expected_weight_dtype(request.device, request.stored));
  }
  // Each rank in exactly one TP group and one pipeline: every group named by exactly its members.
  EXPECT_EQ(tp_groups.size(), std::size_t(s.dp * s.pp));
  for (const auto& [g, n] : tp_groups) EXPECT_EQ(n, s.tp) << "TP group " << g;
  EXPECT_EQ(pp_groups.size(), std::size_t(s.dp * s.tp));
  for (const auto& [g, n] : pp_groups) EXPECT_EQ(n, s.pp) << "pipeline " << g;
  std::vector<int> in_replicas;
  for (int d = 0; d < s.dp; ++d) {
    const auto replica = plan.layout(0).replica_ranks(d);
    ASSERT_EQ(replica.size(), std::size_t(s.pp * s.tp));
    for (int r : replica) EXPECT_EQ(where[std::size_t(r)].dp, d) << "replica " << d;
    in_replicas.insert(in_replicas.end(), replica.begin(), replica.end());
  }
  std::sort(in_replicas.begin(), in_replicas.end());
  EXPECT_EQ(in_replicas, sorted) << "every rank in exactly one replica";

  // TP groups inside one node, and one NVLink island where the node has NVLink, unless force accepted otherwise.
  if (plan.warnings.empty() && s.tp > 1) {
    for (int r = 0; r < world; ++r) {
      if (where[std::size_t(r)].tp != 0) continue;
      const auto group = plan.layout(r).tp_group();
      const NodeTopology& node = topology.node_of(r);
      const auto n = std::size_t(&node - topology.nodes.data());
      std::set<int> islands;
      for (int peer : group) {
        EXPECT_EQ(topology.node_of(peer).hostname, node.hostname) << "TP group of rank " << r << " spans nodes";
        const auto local = std::size_t(std::find(node.ranks.begin(), node.ranks.end(), peer) - node.ranks.begin());
        if (!cluster.island[n].empty() && local < node.ranks.size()) islands.insert(cluster.island[n][local]);
      }
      EXPECT_LE(islands.size(), 1u) << "TP group of rank " << r << " spans NVLink islands";
      EXPECT_NE(plan.rank(r).tp_link, "inter-node!");
    }
  }

  // The stages of each replica cut [0, layers) contiguously, in stage order; a TP group shares its stage's layers.
  for (int d = 0; d < s.dp; ++d) {
    int expected_begin = 0;
    for (int stage = 0; stage < s.pp; ++stage) {
      const RankPlan& first = plan.rank(plan.layout(0).rank_of(d, stage, 0));
      EXPECT_EQ(first.layer_begin, expected_begin) << "replica " << d << " stage " << stage;
      EXPECT_LT(first.layer_begin, first.layer_end) << "every stage holds a layer";
      for (int t = 1; t < s.tp; ++t) {
        const RankPlan& other = plan.rank(plan.layout(0).rank_of(d, stage, t));
        EXPECT_EQ(other.layer_begin, first.layer_begin);
        EXPECT_EQ(other.layer_end, first.layer_end);
      }
      expected_begin = first.layer_end;
    }
    EXPECT_EQ(expected_begin, plan.config.num_hidden_layers) << "replica " << d;
  }

  // The busiest rank fits what the cluster states (auto layouts, and fixed ones checked against it).
  const std::int64_t capacity = topology.rank_memory_bytes(request.device == DeviceKind::Cuda);
  const bool auto_layout = request.sizes.tp == 0 || request.sizes.pp == 0;
  if (capacity > 0 && plan.warnings.empty() && (auto_layout || request.fit_fixed_layout)) {
    std::int64_t busiest = 0;
    for (const RankPlan& rp : plan.ranks) busiest = std::max(busiest, rp.memory.total());
    EXPECT_LE(busiest, capacity) << "busiest rank needs " << busiest << " bytes, ranks have " << capacity;
  }

  // Limits.
  const std::int32_t len = request.limits.max_model_len ? request.limits.max_model_len
                                                        : std::int32_t(request.config.max_position_embeddings);
  EXPECT_EQ(plan.stage.max_seq_len, len);
  EXPECT_EQ(plan.stage.max_seqs, request.limits.max_batch_size);
  // Chunked prefill (the default) splits prompts to the step budget; without it a step holds a whole context.
  EXPECT_EQ(plan.stage.max_tokens, request.limits.chunked_prefill
                                       ? request.limits.max_num_batched_tokens
                                       : std::max(request.limits.max_num_batched_tokens, len));
  EXPECT_GE(plan.stage.kv_blocks, 1);
  EXPECT_EQ(plan.stage.block_size, request.limits.block_size);
  EXPECT_EQ(plan.micro_batches, request.limits.micro_batches ? request.limits.micro_batches : s.pp);

  // The table names every rank once, with its coordinates.
  const auto rows = table_rows(plan.table());
  ASSERT_EQ(rows.size(), std::size_t(world)) << plan.table();
  for (const TableRow& row : rows) {
    ASSERT_GE(row.rank, 0);
    ASSERT_LT(row.rank, world);
    const Where w = where[std::size_t(row.rank)];
    EXPECT_TRUE(row.dp == w.dp && row.pp == w.pp && row.tp == w.tp) << "table row of rank " << row.rank;
    EXPECT_EQ(row.host, topology.node_of(row.rank).hostname);
  }
}

bool has_digit(const std::string& s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

TEST(RunPlan, RandomClustersAndModelsKeepEveryInvariant) {
  int planned = 0, refused = 0, on_gpus = 0, with_memory = 0, forced_warnings = 0;
  std::set<std::string> shapes;
  for (unsigned seed = 1; seed <= 200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    PlanRequest request;
    request.config = random_config(rng);
    request.stored = pick(rng, {DType::F32, DType::BF16, DType::F16});
    const bool gpus = chance(rng, 0.5);
    request.device = gpus && chance(rng, 0.7) ? DeviceKind::Cuda : DeviceKind::Cpu;
    request.limits.max_batch_size = uniform(rng, 1, 8);
    request.limits.max_num_batched_tokens = uniform(rng, 8, 512);
    request.limits.max_model_len = pick(rng, {0, 0, 16, 32, 64});
    if (chance(rng, 0.04)) request.limits.max_model_len = std::int32_t(request.config.max_position_embeddings) + 1;
    request.limits.micro_batches = pick(rng, {0, 0, 1, 2, 3});
    request.limits.chunked_prefill = chance(rng, 0.7);
    request.limits.block_size = pick(rng, {16, 16, 1, 5, 64});
    request.gpu_reserve_mib = pick(rng, {-1, -1, 0, 256});
    request.force = chance(rng, 0.25);
    request.fit_fixed_layout = !chance(rng, 0.15);
    std::int64_t capacity = 0;
    if (chance(rng, 0.6)) {
      const std::int64_t base = request.device == DeviceKind::Cuda ? pick(rng, {160 * MiB, 700 * MiB}) : 0;
      const double f = 0.15 + 1.6 * uniform(rng, 0, 100) / 100.0;
      capacity = base + std::int64_t(f * double(rough_replica_bytes(request)));
    }
    const Cluster cluster = random_cluster(rng, gpus, capacity);
    request.topology = cluster.topology;
    // Sizes: all auto, or some fixed (mostly ones that divide the world, so fixed layouts get past the count).
    request.sizes = {0, 0, 0};
    if (!chance(rng, 0.35)) {
      std::vector<int> divisors;
      for (int d = 1; d <= cluster.topology.world_size(); ++d)
        if (cluster.topology.world_size() % d == 0) divisors.push_back(d);
      auto some = [&] {
        return chance(rng, 0.75) ? divisors[std::size_t(uniform(rng, 0, int(divisors.size()) - 1))]
                                 : pick(rng, {1, 2, 3, 4, 8});
      };
      request.sizes.tp = chance(rng, 0.3) ? 0 : some();
      request.sizes.pp = chance(rng, 0.4) ? 0 : std::min(some(), 4);
      request.sizes.dp = chance(rng, 0.8) ? 0 : pick(rng, {1, 2});
    }

    try {
      const RunPlan plan = make_run_plan(request);
      ++planned;
      on_gpus += request.device == DeviceKind::Cuda;
      with_memory += cluster.topology.rank_memory_bytes(request.device == DeviceKind::Cuda) > 0;
      forced_warnings += !plan.warnings.empty();
      shapes.insert(std::to_string(plan.sizes.dp) + "x" + std::to_string(plan.sizes.pp) + "x" +
                    std::to_string(plan.sizes.tp));
      check_plan(request, cluster, plan);
      EXPECT_EQ(make_run_plan(request).table(), plan.table()) << "the same request, the same plan";
    } catch (const Error& e) {
      ++refused;
      EXPECT_TRUE(has_digit(e.what())) << "a refusal names its numbers: " << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a strata::Error: " << e.what();
    }
    if (HasFatalFailure()) return;
  }
  // The generator reaches both outcomes and the interesting cases (so the invariants above were exercised).
  EXPECT_GE(planned, 60);
  EXPECT_GE(refused, 20);
  EXPECT_GE(on_gpus, 15);
  EXPECT_GE(with_memory, 15);
  EXPECT_GE(shapes.size(), 8u);
  std::cout << "[ run plans ] " << planned << " planned (" << on_gpus << " cuda, " << with_memory
            << " with stated memory, " << forced_warnings << " forced with warnings, " << shapes.size()
            << " distinct dp x pp x tp), " << refused << " refused\n";
}

namespace {
// The failure messages `check` records (intercepted: they do not fail this test).
std::vector<std::string> failures_of(const std::function<void()>& check) {
  ::testing::TestPartResultArray results;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &results);
    check();
  }
  std::vector<std::string> messages;
  for (int i = 0; i < results.size(); ++i) messages.push_back(results.GetTestPartResult(i).message());
  return messages;
}

bool any_contains(const std::vector<std::string>& messages, const std::string& part) {
  return std::any_of(messages.begin(), messages.end(),
                     [&](const std::string& m) { return m.find(part) != std::string::npos; });
}
}  // namespace

// The negative control: the invariant checks above reject plans broken in each way they look for.
TEST(RunPlan, InvariantChecksCatchBrokenPlans) {
  // Two nodes of 4 GPUs (1 GiB each) in NVLink pairs, ranks numbered round-robin over the nodes.
  nlohmann::json j = {{"nodes", nlohmann::json::array()}};
  for (int n = 0; n < 2; ++n) {
    nlohmann::json node = {{"hostname", n == 0 ? "a" : "b"}, {"ranks", {n, n + 2, n + 4, n + 6}}};
    for (int d = 0; d < 4; ++d)
      node["devices"].push_back({{"id", d}, {"name", "GPU"}, {"memory_bytes", GiB}, {"nvlink_peers", {d ^ 1}}});
    j["nodes"].push_back(node);
  }
  Cluster cluster{Topology::from_json(j, "pairs.json"), {{0, 0, 1, 1}, {0, 0, 1, 1}}};
  PlanRequest request;
  request.config = test::tiny_config();
  request.topology = cluster.topology;
  request.device = DeviceKind::Cuda;
  request.sizes = {2, 2, 2};
  const RunPlan good = make_run_plan(request);
  EXPECT_EQ(failures_of([&] { check_plan(request, cluster, good); }), std::vector<std::string>{});
  ASSERT_EQ(good.layout(0).tp_group(), (std::vector<int>{0, 2})) << "node a's first NVLink pair";

  auto broken = [&](const std::function<void(RunPlan&)>& edit) {
    RunPlan plan = good;
    edit(plan);
    return failures_of([&] { check_plan(request, cluster, plan); });
  };
  auto swap_ranks = [](RunPlan& p, int x, int y) {
    auto& order = p.ranks_by_position;
    std::iter_swap(std::find(order.begin(), order.end(), x), std::find(order.begin(), order.end(), y));
  };
  EXPECT_TRUE(any_contains(broken([&](RunPlan& p) { swap_ranks(p, 2, 1); }), "spans nodes"));
  EXPECT_TRUE(any_contains(broken([&](RunPlan& p) { swap_ranks(p, 2, 4); }), "spans NVLink islands"));
  EXPECT_TRUE(
      any_contains(broken([](RunPlan& p) { p.ranks_by_position[3] = p.ranks_by_position[0]; }), "not a permutation"));
  EXPECT_TRUE(any_contains(broken([](RunPlan& p) {
                             for (auto& r : p.ranks)
                               if (r.pp == 1) r.layer_begin = 0;
                           }),
                           "stage 1"));
  EXPECT_TRUE(any_contains(broken([](RunPlan& p) { p.ranks[5].memory.weights = 2 * GiB; }), "busiest rank needs"));
  EXPECT_TRUE(any_contains(broken([](RunPlan& p) { p.ranks[3].memory.weights_dtype = DType::F32; }), "device cuda"));
  EXPECT_TRUE(any_contains(broken([](RunPlan& p) { p.ranks[6].tp = 1 - p.ranks[6].tp; }), "rank 6"));
}

namespace {

// A Llama-like model of ~8.4e9 parameters: bf16 weights ~15.6 GiB fit one 24 GiB GPU, f32 ones (~31 GiB) do not.
ModelConfig eight_billion() {
  ModelConfig c = test::tiny_config();
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.num_hidden_layers = 40;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 32;
  c.head_dim = 128;
  c.vocab_size = 32000;
  c.max_position_embeddings = 4096;
  c.validate("eight_billion");
  return c;
}

Topology two_gpus(std::int64_t gpu_bytes, std::int64_t host_bytes = 0) {
  nlohmann::json node = {{"hostname", "gpu-node"}, {"ranks", {0, 1}}, {"memory_bytes", host_bytes}};
  node["devices"] = {{{"id", 0}, {"name", "L4"}, {"memory_bytes", gpu_bytes}, {"nvlink_peers", {1}}},
                     {{"id", 1}, {"name", "L4"}, {"memory_bytes", gpu_bytes}, {"nvlink_peers", {0}}}};
  return Topology::from_json({{"nodes", {node}}}, "two-gpus.json");
}

PlanRequest two_gpu_request(DeviceKind device, DType stored, const Topology& topology) {
  PlanRequest r;
  r.config = eight_billion();
  r.stored = stored;
  r.topology = topology;
  r.device = device;
  r.sizes = {0, 1, 0};  // tp auto, pp 1
  r.limits.max_batch_size = 1;
  r.limits.max_num_batched_tokens = 64;
  r.limits.max_model_len = 64;  // KV cache and workspace: a few MB
  return r;
}

}  // namespace

TEST(RunPlan, GpuWeightsAreSizedInTheDtypeTheGpuKeeps) {
  const std::int64_t params = eight_billion().parameter_count();
  ASSERT_LT(2 * params + GiB, 24 * GiB) << "bf16 weights and slack fit one GPU";
  ASSERT_GT(4 * params, 24 * GiB) << "f32 weights alone do not";
  for (DType stored : {DType::F32, DType::BF16, DType::F16}) {
    SCOPED_TRACE(dtype_name(stored));
    const RunPlan plan = make_run_plan(two_gpu_request(DeviceKind::Cuda, stored, two_gpus(24 * GiB)));
    EXPECT_EQ(plan.sizes.tp, 1) << "one GPU holds the 16-bit weights: tp 1 (counting them as f32 chose tp 2)";
    EXPECT_EQ(plan.sizes.dp, 2);
    const MemoryPlan& m = plan.rank(0).memory;
    EXPECT_EQ(m.weights_dtype, stored == DType::F16 ? DType::F16 : DType::BF16);
    EXPECT_EQ(m.weights, 2 * params) << "every weight in 2 bytes";
    EXPECT_GT(m.kv_cache, 4 * GiB) << "by default the KV pool takes what 90% of the GPU leaves";
    EXPECT_LE(m.total(), 24 * GiB / 10 * 9);
    EXPECT_GT(m.total(), 24 * GiB / 10 * 9 - 64 * MiB);
  }
  // The control: GPUs too small for one copy of the 16-bit weights get tp 2.
  EXPECT_EQ(make_run_plan(two_gpu_request(DeviceKind::Cuda, DType::BF16, two_gpus(12 * GiB))).sizes.tp, 2);
  // On CPUs weights stay as stored: f32 (~31 GiB) does not fit a rank's 24 GiB share of 48 GiB, so tp 2 ...
  const RunPlan f32_on_cpu = make_run_plan(two_gpu_request(DeviceKind::Cpu, DType::F32, two_gpus(24 * GiB, 48 * GiB)));
  EXPECT_EQ(f32_on_cpu.sizes.tp, 2);
  EXPECT_EQ(f32_on_cpu.rank(0).memory.weights_dtype, DType::F32);
  EXPECT_LE(f32_on_cpu.rank(0).memory.total(), 24 * GiB);
  // ... while bf16 (~15.6 GiB) does, and so does f32 with host memory to spare.
  EXPECT_EQ(make_run_plan(two_gpu_request(DeviceKind::Cpu, DType::BF16, two_gpus(24 * GiB, 48 * GiB))).sizes.tp, 1);
  EXPECT_EQ(make_run_plan(two_gpu_request(DeviceKind::Cpu, DType::F32, two_gpus(24 * GiB, 160 * GiB))).sizes.tp, 1);
}

namespace {
Topology cpu_node(int ranks);
}

// The KV pool: on CPUs max_batch_size whole contexts by default; --kv-cache-memory sizes it per rank (blocks of
// 2 x layers x block_size x KV heads x head_dim x 4 bytes for f32 activations), the same block count on every
// rank; a budget below one block is refused with the numbers; the plan table states it.
TEST(RunPlan, KvPoolIsSizedFromTheBudget) {
  PlanRequest r;
  r.config = test::tiny_config();  // 2 layers, 2 KV heads of 8 dims, 128 positions
  r.topology = cpu_node(2);
  r.sizes = {1, 1, 2};  // tp 2: one KV head per rank
  r.limits.max_batch_size = 3;
  r.limits.block_size = 16;
  RunPlan plan = make_run_plan(r);
  EXPECT_EQ(plan.stage.kv_blocks, 3 * 128 / 16);
  const std::int64_t per_block = 2 * 2 * 16 * 1 * r.config.head_dim * 4;  // K and V, layers, positions, heads
  EXPECT_EQ(plan.rank(0).memory.kv_cache, plan.stage.kv_blocks * per_block);
  r.limits.kv_cache_gib = double(100 * per_block) / double(GiB);
  plan = make_run_plan(r);
  EXPECT_EQ(plan.stage.kv_blocks, 100);
  EXPECT_NE(plan.table().find("KV cache: 100 blocks of 16 positions per rank (1600 tokens per replica"),
            std::string::npos)
      << plan.table();
  r.limits.kv_cache_gib = double(per_block / 2) / double(GiB);
  const std::string why = test::error_of([&] { make_run_plan(r); });
  EXPECT_NE(why.find("holds no KV-cache block on rank 0: one block of 16 positions takes " + std::to_string(per_block) +
                     " bytes there (2 layers x 1 KV heads x 16 x 2 x 4 bytes per position)"),
            std::string::npos)
      << why;
}

// --kv-cache-dtype f16 (CPU): a block takes half the bytes, so a budget holds twice the blocks, and the plan says so;
// the CUDA backend keeps its cache in its activation dtype and refuses it for a bf16 checkpoint; other names are
// refused.
TEST(RunPlan, HalfKvCacheHalvesTheBlockBytes) {
  PlanRequest r;
  r.config = test::tiny_config();
  r.topology = cpu_node(1);
  r.sizes = {1, 1, 1};
  r.limits.block_size = 16;
  const std::int64_t per_block = 2 * 2 * 16 * 2 * r.config.head_dim * 4;  // K and V, layers, positions, heads, f32
  r.limits.kv_cache_gib = double(100 * per_block) / double(GiB);
  const RunPlan f32 = make_run_plan(r);
  r.limits.kv_cache_dtype = "f16";
  const RunPlan f16 = make_run_plan(r);
  EXPECT_EQ(f32.kv_dtype, DType::F32);
  EXPECT_EQ(f16.kv_dtype, DType::F16);
  EXPECT_EQ(f32.stage.kv_blocks, 100);
  EXPECT_EQ(f16.stage.kv_blocks, 200);
  EXPECT_EQ(f16.rank(0).memory.kv_cache, 200 * per_block / 2);
  EXPECT_NE(f16.table().find("KV cache f16"), std::string::npos) << f16.table();
  EXPECT_EQ(kv_cache_dtype(DeviceKind::Cuda, DType::BF16, "auto"), DType::BF16);
  EXPECT_EQ(kv_cache_dtype(DeviceKind::Cuda, DType::F16, "f16"), DType::F16);
  EXPECT_NE(test::error_of([] {
              kv_cache_dtype(DeviceKind::Cuda, DType::BF16, "f16");
            }).find("--kv-cache-dtype f16: the CUDA backend keeps its KV cache in its activation dtype (bf16"),
            std::string::npos);
  EXPECT_NE(test::error_of([] {
              kv_cache_dtype(DeviceKind::Cpu, DType::F32, "fp8");
            }).find("--kv-cache-dtype fp8: expected auto, f16 or f32"),
            std::string::npos);
  EXPECT_NE(test::error_of([] {
              kv_cache_dtype(DeviceKind::Cuda, DType::BF16, "f32");
            }).find("--kv-cache-dtype f32: the CUDA backend keeps its KV cache in its activation dtype (bf16"),
            std::string::npos);
}

// --kv-cache-dtype auto on a CPU keeps the weights' precision: f32 for an f32 checkpoint, f16 for 16-bit and
// quantized ones (llama.cpp's default cache); f32 and f16 ask for either whatever the weights.
TEST(RunPlan, AutoKvCacheOnCpusFollowsTheWeights) {
  EXPECT_EQ(kv_cache_dtype(DeviceKind::Cpu, DType::F32, "auto"), DType::F32);
  for (DType stored : {DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0})
    EXPECT_EQ(kv_cache_dtype(DeviceKind::Cpu, stored, "auto"), DType::F16) << dtype_name(stored);
  EXPECT_EQ(kv_cache_dtype(DeviceKind::Cpu, DType::BF16, "f32"), DType::F32);
  EXPECT_EQ(kv_cache_dtype(DeviceKind::Cpu, DType::F32, "f16"), DType::F16);
  EXPECT_EQ(kv_cache_dtype(DeviceKind::Cuda, DType::F32, "auto"), DType::BF16);
}

namespace {
Topology cpu_node(int ranks) {
  nlohmann::json list = nlohmann::json::array();
  for (int r = 0; r < ranks; ++r) list.push_back(r);
  return Topology::from_json({{"nodes", {{{"hostname", "c"}, {"ranks", list}}}}}, "cpu.json");
}

std::string refusal(LayoutSizes sizes, int ranks, RunLimits limits = {}) {
  PlanRequest r;
  r.config = test::tiny_config();  // 4 heads, 2 KV heads, 2 layers, 128 positions
  r.topology = cpu_node(ranks);
  r.sizes = sizes;
  r.limits = limits;
  return test::error_of([&] { make_run_plan(r); });
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }
}  // namespace

TEST(RunPlan, RefusalsNameTheNumbers) {
  const std::string heads = refusal({0, 1, 3}, 3);
  EXPECT_TRUE(contains(heads, "num_attention_heads 4") && contains(heads, "tensor-parallel size 3")) << heads;
  const std::string layers = refusal({0, 3, 1}, 3);
  EXPECT_TRUE(contains(layers, "pipeline-parallel size 3") && contains(layers, "num_hidden_layers 2")) << layers;
  RunLimits long_context;
  long_context.max_model_len = 129;
  const std::string context = refusal({0, 1, 1}, 1, long_context);
  EXPECT_TRUE(contains(context, "129") && contains(context, "max_position_embeddings 128")) << context;
  RunLimits no_batch;
  no_batch.max_batch_size = 0;
  const std::string batch = refusal({0, 1, 1}, 1, no_batch);
  EXPECT_TRUE(contains(batch, "--max-batch-size") && contains(batch, "0")) << batch;
  RunLimits no_tokens;
  no_tokens.max_num_batched_tokens = 0;
  EXPECT_TRUE(contains(refusal({0, 1, 1}, 1, no_tokens), "--max-num-batched-tokens"));
  const std::string world = refusal({3, 1, 1}, 2);
  EXPECT_TRUE(contains(world, "world size 2") && contains(world, "3")) << world;
  // The controls: the same requests with sizes and limits that work are planned.
  EXPECT_EQ(refusal({0, 1, 2}, 2), "");
  EXPECT_EQ(refusal({0, 2, 1}, 2), "");
  RunLimits whole_context;
  whole_context.max_model_len = 128;
  EXPECT_EQ(refusal({0, 1, 1}, 1, whole_context), "");
}

TEST(RunPlan, TableListsEveryRankOnceWithTensorGroupsInsideNodes) {
  PlanRequest r;
  r.config = test::tiny_config();
  r.topology = Topology::from_json(
      nlohmann::json::parse(R"({"nodes": [{"hostname": "a", "ranks": [0, 2]}, {"hostname": "b", "ranks": [1, 3]}]})"),
      "interleaved.json");
  r.sizes = {2, 1, 2};
  const RunPlan plan = make_run_plan(r);
  const std::string table = plan.table();
  const auto rows = table_rows(table);
  ASSERT_EQ(rows.size(), 4u) << table;
  std::set<int> ranks;
  std::map<std::pair<int, int>, std::set<std::string>> hosts_of_group;
  std::map<std::pair<int, int>, std::set<int>> tp_ranks_of_group;
  for (const TableRow& row : rows) {
    EXPECT_TRUE(ranks.insert(row.rank).second) << "rank " << row.rank << " listed twice\n" << table;
    EXPECT_EQ(row.host, row.rank % 2 == 0 ? "a" : "b") << table;
    EXPECT_EQ(row.local, row.rank / 2) << table;
    EXPECT_EQ(row.device, "cpu");
    EXPECT_NE(row.rest.find("(intra-node)"), std::string::npos) << table;
    hosts_of_group[{row.dp, row.pp}].insert(row.host);
    tp_ranks_of_group[{row.dp, row.pp}].insert(row.tp);
  }
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2, 3}));
  ASSERT_EQ(hosts_of_group.size(), 2u) << "two replicas of one stage\n" << table;
  for (const auto& [group, hosts] : hosts_of_group) EXPECT_EQ(hosts.size(), 1u) << "TP group spans nodes\n" << table;
  for (const auto& [group, tps] : tp_ranks_of_group) EXPECT_EQ(tps, (std::set<int>{0, 1})) << table;
  EXPECT_EQ(plan.layout(0).tp_group(), (std::vector<int>{0, 2}));
  EXPECT_EQ(plan.layout(1).tp_group(), (std::vector<int>{1, 3}));
}

// World rank 0 gathers the results between its own scheduling steps, so it must lead replica 0 whatever order a
// description lists the nodes in (here rank 0's node second: placement alone put it at dp 1).
TEST(RunPlan, WorldRankZeroLeadsReplicaZero) {
  for (const auto& [dp, pp, tp] : {std::tuple{2, 1, 2}, std::tuple{1, 2, 2}, std::tuple{2, 2, 1}}) {
    const nlohmann::json description = {{"nodes",
                                         {{{"hostname", "b"}, {"ranks", {1, 3}}, {"cpu_cores", 2}},
                                          {{"hostname", "a"}, {"ranks", {0, 2}}, {"cpu_cores", 2}}}}};
    PlanRequest request;
    request.config = test::tiny_config();
    request.topology = Topology::from_json(description, "test");
    request.sizes = LayoutSizes{dp, pp, tp};
    request.limits.max_model_len = 64;
    const RunPlan plan = make_run_plan(request);
    const ParallelLayout zero = plan.layout(0);
    EXPECT_EQ(zero.dp_rank(), 0);
    EXPECT_EQ(zero.pp_rank(), 0);
    EXPECT_EQ(zero.tp_rank(), 0) << "dp " << dp << " pp " << pp << " tp " << tp;
    // The groups are still placement's: each TP group inside one node.
    for (int r = 0; r < 4; ++r)
      for (int peer : plan.layout(r).tp_group())
        EXPECT_EQ(plan.topology.node_of(peer).hostname, plan.topology.node_of(r).hostname);
  }
}
