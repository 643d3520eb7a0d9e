#include "plan/step_cost.h"

#include <algorithm>
#include <cmath>

namespace strata {
namespace {

// What one attended position costs in one layer: FLOPs, and bytes of its key and value.
AttentionWork per_position(const ModelConfig& c, double kv_element_bytes) {
  return {4.0 * double(c.num_attention_heads * c.head_dim),
          2.0 * double(c.num_key_value_heads * c.head_dim) * kv_element_bytes};
}

// Positions layer `layer` attends for a token at `pos`, and summed over a prompt's tokens 0..tokens-1: with a
// window w, min(i, w) for i = 1..tokens, i.e. w (w + 1) / 2 + (tokens - w) w once the prompt is longer than w.
double attended(const ModelConfig& c, std::int64_t layer, std::int64_t pos) {
  const std::int64_t window = c.attention_window(layer), seen = pos + 1;
  return double(window > 0 ? std::min(seen, window) : seen);
}
double attended_by_prompt(const ModelConfig& c, std::int64_t layer, std::int64_t tokens) {
  const double n = double(tokens), w = double(c.attention_window(layer));
  if (w <= 0 || w >= n) return n * (n + 1) / 2;
  return w * (w + 1) / 2 + (n - w) * w;
}

template <typename Positions>
AttentionWork over_layers(const ModelConfig& c, double kv_element_bytes, Positions positions) {
  double total = 0;
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer) total += positions(layer);
  const AttentionWork one = per_position(c, kv_element_bytes);
  return {one.flops * total, one.kv_bytes * total};
}

}  // namespace

AttentionWork attention_work(const ModelConfig& config, std::int64_t pos, double kv_element_bytes) {
  return over_layers(config, kv_element_bytes, [&](std::int64_t layer) { return attended(config, layer, pos); });
}

AttentionWork prompt_attention_work(const ModelConfig& config, std::int64_t tokens, double kv_element_bytes) {
  return over_layers(config, kv_element_bytes,
                     [&](std::int64_t layer) { return attended_by_prompt(config, layer, tokens); });
}

double routed_expert_weights(const ModelConfig& config) {
  double weights = 0;
  for (std::int64_t layer = 0; layer < config.num_hidden_layers; ++layer)
    if (config.moe_layer(layer)) weights += double(config.num_experts * config.expert_parameter_count());
  return weights;
}

double routed_share_multiplied(const ModelConfig& config) {
  return config.is_moe() ? double(config.experts_per_token) / double(config.num_experts) : 1.0;
}

double routed_share_read(const ModelConfig& config, std::int64_t tokens) {
  return config.is_moe() ? 1.0 - std::pow(1.0 - routed_share_multiplied(config), double(tokens)) : 1.0;
}

}  // namespace strata
