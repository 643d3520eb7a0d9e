// The Llama decoder on one (stage, tp rank): Megatron-style column/row-parallel linears with one all-reduce per
// row-parallel output, vocab-parallel embedding (all-reduce of the zero-padded lookups) and LM head (local logits).
#include "layers/transformer.h"

#include <cmath>
#include <cstring>

#include "runtime/base/error.h"

namespace strata {

std::int64_t StageLimits::cache_blocks() const {
  if (kv_blocks > 0) return kv_blocks;
  return std::int64_t(max_seqs) * ((std::int64_t(max_seq_len) + block_size - 1) / std::max(block_size, 1));
}

StageMemory estimate_stage_memory(const ShardPlan& plan, const StageLimits& limits, DType weights, DType activations) {
  StageMemory m;
  const auto w = std::int64_t(dtype_size(weights)), a = std::int64_t(dtype_size(activations));
  for (const auto& spec : plan.tensors())  // 1-D weights (norms, biases) are kept in the activation dtype
    m.weights += shape_numel(spec.local_shape()) * (spec.local_shape().size() == 1 ? a : w);
  const auto& c = plan.config();
  const std::int64_t kv_row = plan.local_kv_heads() * c.head_dim;
  m.kv_cache = 2 * plan.local_layers() * limits.cache_blocks() * limits.block_size * kv_row * a;
  const std::int64_t t = limits.max_tokens;
  const std::int64_t q_row = plan.local_heads() * c.head_dim;
  m.workspace = a * t * (3 * c.hidden_size + 2 * q_row + 2 * kv_row + 3 * plan.local_intermediate()) +
                a * std::int64_t(limits.max_seqs) * c.hidden_size +
                4 * std::int64_t(limits.max_seqs) * plan.local_vocab();
  return m;
}

// Matrix weights are kept in the backend's weight dtype, 1-D ones (norms, biases) in its activation dtype. A host
// backend first asks the source to serve them in place (mapped from the page cache). Otherwise host f32 tensors get
// the weights read straight into them; others through an f32 staging buffer (reused across tensors) that upload()
// converts.
Tensor TransformerStage::load(WeightSource& source, const TensorSpec& spec) {
  return load_rows(source, {spec}, spec.local_shape()[0]);
}

// gate and up stacked as rows [gate; up] so one GEMM produces both (swiglu reads the two halves of each row).
Tensor TransformerStage::load_stacked(WeightSource& source, const TensorSpec& first, const TensorSpec& second) {
  return load_rows(source, {first, second}, first.local_shape()[0] + second.local_shape()[0]);
}

Tensor TransformerStage::load_rows(WeightSource& source, const std::vector<TensorSpec>& parts, std::int64_t rows) {
  Shape shape = parts[0].local_shape();
  shape[0] = rows;
  const DType dtype = shape.size() == 1 ? backend_.activation_dtype() : backend_.weight_dtype();
  if (backend_.memory_kind() == MemoryKind::Host)
    if (Buffer mapped = source.map_stored(parts, dtype); mapped.data()) return Tensor(std::move(mapped), shape, dtype);
  Tensor tensor = backend_.allocate(shape, dtype);
  if (tensor.view().kind == MemoryKind::Host && tensor.dtype() != DType::F32) {  // e.g. CPU bf16: read as stored
    char* at = static_cast<char*>(tensor.view().data);
    bool stored = true;
    for (std::size_t i = 0; i < parts.size() && stored; ++i) {
      stored = source.read_stored(parts[i], tensor.dtype(), at);
      at += std::size_t(shape_numel(parts[i].local_shape())) * dtype_size(tensor.dtype());
    }
    if (stored) return tensor;  // otherwise (resharding) read it all again through f32 below
  }
  const bool host = tensor.view().kind == MemoryKind::Host && tensor.dtype() == DType::F32;
  if (!host && load_staging_.size() < std::size_t(tensor.numel())) load_staging_.resize(std::size_t(tensor.numel()));
  float* out = host ? tensor.f32() : load_staging_.data();
  for (const auto& part : parts) {
    source.read(part, out);
    out += shape_numel(part.local_shape());
  }
  if (!host) backend_.upload(load_staging_.data(), tensor.view());
  return tensor;
}

TransformerStage::TransformerStage(const ShardPlan& plan, WeightSource& source, Backend& backend, Collectives& tp,
                                   const StageLimits& limits)
    : plan_(plan), backend_(backend), tp_(tp), limits_(limits) {
  const auto& c = plan.config();
  STRATA_CHECK(tp.size() == plan.coordinates().tp, Internal, "tp communicator of size ", tp.size(),
               " for a plan with tp ", plan.coordinates().tp);
  rope_ = RopeParams{c.rope_inverse_frequencies(), std::int32_t(c.head_dim)};
  auto spec = [&](std::int64_t layer, const char* suffix) { return plan.spec(ShardPlan::layer_name(layer, suffix)); };

  if (plan.is_first_stage()) embed_ = load(source, plan.spec("model.embed_tokens.weight"));
  for (std::int64_t l = plan.layer_begin(); l < plan.layer_end(); ++l) {
    LayerWeights w;
    w.input_norm = load(source, spec(l, "input_layernorm.weight"));
    w.q = load(source, spec(l, "self_attn.q_proj.weight"));
    w.k = load(source, spec(l, "self_attn.k_proj.weight"));
    w.v = load(source, spec(l, "self_attn.v_proj.weight"));
    if (c.attention_bias) {
      w.q_bias = load(source, spec(l, "self_attn.q_proj.bias"));
      w.k_bias = load(source, spec(l, "self_attn.k_proj.bias"));
      w.v_bias = load(source, spec(l, "self_attn.v_proj.bias"));
    }
    if (c.qk_norm) {
      w.q_norm = load(source, spec(l, "self_attn.q_norm.weight"));
      w.k_norm = load(source, spec(l, "self_attn.k_norm.weight"));
    }
    w.o = load(source, spec(l, "self_attn.o_proj.weight"));
    w.post_norm = load(source, spec(l, "post_attention_layernorm.weight"));
    w.gate_up = load_stacked(source, spec(l, "mlp.gate_proj.weight"), spec(l, "mlp.up_proj.weight"));
    w.down = load(source, spec(l, "mlp.down_proj.weight"));
    layers_.push_back(std::move(w));
  }
  if (plan.is_last_stage()) {
    final_norm_ = load(source, plan.spec("model.norm.weight"));
    if (!c.tie_word_embeddings)
      lm_head_ = load(source, plan.spec("lm_head.weight"));
    else if (!plan.is_first_stage())
      lm_head_ = load(source, plan.spec("model.embed_tokens.weight"));
  }

  std::vector<float>().swap(load_staging_);

  const std::int64_t t = limits.max_tokens, d = c.head_dim, h = c.hidden_size;
  const std::int64_t kv_heads = plan.local_kv_heads(), heads = plan.local_heads();
  const DType act = backend.activation_dtype();
  STRATA_CHECK(limits.block_size >= 1 && limits.cache_blocks() >= 1, Internal, "KV cache of ", limits.cache_blocks(),
               " blocks of ", limits.block_size);
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    k_cache_.push_back(backend.allocate({limits.cache_blocks(), limits.block_size, kv_heads, d}, act));
    v_cache_.push_back(backend.allocate({limits.cache_blocks(), limits.block_size, kv_heads, d}, act));
  }
  hidden_ = backend.allocate({t, h}, act);
  normed_ = backend.allocate({t, h}, act);
  q_ = backend.allocate({t, heads * d}, act);
  k_ = backend.allocate({t, kv_heads * d}, act);
  v_ = backend.allocate({t, kv_heads * d}, act);
  attn_ = backend.allocate({t, heads * d}, act);
  proj_ = backend.allocate({t, h}, act);
  gate_up_ = backend.allocate({t, 2 * plan.local_intermediate()}, act);
  act_ = backend.allocate({t, plan.local_intermediate()}, act);
  last_rows_ = backend.allocate({limits.max_seqs, h}, act);
  logits_ = backend.allocate({limits.max_seqs, plan.local_vocab()}, DType::F32);
  if (!plan.is_last_stage() && (hidden_.view().kind != MemoryKind::Host || act != DType::F32))
    hidden_host_ = Tensor::host({t, h}, DType::F32);
  backend.reserve_step_buffers(t, limits.max_seqs, limits.max_seq_len, limits.block_size, heads, d);
  positions_.reserve(std::size_t(t));
  last_row_index_.reserve(std::size_t(limits.max_seqs));
}

