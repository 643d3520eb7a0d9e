// Shard plan: the split rules of Megatron-style tensor parallelism and the pipeline layer ranges.
#include "layers/shard_plan.h"

#include "runtime/base/error.h"

namespace strata {

Shape TensorSpec::local_shape() const {
  Shape shape = global_shape;
  if (split == Split::Rows) shape[0] = end - begin;
  if (split == Split::Cols) shape[1] = end - begin;
  return shape;
}

Shape TensorSpec::global_offset() const {
  Shape offset(global_shape.size(), 0);
  if (split == Split::Rows) offset[0] = begin;
  if (split == Split::Cols) offset[1] = begin;
  return offset;
}

void check_split(const ModelConfig& c, int tp, int pp, int ep) {
  STRATA_CHECK(tp >= 1 && pp >= 1 && ep >= 1, Usage, "tensor-, pipeline- and expert-parallel sizes must be >= 1");
  auto divides = [&](std::int64_t value, const char* name) {
    STRATA_CHECK(value % tp == 0, Config, name, " ", value, " is not divisible by tensor-parallel size ", tp,
                 "; choose a tensor-parallel size that divides it");
  };
  divides(c.num_attention_heads, "num_attention_heads");
  bool any_dense = false;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) any_dense = any_dense || !c.moe_layer(l);
  if (any_dense) divides(c.intermediate_size, "intermediate_size");
  STRATA_CHECK(ep == 1 || c.is_moe(), Usage, "expert-parallel size ", ep,
               " needs a mixture-of-experts model; this one has no experts");
  if (c.is_moe()) {
    STRATA_CHECK(tp % ep == 0, Usage, "expert-parallel size ", ep, " does not divide tensor-parallel size ", tp,
                 ": experts are split inside the tensor-parallel group (use -tp a multiple of -ep)");
    STRATA_CHECK(c.num_experts % ep == 0, Config, "num_experts ", c.num_experts,
                 " is not divisible by expert-parallel size ", ep, "; choose an expert-parallel size that divides it");
    STRATA_CHECK(c.moe_intermediate_size % (tp / ep) == 0, Config, "moe_intermediate_size ", c.moe_intermediate_size,
                 " is not divisible by ", tp / ep, " (tensor-parallel size ", tp, " / expert-parallel size ", ep,
                 ": the ranks sharing each expert)");
    if (c.shared_expert_intermediate_size > 0)
      divides(c.shared_expert_intermediate_size, "shared_expert_intermediate_size");
  }
  divides(c.vocab_size, "vocab_size");
  if (tp > c.num_key_value_heads) {
    STRATA_CHECK(tp % c.num_key_value_heads == 0, Config, "tensor-parallel size ", tp,
                 " is larger than num_key_value_heads ", c.num_key_value_heads,
                 " but not a multiple of it, so key/value heads cannot be replicated evenly");
  } else {
    divides(c.num_key_value_heads, "num_key_value_heads");
  }
  STRATA_CHECK(pp <= c.num_hidden_layers, Config, "pipeline-parallel size ", pp, " exceeds num_hidden_layers ",
               c.num_hidden_layers, ": every stage needs at least one layer");
}

std::pair<std::int64_t, std::int64_t> ShardPlan::layer_range(std::int64_t layers, int pp, int pp_rank) {
  const std::int64_t base = layers / pp, extra = layers % pp;
  const std::int64_t begin = pp_rank * base + std::min<std::int64_t>(pp_rank, extra);
  return {begin, begin + base + (pp_rank < extra ? 1 : 0)};
}

std::string ShardPlan::layer_name(std::int64_t layer, const char* suffix) {
  return cat("model.layers.", layer, ".", suffix);
}

std::string ShardPlan::expert_name(std::int64_t layer, std::int64_t expert, const char* proj) {
  return cat("model.layers.", layer, ".mlp.experts.", expert, ".", proj, ".weight");
}

