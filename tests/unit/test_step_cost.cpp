// The attention work bench's roofline counts: hand-counted positions for a two-layer model whose second layer has a
// sliding window of 3, and a prompt's total equal to its tokens' one by one.
#include <gtest/gtest.h>

#include "plan/step_cost.h"
#include "tests/unit/test_support.h"

using namespace strata;

namespace {
// test::tiny_config's 2 layers of 4 heads over 2 KV heads, narrowed to heads of 8 in a width of 32.
ModelConfig two_layers_one_sliding() {
  ModelConfig c = test::tiny_config();
  c.hidden_size = 32;
  c.head_dim = 8;
  c.sliding_window = 3;
  c.sliding_layers = {0, 1};
  return c;
}
}  // namespace

TEST(StepCost, AttentionCountsEachLayersPositionsWithinItsWindow) {
  const ModelConfig c = two_layers_one_sliding();
  // Per attended position: 4 heads x 8 dims x 4 FLOPs = 128; keys and values of 2 KV heads x 8 x 2 bytes = 64.
  // Position 4: layer 0 attends 5 positions, layer 1 the last 3.
  const AttentionWork at4 = attention_work(c, 4, 2.0);
  EXPECT_DOUBLE_EQ(at4.flops, 8 * 128.0);
  EXPECT_DOUBLE_EQ(at4.kv_bytes, 8 * 64.0);
  // Position 0: one position in each layer.
  EXPECT_DOUBLE_EQ(attention_work(c, 0, 4.0).kv_bytes, 2 * 2 * 2 * 8 * 4.0);
  // A 5-token prompt: layer 0 1+2+3+4+5 = 15, layer 1 1+2+3+3+3 = 12; a 2-token one 3 and 3.
  EXPECT_DOUBLE_EQ(prompt_attention_work(c, 5, 2.0).flops, 27 * 128.0);
  EXPECT_DOUBLE_EQ(prompt_attention_work(c, 2, 2.0).kv_bytes, 6 * 64.0);
  for (std::int64_t tokens : {1, 3, 4, 17}) {
    AttentionWork sum;
    for (std::int64_t pos = 0; pos < tokens; ++pos) {
      sum.flops += attention_work(c, pos, 2.0).flops;
      sum.kv_bytes += attention_work(c, pos, 2.0).kv_bytes;
    }
    EXPECT_DOUBLE_EQ(prompt_attention_work(c, tokens, 2.0).flops, sum.flops) << tokens;
    EXPECT_DOUBLE_EQ(prompt_attention_work(c, tokens, 2.0).kv_bytes, sum.kv_bytes) << tokens;
  }
}

TEST(StepCost, WithoutAWindowEveryPositionIsAttended) {
  ModelConfig c = two_layers_one_sliding();
  c.sliding_window = 0;
  EXPECT_DOUBLE_EQ(attention_work(c, 99, 2.0).flops, 2 * 100 * 128.0);
  EXPECT_DOUBLE_EQ(prompt_attention_work(c, 100, 2.0).flops, 2 * 5050 * 128.0);
}

// A mixture of experts: the routed experts' weights of its MoE layers only, a token multiplying k / E of them and a
// step of n tokens reading 1 - (1 - k / E)^n (every expert missed by each token with probability 1 - k / E).
TEST(StepCost, RoutedExpertsAreThoseOfTheMoeLayers) {
  ModelConfig c = two_layers_one_sliding();
  EXPECT_EQ(routed_expert_weights(c), 0.0);
  EXPECT_EQ(routed_share_multiplied(c), 1.0);
  EXPECT_EQ(routed_share_read(c, 5), 1.0);
  c.intermediate_size = 16;
  c.num_experts = 8;
  c.experts_per_token = 2;
  c.moe_intermediate_size = 3;
  c.dense_layers = {1, 0};  // layer 0 dense, layer 1 routed
  EXPECT_DOUBLE_EQ(routed_expert_weights(c), 3.0 * 8 * 32 * 3);
  EXPECT_LT(routed_expert_weights(c), double(c.parameter_count()));
  EXPECT_DOUBLE_EQ(routed_share_multiplied(c), 0.25);
  EXPECT_DOUBLE_EQ(routed_share_read(c, 1), 0.25);
  EXPECT_DOUBLE_EQ(routed_share_read(c, 2), 1 - 0.75 * 0.75);
  EXPECT_NEAR(routed_share_read(c, 64), 1.0, 1e-7);
}