void TransformerStage::decoder_block(std::size_t l, std::span<const SeqChunk> chunks,
                                     std::span<const std::int32_t> block_table, std::int64_t tokens) {
  const auto& w = layers_[l];
  const auto& c = plan_.config();
  auto rows = [tokens](const Tensor& t) { return t.view().slice_rows(0, tokens); };
  auto heads_view = [&](const Tensor& t, std::int64_t heads) { return rows(t).reshaped({tokens, heads, c.head_dim}); };
  const TensorView h = rows(hidden_), x = rows(normed_);

  // Attention: column-parallel q/k/v over local heads, row-parallel o_proj, one all-reduce. The previous block's
  // MLP output (still in proj_) joins the residual stream here, fused with this block's input norm.
  if (l == 0)
    backend_.rms_norm(h, w.input_norm.view(), float(c.rms_norm_eps), x);
  else
    backend_.rms_norm_residual(h, rows(proj_), w.input_norm.view(), float(c.rms_norm_eps), x);
  backend_.linear(x, w.q.view(), w.q_bias.view(), rows(q_));
  backend_.linear(x, w.k.view(), w.k_bias.view(), rows(k_));
  backend_.linear(x, w.v.view(), w.v_bias.view(), rows(v_));
  if (c.qk_norm) {  // Qwen3: each head of q and k normalised on its own (rows of head_dim), before RoPE
    const auto per_head = [&](const Tensor& t, std::int64_t heads) {
      return rows(t).reshaped({tokens * heads, c.head_dim});
    };
    backend_.rms_norm(per_head(q_, plan_.local_heads()), w.q_norm.view(), float(c.rms_norm_eps),
                      per_head(q_, plan_.local_heads()));
    backend_.rms_norm(per_head(k_, plan_.local_kv_heads()), w.k_norm.view(), float(c.rms_norm_eps),
                      per_head(k_, plan_.local_kv_heads()));
  }
  backend_.rope(heads_view(q_, plan_.local_heads()), positions_, rope_);
  backend_.rope(heads_view(k_, plan_.local_kv_heads()), positions_, rope_);
  backend_.kv_store(chunks, block_table, rows(k_), rows(v_), k_cache_[l].view(), v_cache_[l].view());
  backend_.attention(chunks, block_table, heads_view(q_, plan_.local_heads()), k_cache_[l].view(), v_cache_[l].view(),
                     float(c.attention_scale()), heads_view(attn_, plan_.local_heads()));
  backend_.linear(rows(attn_), w.o.view(), TensorView{}, rows(proj_));
  all_reduce(rows(proj_));

  // MLP: column-parallel gate/up (stacked), SwiGLU, row-parallel down_proj, one all-reduce.
  backend_.rms_norm_residual(h, rows(proj_), w.post_norm.view(), float(c.rms_norm_eps), x);
  backend_.linear(x, w.gate_up.view(), TensorView{}, rows(gate_up_));
  backend_.swiglu(rows(gate_up_), rows(act_));
  backend_.linear(rows(act_), w.down.view(), TensorView{}, rows(proj_));
  all_reduce(rows(proj_));  // added to the residual by the next block (or after the last one in forward)
}

