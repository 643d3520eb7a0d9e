// ModelConfig: a Llama-family model's hyper-parameters under their Hugging Face config.json names. Immutable once
// parsed; validated on construction from JSON (every missing or contradictory field is named).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata {

// Hugging Face rope_scaling: none, "linear" (positions divided by factor) or "llama3" (low frequencies divided by
// factor, high ones kept, a smooth blend between; Llama 3.1+).
// "longrope" (Phi-3's 128k variants, also called "su"): each frequency divided by its short_factor, or by its
// long_factor for a sequence beyond original_max_position_embeddings, and cos / sin multiplied by attention_factor.
// Which factors a token uses follows Hugging Face's generation: a forward pass whose longest sequence exceeds the
// original context uses the long ones, so a prompt longer than it uses them throughout, and a shorter one switches
// to them at the first generated position past it (long_rope below).
// "frequency_factors" (strata's own name): each frequency divided by its given factor, as llama.cpp applies a GGUF
// file's rope_freqs tensor (which its converter computes from Llama 3.1's llama3 parameters, not stored otherwise).
struct RopeScaling {
  std::string type = "none";
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  std::int64_t original_max_position_embeddings = 0;     // llama3, longrope
  std::vector<double> short_factor;                      // longrope: head_dim / 2 of them
  std::vector<double> long_factor;                       // longrope: head_dim / 2 of them (may be empty)
  double attention_factor = 1.0;                         // longrope
  std::vector<double> frequency_factors;                 // frequency_factors: head_dim / 2 of them
};

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::int64_t head_dim = 0;  // defaults to hidden_size / num_attention_heads
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v bias (Qwen2)
  bool qk_norm = false;         // RMSNorm over each head of q and k before RoPE, weights [head_dim] (Qwen3)
  // > 0: a position attends to the last sliding_window positions only (itself included), in the layers
  // sliding_layers marks (all of them when it is empty: Mistral, Phi-3).
  std::int64_t sliding_window = 0;
  std::vector<std::uint8_t> sliding_layers;  // per layer, 1: sliding window, 0: whole context (Gemma's layer_types)
  std::int64_t bos_token_id = -1;
  std::int64_t eos_token_id = -1;

  // Gemma 2 / 3.
  std::string hidden_activation = "silu";  // the gated MLP's activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
  bool norm_weight_offset = false;         // every RMSNorm multiplies by (1 + weight)
  bool sandwich_norms = false;         // post_attention_layernorm on the attention output before the residual add, and
                                       // pre_feedforward_layernorm / post_feedforward_layernorm around the MLP
  bool scale_embeddings = false;       // embeddings times sqrt(hidden_size)
  double query_pre_attn_scalar = 0;    // > 0: attention scale query_pre_attn_scalar^-1/2 instead of head_dim^-1/2
  double attn_logit_softcapping = 0;   // > 0: attention scores s -> cap * tanh(s / cap)
  double final_logit_softcapping = 0;  // > 0: logits z -> cap * tanh(z / cap)
  double rope_local_theta = 0;         // > 0: sliding layers use this rotary base, unscaled (Gemma 3)

  // Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE); num_experts == 0: a dense model.
  std::int64_t num_experts = 0;
  std::int64_t experts_per_token = 0;                // top-k
  std::int64_t moe_intermediate_size = 0;            // each expert's SwiGLU width
  std::int64_t shared_expert_intermediate_size = 0;  // > 0: a shared expert gated by sigmoid(x . gate) (Qwen2-MoE)
  bool norm_topk_prob = true;                        // renormalise the top-k routing weights to sum to 1
  std::vector<std::uint8_t> dense_layers;  // per layer, 1: a dense MLP of intermediate_size (Qwen's mlp_only_layers)

  bool is_moe() const { return num_experts > 0; }
  bool moe_layer(std::int64_t layer) const;
  bool sliding_layer(std::int64_t layer) const;
  // The window layer `layer` attends within (0: the whole context).
  std::int32_t attention_window(std::int64_t layer) const;

  // Parses and validates; `where` names the source in messages (e.g. "ckpt/manifest.json").
  static ModelConfig from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
  void validate(const std::string& where) const;
  // The head_dim / 2 rotary inverse frequencies, rope_theta and rope_scaling applied (computed in double, as
  // Hugging Face computes them in float32 and then rounds; see the .cpp).
  std::vector<float> rope_inverse_frequencies() const;
  // longrope's frequencies beyond the original context (long_factor); empty for other scalings.
  std::vector<float> rope_long_inverse_frequencies() const;
  // Whether a token at `position` of a sequence whose prompt has `prompt_tokens` tokens rotates with the long
  // factors: max(prompt_tokens, position + 1) > original_max_position_embeddings (longrope with long_factor only).
  bool long_rope(std::int64_t prompt_tokens, std::int64_t position) const;
  // Those of layer `layer`: a sliding layer of a model with rope_local_theta uses that base, unscaled.
  std::vector<float> rope_inverse_frequencies(std::int64_t layer) const;
  // The softmax scale of attention: 1 / sqrt(head_dim) (or query_pre_attn_scalar), times attention_factor^2 for
  // longrope (its cos and sin are scaled, so q.k is scaled twice).
  double attention_scale() const;
  // Total parameter count (embedding counted once when tied).
  std::int64_t parameter_count() const;
  // One routed expert's weights (gate, up and down: 3 x hidden x moe_intermediate), as parameter_count counts them.
  std::int64_t expert_parameter_count() const { return 3 * hidden_size * moe_intermediate_size; }
};

}  // namespace strata
