// config.json mapping and the safetensors weight source.
#include "layers/hf_model.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <tuple>

#include "runtime/base/error.h"

namespace strata {

namespace {

bool one_of(const std::string& value, std::initializer_list<const char*> options) {
  for (const char* o : options)
    if (value == o) return true;
  return false;
}

// The per-layer sliding flags of a Gemma config: layer_types when the file has it, else the rule of its
// transformers version (Gemma 2: every other layer from layer 0; Gemma 3: all but every sliding_window_pattern-th).
nlohmann::json gemma_layer_types(const nlohmann::json& hf, const std::string& type, const std::string& where) {
  if (hf.contains("layer_types") && hf["layer_types"].is_array()) return hf["layer_types"];
  const std::int64_t layers = hf.value("num_hidden_layers", std::int64_t(0));
  const std::int64_t pattern = type == "gemma2" ? 2 : hf.value("sliding_window_pattern", std::int64_t(6));
  STRATA_CHECK(pattern >= 1, Config, where, ": sliding_window_pattern ", pattern, " must be >= 1");
  nlohmann::json types = nlohmann::json::array();
  for (std::int64_t i = 0; i < layers; ++i) types.push_back((i + 1) % pattern ? "sliding_attention" : "full_attention");
  return types;
}

// Gemma 2 and 3 text models: (1 + w) norms, sandwich norms, scaled embeddings, GeGLU, soft-capping, alternating
// sliding-window layers, query_pre_attn_scalar; Gemma 3 adds q/k norms and a local rotary base.
void gemma_keys(const nlohmann::json& hf, const std::string& type, const std::string& where, nlohmann::json& c) {
  const std::string act = hf.value("hidden_activation", hf.value("hidden_act", std::string("gelu_pytorch_tanh")));
  STRATA_CHECK(one_of(act, {"gelu_pytorch_tanh", "gelu_tanh"}), Config, where, ": hidden_activation '", act,
               "' is not supported for ", type, " (gelu_pytorch_tanh is)");
  STRATA_CHECK(!hf.value("attention_bias", false), Config, where, ": attention_bias is not supported for ", type);
  c["hidden_activation"] = "gelu_tanh";
  c["norm_weight_offset"] = true;
  c["sandwich_norms"] = true;
  c["scale_embeddings"] = true;
  c["tie_word_embeddings"] = hf.value("tie_word_embeddings", true);
  c["attention_bias"] = false;
  c["qk_norm"] = type == "gemma3_text";
  // Gemma 3's attention never applies attn_logit_softcapping (Hugging Face's Gemma3Attention does not pass it on),
  // so it is not read for it.
  for (const char* key :
       {"query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "rope_local_base_freq"})
    if (hf.contains(key) && !hf[key].is_null() &&
        !(type == "gemma3_text" && std::string(key) == "attn_logit_softcapping"))
      c[key] = hf[key];
  STRATA_CHECK(!hf.value("use_bidirectional_attention", false), Config, where,
               ": use_bidirectional_attention is not supported (strata runs causal language models)");
  if (hf.contains("sliding_window") && hf["sliding_window"].is_number_integer()) {
    c["sliding_window"] = hf["sliding_window"];
    c["layer_types"] = gemma_layer_types(hf, type, where);
  }
}

// Mixtral, Qwen2-MoE and Qwen3-MoE: the router and expert sizes, and which layers are sparse.
void moe_keys(const nlohmann::json& hf, const std::string& type, const std::string& where, nlohmann::json& c) {
  const bool mixtral = type == "mixtral";
  const char* experts_key = mixtral ? "num_local_experts" : "num_experts";
  STRATA_CHECK(hf.contains(experts_key) && hf[experts_key].is_number_integer(), Config, where, ": ", type,
               " config has no integer '", experts_key, "'");
  c["num_experts"] = hf[experts_key];
  c["num_experts_per_tok"] = hf.value("num_experts_per_tok", nlohmann::json(2));
  const auto experts = hf[experts_key].get<std::int64_t>(), k = c["num_experts_per_tok"].get<std::int64_t>();
  STRATA_CHECK(k >= 1 && k <= experts, Config, where, ": num_experts_per_tok ", k, " must be between 1 and ",
               experts_key, " ", experts);
  if (mixtral) {
    c["moe_intermediate_size"] = hf.value("intermediate_size", std::int64_t(0));
    c["norm_topk_prob"] = true;  // Mixtral always renormalises the top-k weights
    return;
  }
  for (const char* key : {"moe_intermediate_size", "shared_expert_intermediate_size"})
    if (hf.contains(key) && !hf[key].is_null()) c[key] = hf[key];
  c["norm_topk_prob"] = hf.value("norm_topk_prob", false);
  const std::int64_t step = hf.value("decoder_sparse_step", std::int64_t(1));
  STRATA_CHECK(step >= 1, Config, where, ": decoder_sparse_step ", step, " must be >= 1");
  nlohmann::json dense = hf.contains("mlp_only_layers") && hf["mlp_only_layers"].is_array() ? hf["mlp_only_layers"]
                                                                                            : nlohmann::json::array();
  for (std::int64_t l = 0; l < hf.value("num_hidden_layers", std::int64_t(0)); ++l)
    if ((l + 1) % step != 0) dense.push_back(l);  // not a sparse step: a dense MLP
  c["mlp_only_layers"] = dense;
}

}  // namespace

ModelConfig config_from_hf(const nlohmann::json& hf, const std::string& where) {
  STRATA_CHECK(hf.is_object(), Config, where, ": not a JSON object");
  const std::string type =
      hf.contains("model_type") && hf["model_type"].is_string() ? hf["model_type"].get<std::string>() : "";
  STRATA_CHECK(
      one_of(type, {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "mixtral", "qwen2_moe",
                    "qwen3_moe"}),
      Config, where, ": model_type '", type,
      "' is not supported (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text, mixtral, qwen2_moe, "
      "qwen3_moe are)",
      type == "gemma3" ? "; for a Gemma 3 multimodal folder, use its text model (model_type gemma3_text)" : "");
  const bool gemma = type == "gemma2" || type == "gemma3_text";
  const bool moe = type == "mixtral" || type == "qwen2_moe" || type == "qwen3_moe";
  if (!gemma) {
    const std::string act = hf.value("hidden_act", std::string("silu"));
    STRATA_CHECK(act == "silu", Config, where, ": hidden_act '", act, "' is not supported (silu is)");
  }
  STRATA_CHECK(!hf.value("mlp_bias", false), Config, where, ": mlp_bias is not supported");

  nlohmann::json c = nlohmann::json::object();
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                          "rope_theta", "rope_scaling", "tie_word_embeddings", "bos_token_id"})
    if (hf.contains(key) && !hf[key].is_null()) c[key] = hf[key];
  if (hf.contains("eos_token_id") && !hf["eos_token_id"].is_null())  // may be a list: the first ends generation
    c["eos_token_id"] =
        hf["eos_token_id"].is_array() && !hf["eos_token_id"].empty() ? hf["eos_token_id"][0] : hf["eos_token_id"];
  // Qwen2 and Qwen2-MoE have q/k/v biases (Qwen2-MoE's config may say so as qkv_bias).
  // Qwen2 and Qwen2-MoE have q/k/v biases (Qwen2-MoE's config may say so as qkv_bias). Elsewhere attention_bias
  // also puts a bias on o_proj, which strata does not have.
  STRATA_CHECK(type == "qwen2" || type == "qwen2_moe" || !hf.value("attention_bias", false), Config, where,
               ": attention_bias is not supported for ", type, " (it adds an o_proj bias)");
  c["attention_bias"] = type == "qwen2" ? true : type == "qwen2_moe" ? hf.value("qkv_bias", true) : false;
  // Phi-3's longrope ("su" in older files) keeps original_max_position_embeddings beside rope_scaling.
  if (hf.contains("rope_scaling") && hf["rope_scaling"].is_object()) {
    const auto& r = hf["rope_scaling"];
    const std::string kind = r.value("rope_type", r.value("type", std::string()));
    if (kind == "longrope" || kind == "su") {
      nlohmann::json scaling = {{"rope_type", "longrope"},
                                {"short_factor", r.value("short_factor", nlohmann::json())},
                                {"long_factor", r.value("long_factor", nlohmann::json())},
                                {"original_max_position_embeddings",
                                 r.value("original_max_position_embeddings",
                                         hf.value("original_max_position_embeddings", nlohmann::json()))}};
      if (r.contains("attention_factor") && !r["attention_factor"].is_null())
        scaling["attention_factor"] = r["attention_factor"];
      c["rope_scaling"] = scaling;
    }
  }
  c["qk_norm"] = type == "qwen3" || type == "qwen3_moe";  // Qwen3: q_norm / k_norm over each head before RoPE
  // A sliding window (Mistral, Mixtral and Phi-3 always; Qwen only with use_sliding_window) shorter than the context.
  const bool windowed = hf.value("use_sliding_window", type == "mistral" || type == "phi3" || type == "mixtral");
  if (windowed && hf.contains("sliding_window") && hf["sliding_window"].is_number_integer() &&
      hf["sliding_window"].get<std::int64_t>() < hf.value("max_position_embeddings", std::int64_t(0)))
    c["sliding_window"] = hf["sliding_window"];
  if (gemma) gemma_keys(hf, type, where, c);
  if (moe) moe_keys(hf, type, where, c);
  const auto& arch = hf.contains("architectures") && hf["architectures"].is_array() && !hf["architectures"].empty()
                         ? hf["architectures"][0]
                         : nlohmann::json("LlamaForCausalLM");
  c["architecture"] = arch.is_string() ? arch : nlohmann::json("LlamaForCausalLM");
  return ModelConfig::from_json(c, where);
}

HfWeightSource::HfWeightSource(const std::string& dir) : model_(dir) {}

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

namespace {
// Mixtral's names for the router and experts strata (and Qwen's MoE models) call mlp.gate and
// mlp.experts.E.{gate,up,down}_proj: block_sparse_moe.gate and block_sparse_moe.experts.E.{w1,w3,w2}.
std::string mixtral_name(const std::string& name) {
  static const std::string mlp = ".mlp.";
  const std::size_t at = name.find(mlp);
  if (at == std::string::npos) return {};
  std::string rest = name.substr(at + mlp.size());
  if (rest == "gate.weight") return name.substr(0, at) + ".block_sparse_moe.gate.weight";
  if (rest.rfind("experts.", 0) != 0) return {};
  for (const auto& [ours, theirs] :
       {std::pair<const char*, const char*>{"gate_proj", "w1"}, {"up_proj", "w3"}, {"down_proj", "w2"}}) {
    const std::string suffix = std::string(".") + ours + ".weight";
    if (ends_with(rest, suffix))
      return name.substr(0, at) + ".block_sparse_moe." + rest.substr(0, rest.size() - suffix.size()) + "." + theirs +
             ".weight";
  }
  return {};
}
}  // namespace

HfWeightSource::Stored HfWeightSource::locate(const TensorSpec& spec) const {
  if (model_.contains(spec.name)) return {spec.name, 0};
  if (const std::string alias = mixtral_name(spec.name); !alias.empty() && model_.contains(alias)) return {alias, 0};
  // (part, fused tensor, which part of the fused rows: 0 first, 1 second, 2 last)
  static const std::array<std::tuple<const char*, const char*, int>, 5> kFused = {{
      {"self_attn.q_proj.weight", "self_attn.qkv_proj.weight", 0},
      {"self_attn.k_proj.weight", "self_attn.qkv_proj.weight", 1},
      {"self_attn.v_proj.weight", "self_attn.qkv_proj.weight", 2},
      {"mlp.gate_proj.weight", "mlp.gate_up_proj.weight", 0},
      {"mlp.up_proj.weight", "mlp.gate_up_proj.weight", 2},
  }};
  for (const auto& [part, fused, which] : kFused) {
    if (!ends_with(spec.name, part)) continue;
    const std::string name = spec.name.substr(0, spec.name.size() - std::strlen(part)) + fused;
    if (!model_.contains(name)) break;
    const SafetensorsEntry& e = model_.file_for(name).entry(name);
    STRATA_CHECK(!e.shape.empty(), Checkpoint, "tensor ", name, " (holding ", spec.name, ") has no dimensions");
    const std::int64_t rows = spec.global_shape.at(0);
    // q first, v last (k and v have the same rows, so k sits just before v); gate first, up last.
    const std::int64_t offset = which == 0 ? 0 : which == 2 ? e.shape.at(0) - rows : e.shape.at(0) - 2 * rows;
    return {name, offset};
  }
  return {spec.name, 0};  // absent: file_for names it
}

void HfWeightSource::read(const TensorSpec& spec, float* out) {
  const Stored at = locate(spec);
  const SafetensorsFile& file = checked_file(spec, at);
  const SafetensorsEntry& e = file.entry(at.name);
  if (spec.split == Split::Replicated)
    return file.read_rows_f32(at.name, at.row_offset, at.row_offset + spec.global_shape[0], out);
  if (spec.split == Split::Rows)
    return file.read_rows_f32(at.name, at.row_offset + spec.begin, at.row_offset + spec.end, out);
  copy_columns(e, spec, out, sizeof(float), [&](std::int64_t r, std::int64_t n, void* rows) {
    file.read_rows_f32(at.name, r, r + n, static_cast<float*>(rows));
  });
}

bool HfWeightSource::read_stored(const TensorSpec& spec, DType dtype, void* out) {
  const Stored at = locate(spec);
  const SafetensorsFile& file = checked_file(spec, at);
  const SafetensorsEntry& e = file.entry(at.name);
  if (e.dtype != dtype) return false;
  if (spec.split != Split::Cols) {
    const bool whole = spec.split == Split::Replicated;
    file.read_rows(at.name, at.row_offset + (whole ? 0 : spec.begin),
                   at.row_offset + (whole ? spec.global_shape[0] : spec.end), out);
    return true;
  }
  copy_columns(e, spec, out, dtype_size(dtype),
               [&](std::int64_t r, std::int64_t n, void* rows) { file.read_rows(at.name, r, r + n, rows); });
  return true;
}

const SafetensorsFile& HfWeightSource::checked_file(const TensorSpec& spec, const Stored& at) const {
  const SafetensorsFile& file = model_.file_for(at.name);
  const SafetensorsEntry& e = file.entry(at.name);
  if (at.name == spec.name || at.name == mixtral_name(spec.name)) {
    STRATA_CHECK(e.shape == spec.global_shape, Checkpoint, file.path(), ": tensor ", spec.name, " has shape ",
                 shape_string(e.shape), " but config.json implies ", shape_string(spec.global_shape));
  } else {  // a fused tensor: the part's rows fit inside it, with the same columns
    STRATA_CHECK(e.shape.size() == 2 && spec.global_shape.size() == 2 && e.shape[1] == spec.global_shape[1] &&
                     at.row_offset >= 0 && at.row_offset + spec.global_shape[0] <= e.shape[0],
                 Checkpoint, file.path(), ": fused tensor ", at.name, " has shape ", shape_string(e.shape),
                 " which cannot hold ", spec.name, " ", shape_string(spec.global_shape), " implied by config.json");
  }
  return file;
}

// A column slice: blocks of whole rows (about 16 MiB) read by `read_rows(first, count, rows)` into a reused buffer,
// this rank's columns kept.
void HfWeightSource::copy_columns(const SafetensorsEntry& e, const TensorSpec& spec, void* out, std::size_t element,
                                  const std::function<void(std::int64_t, std::int64_t, void*)>& read_rows) {
  const std::int64_t rows = e.shape[0], cols = e.shape[1], width = spec.end - spec.begin;
  const std::int64_t block = std::max<std::int64_t>(1, (std::int64_t(16) << 20) / (cols * std::int64_t(element)));
  for (std::int64_t r = 0; r < rows; r += block) {
    const std::int64_t n = std::min(block, rows - r);
    rows_.resize(std::size_t(n * cols) * element);
    read_rows(r, n, rows_.data());
    for (std::int64_t i = 0; i < n; ++i)
      std::memcpy(static_cast<char*>(out) + std::size_t((r + i) * width) * element,
                  rows_.data() + std::size_t(i * cols + spec.begin) * element, std::size_t(width) * element);
  }
}

}  // namespace strata
