// ModelConfig JSON round trip and validation.
#include "layers/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "runtime/base/error.h"

namespace strata {
namespace {

template <typename T>
T required(const nlohmann::json& j, const char* key, const std::string& where) {
  STRATA_CHECK(j.contains(key), Config, where, ": model config has no '", key, "'");
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
    STRATA_CHECK(j.at(key).is_number_integer(), Config, where, ": model config field '", key,
                 "' must be an integer (got ", j.at(key).dump(), ")");
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Config, cat(where, ": model config field '", key, "' has the wrong type: ", e.what()));
  }
}

template <typename T>
T optional(const nlohmann::json& j, const char* key, T fallback, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  return required<T>(j, key, where);
}

}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& where) {
  STRATA_CHECK(j.is_object(), Config, where, ": model config is not a JSON object");
  ModelConfig c;
  c.architecture = optional<std::string>(j, "architecture", c.architecture, where);
  c.hidden_size = required<std::int64_t>(j, "hidden_size", where);
  c.intermediate_size = required<std::int64_t>(j, "intermediate_size", where);
  c.num_hidden_layers = required<std::int64_t>(j, "num_hidden_layers", where);
  c.num_attention_heads = required<std::int64_t>(j, "num_attention_heads", where);
  c.num_key_value_heads = optional<std::int64_t>(j, "num_key_value_heads", c.num_attention_heads, where);
  c.head_dim =
      optional<std::int64_t>(j, "head_dim", c.num_attention_heads ? c.hidden_size / c.num_attention_heads : 0, where);
  c.vocab_size = required<std::int64_t>(j, "vocab_size", where);
  c.max_position_embeddings = required<std::int64_t>(j, "max_position_embeddings", where);
  c.rms_norm_eps = optional<double>(j, "rms_norm_eps", c.rms_norm_eps, where);
  c.rope_theta = optional<double>(j, "rope_theta", c.rope_theta, where);
  c.tie_word_embeddings = optional<bool>(j, "tie_word_embeddings", c.tie_word_embeddings, where);
  if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null()) {
    const auto& r = j.at("rope_scaling");
    STRATA_CHECK(r.is_object(), Config, where, ": rope_scaling must be an object or null");
    const std::string kind = r.contains("rope_type") ? optional<std::string>(r, "rope_type", "", where)
                                                     : optional<std::string>(r, "type", "", where);
    STRATA_CHECK(
        kind == "linear" || kind == "llama3" || kind == "longrope" || kind == "frequency_factors" || kind == "default",
        Config, where, ": rope_scaling of type '", kind,
        "' is not supported (linear, llama3, longrope and frequency_factors are)");
    if (kind == "frequency_factors") {
      c.rope_scaling.type = kind;
      c.rope_scaling.frequency_factors = required<std::vector<double>>(r, "factors", where);
    } else if (kind == "longrope") {
      c.rope_scaling.type = kind;
      c.rope_scaling.original_max_position_embeddings =
          required<std::int64_t>(r, "original_max_position_embeddings", where);
      c.rope_scaling.short_factor = required<std::vector<double>>(r, "short_factor", where);
      c.rope_scaling.long_factor = optional<std::vector<double>>(r, "long_factor", {}, where);
      c.rope_scaling.factor = double(c.max_position_embeddings) /
                              double(std::max<std::int64_t>(c.rope_scaling.original_max_position_embeddings, 1));
      // Hugging Face: sqrt(1 + ln(factor) / ln(original context)) unless the config gives it
      const double computed =
          c.rope_scaling.factor <= 1.0
              ? 1.0
              : std::sqrt(1.0 + std::log(c.rope_scaling.factor) /
                                    std::log(double(c.rope_scaling.original_max_position_embeddings)));
      c.rope_scaling.attention_factor = optional<double>(r, "attention_factor", computed, where);
      STRATA_CHECK(c.rope_scaling.original_max_position_embeddings > 0, Config, where,
                   ": longrope needs original_max_position_embeddings > 0");
    } else if (kind != "default") {
      c.rope_scaling.type = kind;
      c.rope_scaling.factor = required<double>(r, "factor", where);
      STRATA_CHECK(c.rope_scaling.factor >= 1.0, Config, where, ": rope_scaling factor must be >= 1");
    }
    if (kind == "llama3") {
      c.rope_scaling.low_freq_factor = required<double>(r, "low_freq_factor", where);
      c.rope_scaling.high_freq_factor = required<double>(r, "high_freq_factor", where);
      c.rope_scaling.original_max_position_embeddings =
          required<std::int64_t>(r, "original_max_position_embeddings", where);
      STRATA_CHECK(c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor &&
                       c.rope_scaling.original_max_position_embeddings > 0,
                   Config, where,
                   ": llama3 rope_scaling needs high_freq_factor > low_freq_factor and "
                   "original_max_position_embeddings > 0");
    }
  }
  c.attention_bias = optional<bool>(j, "attention_bias", c.attention_bias, where);
  c.qk_norm = optional<bool>(j, "qk_norm", c.qk_norm, where);
  c.sliding_window = optional<std::int64_t>(j, "sliding_window", c.sliding_window, where);
  if (j.contains("layer_types") && !j.at("layer_types").is_null()) {
    const auto types = required<std::vector<std::string>>(j, "layer_types", where);
    for (std::size_t i = 0; i < types.size(); ++i) {
      STRATA_CHECK(types[i] == "sliding_attention" || types[i] == "full_attention", Config, where, ": layer_types[", i,
                   "] is '", types[i], "' (sliding_attention and full_attention are supported)");
      c.sliding_layers.push_back(types[i] == "sliding_attention");
    }
  }
  c.hidden_activation = optional<std::string>(j, "hidden_activation", c.hidden_activation, where);
  c.norm_weight_offset = optional<bool>(j, "norm_weight_offset", c.norm_weight_offset, where);
  c.sandwich_norms = optional<bool>(j, "sandwich_norms", c.sandwich_norms, where);
  c.scale_embeddings = optional<bool>(j, "scale_embeddings", c.scale_embeddings, where);
  c.query_pre_attn_scalar = optional<double>(j, "query_pre_attn_scalar", c.query_pre_attn_scalar, where);
  c.attn_logit_softcapping = optional<double>(j, "attn_logit_softcapping", c.attn_logit_softcapping, where);
  c.final_logit_softcapping = optional<double>(j, "final_logit_softcapping", c.final_logit_softcapping, where);
  c.rope_local_theta = optional<double>(j, "rope_local_base_freq", c.rope_local_theta, where);
  c.num_experts = optional<std::int64_t>(j, "num_experts", c.num_experts, where);
  c.experts_per_token = optional<std::int64_t>(j, "num_experts_per_tok", c.experts_per_token, where);
  c.moe_intermediate_size = optional<std::int64_t>(j, "moe_intermediate_size", c.moe_intermediate_size, where);
  c.shared_expert_intermediate_size =
      optional<std::int64_t>(j, "shared_expert_intermediate_size", c.shared_expert_intermediate_size, where);
  c.norm_topk_prob = optional<bool>(j, "norm_topk_prob", c.norm_topk_prob, where);
  if (j.contains("mlp_only_layers") && !j.at("mlp_only_layers").is_null()) {
    c.dense_layers.assign(std::size_t(std::max<std::int64_t>(c.num_hidden_layers, 0)), 0);
    for (const std::int64_t layer : required<std::vector<std::int64_t>>(j, "mlp_only_layers", where)) {
      STRATA_CHECK(layer >= 0 && layer < c.num_hidden_layers, Config, where, ": mlp_only_layers names layer ", layer,
                   " of ", c.num_hidden_layers);
      c.dense_layers[std::size_t(layer)] = 1;
    }
  }
  c.bos_token_id = optional<std::int64_t>(j, "bos_token_id", c.bos_token_id, where);
  c.eos_token_id = optional<std::int64_t>(j, "eos_token_id", c.eos_token_id, where);
  c.validate(where);
  return c;
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j = {
      {"architecture", architecture},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"tie_word_embeddings", tie_word_embeddings},
      {"rope_scaling",
       rope_scaling.type == "none" ? nlohmann::json(nullptr)
       : rope_scaling.type == "longrope"
           ? nlohmann::json{{"rope_type", "longrope"},
                            {"short_factor", rope_scaling.short_factor},
                            {"long_factor", rope_scaling.long_factor},
                            {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
                            {"attention_factor", rope_scaling.attention_factor}}
       : rope_scaling.type == "linear" ? nlohmann::json{{"rope_type", "linear"}, {"factor", rope_scaling.factor}}
       : rope_scaling.type == "frequency_factors"
           ? nlohmann::json{{"rope_type", "frequency_factors"}, {"factors", rope_scaling.frequency_factors}}
           : nlohmann::json{{"rope_type", "llama3"},
                            {"factor", rope_scaling.factor},
                            {"low_freq_factor", rope_scaling.low_freq_factor},
                            {"high_freq_factor", rope_scaling.high_freq_factor},
                            {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}}},
      {"attention_bias", attention_bias},
      {"qk_norm", qk_norm},
      {"sliding_window", sliding_window},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id}};
  if (!sliding_layers.empty()) {
    std::vector<std::string> types;
    for (const auto sliding : sliding_layers) types.push_back(sliding ? "sliding_attention" : "full_attention");
    j["layer_types"] = types;
  }
  if (hidden_activation != "silu") j["hidden_activation"] = hidden_activation;
  if (norm_weight_offset) j["norm_weight_offset"] = true;
  if (sandwich_norms) j["sandwich_norms"] = true;
  if (scale_embeddings) j["scale_embeddings"] = true;
  if (query_pre_attn_scalar > 0) j["query_pre_attn_scalar"] = query_pre_attn_scalar;
  if (attn_logit_softcapping > 0) j["attn_logit_softcapping"] = attn_logit_softcapping;
  if (final_logit_softcapping > 0) j["final_logit_softcapping"] = final_logit_softcapping;
  if (rope_local_theta > 0) j["rope_local_base_freq"] = rope_local_theta;
  if (is_moe()) {
    j["num_experts"] = num_experts;
    j["num_experts_per_tok"] = experts_per_token;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["shared_expert_intermediate_size"] = shared_expert_intermediate_size;
    j["norm_topk_prob"] = norm_topk_prob;
    std::vector<std::int64_t> dense;
    for (std::size_t l = 0; l < dense_layers.size(); ++l)
      if (dense_layers[l]) dense.push_back(std::int64_t(l));
    j["mlp_only_layers"] = dense;
  }
  return j;
}

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](std::int64_t value, const char* name) {
    STRATA_CHECK(value > 0, Config, where, ": ", name, " must be positive (got ", value, ")");
  };
  auto one_per_frequency = [&](const std::vector<double>& factors, const char* name) {
    STRATA_CHECK(std::int64_t(factors.size()) == head_dim / 2, Config, where, ": ", name, " has ", factors.size(),
                 " entries, head_dim / 2 = ", head_dim / 2);
  };
  if (rope_scaling.type == "longrope") {
    one_per_frequency(rope_scaling.short_factor, "longrope short_factor");
    if (!rope_scaling.long_factor.empty()) one_per_frequency(rope_scaling.long_factor, "longrope long_factor");
  }
  if (rope_scaling.type == "frequency_factors") {
    one_per_frequency(rope_scaling.frequency_factors, "rope_scaling factors");
    for (std::size_t i = 0; i < rope_scaling.frequency_factors.size(); ++i)
      STRATA_CHECK(std::isfinite(rope_scaling.frequency_factors[i]) && rope_scaling.frequency_factors[i] > 0, Config,
                   where, ": rope_scaling factors[", i, "] is ", rope_scaling.frequency_factors[i],
                   " (each must be positive)");
  }
  // Sizes reach int-sized BLAS/MPI arguments and int32 positions: refuse what cannot be represented.
  for (auto [value, name] : {std::pair{hidden_size, "hidden_size"},
                             {intermediate_size, "intermediate_size"},
                             {num_hidden_layers, "num_hidden_layers"},
                             {num_attention_heads, "num_attention_heads"},
                             {num_key_value_heads, "num_key_value_heads"},
                             {head_dim, "head_dim"},
                             {vocab_size, "vocab_size"},
                             {max_position_embeddings, "max_position_embeddings"}})
    STRATA_CHECK(value <= (std::int64_t(1) << 30), Config, where, ": ", name, " ", value, " is too large (limit 2^30)");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(vocab_size, "vocab_size");
  positive(max_position_embeddings, "max_position_embeddings");
  STRATA_CHECK(num_key_value_heads <= num_attention_heads && num_attention_heads % num_key_value_heads == 0, Config,
               where, ": num_attention_heads ", num_attention_heads, " is not a multiple of num_key_value_heads ",
               num_key_value_heads);
  STRATA_CHECK(head_dim % 2 == 0, Config, where, ": head_dim ", head_dim, " must be even for rotary embeddings");
  STRATA_CHECK(rms_norm_eps > 0 && rope_theta > 0, Config, where, ": rms_norm_eps and rope_theta must be positive");
  STRATA_CHECK(eos_token_id < vocab_size && bos_token_id < vocab_size, Config, where,
               ": bos/eos token id outside vocab_size ", vocab_size);
  STRATA_CHECK(sliding_layers.empty() || std::int64_t(sliding_layers.size()) == num_hidden_layers, Config, where,
               ": layer_types lists ", sliding_layers.size(), " layers, num_hidden_layers is ", num_hidden_layers);
  STRATA_CHECK(sliding_window >= 0, Config, where, ": sliding_window must be >= 0");
  STRATA_CHECK(hidden_activation == "silu" || hidden_activation == "gelu_tanh", Config, where, ": hidden_activation '",
               hidden_activation, "' is not supported (silu and gelu_tanh are)");
  STRATA_CHECK(query_pre_attn_scalar >= 0 && attn_logit_softcapping >= 0 && final_logit_softcapping >= 0 &&
                   rope_local_theta >= 0,
               Config, where, ": query_pre_attn_scalar, soft-capping values and rope_local_base_freq must be >= 0");
  if (is_moe()) {
    STRATA_CHECK(experts_per_token >= 1 && experts_per_token <= num_experts, Config, where, ": num_experts_per_tok ",
                 experts_per_token, " must be between 1 and num_experts ", num_experts);
    positive(moe_intermediate_size, "moe_intermediate_size");
    STRATA_CHECK(shared_expert_intermediate_size >= 0, Config, where, ": shared_expert_intermediate_size must be >= 0");
    STRATA_CHECK(dense_layers.empty() || std::int64_t(dense_layers.size()) == num_hidden_layers, Config, where,
                 ": dense_layers lists ", dense_layers.size(), " layers, num_hidden_layers is ", num_hidden_layers);
  }
}

