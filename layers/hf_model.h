// Hugging Face model folders as a weight source: config.json mapped to ModelConfig (Llama, Mistral, Qwen2 and
// TinyLlama-style models; anything strata cannot run is refused by name), and safetensors weights served slice by
// slice, so converting holds at most one tensor's rows in memory.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "layers/model_config.h"
#include "layers/transformer.h"

namespace strata {

// config.json -> ModelConfig. `where` names the file in errors.
ModelConfig config_from_hf(const nlohmann::json& config, const std::string& where);

// Phi-3 stores q/k/v as one `self_attn.qkv_proj` and gate/up as one `mlp.gate_up_proj`: a request for one of the
// parts reads its rows of the fused tensor.
class HfWeightSource final : public WeightSource {
 public:
  explicit HfWeightSource(const std::string& dir);
  // Reads the slice `spec` describes; the stored tensor must have the spec's whole shape (or hold it as a row block
  // of a fused tensor).
  void read(const TensorSpec& spec, float* out) override;
  // The same bytes as stored when the file holds the tensor as `dtype` (bf16 into a bf16 checkpoint: no f32 pass).
  bool read_stored(const TensorSpec& spec, DType dtype, void* out) override;
  const SafetensorsModel& model() const { return model_; }

 private:
  // Where `spec`'s rows are stored: the tensor of its own name, or a fused one with its rows `row_offset` further down.
  struct Stored {
    std::string name;
    std::int64_t row_offset = 0;
  };
  Stored locate(const TensorSpec& spec) const;
  const SafetensorsFile& checked_file(const TensorSpec& spec, const Stored& at) const;
  void copy_columns(const SafetensorsEntry& e, const TensorSpec& spec, void* out, std::size_t element,
                    const std::function<void(std::int64_t, std::int64_t, void*)>& read_rows);

  SafetensorsModel model_;
  std::vector<char> rows_;  // staging for column slices, reused
};

}  // namespace strata
