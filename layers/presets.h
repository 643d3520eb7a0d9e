// Named model shapes for `strata init` (random weights for demos, tests and benchmarks).
//   tiny: 4 layers, 8 heads / 4 KV heads, hidden 128, vocabulary 260 (the byte tokenizer): every layout on up to
//         4 ranks is valid.
//   100m: ~110M parameters (hidden 768, 12 layers, vocabulary 32000, tied embeddings): the CPU benchmark model.
//   7b:   Llama-2-7B shapes, for the GPU benchmark.
#pragma once
#include <string>
#include <vector>

#include "layers/model_config.h"

namespace strata {

ModelConfig model_preset(const std::string& name);  // throws Error(Usage) listing the known names
std::vector<std::string> model_preset_names();

}  // namespace strata
