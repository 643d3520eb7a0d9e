// ShardPlan: computed once from the config and (tp, pp) coordinates, it says which layers a pipeline stage holds,
// the local sizes of every split dimension (local_*), and for every weight which slice of the global tensor this
// rank holds: by rows (column-parallel: q/k/v, gate/up, and vocab-parallel embedding/LM head), by columns
// (row-parallel: o_proj, down_proj), or whole (norms). Model code is the same at every TP degree; only this changes.
// Divisibility is checked here, before anything loads, with the numbers in the message.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "layers/model_config.h"
#include "runtime/tensor/tensor.h"

namespace strata {

enum class Split : std::uint8_t { Replicated, Rows, Cols };

struct TensorSpec {
  std::string name;  // Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight"
  Shape global_shape;
  Split split = Split::Replicated;
  std::int64_t begin = 0;  // slice [begin, end) along the split dimension
  std::int64_t end = 0;
  Shape local_shape() const;
  Shape global_offset() const;  // start index per dimension
};

struct StageCoordinates {
  int tp = 1, tp_rank = 0, pp = 1, pp_rank = 0;
};

class ShardPlan {
 public:
  // Throws Error(Config) naming the numbers when the split is not possible.
  ShardPlan(const ModelConfig& config, StageCoordinates where);

  const ModelConfig& config() const { return config_; }
  const StageCoordinates& coordinates() const { return where_; }
  bool is_first_stage() const { return where_.pp_rank == 0; }
  bool is_last_stage() const { return where_.pp_rank == where_.pp - 1; }
  std::int64_t layer_begin() const { return layer_begin_; }
  std::int64_t layer_end() const { return layer_end_; }
  std::int64_t local_layers() const { return layer_end_ - layer_begin_; }
  std::int64_t local_heads() const { return local_heads_; }
  std::int64_t local_kv_heads() const { return local_kv_heads_; }
  std::int64_t local_intermediate() const { return config_.intermediate_size / where_.tp; }
  std::int64_t local_vocab() const { return config_.vocab_size / where_.tp; }
  std::int64_t vocab_offset() const { return local_vocab() * where_.tp_rank; }

  // Every tensor this (tp rank, stage) holds, in a fixed order.
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  // The spec of one named tensor (throws if this stage does not hold it).
  TensorSpec spec(const std::string& name) const;

  // Layers of stage `pp_rank` among `pp` stages: contiguous, sizes differ by at most one, earlier stages larger
  // (the last stage also runs the LM head).
  static std::pair<std::int64_t, std::int64_t> layer_range(std::int64_t layers, int pp, int pp_rank);
  static std::string layer_name(std::int64_t layer, const char* suffix);
  // Whether the stage keeps tensor `name` stacked with the one after it in tensors() (rows of both, in that order):
  // gate_proj with up_proj, so that one GEMM computes both. Writers store such a pair back to back, so that a rank
  // can use them in place as one tensor.
  static bool stacked_with_next(const std::string& name);

 private:
  TensorSpec rows(const std::string& name, Shape shape, std::int64_t begin, std::int64_t end) const;
  TensorSpec cols(const std::string& name, Shape shape, std::int64_t begin, std::int64_t end) const;
  TensorSpec whole(const std::string& name, Shape shape) const;
  std::vector<TensorSpec> build_tensors() const;

  ModelConfig config_;
  StageCoordinates where_;
  std::int64_t layer_begin_ = 0, layer_end_ = 0;
  std::int64_t local_heads_ = 0, local_kv_heads_ = 0, kv_head_offset_ = 0;
  std::vector<TensorSpec> tensors_;                     // built once: loading looks specs up by name per tensor
  std::unordered_map<std::string, std::size_t> index_;  // name -> position in tensors_
};

// "tensor-parallel size 4 does not divide ..." checks, usable before loading (throws Error(Config)).
void check_split(const ModelConfig& config, int tp, int pp);

}  // namespace strata
