// The Backend interface: the small table of operations a transformer forward pass needs, declared once and
// implemented per device (cpu/ now, cuda/ with the CUDA issue). Layers and the engine see only this interface.
// Ops are ordered as called; download() and sample_candidates() return only when their results are on the host
// (the CPU backend is synchronous; the CUDA backend queues everything else on its stream).
// Dtypes: a backend keeps matrix weights in weight_dtype() and activations / KV cache / 1-D weights (norms, biases)
// in activation_dtype() (CPU: weights as the checkpoint stores them, f32 or bf16/f16, activations f32; CUDA: bf16
// or f16 both). Logits are f32 everywhere (linear() may write an f32 y from lower-precision inputs).
// Shapes are written beside each op: T = tokens in the step,
// K = in features, N = out features, H = heads, D = head_dim.
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/backend/row_shares.h"
#include "runtime/backend/sampling.h"
#include "runtime/base/sum_in_order.h"
#include "runtime/tensor/tensor.h"

namespace strata {

// One sequence's share of a step: rows [token_offset, token_offset + n_tokens) of the flattened batch are its
// tokens at positions [start_pos, start_pos + n_tokens); its keys and values live in the KV-cache blocks listed
// from entry `table_offset` of the step's block table (see kv_blocks.h).
// `slot` (< the step's max sequences) is the sequence's own row of the per-sequence caches of sliding-window layers
// (layers/transformer.h); -1 where the model has none. `prompt_tokens`: the length of the sequence's prompt (which
// rotary factors a longrope model uses depends on it).
struct SeqChunk {
  std::int32_t table_offset = 0;
  std::int32_t start_pos = 0;
  std::int32_t n_tokens = 0;
  std::int32_t token_offset = 0;
  std::int32_t slot = -1;
  std::int32_t prompt_tokens = 0;
};

// Rotary embedding (Hugging Face rotate-half convention): element i of each head pairs with element i + D/2 and
// both rotate by position * inv_freq[i]. The frequencies (rope_theta, any rope_scaling) are computed by the model.
struct RopeParams {
  std::vector<float> inv_freq;  // head_dim / 2 entries
  std::int32_t head_dim = 0;
};

// How attention() scores keys: softmax(scale * q.k) over the causal prefix, with two options of Gemma-style models.
// window > 0: a query at position p sees keys at positions > p - window only (Hugging Face's sliding-window mask:
// the last `window` positions, itself included). softcap > 0: each scaled score s becomes softcap * tanh(s /
// softcap) before the softmax (Gemma 2's attention logit soft-capping).
struct AttentionParams {
  float scale = 1.0f;
  std::int32_t window = 0;
  float softcap = 0.0f;
};

// How a backend runs one step's ops; see Backend::begin_step.
enum class StepMode : std::uint8_t { Run, Capture, Replay };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The dtype layers allocate activations, the KV cache and norm/bias vectors in, and the one matrix weights (2-D)
  // are kept in.
  virtual DType activation_dtype() const { return DType::F32; }
  virtual DType weight_dtype() const { return DType::F32; }
  // The dtype layers allocate the KV cache in, which kv_store and attention take (the CPU backend: f32 or f16).
  virtual DType kv_dtype() const { return activation_dtype(); }
  // Where allocate() puts tensors. Host backends also compute on host memory they did not allocate (weights mapped
  // from a checkpoint, read-only).
  virtual MemoryKind memory_kind() const { return MemoryKind::Host; }

  // Step graphs (CUDA graphs). A stage calls begin_step(key) before the ops of a step whose op sequence and shapes
  // recur under `key` (>= 0; -1: not graphable) and end_step() after them, or abort_step() if they threw.
  // Run: ops execute as called (the CPU backend always). Capture: ops are recorded and end_step() runs the
  // recording. Replay: op calls only refresh their host inputs (ids, positions, chunks, rows) and end_step() runs
  // the recording of `key`; the caller must skip its own collectives, which the recording already holds.
  virtual StepMode begin_step(std::int64_t key) { return StepMode::Run; }
  virtual void end_step() {}
  virtual void abort_step() noexcept {}

  // Sizes the buffers a backend keeps per step (step inputs, attention partials) for steps of up to max_tokens
  // tokens and max_seqs sequences of up to max_len positions each (their block tables: max_len / block_size
  // entries), q_heads x head_dim queries, so that no step allocates. Backends without such buffers ignore it.
  virtual void reserve_step_buffers(std::int64_t max_tokens, std::int64_t max_seqs, std::int64_t max_len,
                                    std::int64_t block_size, std::int64_t q_heads, std::int64_t head_dim) {}