bool ShardPlan::stacked_with_next(const std::string& name) {
  static const std::string gate = ".gate_proj.weight";
  return name.size() > gate.size() && name.compare(name.size() - gate.size(), gate.size(), gate) == 0;
}

ShardPlan::ShardPlan(const ModelConfig& config, StageCoordinates where) : config_(config), where_(where) {
  check_split(config, where.tp, where.pp, where.ep);
  STRATA_CHECK(where.tp_rank >= 0 && where.tp_rank < where.tp && where.pp_rank >= 0 && where.pp_rank < where.pp,
               Internal, "shard coordinates out of range");
  std::tie(layer_begin_, layer_end_) = layer_range(config.num_hidden_layers, where.pp, where.pp_rank);
  local_heads_ = config.num_attention_heads / where.tp;
  if (where.tp > config.num_key_value_heads) {
    // More TP ranks than KV heads: each rank keeps the one KV head its query heads use (replicated across ranks).
    local_kv_heads_ = 1;
    const std::int64_t group = config.num_attention_heads / config.num_key_value_heads;
    kv_head_offset_ = where.tp_rank * local_heads_ / group;
  } else {
    local_kv_heads_ = config.num_key_value_heads / where.tp;
    kv_head_offset_ = where.tp_rank * local_kv_heads_;
  }
  tensors_ = build_tensors();
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

TensorSpec ShardPlan::rows(const std::string& name, Shape shape, std::int64_t begin, std::int64_t end) const {
  return TensorSpec{name, std::move(shape), Split::Rows, begin, end};
}
TensorSpec ShardPlan::cols(const std::string& name, Shape shape, std::int64_t begin, std::int64_t end) const {
  return TensorSpec{name, std::move(shape), Split::Cols, begin, end};
}
TensorSpec ShardPlan::whole(const std::string& name, Shape shape) const {
  return TensorSpec{name, shape, Split::Replicated, 0, shape.empty() ? 0 : shape[0]};
}

std::vector<TensorSpec> ShardPlan::build_tensors() const {
  const auto& c = config_;
  const std::int64_t d = c.head_dim, h = c.hidden_size, r = where_.tp_rank;
  const std::int64_t q_begin = r * local_heads_ * d, q_end = q_begin + local_heads_ * d;
  const std::int64_t kv_begin = kv_head_offset_ * d, kv_end = kv_begin + local_kv_heads_ * d;
  const std::int64_t i_begin = r * local_intermediate(), i_end = i_begin + local_intermediate();
  const std::int64_t v_begin = vocab_offset(), v_end = v_begin + local_vocab();
  const std::int64_t q_rows = c.num_attention_heads * d, kv_rows = c.num_key_value_heads * d;

  std::vector<TensorSpec> specs;
  if (is_first_stage()) specs.push_back(rows("model.embed_tokens.weight", {c.vocab_size, h}, v_begin, v_end));
  for (std::int64_t l = layer_begin_; l < layer_end_; ++l) {
    specs.push_back(whole(layer_name(l, "input_layernorm.weight"), {h}));
    specs.push_back(rows(layer_name(l, "self_attn.q_proj.weight"), {q_rows, h}, q_begin, q_end));
    specs.push_back(rows(layer_name(l, "self_attn.k_proj.weight"), {kv_rows, h}, kv_begin, kv_end));
    specs.push_back(rows(layer_name(l, "self_attn.v_proj.weight"), {kv_rows, h}, kv_begin, kv_end));
    if (c.attention_bias) {
      specs.push_back(rows(layer_name(l, "self_attn.q_proj.bias"), {q_rows}, q_begin, q_end));
      specs.push_back(rows(layer_name(l, "self_attn.k_proj.bias"), {kv_rows}, kv_begin, kv_end));
      specs.push_back(rows(layer_name(l, "self_attn.v_proj.bias"), {kv_rows}, kv_begin, kv_end));
    }
    if (c.qk_norm) {  // one weight per head dimension, shared by every head: each rank holds it whole
      specs.push_back(whole(layer_name(l, "self_attn.q_norm.weight"), {d}));
      specs.push_back(whole(layer_name(l, "self_attn.k_norm.weight"), {d}));
    }
    specs.push_back(cols(layer_name(l, "self_attn.o_proj.weight"), {h, q_rows}, q_begin, q_end));
    specs.push_back(whole(layer_name(l, "post_attention_layernorm.weight"), {h}));
    if (c.sandwich_norms) {
      specs.push_back(whole(layer_name(l, "pre_feedforward_layernorm.weight"), {h}));
      specs.push_back(whole(layer_name(l, "post_feedforward_layernorm.weight"), {h}));
    }
    if (c.moe_layer(l)) {
      add_moe_tensors(l, specs);
      continue;
    }
    specs.push_back(rows(layer_name(l, "mlp.gate_proj.weight"), {c.intermediate_size, h}, i_begin, i_end));
    specs.push_back(rows(layer_name(l, "mlp.up_proj.weight"), {c.intermediate_size, h}, i_begin, i_end));
    specs.push_back(cols(layer_name(l, "mlp.down_proj.weight"), {h, c.intermediate_size}, i_begin, i_end));
  }
  if (is_last_stage()) {
    specs.push_back(whole("model.norm.weight", {h}));
    if (!c.tie_word_embeddings)
      specs.push_back(rows("lm_head.weight", {c.vocab_size, h}, v_begin, v_end));
    else if (!is_first_stage())
      specs.push_back(rows("model.embed_tokens.weight", {c.vocab_size, h}, v_begin, v_end));
  }
  return specs;
}

// The router (whole on every rank: each routes every token), this rank's experts, each a slice of its intermediate
// dimension, and the shared expert split like a dense MLP with its gate whole.
void ShardPlan::add_moe_tensors(std::int64_t l, std::vector<TensorSpec>& specs) const {
  const auto& c = config_;
  const std::int64_t h = c.hidden_size, inter = c.moe_intermediate_size;
  specs.push_back(whole(layer_name(l, "mlp.gate.weight"), {c.num_experts, h}));
  const std::int64_t slice = where_.tp_rank % expert_tensor_parallel();
  const std::int64_t e_begin = slice * local_expert_intermediate(), e_end = e_begin + local_expert_intermediate();
  for (std::int64_t e = expert_begin(); e < expert_begin() + local_experts(); ++e) {
    specs.push_back(rows(expert_name(l, e, "gate_proj"), {inter, h}, e_begin, e_end));
    specs.push_back(rows(expert_name(l, e, "up_proj"), {inter, h}, e_begin, e_end));
    specs.push_back(cols(expert_name(l, e, "down_proj"), {h, inter}, e_begin, e_end));
  }
  if (c.shared_expert_intermediate_size > 0) {
    const std::int64_t shared = c.shared_expert_intermediate_size;
    const std::int64_t s_begin = where_.tp_rank * local_shared_intermediate(),
                       s_end = s_begin + local_shared_intermediate();
    specs.push_back(rows(layer_name(l, "mlp.shared_expert.gate_proj.weight"), {shared, h}, s_begin, s_end));
    specs.push_back(rows(layer_name(l, "mlp.shared_expert.up_proj.weight"), {shared, h}, s_begin, s_end));
    specs.push_back(cols(layer_name(l, "mlp.shared_expert.down_proj.weight"), {h, shared}, s_begin, s_end));
    specs.push_back(whole(layer_name(l, "mlp.shared_expert_gate.weight"), {1, h}));
  }
}

TensorSpec ShardPlan::spec(const std::string& name) const {
  if (const auto it = index_.find(name); it != index_.end()) return tensors_[it->second];
  throw Error(ErrorKind::Internal, cat("stage pp ", where_.pp_rank, " tp ", where_.tp_rank, " holds no tensor ", name));
}

}  // namespace strata
