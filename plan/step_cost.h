// The attention work a token cannot avoid, for strata bench's roofline: 4 x q_heads x head_dim FLOPs per position it
// attends (q . k, and the weighted sum of v: a multiply and an add each) and the keys and values of those positions
// read from the KV cache, in every layer, each layer within its window. Whole-model figures (a rank does its share).
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

}  // namespace strata
