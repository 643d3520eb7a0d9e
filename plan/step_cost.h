// The work a step's tokens cannot avoid, for strata bench's roofline. Attention: 4 x q_heads x head_dim FLOPs per
// position it attends (q . k, and the weighted sum of v: a multiply and an add each) and the keys and values of those
// positions read from the KV cache, in every layer, each layer within its window. Whole-model figures (a rank does its
// share).
#pragma once
#include <cstdint>

#include "layers/model_config.h"

namespace strata {

struct AttentionWork {
  double flops = 0, kv_bytes = 0;
};

// One token at position `pos`: it attends positions 0..pos (the last `window` of them in a sliding layer).
AttentionWork attention_work(const ModelConfig& config, std::int64_t pos, double kv_element_bytes);

// A prompt of `tokens` tokens from position 0: the sum of attention_work over positions 0..tokens-1.
AttentionWork prompt_attention_work(const ModelConfig& config, std::int64_t tokens, double kv_element_bytes);

// Mixture-of-experts models: the routed experts' weights of every MoE layer (3 x hidden x moe_intermediate each; 0
// for a dense model), of which a token multiplies experts_per_token per layer.
double routed_expert_weights(const ModelConfig& config);
// The share of the routed experts' weights a step of `tokens` tokens reads, routing spread evenly: each expert is
// missed by all of them with probability (1 - k / E)^tokens. 1 for a dense model.
double routed_share_read(const ModelConfig& config, std::int64_t tokens);
// The share a token multiplies: k / E (1 for a dense model).
double routed_share_multiplied(const ModelConfig& config);

}  // namespace strata
