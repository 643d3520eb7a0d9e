// Causal attention over the KV cache, fp32 softmax and accumulation. One block of 128 threads per (token, query
// head[, key range]) runs an online softmax over tiles of 128 keys: each thread scores one key of the tile, the
// block takes the tile maximum, rescales its running sum and output, then each thread accumulates its share of
// the D output dims over the tile's keys. The cache is paged: each thread looks up the row of its tile key through
// the sequence's block table once per tile and shares it (rows_s) for the value pass. Prefill uses one key range (the
// whole causal prefix); decode cuts the cache length into ranges (flash-decoding) so a batch of few tokens still fills
// the GPU (ranges past a sequence's end return at once), and a second kernel combines the ranges' partial (max, sum,
// output). A sliding window starts each query's range at its first visible key; soft-capping bends each score.
// Correctness first: K is re-read per query head (no shared-memory K reuse across a GQA group).
#include "runtime/backend/cuda/kernels/common.cuh"
#include "runtime/base/error.h"

namespace strata::cuda {
namespace {

constexpr int kThreads = 128;  // = keys per tile
constexpr int kDimsPerThread = kAttentionMaxHeadDim / kThreads;

template <typename T>
__global__ void attention_kernel(const T* q, const T* k_cache, const T* v_cache, T* out, const TokenSlot* tokens,
                                 const std::int32_t* block_table, AttentionShape s, std::int64_t keys_per_split,
                                 float* partial_out, float* partial_ml) {
  __shared__ float q_s[kAttentionMaxHeadDim];
  __shared__ float p_s[kThreads];
  __shared__ std::int64_t rows_s[kThreads];  // cache element offset of each tile key's position
  __shared__ float scratch[32];
  const std::int64_t t = blockIdx.x, h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const std::int64_t d = s.head_dim, group = s.q_heads / s.kv_heads, kvh = h / group;
  const std::int64_t kv_stride = s.kv_heads * d;  // between consecutive rows of the cache
  const TokenSlot at = tokens[t];
  const std::int64_t visible = std::int64_t(at.pos) + 1;
  const std::int64_t first = s.window > 0 && visible > s.window ? visible - s.window : 0;  // sliding window
  const std::int64_t begin = split * keys_per_split > first ? split * keys_per_split : first;
  const std::int64_t range_end = (split + 1) * keys_per_split;
  const std::int64_t end = range_end < visible ? range_end : visible;
  const std::int64_t row = t * s.q_heads + h;  // (token, head) index

  for (std::int64_t e = threadIdx.x; e < d; e += kThreads) q_s[e] = load(q, row * d + e) * s.scale;
  __syncthreads();

  const std::int32_t* blocks = block_table + at.slot;  // this sequence's blocks
  const T* keys = k_cache + kvh * d;
  const T* values = v_cache + kvh * d;
  float acc[kDimsPerThread];
  for (int i = 0; i < kDimsPerThread; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  for (std::int64_t tile = begin; tile < end; tile += kThreads) {
    const std::int64_t j = tile + threadIdx.x;
    float score = -INFINITY;
    if (j < end) {
      rows_s[threadIdx.x] = (std::int64_t(blocks[j / s.block_size]) * s.block_size + j % s.block_size) * kv_stride;
      const T* key = keys + rows_s[threadIdx.x];
      score = 0.0f;
      for (std::int64_t e = 0; e < d; ++e) score += q_s[e] * load(key, e);
      if (s.softcap > 0.0f) score = s.softcap * tanhf(score / s.softcap);
    }
    const float m_new = fmaxf(m, block_max(score, scratch));
    const float alpha = expf(m - m_new);  // 0 on the first tile (m = -inf)
    const float p = j < end ? expf(score - m_new) : 0.0f;
    p_s[threadIdx.x] = p;
    l = l * alpha + block_sum(p, scratch);  // block_sum syncs: p_s and rows_s are complete after it
    m = m_new;
    const std::int64_t n = end - tile < kThreads ? end - tile : kThreads;
    for (int i = 0; i < kDimsPerThread; ++i) {
      const std::int64_t e = threadIdx.x + std::int64_t(i) * kThreads;
      if (e >= d) break;
      float sum = acc[i] * alpha;
      for (std::int64_t jj = 0; jj < n; ++jj) sum += p_s[jj] * load(values + rows_s[jj], e);
      acc[i] = sum;
    }
    __syncthreads();  // p_s and rows_s are rewritten by the next tile
  }

  if (splits == 1) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int i = 0; i < kDimsPerThread; ++i) {
      const std::int64_t e = threadIdx.x + std::int64_t(i) * kThreads;
      if (e < d) store(out, row * d + e, acc[i] * inv);
    }
    return;
  }
  const std::int64_t part = row * splits + split;  // empty ranges (begin >= visible) write l = 0, m = -inf
  for (int i = 0; i < kDimsPerThread; ++i) {
    const std::int64_t e = threadIdx.x + std::int64_t(i) * kThreads;
    if (e < d) partial_out[part * d + e] = acc[i];
  }
  if (threadIdx.x == 0) {
    partial_ml[part * 2] = m;
    partial_ml[part * 2 + 1] = l;
  }
}

// One block per (token, head): out = sum_s exp(m_s - M) * out_s / sum_s exp(m_s - M) * l_s.
template <typename T>
__global__ void combine_kernel(const float* partial_out, const float* partial_ml, T* out, std::int64_t d,
                               std::int64_t splits) {
  const std::int64_t row = std::int64_t(blockIdx.x) * gridDim.y + blockIdx.y;  // t * q_heads + h
  float big = -INFINITY;
  for (std::int64_t s = 0; s < splits; ++s) big = fmaxf(big, partial_ml[(row * splits + s) * 2]);
  float total = 0.0f;
  for (std::int64_t s = 0; s < splits; ++s) {
    const float l = partial_ml[(row * splits + s) * 2 + 1];
    if (l > 0.0f) total += l * expf(partial_ml[(row * splits + s) * 2] - big);
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (std::int64_t e = threadIdx.x; e < d; e += blockDim.x) {
    float sum = 0.0f;
    for (std::int64_t s = 0; s < splits; ++s) {
      const float l = partial_ml[(row * splits + s) * 2 + 1];
      if (l > 0.0f) sum += partial_out[(row * splits + s) * d + e] * expf(partial_ml[(row * splits + s) * 2] - big);
    }
    store(out, row * d + e, sum * inv);
  }
}

}  // namespace

void attention(const void* q, const void* k_cache, const void* v_cache, void* out, Elem elem, const TokenSlot* tokens,
               const std::int32_t* block_table, const AttentionShape& shape, int splits, std::int64_t keys_per_split,
               float* partial_out, float* partial_ml, cudaStream_t stream) {
  if (shape.tokens == 0) return;
  if (shape.head_dim > kAttentionMaxHeadDim || shape.kv_heads <= 0 || shape.q_heads % shape.kv_heads != 0 ||
      shape.block_size < 1 || splits < 1 || splits > 65535 || shape.q_heads > 65535 || shape.tokens > 2147483647)
    throw Error(ErrorKind::Internal,
                cat("attention: unsupported shape (tokens ", shape.tokens, ", heads ", shape.q_heads, "/",
                    shape.kv_heads, ", head_dim ", shape.head_dim, ", splits ", splits, ")"));
  const dim3 grid(unsigned(shape.tokens), unsigned(shape.q_heads), unsigned(splits));
  dispatch(elem, [&](auto t) {
    using T = decltype(t);
    attention_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k_cache),
                                                       static_cast<const T*>(v_cache), static_cast<T*>(out), tokens,
                                                       block_table, shape, keys_per_split, partial_out, partial_ml);
  });
  check_launch("attention");
  if (splits == 1) return;
  dispatch(elem, [&](auto t) {
    using T = decltype(t);
    combine_kernel<T><<<dim3(unsigned(shape.tokens), unsigned(shape.q_heads)), kThreads, 0, stream>>>(
        partial_out, partial_ml, static_cast<T*>(out), shape.head_dim, splits);
  });
  check_launch("attention_combine");
}

}  // namespace strata::cuda
