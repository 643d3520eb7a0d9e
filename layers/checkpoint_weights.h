// Weights in and out of strata checkpoints: a WeightSource that reads one rank's own shard, and the writer of
// random-weight checkpoints for presets (`strata init`), where the same seed gives the same model whatever the
// sharding (each full tensor is generated from (seed, name) and then sliced).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "layers/shard_plan.h"
#include "layers/transformer.h"

namespace strata {

// Reads this rank's slices from DIR/<its shard>. The checkpoint's layout must equal the plan's (resharding on load
// is a later feature); the mismatch is refused with both layouts named.
class CheckpointWeightSource final : public WeightSource {
 public:
  CheckpointWeightSource(const std::string& dir, const Manifest& manifest, const ShardPlan& plan);
  void read(const TensorSpec& spec, float* out) override;
  const std::string& shard_path() const { return reader_.path(); }

 private:
  ShardReader reader_;
};

// The deterministic random value of a whole tensor (global shape), a function of (seed, name) only.
// Norm weights are 1 + N(0, 0.1^2); biases N(0, 0.1^2); matrices N(0, 1/columns).
std::vector<float> random_tensor(const TensorSpec& spec, std::uint64_t seed);
// Copies the slice `spec` describes out of the whole tensor `full`.
void slice_tensor(const TensorSpec& spec, const float* full, float* local);

struct InitOptions {
  int tp = 1, pp = 1;
  DType dtype = DType::F32;
  std::uint64_t seed = 0;
  nlohmann::json tokenizer;
  nlohmann::json source;
};
// Writes DIR/manifest.json and DIR/model-pp*-tp*.h5 for `config`. The manifest is written last.
void write_random_checkpoint(const ModelConfig& config, const InitOptions& options, const std::string& dir);

}  // namespace strata
