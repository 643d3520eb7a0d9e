// The Llama decoder on one (stage, tp rank): Megatron-style column/row-parallel linears with one all-reduce per
// row-parallel output, vocab-parallel embedding (all-reduce of the zero-padded lookups) and LM head (local logits).
#include "layers/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/base/clock.h"
#include "runtime/base/error.h"
#include "runtime/base/sum_in_order.h"

namespace strata {

namespace {
// Sequence parallelism's shares (TransformerStage, share_rows; rebalance_fractions): each rank's between half and
// one and a half times an even share, moved by 0.3 of what the waits asked for beyond a quarter of a rank's work on
// its own rows. Waits are noisy: a 2048-token step's on this VM varied by +-5 ms of ~350 ms with no core slower,
// against ~13 ms of a rank's own-rows work; shares moved on that noise alone cost as much as the balance won.
constexpr double kShareGain = 0.3, kShareBand = 0.25, kShareLowest = 0.5, kShareHighest = 1.5;
// The most rows a rank's share can have in a step of `tokens`.
std::int64_t most_share_rows(std::int64_t tokens, std::int64_t ranks) {
  return std::min(tokens, std::int64_t(std::ceil(kShareHighest * double(tokens) / double(ranks))) + 1);
}
}  // namespace

// The rounds a stage's sequence parallelism runs on, timed for the shares (share_rows): a rank's waits (for its
// readers, for a writer's rows) as waiting, and the time from a product's call to its first hand-over (the rank
// rounding or quantizing its own rows) as its own work.
class TransformerStage::TimedRounds final : public SharedRows {
 public:
  TimedRounds(SharedRows& rounds, ShareTiming& timing, const double& products_began)
      : rounds_(rounds), timing_(timing), products_began_(products_began) {}
  int rank() const override { return rounds_.rank(); }
  int size() const override { return rounds_.size(); }
  std::size_t bytes() const override { return rounds_.bytes(); }
  void await_readers() override {
    const double start = monotonic_seconds();
    rounds_.await_readers();
    timing_.waited += monotonic_seconds() - start;
  }
  void* begin_round() override {
    const double start = monotonic_seconds();
    void* data = rounds_.begin_round();
    timing_.waited += monotonic_seconds() - start;
    handed_over_ = false;
    return data;
  }
  void publish(int reader, std::int64_t at, std::int64_t count) override {
    if (!handed_over_ && products_began_ > 0) timing_.own_work += monotonic_seconds() - products_began_;
    handed_over_ = true;
    rounds_.publish(reader, at, count);
  }
  const void* rows_from(int writer, std::int64_t at, std::int64_t count) override {
    const double start = monotonic_seconds();
    const void* rows = rounds_.rows_from(writer, at, count);
    timing_.waited += monotonic_seconds() - start;
    return rows;
  }
  void end_reading() override { rounds_.end_reading(); }