void TransformerStage::copy_block(std::int32_t from, std::int32_t to) {
  const std::int64_t blocks = limits_.cache_blocks(), size = limits_.block_size;
  STRATA_CHECK(from >= 0 && from < blocks && to >= 0 && to < blocks && from != to, Internal, "copy_block: ", from,
               " -> ", to, " of ", blocks, " blocks");
  std::vector<std::int32_t> rows(static_cast<std::size_t>(size));
  for (std::int64_t p = 0; p < size; ++p) rows[std::size_t(p)] = std::int32_t(from * size + p);
  for (std::size_t l = 0; l < k_cache_.size(); ++l)
    for (Tensor* cache : {&k_cache_[l], &v_cache_[l]}) {
      const TensorView all = cache->view().reshaped({blocks * size, cache->view().numel() / (blocks * size)});
      backend_.gather_rows(all, rows, all.slice_rows(std::int64_t(to) * size, std::int64_t(to + 1) * size));
    }
}

TensorView TransformerStage::forward(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table,
                                     std::span<const std::int32_t> token_ids, const float* hidden_in) {
  std::int64_t tokens = 0;
  positions_.clear();
  for (const auto& chunk : chunks) {
    STRATA_CHECK(chunk.token_offset == tokens && chunk.table_offset >= 0 && chunk.n_tokens >= 1 &&
                     chunk.start_pos >= 0 && chunk.start_pos + chunk.n_tokens <= limits_.max_seq_len,
                 Internal, "malformed step: chunk at row ", chunk.token_offset, " table offset ", chunk.table_offset,
                 " positions ", chunk.start_pos, "+", chunk.n_tokens);
    for (std::int32_t i = 0; i < chunk.n_tokens; ++i) positions_.push_back(chunk.start_pos + i);
    tokens += chunk.n_tokens;
  }
  STRATA_CHECK(tokens <= limits_.max_tokens && std::int64_t(chunks.size()) <= limits_.max_seqs, Internal, "step of ",
               tokens, " tokens / ", chunks.size(), " sequences exceeds the workspace (", limits_.max_tokens, " / ",
               limits_.max_seqs, ")");
  // Decode steps of a single-stage replica (every chunk one token, no activations arriving from the host) repeat
  // the same ops on the same shapes for a given batch size: the backend may record them once and replay them.
  bool decode = true;
  for (const auto& chunk : chunks) decode = decode && chunk.n_tokens == 1;
  const bool graphable = decode && plan_.is_first_stage() && plan_.is_last_stage() && tp_.graph_capturable();
  const StepMode mode = backend_.begin_step(graphable ? std::int64_t(chunks.size()) : -1);
  replaying_ = mode == StepMode::Replay;
  TensorView out;
  try {
    out = run_step(chunks, block_table, token_ids, hidden_in, tokens);
  } catch (...) {
    replaying_ = false;
    backend_.abort_step();
    throw;
  }
  replaying_ = false;
  backend_.end_step();
  if (plan_.is_last_stage() || hidden_host_.empty()) return out;
  const TensorView host = hidden_host_.view().slice_rows(0, tokens);
  backend_.download(out, host.f32());
  return host;
}

