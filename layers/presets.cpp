// Preset model shapes.
#include "layers/presets.h"

#include "runtime/base/error.h"

namespace strata {

namespace {
ModelConfig make(std::int64_t hidden, std::int64_t intermediate, std::int64_t layers, std::int64_t heads,
                 std::int64_t kv_heads, std::int64_t vocab, std::int64_t context, bool tied) {
  ModelConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = context;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = tied;
  c.bos_token_id = 256;  // the byte tokenizer's <s> and </s>
  c.eos_token_id = 257;
  return c;
}
}  // namespace

std::vector<std::string> model_preset_names() { return {"tiny", "tiny-moe", "100m", "7b"}; }

ModelConfig model_preset(const std::string& name) {
  if (name == "tiny") return make(128, 352, 4, 8, 4, 260, 512, false);
  if (name == "tiny-moe") {  // tiny with Mixtral-style layers: 8 experts, top 2
    ModelConfig c = make(128, 352, 4, 8, 4, 260, 512, false);
    c.num_experts = 8;
    c.experts_per_token = 2;
    c.moe_intermediate_size = 96;
    return c;
  }
  if (name == "100m") return make(768, 2048, 12, 12, 4, 32000, 2048, true);
  if (name == "7b") return make(4096, 11008, 32, 32, 32, 32000, 4096, false);
  std::string known;
  for (const auto& n : model_preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error(ErrorKind::Usage, cat("unknown preset '", name, "' (known: ", known, ")"));
}

}  // namespace strata
