// Weights in and out of strata checkpoints: a WeightSource that reads one rank's own shard, and the writer of
// random-weight checkpoints for presets (`strata init`), where the same seed gives the same model whatever the
// sharding (each full tensor is generated from (seed, name) and then sliced).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "layers/shard_plan.h"
#include "layers/transformer.h"

namespace strata {

// Reads this rank's slices from a checkpoint written for any valid (tp, pp). When the layouts match, each rank opens
// only its own shard. Otherwise (resharding on load) each slice is assembled from the source shards whose stored
// slices intersect it, reading only the intersecting hyperslabs: no rank opens a shard it takes nothing from, and
// no rank holds more than its own slices. Every shard opened is checked to be the one the manifest says it is, and
// every stored slice to sit where the format says (global_shape, global_offset).
class CheckpointWeightSource final : public WeightSource {
 public:
  // `map_weights`: read shards through a mapping and serve slices in place from it where map_stored can (see
  // there); false: read them with pread into memory (--no-mmap).
  CheckpointWeightSource(const std::string& dir, const Manifest& manifest, const ShardPlan& plan,
                         bool map_weights = true);
  void read(const TensorSpec& spec, float* out) override;
  // Only when this rank's slice is one stored slice exactly (no resharding) and stored as `dtype` (or dtype is f32).
  bool read_stored(const TensorSpec& spec, DType dtype, void* out) override;
  // When mapping is on and each part is one stored slice exactly, stored as `dtype`, all in one format 2 shard and
  // back to back there in this order (ShardReader::map; every checksum verified first).
  Buffer map_stored(const std::vector<TensorSpec>& parts, DType dtype) override;
  // Paths of the shard files opened so far, in the order they were opened.
  const std::vector<std::string>& opened() const { return opened_; }
  // Stored bytes served in place (map_stored) and read into memory (read, read_stored) so far. (A stacked pair whose
  // second part cannot be read as stored is read again through f32: its first part counts twice.)
  std::int64_t mapped_bytes() const { return mapped_bytes_; }
  std::int64_t read_bytes() const { return read_bytes_; }

 private:
  bool read_as(const TensorSpec& spec, DType dtype, void* out);  // read_slices, counted
  bool read_slices(const TensorSpec& spec, DType dtype, void* out);
  // The shard whose stored slice of spec.name is exactly this rank's slice (checked against the format), or null
  // when the slice has to be assembled from several (resharding).
  ShardReader* exact_shard(const TensorSpec& spec);
  ShardReader& shard(int pp_rank, int tp_rank);
  int source_stage(const std::string& name) const;  // the checkpoint stage storing `name`, or throws
  ShardReader& replicated_shard(int stage);
  const ShardPlan& source_plan(int pp_rank, int tp_rank) const;

  std::string dir_;
  Manifest manifest_;
  StageCoordinates target_;                  // the rank being loaded
  std::vector<ShardPlan> source_plans_;      // the checkpoint's own layout, [pp_rank * tp + tp_rank]
  std::map<std::string, int> source_stage_;  // tensor name -> the source stage that stores it
  std::map<std::pair<int, int>, ShardReader> readers_;
  std::vector<std::string> opened_;
  bool map_weights_ = true;
  std::int64_t mapped_bytes_ = 0, read_bytes_ = 0;
};

// The dtype a checkpoint of `checkpoint` dtype stores `spec` in: quantized checkpoints keep their vectors (norms,
// biases) f32 and quantize the matrices; others store everything as they say.
DType stored_dtype(const TensorSpec& spec, DType checkpoint);

// The deterministic random value of a whole tensor (global shape), a function of (seed, name) only.
// Norm weights are 1 + N(0, 0.1^2); biases N(0, 0.1^2); matrices N(0, 1/columns).
std::vector<float> random_tensor(const TensorSpec& spec, std::uint64_t seed);
// Copies the slice `spec` describes out of the whole tensor `full`.
void slice_tensor(const TensorSpec& spec, const float* full, float* local);

// Serves every slice of the deterministic random model of `seed` (whole tensor generated, then sliced; the last
// whole tensor is kept, so the TP slices of one tensor cost one generation).
class RandomWeightSource final : public WeightSource {
 public:
  explicit RandomWeightSource(std::uint64_t seed) : seed_(seed) {}
  void read(const TensorSpec& spec, float* out) override;

 private:
  std::uint64_t seed_;
  std::string cached_name_;
  std::vector<float> cached_;
};

struct CheckpointOptions {
  int tp = 1, pp = 1;
  DType dtype = DType::F32;
  nlohmann::json tokenizer;
  nlohmann::json source;
};

// Writes the shards numbered (pp_rank * tp + tp_rank) % world == rank, taking every slice from `weights`, tensor
// by tensor across the stage's TP ranks (so a source holds at most one tensor at a time; a stacked pair,
// gate_proj then up_proj, is written back to back, so each rank's gate slices wait for its up slices). Shard files
// appear complete or not at all (written under a temporary name, then renamed).
void write_shards(const ModelConfig& config, const CheckpointOptions& options, const std::string& dir,
                  WeightSource& weights, int rank = 0, int world = 1);
// Writes DIR/manifest.json; call once every shard is written (its presence means the checkpoint is complete).
void write_manifest(const ModelConfig& config, const CheckpointOptions& options, const std::string& dir);

struct InitOptions {
  int tp = 1, pp = 1;
  DType dtype = DType::F32;
  std::uint64_t seed = 0;
  nlohmann::json tokenizer;
  nlohmann::json source;
};
// A whole random checkpoint from one process: every shard, then the manifest.
void write_random_checkpoint(const ModelConfig& config, const InitOptions& options, const std::string& dir);

}  // namespace strata
