// Launchers of the CUDA backend's kernels (one .cu per concern: convert, norm, elementwise, attention, sampling).
// Host-callable, C++17, no strata headers beyond sampling.h: the .cu files are compiled by nvcc as C++17.
// Every launcher queues its kernel on `stream` and checks the launch (cudaGetLastError) naming the kernel.
// Element types are passed as Elem (same numbering as strata::DType); arithmetic is fp32 inside every kernel.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/backend/sampling.h"

namespace strata::cuda {

enum class Elem : int { F32 = 0, F16 = 1, BF16 = 2 };

// Where token row t of a step lives: its KV-cache slot and absolute position (it sees keys 0..pos).
struct TokenSlot {
  std::int32_t slot;
  std::int32_t pos;
};

// One row's sampling request on the device: the host's CandidateRequest plus where its candidates go.
struct DeviceCandidateRequest {
  std::uint64_t seed;
  std::int64_t step;
  std::int64_t out_offset;  // index of its first candidate in the output array
  float temperature;
  std::int32_t count;  // candidates to produce; 0: this row is served on the host
  std::int32_t mode;   // CandidateMode
  std::int32_t pad_;
};

// Checks the last launch; throws strata::Error(Cuda) naming `kernel`.
void check_launch(const char* kernel);

// --- convert.cu
void convert_from_f32(const float* src, void* dst, Elem dst_elem, std::int64_t n, cudaStream_t stream);
void convert_to_f32(const void* src, Elem src_elem, float* dst, std::int64_t n, cudaStream_t stream);

// --- norm.cu (rows x width, fp32 sum of squares per row)
void rms_norm(const void* x, const void* weight, void* y, Elem act, Elem wt, std::int64_t rows, std::int64_t width,
              float eps, cudaStream_t stream);
// residual += x (rounded to act), then y = rms_norm(residual) * weight. y may alias x.
void rms_norm_residual(void* residual, const void* x, const void* weight, void* y, Elem act, Elem wt, std::int64_t rows,
                       std::int64_t width, float eps, cudaStream_t stream);
void add(void* y, const void* x, Elem elem, std::int64_t n, cudaStream_t stream);
// y[rows, width] = acc + bias (broadcast over rows) in fp32, rounded once to y_elem: the GEMM writes acc in f32 so a
// biased linear rounds once, like the CPU's. acc may alias y when y_elem is F32.
void add_bias(const float* acc, const void* bias, Elem bias_elem, void* y, Elem y_elem, std::int64_t rows,
              std::int64_t width, cudaStream_t stream);

// --- elementwise.cu
// x[tokens, heads, dim] in place, rotate-half convention; angle = positions[t] * inv_freq[i] in double.
void rope(void* x, Elem elem, const std::int32_t* positions, const float* inv_freq, std::int64_t tokens,
          std::int64_t heads, std::int64_t dim, cudaStream_t stream);
void swiglu(const void* gate_up, void* out, Elem elem, std::int64_t rows, std::int64_t width, cudaStream_t stream);
// out = gelu_tanh(gate) * up (Backend::geglu).
void geglu(const void* gate_up, void* out, Elem elem, std::int64_t rows, std::int64_t width, cudaStream_t stream);
// x *= factor (softcap == 0), or x = softcap * tanh(x / softcap) (factor ignored), over n elements.
void scale_or_softcap(void* x, Elem elem, std::int64_t n, float factor, float softcap, cudaStream_t stream);
// dst[rows[i], :] += weights[i] * src[i, :]; one thread per column, rows in order (a row may repeat).
void scatter_add_rows(const void* src, const std::int32_t* rows, const float* weights, void* dst, Elem elem,
                      std::int64_t n_rows, std::int64_t width, cudaStream_t stream);
void embedding(const std::int32_t* ids, const void* table, Elem table_elem, void* out, Elem out_elem,
               std::int64_t tokens, std::int64_t width, std::int64_t vocab_offset, std::int64_t local_vocab,
               cudaStream_t stream);
void gather_rows(const void* src, const std::int32_t* rows, void* dst, std::int64_t n_rows, std::int64_t row_bytes,
                 cudaStream_t stream);
// k, v: [tokens, row]; caches [slots, max_len, row] (row = Hkv * D).
void kv_store(const void* k, const void* v, void* k_cache, void* v_cache, Elem elem, const TokenSlot* tokens,
              std::int64_t n_tokens, std::int64_t row, std::int64_t max_len, cudaStream_t stream);

// --- attention.cu
struct AttentionShape {
  std::int64_t tokens = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  std::int64_t max_len = 0;     // positions per sequence (the key ranges of decode splits)
  std::int64_t block_size = 0;  // positions per KV-cache block
  float scale = 1.0f;
  std::int64_t window = 0;  // > 0: a query at position p sees keys p - window + 1 .. p
  float softcap = 0.0f;     // > 0: scores s -> softcap * tanh(s / softcap)
};
constexpr int kAttentionMaxHeadDim = 512;  // 128 threads x 4 accumulators each
// Causal attention of q[tokens, Hq, D] over the caches. splits == 1: one block per (token, head) over all its
// keys. splits > 1 (decode): keys are cut into ranges of keys_per_split, each block writes fp32 partials
// (unnormalised out, max, sum) into partial_out [tokens, Hq, splits, D] / partial_ml [tokens, Hq, splits, 2] and a
// second kernel combines them.
// The caches are paged ([blocks, block_size, Hkv, D]): token t's sequence has its blocks at
// block_table[tokens[t].slot ...], and key position j is row j % block_size of block block_table[slot + j /
// block_size].
void attention(const void* q, const void* k_cache, const void* v_cache, void* out, Elem elem, const TokenSlot* tokens,
               const std::int32_t* block_table, const AttentionShape& shape, int splits, std::int64_t keys_per_split,
               float* partial_out, float* partial_ml, cudaStream_t stream);

// --- sampling.cu
constexpr int kMaxDeviceTopK = 256;  // rows asking for more candidates are served on the host
// logits [rows, vocab] f32. Row r writes requests[r].count candidates at out + requests[r].out_offset.
void sample_candidates(const float* logits, std::int64_t rows, std::int64_t vocab, std::int64_t vocab_offset,
                       const DeviceCandidateRequest* requests, SampleCandidate* out, cudaStream_t stream);

}  // namespace strata::cuda
