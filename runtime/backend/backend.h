// The Backend interface: the small table of operations a transformer forward pass needs, declared once and
// implemented per device (cpu/ now, cuda/ with the CUDA issue). Layers and the engine see only this interface.
// All ops are asynchronous with respect to the host only where a backend says so; the CPU backend is synchronous.
// Activations are f32 on the CPU backend. Shapes are written beside each op: T = tokens in the step,
// K = in features, N = out features, H = heads, D = head_dim.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/tensor/tensor.h"

namespace strata {

// One sequence's share of a step: rows [token_offset, token_offset + n_tokens) of the flattened batch are its
// tokens at positions [start_pos, start_pos + n_tokens); its keys and values live in KV-cache slot `slot`.
struct SeqChunk {
  std::int32_t slot = 0;
  std::int32_t start_pos = 0;
  std::int32_t n_tokens = 0;
  std::int32_t token_offset = 0;
};

// Rotary embedding (Hugging Face rotate-half convention): element i of each head pairs with element i + D/2 and
// both rotate by position * inv_freq[i]. The frequencies (rope_theta, any rope_scaling) are computed by the model.
struct RopeParams {
  std::vector<float> inv_freq;  // head_dim / 2 entries
  std::int32_t head_dim = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Memory of this backend's kind, uninitialised.
  virtual Tensor allocate(Shape shape, DType dtype) = 0;
  // Copies `count` f32 values from host memory into dst (which may be device memory).
  virtual void upload(const float* host, TensorView dst) = 0;
  // Copies src into host memory as f32.
  virtual void download(TensorView src, float* host) = 0;

  // y[T,N] = x[T,K] . w[N,K]^T (+ bias[N] when bias.data != nullptr). w is a Hugging Face Linear weight.
  virtual void linear(TensorView x, TensorView w, TensorView bias, TensorView y) = 0;
  // y[T,K] = x / rms(x) * weight[K]; y may alias x.
  virtual void rms_norm(TensorView x, TensorView weight, float eps, TensorView y) = 0;
  // y += x, same shapes.
  virtual void add(TensorView y, TensorView x) = 0;
  // In place on x[T, H, D] for every head; positions[T] are absolute token positions.
  virtual void rope(TensorView x, std::span<const std::int32_t> positions, const RopeParams& params) = 0;
  // out[T,I] = silu(gate_up[T, 0:I]) * gate_up[T, I:2I]
  virtual void swiglu(TensorView gate_up, TensorView out) = 0;
  // out[T,K] = table[ids - vocab_offset] for ids inside this shard's rows, 0 elsewhere (vocab-parallel).
  virtual void embedding(std::span<const std::int32_t> ids, TensorView table, std::int64_t vocab_offset,
                         TensorView out) = 0;
  // Writes k[T, Hkv, D] and v into the caches (each [slots, max_len, Hkv, D]) at each chunk's slot and positions.
  virtual void kv_store(std::span<const SeqChunk> chunks, TensorView k, TensorView v, TensorView k_cache,
                        TensorView v_cache) = 0;
  // Causal attention of q[T, Hq, D] against the cached keys/values of each chunk's slot up to its last position.
  // Query head h uses kv head h / (Hq / Hkv) (grouped-query attention). out[T, Hq, D].
  virtual void attention(std::span<const SeqChunk> chunks, TensorView q, TensorView k_cache, TensorView v_cache,
                         float scale, TensorView out) = 0;
  // dst[i, :] = src[rows[i], :]
  virtual void gather_rows(TensorView src, std::span<const std::int32_t> rows, TensorView dst) = 0;
};

// The CPU backend (OpenBLAS, fp32). `threads` = BLAS threads for this rank (0: leave OpenBLAS's default).
std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace strata
