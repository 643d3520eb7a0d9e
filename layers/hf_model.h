// Hugging Face model folders as a weight source: config.json mapped to ModelConfig (Llama, Mistral, Qwen2 and
// TinyLlama-style models; anything strata cannot run is refused by name), and safetensors weights served slice by
// slice, so converting holds at most one tensor's rows in memory.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "layers/model_config.h"
#include "layers/transformer.h"

namespace strata {

// config.json -> ModelConfig. `where` names the file in errors.
ModelConfig config_from_hf(const nlohmann::json& config, const std::string& where);

class HfWeightSource final : public WeightSource {
 public:
  explicit HfWeightSource(const std::string& dir);
  // Reads the slice `spec` describes; the stored tensor must have the spec's whole shape.
  void read(const TensorSpec& spec, float* out) override;
  const SafetensorsModel& model() const { return model_; }

 private:
  SafetensorsModel model_;
  std::vector<float> rows_;  // staging for column slices, reused
};

}  // namespace strata
