// Shard plans: balanced layer ranges, refused splits with the numbers named, KV-head replication, and slices that
// tile every tensor exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "layers/shard_plan.h"
#include "runtime/base/error.h"
#include "test_support.h"

using namespace strata;

TEST(ShardPlan, LayerRangesAreContiguousAndBalanced) {
  for (int layers = 1; layers <= 13; ++layers) {
    for (int pp = 1; pp <= std::min(layers, 5); ++pp) {
      std::int64_t next = 0, smallest = layers, largest = 0;
      for (int s = 0; s < pp; ++s) {
        auto [begin, end] = ShardPlan::layer_range(layers, pp, s);
        EXPECT_EQ(begin, next);
        smallest = std::min(smallest, end - begin);
        largest = std::max(largest, end - begin);
        next = end;
      }
      EXPECT_EQ(next, layers);
      EXPECT_LE(largest - smallest, 1) << layers << " layers over " << pp;
      EXPECT_GE(smallest, 1);
    }
  }
  EXPECT_EQ(ShardPlan::layer_range(10, 4, 0), (std::pair<std::int64_t, std::int64_t>{0, 3}));
  EXPECT_EQ(ShardPlan::layer_range(10, 4, 3), (std::pair<std::int64_t, std::int64_t>{8, 10}));
}

