// config.json mapping and the safetensors weight source.
#include "layers/hf_model.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <tuple>

#include "runtime/base/error.h"

namespace strata {

ModelConfig config_from_hf(const nlohmann::json& hf, const std::string& where) {
  STRATA_CHECK(hf.is_object(), Config, where, ": not a JSON object");
  const std::string type =
      hf.contains("model_type") && hf["model_type"].is_string() ? hf["model_type"].get<std::string>() : "";
  STRATA_CHECK(type == "llama" || type == "mistral" || type == "qwen2" || type == "qwen3" || type == "phi3", Config,
               where, ": model_type '", type, "' is not supported (llama, mistral, qwen2, qwen3, phi3 are)");
  const std::string act = hf.value("hidden_act", std::string("silu"));
  STRATA_CHECK(act == "silu", Config, where, ": hidden_act '", act, "' is not supported (silu is)");
  STRATA_CHECK(!hf.value("mlp_bias", false), Config, where, ": mlp_bias is not supported");

  nlohmann::json c = nlohmann::json::object();
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                          "rope_theta", "rope_scaling", "tie_word_embeddings", "bos_token_id"})
    if (hf.contains(key) && !hf[key].is_null()) c[key] = hf[key];
  if (hf.contains("eos_token_id") && !hf["eos_token_id"].is_null())  // may be a list: the first ends generation
    c["eos_token_id"] =
        hf["eos_token_id"].is_array() && !hf["eos_token_id"].empty() ? hf["eos_token_id"][0] : hf["eos_token_id"];
  c["attention_bias"] = type == "qwen2" ? true : hf.value("attention_bias", false);
  // Phi-3's longrope ("su" in older files) keeps original_max_position_embeddings beside rope_scaling.
  if (hf.contains("rope_scaling") && hf["rope_scaling"].is_object()) {
    const auto& r = hf["rope_scaling"];
    const std::string kind = r.value("rope_type", r.value("type", std::string()));
    if (kind == "longrope" || kind == "su") {
      nlohmann::json scaling = {{"rope_type", "longrope"},
                                {"short_factor", r.value("short_factor", nlohmann::json())},
                                {"original_max_position_embeddings",
                                 r.value("original_max_position_embeddings",
                                         hf.value("original_max_position_embeddings", nlohmann::json()))}};
      if (r.contains("attention_factor") && !r["attention_factor"].is_null())
        scaling["attention_factor"] = r["attention_factor"];
      c["rope_scaling"] = scaling;
    }
  }
  c["qk_norm"] = type == "qwen3";  // Qwen3: q_norm / k_norm over each head before RoPE
  // A sliding window (Mistral and Phi-3 always; Qwen only with use_sliding_window) shorter than the context: kept, so
  // that runs stay within it (see ModelConfig::sliding_window).
  const bool windowed = hf.value("use_sliding_window", type == "mistral" || type == "phi3");
  if (windowed && hf.contains("sliding_window") && hf["sliding_window"].is_number_integer() &&
      hf["sliding_window"].get<std::int64_t>() < hf.value("max_position_embeddings", std::int64_t(0)))
    c["sliding_window"] = hf["sliding_window"];
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

HfWeightSource::Stored HfWeightSource::locate(const TensorSpec& spec) const {
  if (model_.contains(spec.name)) return {spec.name, 0};
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
  if (at.name == spec.name) {
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
