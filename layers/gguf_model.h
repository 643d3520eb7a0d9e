// GGUF files of Llama-family models (general.architecture "llama") as a model config and a weight source, for
// `strata convert --gguf`: tensors are served under their Hugging Face names, F32/F16/BF16/Q8_0/Q4_0 dequantized row
// by row, with q_proj and k_proj rows put back in Hugging Face's order (llama.cpp's converter interleaves the two
// rotary halves of each head for ggml's RoPE).
#pragma once
#include <string>

#include "io/gguf.h"
#include "layers/model_config.h"
#include "layers/transformer.h"

namespace strata {

// Throws Error(Config) naming the key for anything strata cannot run (another architecture, rope scaling it does not
// read, per-frequency rope factors).
ModelConfig config_from_gguf(const GgufFile& file);

class GgufWeightSource final : public WeightSource {
 public:
  GgufWeightSource(const GgufFile& file, const ModelConfig& config) : file_(file), config_(config) {}
  void read(const TensorSpec& spec, float* out) override;

 private:
  const GgufFile& file_;
  ModelConfig config_;
  std::vector<float> row_;
};

}  // namespace strata