  // Memory of this backend's kind, uninitialised.
  virtual Tensor allocate(Shape shape, DType dtype) = 0;
  // Copies dst.numel() f32 values from host memory into dst (which may be device memory, of any dtype: converted).
  virtual void upload(const float* host, TensorView dst) = 0;
  // Copies src (any dtype) into host memory as f32; returns when the values are there.
  virtual void download(TensorView src, float* host) = 0;
  // A matrix weight just loaded, in the layout this backend's linear (and embedding, for a table) reads fastest;
  // called once per matrix at load. The CPU backend's AVX-512 quantized kernel and its avx512bf16 kernel (bf16
  // weights) interleave rows by 16 (a copy, the same size); others keep the rows as they are.
  virtual Tensor prepare_weight(Tensor w) { return w; }

  // y[T,N] = x[T,K] . w[N,K]^T (+ bias[N] when bias.data != nullptr). w is a Hugging Face Linear weight.
  virtual void linear(TensorView x, TensorView w, TensorView bias, TensorView y) = 0;
  // linear(x, ws[i], biases[i], ys[i]) for each i (q, k and v of one input), with those results; a backend may share
  // the work (the CPU backend's row and quantized kernels: one parallel loop, x rounded or quantized once).
  virtual void linears(TensorView x, std::span<const TensorView> ws, std::span<const TensorView> biases,
                       std::span<const TensorView> ys) {
    for (std::size_t i = 0; i < ws.size(); ++i) linear(x, ws[i], biases[i], ys[i]);
  }
  // linears(x, ws, biases, ys) where this rank has computed only its own rows of x (shares.begin .. shares.end of
  // x.rows() tokens) and the other ranks of the group theirs: shares.gather exchanges them (shares.starts ending at
  // x.rows()). This default gathers x itself; the CPU backend gathers the rows rounded to bf16 or
  // quantized, as its kernels read them, so each rank rounds or quantizes only its own.
  // Where shares.rounds is set, the backend exchanges the rows through it instead (shared_rows_bytes).
  virtual void linears_of_shares(TensorView x, const RowShares& shares, std::span<const TensorView> ws,
                                 std::span<const TensorView> biases, std::span<const TensorView> ys) {
    shares.gather(x.data, std::size_t(x.row_elems()) * dtype_size(x.dtype));
    linears(x, ws, biases, ys);
  }
  // The bytes each rank's rows of linears_of_shares take in the form the backend exchanges them, for `tokens` rows of
  // `in` values and weights of `weights`' dtype, where it exchanges them through RowShares::rounds; 0 where it
  // gathers them (RowShares::gather).
  virtual std::size_t shared_rows_bytes(std::int64_t tokens, std::int64_t in, DType weights) const { return 0; }
  // The most rows a product goes over its weights for once: a product of more rows computed in parts of at least
  // this many reads its weights no more often than at once (the CPU kernels' token passes); of fewer, in parts it
  // reads them once for each part.
  virtual std::int64_t rows_in_one_pass() const { return std::numeric_limits<std::int64_t>::max(); }
  // The parts' elementwise sum, added in their order (sum_in_order).
  static std::vector<float> sum_of(std::span<const float* const> parts, std::int64_t n) {
    std::vector<float> sum(static_cast<std::size_t>(n));
    sum_in_order(parts, n, sum.data());
    return sum;
  }
  // y[T,K] = x / rms(x) * weight[K]; y may alias x.
  virtual void rms_norm(TensorView x, TensorView weight, float eps, TensorView y) = 0;
  // residual += x; y = rms_norm(residual) * weight (the decoder block's add + next norm, fused). [T,K] each.
  virtual void rms_norm_residual(TensorView residual, TensorView x, TensorView weight, float eps, TensorView y) = 0;
  // y += x, same shapes.
  virtual void add(TensorView y, TensorView x) = 0;
  // rms_norm_residual and add of x = parts[0] + parts[1] + ... (added in that order), x never stored: parts are a
  // reduce-scatter's rows in host memory (SharedRows, Collectives::all_reduce_with), residual.numel() f32 values each.
  // These defaults store the sum first.
  virtual void rms_norm_residual_of_sum(TensorView residual, std::span<const float* const> parts, TensorView weight,
                                        float eps, TensorView y) {
    std::vector<float> sum = sum_of(parts, residual.numel());
    rms_norm_residual(residual, TensorView{sum.data(), residual.shape}, weight, eps, y);
  }
  virtual void add_sum(TensorView residual, std::span<const float* const> parts) {
    std::vector<float> sum = sum_of(parts, residual.numel());
    add(residual, TensorView{sum.data(), residual.shape});
  }
  // In place on x[T, H, D] for every head; positions[T] are absolute token positions.
  virtual void rope(TensorView x, std::span<const std::int32_t> positions, const RopeParams& params) = 0;
  // out[T,I] = silu(gate_up[T, 0:I]) * gate_up[T, I:2I]
  virtual void swiglu(TensorView gate_up, TensorView out) = 0;
  // swiglu(gate_up, act), then linear(act, w, no bias, y): one op so that a backend may fuse the two (the CPU
  // backend's avx512bf16 kernel rounds each token's SwiGLU to bf16 as it makes it). act: the SwiGLU's space, its
  // contents afterwards unspecified.
  virtual void swiglu_linear(TensorView gate_up, TensorView act, TensorView w, TensorView y) {
    swiglu(gate_up, act);
    linear(act, w, TensorView{}, y);
  }
  // out[T,I] = gelu_tanh(gate_up[T, 0:I]) * gate_up[T, I:2I] (GeGLU with the tanh approximation of GELU, Gemma's
  // gelu_pytorch_tanh): gelu_tanh(x) = x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))).
  virtual void geglu(TensorView gate_up, TensorView out) = 0;
  // x *= factor, elementwise.
  virtual void scale(TensorView x, float factor) = 0;
  // x = cap * tanh(x / cap), elementwise (Gemma 2's final logit soft-capping).
  virtual void softcap(TensorView x, float cap) = 0;
  // x = 0.
  virtual void fill_zero(TensorView x) = 0;
  // dst[rows[i], :] += weights[i] * src[i, :] for i < rows.size(), in order (a row may repeat). The combine of a
  // mixture-of-experts layer: each expert's outputs weighted by the router into the tokens' rows.
  virtual void scatter_add_rows(TensorView src, std::span<const std::int32_t> rows, std::span<const float> weights,
                                TensorView dst) = 0;
  // out[T,K] = table[ids - vocab_offset] for ids inside this shard's rows, 0 elsewhere (vocab-parallel).
  virtual void embedding(std::span<const std::int32_t> ids, TensorView table, std::int64_t vocab_offset,
                         TensorView out) = 0;
  // Writes k[T, Hkv, D] and v into the paged caches (each [blocks, block_size, Hkv, D]; the order inside a block is
  // the backend's) at each chunk's positions, through its blocks in `block_table` (kv_blocks.h).
  virtual void kv_store(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table, TensorView k,
                        TensorView v, TensorView k_cache, TensorView v_cache) = 0;
  // Causal attention of q[T, Hq, D] against the cached keys/values of each chunk's sequence up to its last position
  // (within params.window when set), read through its blocks. Query head h uses kv head h / (Hq / Hkv)
  // (grouped-query attention). out[T, Hq, D].
  virtual void attention(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table, TensorView q,
                         TensorView k_cache, TensorView v_cache, const AttentionParams& params, TensorView out) = 0;
  // dst[i, :] = src[rows[i], :]
  virtual void gather_rows(TensorView src, std::span<const std::int32_t> rows, TensorView dst) = 0;
  // Sampling candidates of each row of logits[R, local_vocab] (f32, this rank's vocab shard starting at global id
  // vocab_offset): row i writes requests[i].count candidates at out + offsets[i] (host memory), best first for
  // TopK. Returns when they are on the host. See sampling.h.
  virtual void sample_candidates(TensorView logits, std::int64_t vocab_offset,
                                 std::span<const CandidateRequest> requests, std::span<const std::int64_t> offsets,
                                 SampleCandidate* out) = 0;
};

// The CPU backend (OpenBLAS, fp32 arithmetic). `threads` = BLAS threads for this rank (0: leave OpenBLAS's
// default); `weights`: the dtype matrix weights are kept in (the checkpoint's: f32, bf16 or f16).
std::unique_ptr<Backend> make_cpu_backend(int threads, DType weights = DType::F32, DType kv = DType::F32);

}  // namespace strata
