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

// ep: the expert-parallel size inside the tensor-parallel group (it divides tp). The tp ranks form ep groups of
// tp / ep consecutive ranks; group g holds experts [g * E / ep, (g + 1) * E / ep), each split over the group's ranks
// by its intermediate dimension like a dense MLP. ep 1: every rank holds a 1/tp slice of every expert.
struct StageCoordinates {
  int tp = 1, tp_rank = 0, pp = 1, pp_rank = 0, ep = 1;
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
  // Mixture of experts: this rank's experts [expert_begin, expert_begin + local_experts) and its slice of each.
  int expert_parallel_rank() const { return where_.tp_rank / expert_tensor_parallel(); }
  int expert_tensor_parallel() const { return where_.tp / where_.ep; }
  std::int64_t local_experts() const { return config_.num_experts / where_.ep; }
  std::int64_t expert_begin() const { return local_experts() * expert_parallel_rank(); }
  std::int64_t local_expert_intermediate() const { return config_.moe_intermediate_size / expert_tensor_parallel(); }
  std::int64_t local_shared_intermediate() const { return config_.shared_expert_intermediate_size / where_.tp; }
  // The tp rank holding expert `expert`'s slice number `slice` (< expert_tensor_parallel()).
  int expert_rank(std::int64_t expert, int slice) const {
    return int(expert / local_experts()) * expert_tensor_parallel() + slice;
  }
  static std::string expert_name(std::int64_t layer, std::int64_t expert, const char* proj);
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
  // each gate_proj with its up_proj (dense MLP, experts, shared expert), so that one GEMM computes both. Writers store
  // such a pair back to back, so that a rank can use them in place as one tensor.
  static bool stacked_with_next(const std::string& name);

 private:
  TensorSpec rows(const std::string& name, Shape shape, std::int64_t begin, std::int64_t end) const;
  TensorSpec cols(const std::string& name, Shape shape, std::int64_t begin, std::int64_t end) const;
  TensorSpec whole(const std::string& name, Shape shape) const;
  std::vector<TensorSpec> build_tensors() const;
  void add_moe_tensors(std::int64_t layer, std::vector<TensorSpec>& specs) const;

  ModelConfig config_;
  StageCoordinates where_;
  std::int64_t layer_begin_ = 0, layer_end_ = 0;
  std::int64_t local_heads_ = 0, local_kv_heads_ = 0, kv_head_offset_ = 0;
  std::vector<TensorSpec> tensors_;                     // built once: loading looks specs up by name per tensor
  std::unordered_map<std::string, std::size_t> index_;  // name -> position in tensors_
};

// "tensor-parallel size 4 does not divide ..." checks, usable before loading (throws Error(Config)).
void check_split(const ModelConfig& config, int tp, int pp, int ep = 1);

}  // namespace strata