void TransformerStage::all_reduce(TensorView data) {
  if (!replaying_) tp_.all_reduce_sum(data);
}

TensorView TransformerStage::run_step(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table,
                                      std::span<const std::int32_t> token_ids, const float* hidden_in,
                                      std::int64_t tokens) {
  const TensorView h = hidden_.view().slice_rows(0, tokens);

  if (plan_.is_first_stage()) {
    STRATA_CHECK(std::int64_t(token_ids.size()) == tokens, Internal, token_ids.size(), " token ids for ", tokens,
                 " tokens");
    backend_.embedding(token_ids, embed_.view(), plan_.vocab_offset(), h);
    all_reduce(h);  // each rank filled only the rows of its vocabulary shard
  } else {
    backend_.upload(hidden_in, h);
  }
  for (std::size_t l = 0; l < layers_.size(); ++l) decoder_block(l, chunks, block_table, tokens);
  if (!layers_.empty()) backend_.add(h, proj_.view().slice_rows(0, tokens));  // the last block's MLP output
  if (!plan_.is_last_stage()) return h;

  last_row_index_.clear();
  for (const auto& chunk : chunks) last_row_index_.push_back(chunk.token_offset + chunk.n_tokens - 1);
  const auto n = std::int64_t(chunks.size());
  const TensorView last = last_rows_.view().slice_rows(0, n);
  backend_.gather_rows(h, last_row_index_, last);
  backend_.rms_norm(last, final_norm_.view(), float(plan_.config().rms_norm_eps), last);
  const Tensor& head = lm_head_.empty() ? embed_ : lm_head_;  // tied embeddings on a single stage
  const TensorView logits = logits_.view().slice_rows(0, n);
  backend_.linear(last, head.view(), TensorView{}, logits);
  return logits;
}

}  // namespace strata