bool ModelConfig::moe_layer(std::int64_t layer) const {
  return is_moe() && (dense_layers.empty() || !dense_layers.at(std::size_t(layer)));
}

bool ModelConfig::sliding_layer(std::int64_t layer) const {
  return sliding_window > 0 && (sliding_layers.empty() || sliding_layers.at(std::size_t(layer)));
}

std::int32_t ModelConfig::attention_window(std::int64_t layer) const {
  return sliding_layer(layer) ? std::int32_t(std::min<std::int64_t>(sliding_window, INT32_MAX)) : 0;
}

std::vector<float> ModelConfig::rope_inverse_frequencies(std::int64_t layer) const {
  if (rope_local_theta <= 0 || !sliding_layer(layer)) return rope_inverse_frequencies();
  ModelConfig local = *this;
  local.rope_theta = rope_local_theta;
  local.rope_scaling = RopeScaling{};
  return local.rope_inverse_frequencies();
}

std::vector<float> ModelConfig::rope_inverse_frequencies() const {
  const double pi = 3.14159265358979323846;
  std::vector<float> inv_freq(std::size_t(head_dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    // HF: 1 / theta^(arange(0, dim, 2) / dim) in float32; double here, rounded once to float
    double f = 1.0 / std::pow(rope_theta, double(2 * i) / double(head_dim));
    if (rope_scaling.type == "linear") {
      f /= rope_scaling.factor;
    } else if (rope_scaling.type == "longrope") {
      f /= rope_scaling.short_factor.at(i);
    } else if (rope_scaling.type == "frequency_factors") {
      f /= rope_scaling.frequency_factors.at(i);
    } else if (rope_scaling.type == "llama3") {
      const auto& r = rope_scaling;
      const double context = double(r.original_max_position_embeddings);
      const double wavelength = 2 * pi / f;
      if (wavelength > context / r.low_freq_factor) {
        f /= r.factor;  // low frequencies: stretched to the longer context
      } else if (wavelength >= context / r.high_freq_factor) {
        const double smooth = (context / wavelength - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = (1 - smooth) * f / r.factor + smooth * f;  // medium: blended
      }                                                // high frequencies: unchanged
    }
    inv_freq[i] = float(f);
  }
  return inv_freq;
}

std::vector<float> ModelConfig::rope_long_inverse_frequencies() const {
  if (rope_scaling.type != "longrope" || rope_scaling.long_factor.empty()) return {};
  ModelConfig long_context = *this;
  long_context.rope_scaling.short_factor = rope_scaling.long_factor;
  return long_context.rope_inverse_frequencies();
}

bool ModelConfig::long_rope(std::int64_t prompt_tokens, std::int64_t position) const {
  return rope_scaling.type == "longrope" && !rope_scaling.long_factor.empty() &&
         std::max(prompt_tokens, position + 1) > rope_scaling.original_max_position_embeddings;
}

double ModelConfig::attention_scale() const {
  const double factor = rope_scaling.type == "longrope" ? rope_scaling.attention_factor : 1.0;
  return factor * factor / std::sqrt(query_pre_attn_scalar > 0 ? query_pre_attn_scalar : double(head_dim));
}

std::int64_t ModelConfig::parameter_count() const {
  const std::int64_t attention = hidden_size * head_dim * (2 * num_attention_heads + 2 * num_key_value_heads) +
                                 (attention_bias ? head_dim * (num_attention_heads + 2 * num_key_value_heads) : 0);
  const std::int64_t dense_mlp = 3 * hidden_size * intermediate_size;
  const std::int64_t moe_mlp =
      num_experts * (expert_parameter_count() + hidden_size) +
      (shared_expert_intermediate_size > 0 ? 3 * hidden_size * shared_expert_intermediate_size + hidden_size : 0);
  const std::int64_t norms = (sandwich_norms ? 4 : 2) * hidden_size + (qk_norm ? 2 * head_dim : 0);
  std::int64_t layers = 0;
  for (std::int64_t l = 0; l < num_hidden_layers; ++l)
    layers += attention + norms + (moe_layer(l) ? moe_mlp : dense_mlp);
  return layers + hidden_size + vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2);
}

}  // namespace strata