 private:
  SharedRows& rounds_;
  ShareTiming& timing_;
  const double& products_began_;
  bool handed_over_ = false;
};

std::int64_t StageLimits::cache_blocks() const {
  if (kv_blocks > 0) return kv_blocks;
  return std::int64_t(max_seqs) * ((std::int64_t(max_seq_len) + block_size - 1) / std::max(block_size, 1));
}

std::int64_t sliding_ring_blocks(const ModelConfig& c, const StageLimits& limits) {
  if (c.sliding_window <= 0 || limits.block_size < 1) return 0;
  const std::int64_t size = limits.block_size;
  // The positions a step can touch: a chunk of up to max_tokens writes its keys, and its first query reads back
  // window - 1 positions: they span at most this many blocks, which must all be distinct ring blocks.
  const std::int64_t ring = (c.sliding_window + limits.max_tokens - 1 + size - 1) / size + 1;
  return ring < (std::int64_t(limits.max_seq_len) + size - 1) / size ? ring : 0;
}

StageMemory estimate_stage_memory(const ShardPlan& plan, const StageLimits& limits, DType weights, DType activations,
                                  std::optional<DType> kv) {
  StageMemory m;
  const auto a = std::int64_t(dtype_size(activations)), kv_bytes = std::int64_t(dtype_size(kv.value_or(activations)));
  for (const auto& spec : plan.tensors()) {  // 1-D weights (norms, biases) are kept in the activation dtype
    const std::int64_t n = shape_numel(spec.local_shape());
    m.weights += spec.local_shape().size() == 1 ? n * a : std::int64_t(dtype_bytes(weights, n));
  }
  const auto& c = plan.config();
  const std::int64_t kv_row = plan.local_kv_heads() * c.head_dim;
  const std::int64_t ring = sliding_ring_blocks(c, limits);
  std::int64_t ring_layers = 0;
  for (std::int64_t l = plan.layer_begin(); l < plan.layer_end(); ++l) ring_layers += ring > 0 && c.sliding_layer(l);
  const std::int64_t block_bytes = 2 * limits.block_size * kv_row * kv_bytes;
  m.kv_cache = (plan.local_layers() - ring_layers) * limits.cache_blocks() * block_bytes;
  m.kv_windows = ring_layers * std::int64_t(limits.max_seqs) * ring * block_bytes;
  const std::int64_t t = limits.max_tokens;
  const std::int64_t q_row = plan.local_heads() * c.head_dim;
  m.workspace = a * t * (3 * c.hidden_size + 2 * q_row + 2 * kv_row + 3 * plan.local_intermediate()) +
                a * std::int64_t(limits.max_seqs) * c.hidden_size +
                4 * std::int64_t(limits.max_seqs) * plan.local_vocab();
  const std::int64_t ranks = plan.coordinates().tp;
  if (ranks > 1 && limits.sequence_parallel_tokens > 0 && !c.is_moe())  // its share of sums; its shared rows
    m.workspace += a * c.hidden_size * most_share_rows(t, ranks) + 2 * (c.hidden_size + 32) * t;
  if (c.is_moe()) {  // router logits and shared gate (f32), one expert's rows, the exchange buffers
    const std::int64_t inter = std::max(plan.local_expert_intermediate(), plan.local_shared_intermediate());
    const std::int64_t tp = plan.coordinates().tp, slice = (t + tp - 1) / tp;
    m.workspace += 4 * t * (c.num_experts + 1) + a * t * (2 * c.hidden_size + 3 * inter) +
                   a * c.hidden_size * (t + 2 * tp * slice + slice);
  }
  return m;
}

// Matrix weights are kept in the backend's weight dtype, 1-D ones (norms, biases) in its activation dtype. A host
// backend first asks the source to serve them in place (mapped from the page cache). Otherwise host f32 tensors get
// the weights read straight into them; others through an f32 staging buffer (reused across tensors) that upload()
// converts.
// Then the backend puts each in the layout its products read (Backend::prepare_weight).
Tensor TransformerStage::load(WeightSource& source, const TensorSpec& spec) {
  return prepared(load_rows(source, {spec}, spec.local_shape()[0]));
}

// gate and up stacked as rows [gate; up] so one GEMM produces both (swiglu reads the two halves of each row).
Tensor TransformerStage::load_stacked(WeightSource& source, const TensorSpec& first, const TensorSpec& second) {
  return prepared(load_rows(source, {first, second}, first.local_shape()[0] + second.local_shape()[0]));
}

Tensor TransformerStage::prepared(Tensor weight) {
  const void* before = weight.view().data;
  Tensor out = backend_.prepare_weight(std::move(weight));
  if (out.view().data != before) rearranged_bytes_ += std::int64_t(out.bytes());
  return out;
}

Tensor TransformerStage::load_rows(WeightSource& source, const std::vector<TensorSpec>& parts, std::int64_t rows) {
  Shape shape = parts[0].local_shape();
  shape[0] = rows;
  const DType dtype = shape.size() == 1 ? backend_.activation_dtype() : backend_.weight_dtype();
  STRATA_CHECK(!is_quantized(dtype) || shape.back() % 32 == 0, Config, "tensor ", parts[0].name, " has rows of ",
               shape.back(), " weights on this rank (", shape_string(parts[0].global_shape), " split for tp ",
               plan_.coordinates().tp, "): ", dtype_name(dtype),
               " quantizes blocks of 32 weights of a row; choose a tensor-parallel size that keeps rows a multiple "
               "of 32");
  if (backend_.memory_kind() == MemoryKind::Host)
    if (Buffer mapped = source.map_stored(parts, dtype); mapped.data()) return Tensor(std::move(mapped), shape, dtype);
  Tensor tensor = backend_.allocate(shape, dtype);
  if (tensor.view().kind == MemoryKind::Host && tensor.dtype() != DType::F32) {  // e.g. CPU bf16: read as stored
    char* at = static_cast<char*>(tensor.view().data);
    bool stored = true;
    for (std::size_t i = 0; i < parts.size() && stored; ++i) {
      stored = source.read_stored(parts[i], tensor.dtype(), at);
      at += dtype_bytes(tensor.dtype(), shape_numel(parts[i].local_shape()));
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

Tensor TransformerStage::load_norm(WeightSource& source, const TensorSpec& spec) {
  if (!plan_.config().norm_weight_offset) return load(source, spec);
  std::vector<float> values(std::size_t(shape_numel(spec.local_shape())));
  source.read(spec, values.data());
  for (float& v : values) v += 1.0f;  // Gemma's RMSNorm: x * (1 + w), in f32 as Hugging Face computes it
  Tensor tensor = backend_.allocate(spec.local_shape(), backend_.activation_dtype());
  backend_.upload(values.data(), tensor.view());
  return tensor;
}

void TransformerStage::load_layer(WeightSource& source, std::int64_t l) {
  const auto& c = plan_.config();
  auto spec = [&](const char* suffix) { return plan_.spec(ShardPlan::layer_name(l, suffix)); };
  LayerWeights w;
  w.input_norm = load_norm(source, spec("input_layernorm.weight"));
  w.q = load(source, spec("self_attn.q_proj.weight"));
  w.k = load(source, spec("self_attn.k_proj.weight"));
  w.v = load(source, spec("self_attn.v_proj.weight"));
  if (c.attention_bias) {
    w.q_bias = load(source, spec("self_attn.q_proj.bias"));
    w.k_bias = load(source, spec("self_attn.k_proj.bias"));
    w.v_bias = load(source, spec("self_attn.v_proj.bias"));
  }
  if (c.qk_norm) {
    w.q_norm = load_norm(source, spec("self_attn.q_norm.weight"));
    w.k_norm = load_norm(source, spec("self_attn.k_norm.weight"));
  }
  w.o = load(source, spec("self_attn.o_proj.weight"));
  w.post_norm = load_norm(source, spec("post_attention_layernorm.weight"));
  if (c.sandwich_norms) {
    w.pre_ff_norm = load_norm(source, spec("pre_feedforward_layernorm.weight"));
    w.post_ff_norm = load_norm(source, spec("post_feedforward_layernorm.weight"));
  }
  if (c.moe_layer(l)) {
    w.router = load(source, spec("mlp.gate.weight"));
    for (std::int64_t e = plan_.expert_begin(); e < plan_.expert_begin() + plan_.local_experts(); ++e) {
      w.expert_gate_up.push_back(load_stacked(source, plan_.spec(ShardPlan::expert_name(l, e, "gate_proj")),
                                              plan_.spec(ShardPlan::expert_name(l, e, "up_proj"))));
      w.expert_down.push_back(load(source, plan_.spec(ShardPlan::expert_name(l, e, "down_proj"))));
    }
    if (c.shared_expert_intermediate_size > 0) {
      w.shared_gate_up =
          load_stacked(source, spec("mlp.shared_expert.gate_proj.weight"), spec("mlp.shared_expert.up_proj.weight"));
      w.shared_down = load(source, spec("mlp.shared_expert.down_proj.weight"));
      w.shared_gate = load(source, spec("mlp.shared_expert_gate.weight"));
    }
  } else {
    w.gate_up = load_stacked(source, spec("mlp.gate_proj.weight"), spec("mlp.up_proj.weight"));
    w.down = load(source, spec("mlp.down_proj.weight"));
  }
  w.window = c.attention_window(l);
  w.ring = w.window > 0 && sliding_ring_blocks(c, limits_) > 0;
  w.rope = c.rope_local_theta > 0 && c.sliding_layer(l) ? &rope_local_ : &rope_;
  layers_.push_back(std::move(w));
}

TransformerStage::TransformerStage(const ShardPlan& plan, WeightSource& source, Backend& backend, Collectives& tp,
                                   const StageLimits& limits)
    : plan_(plan), backend_(backend), tp_(tp), limits_(limits) {
  const auto& c = plan.config();
  STRATA_CHECK(tp.size() == plan.coordinates().tp, Internal, "tp communicator of size ", tp.size(),
               " for a plan with tp ", plan.coordinates().tp);
  rope_ = RopeParams{c.rope_inverse_frequencies(), std::int32_t(c.head_dim)};
  if (c.rope_local_theta > 0) {
    const std::int64_t sliding = std::find(c.sliding_layers.begin(), c.sliding_layers.end(), 1) -
                                 c.sliding_layers.begin();  // any sliding layer: they share one base
    rope_local_ = RopeParams{c.rope_inverse_frequencies(sliding), std::int32_t(c.head_dim)};
  }
  rope_long_ = RopeParams{c.rope_long_inverse_frequencies(), std::int32_t(c.head_dim)};
  layers_.reserve(std::size_t(plan.local_layers()));  // LayerWeights point at rope_ / rope_local_, never moved

  if (plan.is_first_stage()) embed_ = load(source, plan.spec("model.embed_tokens.weight"));
  for (std::int64_t l = plan.layer_begin(); l < plan.layer_end(); ++l) load_layer(source, l);
  if (plan.is_last_stage()) {
    final_norm_ = load_norm(source, plan.spec("model.norm.weight"));
    if (!c.tie_word_embeddings)
      lm_head_ = load(source, plan.spec("lm_head.weight"));
    else if (!plan.is_first_stage())
      lm_head_ = load(source, plan.spec("model.embed_tokens.weight"));
  }
  std::vector<float>().swap(load_staging_);
  if (c.is_moe()) expert_load_.per_expert.assign(std::size_t(c.num_experts), 0);
  shares_.rank = tp.rank();
  shares_.starts = even_row_starts(tp.size(), 0);
  if (splits_rows()) {
    row_fractions_.assign(std::size_t(tp.size()), 1.0 / tp.size());
    share_timings_.resize(std::size_t(tp.size()));
  }
  // A product's gather comes once the backend has rounded or quantized this rank's rows: that time is the rank's
  // work on its own rows, the gather's its waiting.
  shares_.gather = [this](void* rows, std::size_t row_bytes) {
    const double start = monotonic_seconds();
    if (products_began_ > 0) share_timing_.own_work += start - products_began_;
    products_began_ = 0;
    tp_.all_gather_rows(rows, row_bytes, shares_.starts);
    share_timing_.waited += monotonic_seconds() - start;
  };
  allocate_workspace();
}

TransformerStage::~TransformerStage() = default;

void TransformerStage::allocate_workspace() {
  const auto& c = plan_.config();
  const StageLimits& limits = limits_;
  const std::int64_t t = limits.max_tokens, d = c.head_dim, h = c.hidden_size;
  const std::int64_t kv_heads = plan_.local_kv_heads(), heads = plan_.local_heads();
  const DType act = backend_.activation_dtype();
  STRATA_CHECK(limits.block_size >= 1 && limits.cache_blocks() >= 1, Internal, "KV cache of ", limits.cache_blocks(),
               " blocks of ", limits.block_size);
  ring_blocks_ = sliding_ring_blocks(c, limits);
  for (const auto& layer : layers_) {
    const std::int64_t blocks = layer.ring ? limits.max_seqs * ring_blocks_ : limits.cache_blocks();
    k_cache_.push_back(backend_.allocate({blocks, limits.block_size, kv_heads, d}, backend_.kv_dtype()));
    v_cache_.push_back(backend_.allocate({blocks, limits.block_size, kv_heads, d}, backend_.kv_dtype()));
  }
  const std::int64_t rows = t;
  hidden_ = backend_.allocate({rows, h}, act);
  normed_ = backend_.allocate({rows, h}, act);
  q_ = backend_.allocate({t, heads * d}, act);
  k_ = backend_.allocate({t, kv_heads * d}, act);
  v_ = backend_.allocate({t, kv_heads * d}, act);
  attn_ = backend_.allocate({t, heads * d}, act);
  // The row-parallel outputs, where the group's other ranks read them in place if it can
  // (Collectives::shared_workspace).
  Buffer shared = fuses_sums() ? tp_.shared_workspace(dtype_bytes(act, rows * h)) : Buffer{};
  proj_shared_ = shared.data() != nullptr;
  proj_ = proj_shared_ ? Tensor(std::move(shared), {rows, h}, act) : backend_.allocate({rows, h}, act);
  if (splits_rows()) {
    share_ = backend_.allocate({most_share_rows(t, plan_.coordinates().tp), h}, act);
    share_rounds();
  }
  gate_up_ = backend_.allocate({t, 2 * plan_.local_intermediate()}, act);
  act_ = backend_.allocate({t, plan_.local_intermediate()}, act);
  if (c.is_moe()) {
    const std::int64_t inter = std::max(plan_.local_expert_intermediate(), plan_.local_shared_intermediate());
    const std::int64_t tp = plan_.coordinates().tp, slice = (t + tp - 1) / tp;
    router_logits_ = backend_.allocate({t, c.num_experts}, DType::F32);
    shared_gate_logits_ = backend_.allocate({t, 1}, DType::F32);
    expert_in_ = backend_.allocate({t, h}, act);
    expert_gate_up_ = backend_.allocate({t, 2 * inter}, act);
    expert_act_ = backend_.allocate({t, inter}, act);
    expert_out_ = backend_.allocate({t, h}, act);
    if (plan_.coordinates().ep > 1) {
      send_rows_ = backend_.allocate({t, h}, act);  // a token goes to one rank: its slice's
      recv_rows_ = backend_.allocate({tp * slice, h}, act);
      token_slice_ = backend_.allocate({slice, h}, act);
      gathered_ = backend_.allocate({tp * slice, h}, act);
    }
    router_host_.resize(std::size_t(t * c.num_experts));
    routes_.resize(std::size_t(t));
  }
  last_rows_ = backend_.allocate({limits.max_seqs, h}, act);
  logits_ = backend_.allocate({limits.max_seqs, plan_.local_vocab()}, DType::F32);
  if (!plan_.is_last_stage() && (hidden_.view().kind != MemoryKind::Host || act != DType::F32))
    hidden_host_ = Tensor::host({t, h}, DType::F32);
  backend_.reserve_step_buffers(t, limits.max_seqs, limits.max_seq_len, limits.block_size, heads, d);
  positions_.reserve(std::size_t(t));
  last_row_index_.reserve(std::size_t(limits.max_seqs));
}

// Sequence parallelism's exchanges in rounds (runtime/base/shared_rows.h) where the group shares memory: the
// row-parallel outputs' rounds on proj_, the products' inputs' on memory of their own, where the backend's kernels
// exchange them so (Backend::shared_rows_bytes) and every rank's do (the ranks agree on the bytes).
void TransformerStage::share_rounds() {
  SharedRows* proj = proj_shared_ ? tp_.shared_rows(proj_.view().data) : nullptr;
  if (!proj || layers_.empty()) return;
  proj_rounds_ = std::make_unique<TimedRounds>(*proj, share_timing_, products_began_);
  const auto bytes = std::int64_t(
      backend_.shared_rows_bytes(limits_.max_tokens, plan_.config().hidden_size, layers_.front().q.view().dtype));
  std::vector<std::int64_t> every(std::size_t(tp_.size()));
  tp_.all_gather(&bytes, every.data(), sizeof(bytes));
  if (bytes == 0 || std::count(every.begin(), every.end(), bytes) != tp_.size()) return;
  input_rows_ = tp_.shared_workspace(std::size_t(bytes));
  SharedRows* inputs = input_rows_.data() ? tp_.shared_rows(input_rows_.data()) : nullptr;
  if (!inputs) return;
  input_rounds_ = std::make_unique<TimedRounds>(*inputs, share_timing_, products_began_);
  shares_.rounds = input_rounds_.get();
}

void TransformerStage::decoder_block(std::size_t l, std::span<const SeqChunk> chunks,
                                     std::span<const std::int32_t> block_table, std::int64_t tokens) {
  const auto& w = layers_[l];
  const auto& c = plan_.config();
  const float eps = float(c.rms_norm_eps);
  auto rows = [tokens](const Tensor& t) { return t.view().slice_rows(0, tokens); };
  auto heads_view = [&](const Tensor& t, std::int64_t heads) { return rows(t).reshaped({tokens, heads, c.head_dim}); };
  const TensorView x = rows(normed_);
  // The rows of the residual stream and of the norms' outputs this rank computes (all, or its share).
  const TensorView h_own = own_rows(hidden_, tokens), x_own = own_rows(normed_, tokens);

  // Attention: column-parallel q/k/v over local heads, row-parallel o_proj, one all-reduce. The previous block's
  // MLP output (its sums still in proj_, or share_) joins the residual stream here, fused with this block's input
  // norm.
  if (l == 0)
    backend_.rms_norm(h_own, w.input_norm.view(), eps, x_own);
  else
    add_sums_and_norm(tokens, w.input_norm, x_own);
  const TensorView qkv_weights[] = {w.q.view(), w.k.view(), w.v.view()};
  const TensorView qkv_biases[] = {w.q_bias.view(), w.k_bias.view(), w.v_bias.view()};
  const TensorView qkv[] = {rows(q_), rows(k_), rows(v_)};
  products_of_normed(x, qkv_weights, qkv_biases, qkv);
  if (c.qk_norm) {  // Qwen3, Gemma 3: each head of q and k normalised on its own (rows of head_dim), before RoPE
    const auto per_head = [&](const Tensor& t, std::int64_t heads) {
      return rows(t).reshaped({tokens * heads, c.head_dim});
    };
    backend_.rms_norm(per_head(q_, plan_.local_heads()), w.q_norm.view(), eps, per_head(q_, plan_.local_heads()));
    backend_.rms_norm(per_head(k_, plan_.local_kv_heads()), w.k_norm.view(), eps, per_head(k_, plan_.local_kv_heads()));
  }
  rotate(heads_view(q_, plan_.local_heads()), tokens, *w.rope);
  rotate(heads_view(k_, plan_.local_kv_heads()), tokens, *w.rope);
  if (w.ring) {  // the layer's per-slot ring of its window
    chunks = ring_chunks_;
    block_table = ring_table_;
  }
  backend_.kv_store(chunks, block_table, rows(k_), rows(v_), k_cache_[l].view(), v_cache_[l].view());
  const AttentionParams params{float(c.attention_scale()), w.window, float(c.attn_logit_softcapping)};
  backend_.attention(chunks, block_table, heads_view(q_, plan_.local_heads()), k_cache_[l].view(), v_cache_[l].view(),
                     params, heads_view(attn_, plan_.local_heads()));
  row_parallel(tokens, [&](std::int64_t first, std::int64_t last) {
    backend_.linear(attn_.view().slice_rows(first, last), w.o.view(), TensorView{},
                    proj_.view().slice_rows(first, last));
  });

  // MLP. Gemma normalises the attention output before the residual add and the MLP output after it.
  if (c.sandwich_norms) {
    const TensorView attention_out = summed(tokens);
    backend_.rms_norm(attention_out, w.post_norm.view(), eps, attention_out);
    backend_.rms_norm_residual(h_own, attention_out, w.pre_ff_norm.view(), eps, x_own);
  } else {
    add_sums_and_norm(tokens, w.post_norm, x_own);
  }
  if (w.router.empty())
    mlp(w, tokens);
  else
    moe_mlp(w, tokens);
  if (c.sandwich_norms) {
    const TensorView mlp_out = summed(tokens);
    backend_.rms_norm(mlp_out, w.post_ff_norm.view(), eps, mlp_out);
  }
  // The MLP's sums are added to the residual by the next block (or after the last one in forward)
}

void TransformerStage::rotate(const TensorView& x, std::int64_t tokens, const RopeParams& rope) {
  if (rope_long_.inv_freq.empty()) return backend_.rope(x, positions_, rope);
  for (std::int64_t begin = 0; begin < tokens;) {
    std::int64_t end = begin + 1;
    while (end < tokens && long_rope_[std::size_t(end)] == long_rope_[std::size_t(begin)]) ++end;
    const std::span<const std::int32_t> positions(positions_.data() + begin, std::size_t(end - begin));
    backend_.rope(x.slice_rows(begin, end), positions, long_rope_[std::size_t(begin)] ? rope_long_ : rope);
    begin = end;
  }
}

// Dense: column-parallel gate/up (stacked), SwiGLU or GeGLU, row-parallel down_proj, one all-reduce.
void TransformerStage::mlp(const LayerWeights& w, std::int64_t tokens) {
  const TensorView x = normed_.view().slice_rows(0, tokens), gate_up = gate_up_.view().slice_rows(0, tokens);
  const TensorView act = act_.view().slice_rows(0, tokens);
  const TensorView weight = w.gate_up.view(), no_bias{};
  products_of_normed(x, {&weight, 1}, {&no_bias, 1}, {&gate_up, 1});
  const auto rows = [](const Tensor& t, std::int64_t first, std::int64_t last) {
    return t.view().slice_rows(first, last);
  };
  if (plan_.config().hidden_activation == "gelu_tanh") {
    backend_.geglu(gate_up, act);
    row_parallel(tokens, [&](std::int64_t first, std::int64_t last) {
      backend_.linear(rows(act_, first, last), w.down.view(), TensorView{}, rows(proj_, first, last));
    });
  } else {
    row_parallel(tokens, [&](std::int64_t first, std::int64_t last) {
      backend_.swiglu_linear(rows(gate_up_, first, last), rows(act_, first, last), w.down.view(),
                             rows(proj_, first, last));
    });
  }
}

// Mixture of experts: every rank routes every token (the router is replicated, its input the same on every tp rank),
// computes its own experts' rows for the tokens routed to them (and its slice of the shared expert), then the
// partial outputs are summed over the tp group: by the MLP all-reduce, or with expert parallelism by the all-to-all
// combine.
void TransformerStage::moe_mlp(const LayerWeights& w, std::int64_t tokens) {
  const TensorView x = normed_.view().slice_rows(0, tokens), out = proj_.view().slice_rows(0, tokens);
  backend_.linear(x, w.router.view(), TensorView{}, router_logits_.view().slice_rows(0, tokens));
  route(tokens);
  backend_.fill_zero(out);
  run_experts(w, tokens, out);
  if (!w.shared_gate_up.empty()) shared_expert(w, tokens, out);
  if (plan_.coordinates().ep > 1)
    combine_experts(tokens, out);
  else
    all_reduce(out);
}

// Top-k of the softmax over the router logits (in double; Hugging Face takes it in float32), renormalised when the
// model says so. The tokens of this rank's slice are counted in expert_load_.
void TransformerStage::route(std::int64_t tokens) {
  const auto& c = plan_.config();
  const std::int64_t experts = c.num_experts, k = c.experts_per_token;
  backend_.download(router_logits_.view().slice_rows(0, tokens), router_host_.data());
  const int tp = plan_.coordinates().tp, me = plan_.coordinates().tp_rank;
  const std::int64_t slice = (tokens + tp - 1) / tp;
  std::vector<double> probs(static_cast<std::size_t>(experts));
  std::vector<std::int32_t> order(static_cast<std::size_t>(experts));
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* logits = router_host_.data() + t * experts;
    const double top = *std::max_element(logits, logits + experts);
    double total = 0;
    for (std::int64_t e = 0; e < experts; ++e) total += (probs[std::size_t(e)] = std::exp(double(logits[e]) - top));
    for (std::int64_t e = 0; e < experts; ++e) order[std::size_t(e)] = std::int32_t(e);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](std::int32_t a, std::int32_t b) {
      return probs[std::size_t(a)] > probs[std::size_t(b)] || (probs[std::size_t(a)] == probs[std::size_t(b)] && a < b);
    });
    double chosen = 0;
    for (std::int64_t j = 0; j < k; ++j) chosen += probs[std::size_t(order[std::size_t(j)])];
    Route& r = routes_[std::size_t(t)];
    r.experts.assign(order.begin(), order.begin() + k);
    r.weights.clear();
    for (std::int64_t j = 0; j < k; ++j)
      r.weights.push_back(float(probs[std::size_t(order[std::size_t(j)])] / (c.norm_topk_prob ? chosen : total)));
    if (t / slice == me)
      for (const auto e : r.experts) ++expert_load_.per_expert[std::size_t(e)];
  }
}

namespace {
// The first rows x width elements of a workspace tensor sized for the widest use (experts and the shared expert
// have different widths).
TensorView scratch(const Tensor& tensor, std::int64_t rows, std::int64_t width) {
  STRATA_CHECK(rows * width <= tensor.numel(), Internal, "workspace of ", shape_string(tensor.shape()), " for ", rows,
               " x ", width);
  return TensorView{tensor.view().data, {rows, width}, tensor.dtype(), tensor.view().kind};
}
}  // namespace

// Each local expert on the rows routed to it: gather, gate/up, SwiGLU, down, weighted add into `out`.
void TransformerStage::run_experts(const LayerWeights& w, std::int64_t tokens, TensorView out) {
  for (std::size_t local = 0; local < w.expert_gate_up.size(); ++local) {
    const auto expert = std::int32_t(plan_.expert_begin() + std::int64_t(local));
    moe_rows_.clear();
    moe_weights_.clear();
    for (std::int64_t t = 0; t < tokens; ++t) {
      const Route& r = routes_[std::size_t(t)];
      for (std::size_t j = 0; j < r.experts.size(); ++j)
        if (r.experts[j] == expert) {
          moe_rows_.push_back(std::int32_t(t));
          moe_weights_.push_back(r.weights[j]);
        }
    }
    const auto n = std::int64_t(moe_rows_.size());
    if (n == 0) continue;
    expert_load_.rows_computed += n;
    const TensorView in = expert_in_.view().slice_rows(0, n), expert_out = expert_out_.view().slice_rows(0, n);
    const TensorView gate_up = scratch(expert_gate_up_, n, w.expert_gate_up[local].view().rows());
    const TensorView act = scratch(expert_act_, n, w.expert_down[local].view().row_elems());
    backend_.gather_rows(normed_.view().slice_rows(0, tokens), moe_rows_, in);
    backend_.linear(in, w.expert_gate_up[local].view(), TensorView{}, gate_up);
    backend_.swiglu(gate_up, act);
    backend_.linear(act, w.expert_down[local].view(), TensorView{}, expert_out);
    backend_.scatter_add_rows(expert_out, moe_rows_, moe_weights_, out);
  }
}

// Qwen2-MoE's shared expert: a SwiGLU MLP every token goes through, scaled by sigmoid(x . shared_expert_gate).
void TransformerStage::shared_expert(const LayerWeights& w, std::int64_t tokens, TensorView out) {
  const TensorView x = normed_.view().slice_rows(0, tokens);
  const std::int64_t inter = w.shared_down.view().row_elems();
  const TensorView gate_up = scratch(expert_gate_up_, tokens, 2 * inter);
  const TensorView act = scratch(expert_act_, tokens, inter);
  const TensorView shared_out = expert_out_.view().slice_rows(0, tokens);
  backend_.linear(x, w.shared_gate_up.view(), TensorView{}, gate_up);
  backend_.swiglu(gate_up, act);
  backend_.linear(act, w.shared_down.view(), TensorView{}, shared_out);
  const TensorView gate = shared_gate_logits_.view().slice_rows(0, tokens);
  backend_.linear(x, w.shared_gate.view(), TensorView{}, gate);
  moe_weights_.resize(std::size_t(tokens));
  backend_.download(gate, moe_weights_.data());
  moe_rows_.resize(std::size_t(tokens));
  for (std::int64_t t = 0; t < tokens; ++t) {
    moe_rows_[std::size_t(t)] = std::int32_t(t);
    moe_weights_[std::size_t(t)] = float(1.0 / (1.0 + std::exp(-double(moe_weights_[std::size_t(t)]))));
  }
  backend_.scatter_add_rows(shared_out, moe_rows_, moe_weights_, out);
}

// Whether tp rank `rank` computed part of token `token`'s output: the shared expert touches every token; otherwise
// the rank holds a slice of one of its experts.
bool TransformerStage::touches(int rank, std::int64_t token) const {
  if (plan_.config().shared_expert_intermediate_size > 0) return true;
  const int etp = plan_.expert_tensor_parallel();
  for (const auto e : routes_[std::size_t(token)].experts)
    if (plan_.expert_rank(e, rank % etp) == rank) return true;
  return false;
}

// Token t belongs to tp rank t / slice. Every rank knows every route, so each can list what it sends to and
// receives from every other without exchanging counts: a rank sends the rows it touched of each peer's slice, and
// sums what arrives for its own slice in rank order; the all-gather then gives everyone the whole [tokens, hidden].
// Bytes moved: at most one row per (token, touching rank), never more than the all-reduce it replaces.
void TransformerStage::combine_experts(std::int64_t tokens, TensorView out) {
  const int tp = plan_.coordinates().tp, me = plan_.coordinates().tp_rank;
  const std::int64_t slice = (tokens + tp - 1) / tp;
  const std::size_t row_bytes = std::size_t(out.row_elems()) * dtype_size(out.dtype);
  const auto peers = static_cast<std::size_t>(tp);
  std::vector<std::size_t> send_bytes(peers), send_at(peers), recv_bytes(peers), recv_at(peers);
  std::vector<std::int32_t> send_rows, recv_rows;  // token rows, in exchange order
  for (int peer = 0; peer < tp; ++peer) {
    const std::int64_t begin = std::min(tokens, peer * slice), end = std::min(tokens, (peer + 1) * slice);
    send_at[std::size_t(peer)] = send_rows.size() * row_bytes;
    for (std::int64_t t = begin; t < end; ++t)
      if (touches(me, t)) send_rows.push_back(std::int32_t(t));
    send_bytes[std::size_t(peer)] = send_rows.size() * row_bytes - send_at[std::size_t(peer)];
    recv_at[std::size_t(peer)] = recv_rows.size() * row_bytes;
    for (std::int64_t t = std::min(tokens, me * slice); t < std::min(tokens, (me + 1) * slice); ++t)
      if (touches(peer, t)) recv_rows.push_back(std::int32_t(t - me * slice));
    recv_bytes[std::size_t(peer)] = recv_rows.size() * row_bytes - recv_at[std::size_t(peer)];
  }
  const auto n_send = std::int64_t(send_rows.size()), n_recv = std::int64_t(recv_rows.size());
  backend_.gather_rows(out, send_rows, send_rows_.view().slice_rows(0, n_send));
  tp_.all_to_all(send_rows_.view().data, send_bytes.data(), send_at.data(), recv_rows_.view().data, recv_bytes.data(),
                 recv_at.data());
  const TensorView mine = token_slice_.view().slice_rows(0, slice);
  backend_.fill_zero(mine);
  const std::vector<float> ones(static_cast<std::size_t>(n_recv), 1.0f);
  backend_.scatter_add_rows(recv_rows_.view().slice_rows(0, n_recv), recv_rows, ones, mine);
  tp_.all_gather(mine.data, gathered_.view().data, std::size_t(slice) * row_bytes);
  std::vector<std::int32_t> all(static_cast<std::size_t>(tokens));
  for (std::int64_t t = 0; t < tokens; ++t) all[std::size_t(t)] = std::int32_t(t);
  backend_.gather_rows(gathered_.view().slice_rows(0, tp * slice), all, out);
}

void TransformerStage::copy_block(std::int32_t from, std::int32_t to) {
  const std::int64_t blocks = limits_.cache_blocks(), size = limits_.block_size;
  STRATA_CHECK(from >= 0 && from < blocks && to >= 0 && to < blocks && from != to, Internal, "copy_block: ", from,
               " -> ", to, " of ", blocks, " blocks");
  std::vector<std::int32_t> rows(static_cast<std::size_t>(size));
  for (std::int64_t p = 0; p < size; ++p) rows[std::size_t(p)] = std::int32_t(from * size + p);
  for (std::size_t l = 0; l < k_cache_.size(); ++l) {
    if (layers_[l].ring) continue;
    for (Tensor* cache : {&k_cache_[l], &v_cache_[l]}) {
      const TensorView all = cache->view().reshaped({blocks * size, cache->view().numel() / (blocks * size)});
      backend_.gather_rows(all, rows, all.slice_rows(std::int64_t(to) * size, std::int64_t(to + 1) * size));
    }
  }
}

void TransformerStage::copy_slot(std::int32_t from, std::int32_t to) {
  if (ring_blocks_ == 0) return;
  const std::int64_t slots = limits_.max_seqs, positions = ring_blocks_ * limits_.block_size;
  STRATA_CHECK(from >= 0 && from < slots && to >= 0 && to < slots && from != to, Internal, "copy_slot: ", from, " -> ",
               to, " of ", slots, " slots");
  std::vector<std::int32_t> rows(static_cast<std::size_t>(positions));
  for (std::int64_t p = 0; p < positions; ++p) rows[std::size_t(p)] = std::int32_t(from * positions + p);
  for (std::size_t l = 0; l < k_cache_.size(); ++l) {
    if (!layers_[l].ring) continue;
    for (Tensor* cache : {&k_cache_[l], &v_cache_[l]}) {
      const TensorView all = cache->view().reshaped({slots * positions, cache->view().numel() / (slots * positions)});
      backend_.gather_rows(all, rows, all.slice_rows(to * positions, (to + 1) * positions));
    }
  }
}

// The ring layers' view of the step: the same chunks, each reading its slot's ring through a table of its own.
void TransformerStage::build_ring_table(std::span<const SeqChunk> chunks) {
  ring_chunks_.assign(chunks.begin(), chunks.end());
  ring_table_.clear();
  const std::int64_t size = limits_.block_size;
  for (auto& chunk : ring_chunks_) {
    STRATA_CHECK(chunk.slot >= 0 && chunk.slot < limits_.max_seqs, Internal, "chunk at row ", chunk.token_offset,
                 " has sequence slot ", chunk.slot, " of ", limits_.max_seqs);
    chunk.table_offset = std::int32_t(ring_table_.size());
    const std::int64_t used = (std::int64_t(chunk.start_pos) + chunk.n_tokens + size - 1) / size;
    for (std::int64_t b = 0; b < used; ++b)
      ring_table_.push_back(std::int32_t(chunk.slot * ring_blocks_ + b % ring_blocks_));
  }
}

TensorView TransformerStage::forward(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table,
                                     std::span<const std::int32_t> token_ids, const float* hidden_in) {
  std::int64_t tokens = 0;
  positions_.clear();
  long_rope_.clear();
  for (const auto& chunk : chunks) {
    STRATA_CHECK(chunk.token_offset == tokens && chunk.table_offset >= 0 && chunk.n_tokens >= 1 &&
                     chunk.start_pos >= 0 && chunk.start_pos + chunk.n_tokens <= limits_.max_seq_len,
                 Internal, "malformed step: chunk at row ", chunk.token_offset, " table offset ", chunk.table_offset,
                 " positions ", chunk.start_pos, "+", chunk.n_tokens);
    for (std::int32_t i = 0; i < chunk.n_tokens; ++i) positions_.push_back(chunk.start_pos + i);
    if (!rope_long_.inv_freq.empty())
      for (std::int32_t i = 0; i < chunk.n_tokens; ++i)
        long_rope_.push_back(plan_.config().long_rope(chunk.prompt_tokens, chunk.start_pos + i));
    tokens += chunk.n_tokens;
  }
  STRATA_CHECK(tokens <= limits_.max_tokens && std::int64_t(chunks.size()) <= limits_.max_seqs, Internal, "step of ",
               tokens, " tokens / ", chunks.size(), " sequences exceeds the workspace (", limits_.max_tokens, " / ",
               limits_.max_seqs, ")");
  // Decode steps of a single-stage replica (every chunk one token, no activations arriving from the host) repeat
  // the same ops on the same shapes for a given batch size: the backend may record them once and replay them.
  bool decode = true;
  for (const auto& chunk : chunks) decode = decode && chunk.n_tokens == 1;
  // A mixture-of-experts step routes on the host: its shapes change with the routes, so it is never recorded.
  // Nor is one where ring layers and paged layers give the attention two different block tables in one step (a
  // recording holds one value per step input).
  bool mixed = false;
  for (const auto& layer : layers_) mixed = mixed || layer.ring != layers_.front().ring;
  const bool graphable = decode && plan_.is_first_stage() && plan_.is_last_stage() && tp_.graph_capturable() &&
                         !plan_.config().is_moe() && !mixed && rope_long_.inv_freq.empty();
  const StepMode mode = backend_.begin_step(graphable ? std::int64_t(chunks.size()) : -1);
  sequence_parallel_ = splits_rows() && tokens >= limits_.sequence_parallel_tokens && mode != StepMode::Replay;
  sums_pending_ = false;
  if (sequence_parallel_) share_rows(tokens);
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

// Sequence parallelism where the sums can be fused and a threshold is set.
bool TransformerStage::splits_rows() const { return fuses_sums() && limits_.sequence_parallel_tokens > 0; }

// Where the reduce-scatter and the fused all-reduce pay: f32 host activations (MPI's), a tp group, and no mixture of
// experts (whose routing and expert-parallel combine work on every token).
bool TransformerStage::fuses_sums() const {
  return plan_.coordinates().tp > 1 && !plan_.config().is_moe() && backend_.memory_kind() == MemoryKind::Host &&
         backend_.activation_dtype() == DType::F32;
}

void TransformerStage::share_rows(std::int64_t tokens) {
  const int ranks = shares_.ranks();
  if (!limits_.even_row_shares) {
    const auto rank = std::size_t(shares_.rank);  // the last step's share
    share_timing_.rows += double(shares_.starts[rank + 1] - shares_.starts[rank]);
    tp_.all_gather(&share_timing_, share_timings_.data(), sizeof(ShareTiming));
    double work = 0;
    for (const ShareTiming& t : share_timings_) work += t.own_work;
    if (work >= limits_.row_share_window) {
      rebalance_fractions(row_fractions_, share_timings_, kShareGain, kShareBand, kShareLowest / ranks,
                          std::min(1.0, kShareHighest / ranks));
      share_timing_ = {};
    }
  }
  row_starts_of(row_fractions_, tokens, shares_.starts);
  const std::int64_t most = share_.view().rows();
  for (int r = 0; r < ranks; ++r)
    if (shares_.starts[std::size_t(r) + 1] - shares_.starts[std::size_t(r)] > most) {
      even_row_starts(ranks, tokens, shares_.starts);  // (the fractions' bounds keep every share within room)
      break;
    }
}

TensorView TransformerStage::own_rows(const Tensor& t, std::int64_t tokens) const {
  if (!sequence_parallel_) return t.view().slice_rows(0, tokens);
  return t.view().slice_rows(shares_.begin(tokens), shares_.end(tokens));
}

// A row-parallel product into proj_, product(first, last) computing its rows [first, last), then its sums over the
// group (sum_over_tp). Under sequence parallelism with rounds, the other ranks' rows first, each handed over as soon
// as it is made, then this rank's own: a rank that ran a little behind is waited for only once its peers have
// computed their own rows too. Elsewhere proj_ is written once no rank still reads the last round's rows.
void TransformerStage::row_parallel(std::int64_t tokens, const RowsProduct& product) {
  if (!sequence_parallel_ || !proj_rounds_) {
    if (proj_rounds_) proj_rounds_->await_readers();
    product(0, tokens);
    return sum_over_tp(tokens);
  }
  proj_rounds_->begin_round();
  const std::int64_t width = proj_.view().row_elems();
  sums_pending_ = true;
  if (tokens <= backend_.rows_in_one_pass()) {  // in parts it would read the weights once a part: at once
    product(0, tokens);
    shares_.for_each_other(tokens, [&](int r, std::int64_t first, std::int64_t last) {
      proj_rounds_->publish(r, first * width, (last - first) * width);
    });
    return;
  }
  shares_.for_each_other(tokens, [&](int r, std::int64_t first, std::int64_t last) {
    if (last > first) product(first, last);
    proj_rounds_->publish(r, first * width, (last - first) * width);
  });
  if (shares_.end(tokens) > shares_.begin(tokens)) product(shares_.begin(tokens), shares_.end(tokens));
}

// This rank's rows of every rank's proj_ (parts, in rank order) in a round, for use(parts); then the round's reading
// ends.
void TransformerStage::parts_of_round(std::int64_t tokens, const Collectives::PartsUser& use) {
  const std::int64_t width = proj_.view().row_elems(), at = shares_.begin(tokens) * width;
  const std::int64_t count = shares_.end(tokens) * width - at;
  sums_pending_ = false;  // (where a writer's rows mismatch, rows_from throws with the round's reading ended)
  parts_.clear();
  for (int r = 0; r < shares_.ranks(); ++r)
    parts_.push_back(static_cast<const float*>(proj_rounds_->rows_from(r, at, count)) + at);
  use(parts_);
  proj_rounds_->end_reading();
}

// A row-parallel output's reduce-scatter (under sequence parallelism) or all-reduce (where proj_ is in the group's
// shared memory) waits until its sums are wanted (sums_pending_): where they only join the residual stream (and its
// norm), each rank adds its rows of every rank's output straight from the group's shared memory, never storing the
// sums (parts_of_round; Collectives::all_reduce_with). The all-reduce's own copies in and out of its slots and
// its pass over the sums go with it: ~3 us a call at 16 tokens, 24 calls a step of the 100m model.
void TransformerStage::sum_over_tp(std::int64_t tokens) {
  if (sequence_parallel_ || (proj_shared_ && !replaying_))
    sums_pending_ = true;
  else
    all_reduce(proj_.view().slice_rows(0, tokens));
}

TensorView TransformerStage::summed(std::int64_t tokens) {
  if (!sequence_parallel_) {
    if (sums_pending_) all_reduce(proj_.view().slice_rows(0, tokens));
    sums_pending_ = false;
    return proj_.view().slice_rows(0, tokens);
  }
  const TensorView share = share_.view().slice_rows(0, shares_.end(tokens) - shares_.begin(tokens));
  if (sums_pending_ && proj_rounds_) {
    parts_of_round(tokens,
                   [&](std::span<const float* const> parts) { sum_in_order(parts, share.numel(), share.f32()); });
  } else if (sums_pending_) {
    const double start = monotonic_seconds();
    tp_.reduce_scatter_sum(proj_.view().slice_rows(0, tokens), shares_.starts, share);
    share_timing_.waited += monotonic_seconds() - start;
    sums_pending_ = false;
  }
  return share;
}

// This rank's rows of proj_'s pending sums handed to fused(parts) unsummed where the group can (then true; under
// sequence parallelism the parts hold this rank's share of the rows, from a round; else all `tokens` rows), else
// false. Under sequence parallelism fused's time is this rank's own work (the round times its waits).
bool TransformerStage::sums_as_parts(std::int64_t tokens, const Collectives::PartsUser& fused) {
  if (!sums_pending_) return false;
  if (!sequence_parallel_) {
    sums_pending_ = !tp_.all_reduce_with(proj_.view().slice_rows(0, tokens), fused);
    return !sums_pending_;
  }
  if (!proj_rounds_) return false;
  parts_of_round(tokens, [&](std::span<const float* const> parts) {
    const double begun = monotonic_seconds();
    fused(parts);
    share_timing_.own_work += monotonic_seconds() - begun;
  });
  return true;
}

void TransformerStage::add_sums_and_norm(std::int64_t tokens, const Tensor& weight, TensorView x_own) {
  const TensorView h_own = own_rows(hidden_, tokens);
  const float eps = float(plan_.config().rms_norm_eps);
  if (!sums_as_parts(tokens, [&](std::span<const float* const> parts) {
        backend_.rms_norm_residual_of_sum(h_own, parts, weight.view(), eps, x_own);
      }))
    backend_.rms_norm_residual(h_own, summed(tokens), weight.view(), eps, x_own);
}

void TransformerStage::add_sums(std::int64_t tokens) {
  const TensorView h_own = own_rows(hidden_, tokens);
  if (!sums_as_parts(tokens, [&](std::span<const float* const> parts) { backend_.add_sum(h_own, parts); }))
    backend_.add(h_own, summed(tokens));
}

void TransformerStage::products_of_normed(TensorView x, std::span<const TensorView> ws,
                                          std::span<const TensorView> biases, std::span<const TensorView> ys) {
  if (sequence_parallel_) {
    products_began_ = monotonic_seconds();
    backend_.linears_of_shares(x, shares_, ws, biases, ys);
    products_began_ = 0;
    return;
  }
  if (ws.size() == 1) return backend_.linear(x, ws[0], biases[0], ys[0]);
  backend_.linears(x, ws, biases, ys);
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
    // Gemma: times sqrt(hidden_size), rounded to the activation dtype first as Hugging Face does
    if (plan_.config().scale_embeddings) backend_.scale(h, float(std::sqrt(double(plan_.config().hidden_size))));
  } else {
    backend_.upload(hidden_in, h);
  }
  if (ring_blocks_ > 0) build_ring_table(chunks);
  for (std::size_t l = 0; l < layers_.size(); ++l) decoder_block(l, chunks, block_table, tokens);
  if (!layers_.empty()) add_sums(tokens);  // the last block's MLP output
  const bool rows_split = sequence_parallel_ && !layers_.empty();
  if (!plan_.is_last_stage()) {  // every rank's rows of the residual stream, for the next stage
    if (rows_split) shares_.gather(h.data, std::size_t(h.row_elems()) * dtype_size(h.dtype));
    return h;
  }

  last_row_index_.clear();
  for (const auto& chunk : chunks) last_row_index_.push_back(chunk.token_offset + chunk.n_tokens - 1);
  const auto n = std::int64_t(chunks.size());
  const TensorView last = last_rows_.view().slice_rows(0, n);
  if (rows_split)
    gather_last_rows(h, last);
  else
    backend_.gather_rows(h, last_row_index_, last);
  backend_.rms_norm(last, final_norm_.view(), float(plan_.config().rms_norm_eps), last);
  const Tensor& head = lm_head_.empty() ? embed_ : lm_head_;  // tied embeddings on a single stage
  const TensorView logits = logits_.view().slice_rows(0, n);
  backend_.linear(last, head.view(), TensorView{}, logits);
  if (plan_.config().final_logit_softcapping > 0)
    backend_.softcap(logits, float(plan_.config().final_logit_softcapping));
  return logits;
}

// Under sequence parallelism, the head's rows (each sequence's last, last_row_index_) from the ranks that hold
// them: each rank's are contiguous in `last` (the chunks follow one another), so one all-gather of those rows
// instead of the whole residual stream (a 2048-token step's 6 MB, for the 16 rows the head reads).
void TransformerStage::gather_last_rows(const TensorView& h, const TensorView& last) {
  const std::int64_t tokens = h.rows();
  last_starts_.assign(1, 0);
  for (int r = 0; r < shares_.ranks(); ++r) {
    const std::int64_t end = shares_.end_of(r, tokens);
    last_starts_.push_back(std::lower_bound(last_row_index_.begin(), last_row_index_.end(), end) -
                           last_row_index_.begin());
  }
  const auto first = std::size_t(last_starts_[std::size_t(shares_.rank)]);
  const auto own = std::span<const std::int32_t>(last_row_index_)
                       .subspan(first, std::size_t(last_starts_[std::size_t(shares_.rank) + 1]) - first);
  if (!own.empty())
    backend_.gather_rows(h, own, last.slice_rows(std::int64_t(first), std::int64_t(first + own.size())));
  const double start = monotonic_seconds();
  tp_.all_gather_rows(last.data, std::size_t(last.row_elems()) * dtype_size(last.dtype), last_starts_);
  share_timing_.waited += monotonic_seconds() - start;
}

}  // namespace strata
