// GGUF Llama models; see gguf_model.h.
#include "layers/gguf_model.h"

#include <cstring>

#include "runtime/base/error.h"

namespace strata {
namespace {

std::int64_t int_key(const GgufFile& f, const std::string& key, std::int64_t fallback = -1) {
  const auto& m = f.metadata();
  if (!m.contains(key)) {
    STRATA_CHECK(fallback >= 0, Config, "GGUF file ", f.path(), " has no metadata ", key);
    return fallback;
  }
  STRATA_CHECK(m[key].is_number_integer(), Config, "GGUF file ", f.path(), ": metadata ", key, " is not an integer");
  return m[key].get<std::int64_t>();
}

// Hugging Face name -> GGUF name (llama.cpp's tensor names for the llama architecture).
std::string gguf_name(const std::string& hf) {
  static const std::pair<const char*, const char*> whole[] = {{"model.embed_tokens.weight", "token_embd.weight"},
                                                              {"model.norm.weight", "output_norm.weight"},
                                                              {"lm_head.weight", "output.weight"}};
  for (const auto& [ours, theirs] : whole)
    if (hf == ours) return theirs;
  static const std::pair<const char*, const char*> per_layer[] = {
      {"input_layernorm.weight", "attn_norm.weight"},    {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},       {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) == 0) {
    const std::size_t dot = hf.find('.', prefix.size());
    const std::string layer = hf.substr(prefix.size(), dot - prefix.size()), rest = hf.substr(dot + 1);
    for (const auto& [ours, theirs] : per_layer)
      if (rest == ours) return cat("blk.", layer, ".", theirs);
  }
  throw Error(ErrorKind::Internal, cat("no GGUF name for tensor ", hf));
}

DType dtype_of(const GgufTensor& t, const std::string& path) {
  const DType* dtype = readable_type(t.type);
  STRATA_CHECK(dtype, Checkpoint, "GGUF file ", path, ": tensor ", t.name, " has type ", ggml_type_name(t.type),
               ", which strata does not read (f32, f16, bf16, q8_0 and q4_0 are)");
  return *dtype;
}

// Llama 3.1+ files carry their llama3 rope scaling as per-frequency divisors (rope_freqs.weight, head_dim / 2
// f32 values) instead of metadata.
std::vector<double> rope_frequency_factors(const GgufFile& f) {
  const GgufTensor& t = f.tensor("rope_freqs.weight");
  STRATA_CHECK(t.dims.size() == 1 && t.type == 0, Config, "GGUF file ", f.path(), ": tensor ", t.name, " has type ",
               ggml_type_name(t.type), " and ", t.dims.size(), " dimensions (one f32 dimension is read)");
  std::vector<float> factors(std::size_t(t.dims[0]));
  convert_to_f32(DType::F32, t.data, factors.data(), factors.size());
  return {factors.begin(), factors.end()};
}

}  // namespace

ModelConfig config_from_gguf(const GgufFile& f) {
  const auto& m = f.metadata();
  const std::string arch = m.value("general.architecture", std::string());
  STRATA_CHECK(arch == "llama", Config, "GGUF file ", f.path(), ": general.architecture '", arch,
               "' is not supported (llama is)");
  nlohmann::json c = {{"architecture", "LlamaForCausalLM"},
                      {"hidden_size", int_key(f, "llama.embedding_length")},
                      {"intermediate_size", int_key(f, "llama.feed_forward_length")},
                      {"num_hidden_layers", int_key(f, "llama.block_count")},
                      {"num_attention_heads", int_key(f, "llama.attention.head_count")},
                      {"max_position_embeddings", int_key(f, "llama.context_length")}};
  c["num_key_value_heads"] = int_key(f, "llama.attention.head_count_kv", c["num_attention_heads"].get<std::int64_t>());
  if (m.contains("llama.attention.key_length")) {
    c["head_dim"] = int_key(f, "llama.attention.key_length");
    STRATA_CHECK(int_key(f, "llama.attention.value_length", c["head_dim"].get<std::int64_t>()) == c["head_dim"], Config,
                 "GGUF file ", f.path(), ": llama.attention.value_length differs from key_length");
  }
  const GgufTensor& embed = f.tensor("token_embd.weight");
  STRATA_CHECK(embed.dims.size() == 2, Config, "GGUF file ", f.path(), ": token_embd.weight is not 2-D");
  c["vocab_size"] = int_key(f, "llama.vocab_size", embed.dims[1]);
  if (m.contains("llama.attention.layer_norm_rms_epsilon"))
    c["rms_norm_eps"] = m["llama.attention.layer_norm_rms_epsilon"];
  if (m.contains("llama.rope.freq_base")) c["rope_theta"] = m["llama.rope.freq_base"];
  const std::string scaling = m.value("llama.rope.scaling.type", std::string("none"));
  STRATA_CHECK(scaling == "none" || scaling == "linear", Config, "GGUF file ", f.path(), ": llama.rope.scaling.type '",
               scaling, "' is not supported (none and linear are)");
  if (scaling == "linear") c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", m["llama.rope.scaling.factor"]}};
  if (f.contains("rope_freqs.weight")) {
    STRATA_CHECK(scaling == "none", Config, "GGUF file ", f.path(), ": rope_freqs.weight together with ",
                 "llama.rope.scaling.type '", scaling, "' is not supported");
    c["rope_scaling"] = {{"rope_type", "frequency_factors"}, {"factors", rope_frequency_factors(f)}};
  }
  c["tie_word_embeddings"] = !f.contains("output.weight");
  if (m.contains("tokenizer.ggml.bos_token_id")) c["bos_token_id"] = m["tokenizer.ggml.bos_token_id"];
  if (m.contains("tokenizer.ggml.eos_token_id")) c["eos_token_id"] = m["tokenizer.ggml.eos_token_id"];
  return ModelConfig::from_json(c, f.path());
}

// Rows of the spec's slice, each dequantized whole from its stored row (the q and k rows from where llama.cpp's
// converter moved them: within a head of D rows, Hugging Face row j * D/2 + i is stored at row 2 i + j).
void GgufWeightSource::read(const TensorSpec& spec, float* out) {
  const GgufTensor& t = file_.tensor(gguf_name(spec.name));
  const DType dtype = dtype_of(t, file_.path());
  const bool matrix = spec.global_shape.size() == 2;
  const std::int64_t rows = matrix ? spec.global_shape[0] : 1, cols = spec.global_shape.back();
  STRATA_CHECK(t.dims.size() == spec.global_shape.size() && t.dims[0] == cols && (!matrix || t.dims[1] == rows),
               Checkpoint, "GGUF file ", file_.path(), ": tensor ", t.name, " has dims [", t.dims[0],
               t.dims.size() > 1 ? cat(", ", t.dims[1]) : "", "] but the model needs ", shape_string(spec.global_shape),
               " (GGUF lists the row length first)");
  const bool q = spec.name.find("self_attn.q_proj") != std::string::npos;
  const bool k = spec.name.find("self_attn.k_proj") != std::string::npos;
  const std::int64_t d = config_.head_dim;
  const std::size_t row_bytes = t.bytes / std::size_t(rows);
  const std::int64_t r_begin = spec.split == Split::Rows ? spec.begin : 0;
  const std::int64_t r_end = spec.split == Split::Rows ? spec.end : rows;
  const std::int64_t c_begin = spec.split == Split::Cols ? spec.begin : 0;
  const std::int64_t c_end = spec.split == Split::Cols ? spec.end : cols;
  row_.resize(std::size_t(cols));
  for (std::int64_t r = r_begin; r < r_end; ++r) {
    std::int64_t stored = r;
    if (q || k) {
      const std::int64_t head = r / d, within = r % d, half = within / (d / 2), i = within % (d / 2);
      stored = head * d + 2 * i + half;
    }
    convert_to_f32(dtype, t.data + std::size_t(stored) * row_bytes, row_.data(), std::size_t(cols));
    std::memcpy(out + (r - r_begin) * (c_end - c_begin), row_.data() + c_begin,
                std::size_t(c_end - c_begin) * sizeof(float));
  }
}

}  // namespace strata