namespace {
std::string split_error(ModelConfig c, int tp, int pp) {
  try {
    check_split(c, tp, pp);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(ShardPlan, UnevenSplitsAreRefusedWithTheNumbers) {
  ModelConfig c = test::tiny_config();  // 4 heads, 2 kv heads, intermediate 96, vocab 260, 2 layers
  EXPECT_NE(split_error(c, 3, 1).find("num_attention_heads 4 is not divisible by tensor-parallel size 3"),
            std::string::npos);
  c.num_attention_heads = 6;
  c.num_key_value_heads = 6;
  c.intermediate_size = 100;
  EXPECT_NE(split_error(c, 3, 1).find("intermediate_size 100"), std::string::npos) << split_error(c, 3, 1);
  c = test::tiny_config();
  c.vocab_size = 259;
  EXPECT_NE(split_error(c, 2, 1).find("vocab_size 259"), std::string::npos);
  c = test::tiny_config();
  c.num_attention_heads = 6;
  c.num_key_value_heads = 3;
  c.intermediate_size = 96;
  c.vocab_size = 264;
  EXPECT_EQ(split_error(c, 6, 1), "");  // 6 ranks over 3 kv heads: each kv head replicated twice
  c.intermediate_size = 96;
  c.vocab_size = 260;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 1;
  EXPECT_EQ(split_error(c, 4, 1), "");  // multi-query attention: the one kv head on every rank
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.intermediate_size = 96;
  c.vocab_size = 264;
  const std::string odd = split_error(c, 8, 1);
  EXPECT_EQ(odd, "");
  c.num_attention_heads = 12;
  c.num_key_value_heads = 3;
  c.intermediate_size = 96;
  c.vocab_size = 264;
  EXPECT_NE(split_error(c, 4, 1).find("larger than num_key_value_heads 3 but not a multiple"), std::string::npos)
      << split_error(c, 4, 1);
  EXPECT_NE(split_error(test::tiny_config(), 1, 3).find("pipeline-parallel size 3 exceeds num_hidden_layers 2"),
            std::string::npos);
}

TEST(ShardPlan, ReplicatedKvHeadsFollowTheirQueryHeads) {
  ModelConfig c = test::tiny_config();
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.hidden_size = 128;
  // tp 4 > 2 kv heads: ranks 0,1 use kv head 0 (query heads 0-3), ranks 2,3 use kv head 1 (query heads 4-7)
  for (int r = 0; r < 4; ++r) {
    ShardPlan plan(c, {4, r, 1, 0});
    EXPECT_EQ(plan.local_heads(), 2);
    EXPECT_EQ(plan.local_kv_heads(), 1);
    const TensorSpec k = plan.spec("model.layers.0.self_attn.k_proj.weight");
    EXPECT_EQ(k.begin, (r / 2) * c.head_dim) << r;
    EXPECT_EQ(k.end - k.begin, c.head_dim);
  }
}

TEST(ShardPlan, SlicesTileEveryTensorExactly) {
  ModelConfig c = test::tiny_config();
  c.attention_bias = true;
  for (int tp : {1, 2}) {
    for (int pp : {1, 2}) {
      std::map<std::string, std::vector<int>> coverage;  // element -> how many ranks hold it
      for (int s = 0; s < pp; ++s) {
        for (int r = 0; r < tp; ++r) {
          const ShardPlan plan(c, {tp, r, pp, s});
          for (const auto& spec : plan.tensors()) {
            auto& count = coverage[spec.name + "@" + std::to_string(s)];
            count.resize(std::size_t(shape_numel(spec.global_shape)));
            const Shape local = spec.local_shape(), offset = spec.global_offset();
            const std::int64_t cols = spec.global_shape.size() == 2 ? spec.global_shape[1] : 1;
            const std::int64_t local_cols = local.size() == 2 ? local[1] : 1;
            for (std::int64_t i = 0; i < local[0]; ++i)
              for (std::int64_t j = 0; j < local_cols; ++j)
                ++count[std::size_t((offset[0] + i) * cols + (local.size() == 2 ? offset[1] : 0) + j)];
          }
        }
      }
      for (const auto& [name, count] : coverage) {
        const bool replicated = name.find("norm") != std::string::npos;
        for (int n : count) ASSERT_EQ(n, replicated ? tp : 1) << name << " tp " << tp << " pp " << pp;
      }
    }
  }
}

TEST(ShardPlan, EmbeddingOnFirstStageAndHeadOnLast) {
  ModelConfig c = test::tiny_config();
  c.tie_word_embeddings = true;
  ShardPlan first(c, {1, 0, 2, 0}), last(c, {1, 0, 2, 1});
  auto names = [](const ShardPlan& p) {
    std::set<std::string> n;
    for (const auto& s : p.tensors()) n.insert(s.name);
    return n;
  };
  EXPECT_TRUE(names(first).count("model.embed_tokens.weight"));
  EXPECT_FALSE(names(first).count("model.norm.weight"));
  EXPECT_TRUE(names(last).count("model.embed_tokens.weight"));  // tied: the last stage needs it as its LM head
  EXPECT_TRUE(names(last).count("model.norm.weight"));
  EXPECT_FALSE(names(last).count("lm_head.weight"));
  EXPECT_FALSE(names(last).count("model.layers.0.mlp.up_proj.weight"));
}

TEST(ModelConfig, RopeScalingFrequencies) {
  ModelConfig c = test::tiny_config();
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  const std::vector<float> plain = c.rope_inverse_frequencies();
  EXPECT_FLOAT_EQ(plain[0], 1.0f);
  EXPECT_FLOAT_EQ(plain[1], float(std::pow(500000.0, -2.0 / 128)));
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 4;
  for (std::size_t i = 0; i < plain.size(); ++i) EXPECT_FLOAT_EQ(c.rope_inverse_frequencies()[i], plain[i] / 4);
  // Llama 3.1: factor 8, low 1, high 4, original context 8192
  c.rope_scaling = RopeScaling{};
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  const std::vector<float> scaled = c.rope_inverse_frequencies();
  const double pi = 3.14159265358979323846;
  int high = 0, medium = 0, low = 0;
  for (std::size_t i = 0; i < plain.size(); ++i) {
    const double wavelength = 2 * pi / plain[i];
    if (wavelength < 8192 / 4.0) {
      EXPECT_FLOAT_EQ(scaled[i], plain[i]) << i;  // short wavelengths untouched
      ++high;
    } else if (wavelength > 8192 / 1.0) {
      EXPECT_FLOAT_EQ(scaled[i], plain[i] / 8) << i;  // long wavelengths stretched by the factor
      ++low;
    } else {
      EXPECT_LT(scaled[i], plain[i]) << i;  // blended between the two
      EXPECT_GT(scaled[i], plain[i] / 8) << i;
      ++medium;
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(medium, 0);
  EXPECT_GT(low, 0);
  // round trip through the manifest JSON
  const ModelConfig back = ModelConfig::from_json(c.to_json(), "test");
  EXPECT_EQ(back.rope_inverse_frequencies(), scaled);
}

// The memory estimate follows the backend's dtypes: bf16 halves weights, KV cache and activations, while logits
// stay f32 (max_seqs x local_vocab x 4 bytes either way).
TEST(StageMemory, EstimateFollowsWeightAndActivationDtypes) {
  const ShardPlan plan(test::tiny_config(), StageCoordinates{2, 1, 1, 0});
  const StageLimits limits{32, 3, 40};
  const StageMemory f32 = estimate_stage_memory(plan, limits);
  const StageMemory bf16 = estimate_stage_memory(plan, limits, DType::BF16, DType::BF16);
  EXPECT_EQ(f32.weights, 2 * bf16.weights);
  EXPECT_EQ(f32.kv_cache, 2 * bf16.kv_cache);
  const std::int64_t logits = std::int64_t(limits.max_seqs) * plan.local_vocab() * 4;
  EXPECT_EQ(2 * bf16.workspace - f32.workspace, logits);
  std::int64_t weight_elems = 0;
  for (const auto& spec : plan.tensors()) weight_elems += shape_numel(spec.local_shape());
  EXPECT_EQ(bf16.weights, 2 * weight_elems);
}

// Sliding-window layers keep a ring per sequence slot: (window + step tokens - 1) positions in whole blocks, plus one
// block for a window that starts mid-block; the other layers keep the paged pool. A ring no smaller than a whole
// context is not used.
TEST(StageMemory, SlidingLayersKeepARingOfTheirWindow) {
  ModelConfig c = test::tiny_config();
  c.num_hidden_layers = 4;
  c.max_position_embeddings = 1024;
  c.sliding_window = 32;
  c.sliding_layers = {1, 0, 1, 1};
  StageLimits limits;
  limits.max_tokens = 16;
  limits.max_seqs = 4;
  limits.max_seq_len = 1024;
  limits.block_size = 16;
  EXPECT_EQ(sliding_ring_blocks(c, limits), 4);  // 47 positions: 3 blocks, 4 when the window starts mid-block
  const ShardPlan plan(c, StageCoordinates{1, 0, 1, 0});
  const StageMemory m = estimate_stage_memory(plan, limits);
  const std::int64_t block_bytes = 2 * 16 * (2 * 16) * 4;  // K and V x 16 positions x 2 kv heads x head_dim 16 x f32
  EXPECT_EQ(m.kv_cache, 1 * limits.cache_blocks() * block_bytes) << "the one whole-context layer";
  EXPECT_EQ(m.kv_windows, 3 * 4 * 4 * block_bytes) << "three sliding layers x 4 slots x 4 blocks";
  EXPECT_EQ(limits.cache_blocks(), 4 * 64);
  limits.max_seq_len = 64;  // 4 blocks of context: a ring would save nothing
  EXPECT_EQ(sliding_ring_blocks(c, limits), 0);
  c.sliding_window = 0;
  limits.max_seq_len = 1024;
  EXPECT_EQ(sliding_ring_blocks(c, limits), 0);
}
