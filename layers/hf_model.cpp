// config.json mapping and the safetensors weight source.
#include "layers/hf_model.h"

#include <algorithm>
#include <cstring>

#include "runtime/base/error.h"

namespace strata {

ModelConfig config_from_hf(const nlohmann::json& hf, const std::string& where) {
  STRATA_CHECK(hf.is_object(), Config, where, ": not a JSON object");
  const std::string type =
      hf.contains("model_type") && hf["model_type"].is_string() ? hf["model_type"].get<std::string>() : "";
  STRATA_CHECK(type == "llama" || type == "mistral" || type == "qwen2", Config, where, ": model_type '", type,
               "' is not supported (llama, mistral, qwen2 are)");
  if (hf.contains("sliding_window") && hf["sliding_window"].is_number_integer() &&
      hf.value("use_sliding_window", type == "mistral") &&
      hf["sliding_window"].get<std::int64_t>() < hf.value("max_position_embeddings", std::int64_t(0)))
    throw Error(ErrorKind::Config, cat(where, ": sliding_window ", hf["sliding_window"].get<std::int64_t>(),
                                       " attention is not supported"));
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
  const auto& arch = hf.contains("architectures") && hf["architectures"].is_array() && !hf["architectures"].empty()
                         ? hf["architectures"][0]
                         : nlohmann::json("LlamaForCausalLM");
  c["architecture"] = arch.is_string() ? arch : nlohmann::json("LlamaForCausalLM");
  return ModelConfig::from_json(c, where);
}

HfWeightSource::HfWeightSource(const std::string& dir) : model_(dir) {}

void HfWeightSource::read(const TensorSpec& spec, float* out) {
  const SafetensorsFile& file = model_.file_for(spec.name);
  const SafetensorsEntry& e = file.entry(spec.name);
  STRATA_CHECK(e.shape == spec.global_shape, Checkpoint, file.path(), ": tensor ", spec.name, " has shape ",
               shape_string(e.shape), " but config.json implies ", shape_string(spec.global_shape));
  if (spec.split == Split::Replicated) {
    file.read_rows_f32(spec.name, 0, e.shape[0], out);
  } else if (spec.split == Split::Rows) {
    file.read_rows_f32(spec.name, spec.begin, spec.end, out);
  } else {  // columns: read a block of whole rows at a time, keep this rank's columns
    const std::int64_t rows = e.shape[0], cols = e.shape[1], width = spec.end - spec.begin;
    const std::int64_t block = std::max<std::int64_t>(1, (std::int64_t(16) << 20) / (cols * 4));
    for (std::int64_t r = 0; r < rows; r += block) {
      const std::int64_t n = std::min(block, rows - r);
      rows_.resize(std::size_t(n * cols));
      file.read_rows_f32(spec.name, r, r + n, rows_.data());
      for (std::int64_t i = 0; i < n; ++i)
        std::memcpy(out + (r + i) * width, rows_.data() + i * cols + spec.begin, std::size_t(width) * 4);
    }
  }
}

}  // namespace strata
