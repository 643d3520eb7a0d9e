// Loading weights from checkpoints of any layout (resharding on load): every slice a rank asks for equals the
// slice of the whole deterministic tensor, whatever layout the checkpoint was written for, and a rank opens only
// the shards that hold its slices.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "layers/checkpoint_weights.h"
#include "runtime/base/error.h"
#include "test_support.h"

using namespace strata;
namespace fs = std::filesystem;

namespace {

ModelConfig config_with_gqa() {
  ModelConfig c = test::tiny_config();  // 4 heads, 2 kv heads, 2 layers
  c.num_hidden_layers = 3;              // uneven over 2 stages
  c.attention_bias = true;
  return c;
}

std::string write_checkpoint(const ModelConfig& c, int tp, int pp, DType dtype, const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("strata_reshard_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  InitOptions options;
  options.tp = tp;
  options.pp = pp;
  options.dtype = dtype;
  options.seed = 77;
  options.tokenizer = {{"type", "byte"}};
  write_random_checkpoint(c, options, dir.string());
  return dir.string();
}

std::set<std::string> file_names(const std::vector<std::string>& paths) {
  std::set<std::string> names;
  for (const auto& p : paths) names.insert(fs::path(p).filename().string());
  return names;
}

}  // namespace

TEST(CheckpointWeights, EverySliceOfEveryLayoutFromAnyCheckpoint) {
  const ModelConfig c = config_with_gqa();
  for (auto [src_tp, src_pp] : {std::pair{1, 1}, {2, 2}, {4, 1}}) {
    const std::string dir = write_checkpoint(c, src_tp, src_pp, DType::F32, "all");
    const Manifest manifest = Manifest::read(dir);
    for (int tp : {1, 2, 4}) {
      for (int pp : {1, 2}) {
        for (int r = 0; r < tp; ++r) {
          for (int s = 0; s < pp; ++s) {
            const ShardPlan plan(c, {tp, r, pp, s});
            CheckpointWeightSource source(dir, manifest, plan);
            for (const auto& spec : plan.tensors()) {
              std::vector<float> got(static_cast<std::size_t>(shape_numel(spec.local_shape())), -1.0f);
              source.read(spec, got.data());
              std::vector<float> want(got.size());
              slice_tensor(spec, random_tensor(spec, 77).data(), want.data());
              ASSERT_EQ(got, want) << spec.name << " for tp " << tp << " rank " << r << " pp " << pp << " stage " << s
                                   << " from a tp " << src_tp << " pp " << src_pp << " checkpoint";
            }
          }
        }
      }
    }
    fs::remove_all(dir);
  }
}

TEST(CheckpointWeights, OpensOnlyTheShardsHoldingItsSlices) {
  const ModelConfig c = config_with_gqa();
  const std::string dir = write_checkpoint(c, 2, 2, DType::BF16, "open");
  const Manifest manifest = Manifest::read(dir);
  auto opened_by = [&](int tp, int rank, int pp, int stage) {
    const ShardPlan plan(c, {tp, rank, pp, stage});
    CheckpointWeightSource source(dir, manifest, plan);
    std::vector<float> buffer;
    for (const auto& spec : plan.tensors()) {
      buffer.resize(static_cast<std::size_t>(shape_numel(spec.local_shape())));
      source.read(spec, buffer.data());
    }
    return file_names(source.opened());
  };
  EXPECT_EQ(opened_by(2, 1, 2, 1), (std::set<std::string>{"model-pp1-tp1.h5"})) << "matching layout: its own shard";
  EXPECT_EQ(opened_by(4, 0, 2, 1), (std::set<std::string>{"model-pp1-tp0.h5"})) << "a quarter lies in one half";
  EXPECT_EQ(opened_by(2, 0, 1, 0), (std::set<std::string>{"model-pp0-tp0.h5", "model-pp1-tp0.h5"}))
      << "every layer, this rank's half of each";
  EXPECT_EQ(opened_by(1, 0, 1, 0).size(), 4u) << "the whole model needs every shard";
  fs::remove_all(dir);
}

TEST(CheckpointWeights, Bf16CheckpointReshardsToTheSameValues) {
  const ModelConfig c = config_with_gqa();
  const std::string native = write_checkpoint(c, 4, 1, DType::BF16, "native");
  const std::string other = write_checkpoint(c, 1, 2, DType::BF16, "other");
  const Manifest native_manifest = Manifest::read(native), other_manifest = Manifest::read(other);
  for (int r = 0; r < 4; ++r) {
    const ShardPlan plan(c, {4, r, 1, 0});
    CheckpointWeightSource a(native, native_manifest, plan), b(other, other_manifest, plan);
    for (const auto& spec : plan.tensors()) {
      std::vector<float> x(static_cast<std::size_t>(shape_numel(spec.local_shape()))), y(x.size());
      a.read(spec, x.data());
      b.read(spec, y.data());
      ASSERT_EQ(x, y) << spec.name << " rank " << r;
    }
  }
  fs::remove_all(native);
  fs::remove_all(other);
}

TEST(CheckpointWeights, SwappedShardsAreRefused) {
  const ModelConfig c = config_with_gqa();
  const std::string dir = write_checkpoint(c, 2, 1, DType::F32, "swap");
  fs::rename(fs::path(dir) / "model-pp0-tp0.h5", fs::path(dir) / "tmp.h5");
  fs::rename(fs::path(dir) / "model-pp0-tp1.h5", fs::path(dir) / "model-pp0-tp0.h5");
  fs::rename(fs::path(dir) / "tmp.h5", fs::path(dir) / "model-pp0-tp1.h5");
  const Manifest manifest = Manifest::read(dir);
  const ShardPlan plan(c, {1, 0, 1, 0});
  CheckpointWeightSource source(dir, manifest, plan);
  std::vector<float> buffer(static_cast<std::size_t>(shape_numel(plan.tensors()[0].local_shape())));
  try {
    source.read(plan.tensors()[0], buffer.data());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("says it is pp rank 0 tp rank 1"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// The stage's view of its tensors: each alone, except gate_proj + up_proj together (ShardPlan::stacked_with_next).
std::vector<std::vector<TensorSpec>> stage_groups(const ShardPlan& plan) {
  std::vector<std::vector<TensorSpec>> groups;
  const std::vector<TensorSpec> specs = plan.tensors();
  for (std::size_t i = 0; i < specs.size(); ++i) {
    groups.push_back({specs[i]});
    if (ShardPlan::stacked_with_next(specs[i].name)) groups.back().push_back(specs[++i]);
  }
  return groups;
}

TEST(CheckpointWeights, MatchingLayoutServesEveryTensorInPlace) {
  const ModelConfig c = config_with_gqa();
  const std::string dir = write_checkpoint(c, 2, 2, DType::BF16, "map");
  const Manifest manifest = Manifest::read(dir);
  for (int r = 0; r < 2; ++r) {
    for (int s = 0; s < 2; ++s) {
      const ShardPlan plan(c, {2, r, 2, s});
      CheckpointWeightSource mapper(dir, manifest, plan), reader(dir, manifest, plan, /*map_weights=*/false);
      std::int64_t expected_bytes = 0;
      std::size_t pairs = 0;
      for (const auto& group : stage_groups(plan)) {
        pairs += group.size() == 2;
        const Buffer mapped = mapper.map_stored(group, DType::BF16);
        ASSERT_NE(mapped.data(), nullptr) << group[0].name << " not served in place";
        EXPECT_EQ(reader.map_stored(group, DType::BF16).data(), nullptr) << "mapping was switched off";
        EXPECT_EQ(mapper.map_stored(group, DType::F32).data(), nullptr) << "stored bf16, asked for f32";
        std::vector<char> stored;
        for (const auto& spec : group) {  // what a plain read of each part gives, back to back
          const std::size_t bytes = std::size_t(shape_numel(spec.local_shape())) * 2;
          stored.resize(stored.size() + bytes);
          ASSERT_TRUE(reader.read_stored(spec, DType::BF16, stored.data() + stored.size() - bytes));
        }
        ASSERT_EQ(mapped.bytes(), stored.size()) << group[0].name;
        EXPECT_EQ(std::memcmp(mapped.data(), stored.data(), stored.size()), 0) << group[0].name;
        expected_bytes += std::int64_t(stored.size());
      }
      EXPECT_EQ(pairs, std::size_t(plan.local_layers())) << "one gate/up pair per layer";
      EXPECT_EQ(mapper.mapped_bytes(), expected_bytes);
      EXPECT_EQ(mapper.read_bytes(), 0);
    }
  }
  // Resharding (tp 1 pp 1 from the tp 2 pp 2 checkpoint): slices are assembled from several shards, never mapped.
  const ShardPlan whole(c, {1, 0, 1, 0});
  CheckpointWeightSource source(dir, manifest, whole);
  EXPECT_EQ(source.map_stored({whole.spec("model.layers.0.self_attn.q_proj.weight")}, DType::BF16).data(), nullptr);
  EXPECT_EQ(source
                .map_stored({whole.spec("model.layers.2.mlp.gate_proj.weight"),
                             whole.spec("model.layers.2.mlp.up_proj.weight")},
                            DType::BF16)
                .data(),
            nullptr);
  fs::remove_all(dir);
}
