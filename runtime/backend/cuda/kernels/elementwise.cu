// Row-wise kernels without reductions: rotary embedding, SwiGLU, the vocab-parallel embedding lookup, row gather
// and the KV-cache store.
#include "runtime/backend/cuda/kernels/common.cuh"

namespace strata::cuda {
namespace {

// One thread per (token, head, i < dim/2): rotates the pair (i, i + dim/2). The angle is computed in double, as
// the CPU backend does, so long positions keep their precision.
template <typename T>
__global__ void rope_kernel(T* x, const std::int32_t* positions, const float* inv_freq, std::int64_t tokens,
                            std::int64_t heads, std::int64_t dim) {
  const std::int64_t half = dim / 2, n = tokens * heads * half;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t i = idx % half, row = idx / half;  // row = t * heads + h
    const std::int64_t t = row / heads;
    double s, c;
    sincos(double(positions[t]) * double(inv_freq[i]), &s, &c);
    const float cs = float(c), sn = float(s);
    T* v = x + row * dim;
    const float a = load(v, i), b = load(v, i + half);
    store(v, i, a * cs - b * sn);
    store(v, i + half, b * cs + a * sn);
  }
}

// out = activation(gate) * up, per element of each row's two halves: SiLU (SwiGLU) or GELU's tanh form (GeGLU).
struct Silu {
  __device__ float operator()(float g) const { return g / (1.0f + expf(-g)); }
};
struct GeluTanh {
  __device__ float operator()(float g) const {
    return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
  }
};

template <typename T, typename Activation>
__global__ void gated_kernel(const T* gate_up, T* out, std::int64_t rows, std::int64_t width) {
  const std::int64_t n = rows * width;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = idx / width, i = idx % width;
    const float g = load(gate_up, r * 2 * width + i), u = load(gate_up, r * 2 * width + width + i);
    store(out, idx, Activation()(g) * u);
  }
}

template <typename Activation>
void gated(const void* gate_up, void* out, Elem elem, std::int64_t rows, std::int64_t width, cudaStream_t stream,
           const char* name) {
  const std::int64_t n = rows * width;
  if (n == 0) return;
  dispatch(elem, [&](auto t) {
    using T = decltype(t);
    gated_kernel<T, Activation>
        <<<blocks_for(n, 256), 256, 0, stream>>>(static_cast<const T*>(gate_up), static_cast<T*>(out), rows, width);
  });
  check_launch(name);
}

template <typename T>
__global__ void scale_kernel(T* x, std::int64_t n, float factor, float softcap) {
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const float v = load(x, idx);
    store(x, idx, softcap > 0.0f ? softcap * tanhf(v / softcap) : v * factor);
  }
}

// One thread per column walks the rows in order, so repeated destination rows add without atomics and in the
// same order as the CPU backend.
template <typename T>
__global__ void scatter_add_kernel(const T* src, const std::int32_t* rows, const float* weights, T* dst,
                                   std::int64_t n_rows, std::int64_t width) {
  for (std::int64_t col = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; col < width;
       col += std::int64_t(gridDim.x) * blockDim.x)
    for (std::int64_t i = 0; i < n_rows; ++i) {
      const std::int64_t at = std::int64_t(rows[i]) * width + col;
      store(dst, at, load(dst, at) + weights[i] * load(src, i * width + col));
    }
}

template <typename T, typename O>
__global__ void embedding_kernel(const std::int32_t* ids, const T* table, O* out, std::int64_t tokens,
                                 std::int64_t width, std::int64_t vocab_offset, std::int64_t local_vocab) {
  const std::int64_t n = tokens * width;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t t = idx / width, i = idx % width;
    const std::int64_t row = std::int64_t(ids[t]) - vocab_offset;
    store(out, idx, row >= 0 && row < local_vocab ? load(table, row * width + i) : 0.0f);
  }
}

// Row copy in 4-byte words when rows and pointers allow it (even widths of 2-byte dtypes), bytes otherwise.
template <typename Word>
__global__ void gather_kernel(const Word* src, const std::int32_t* rows, Word* dst, std::int64_t n_rows,
                              std::int64_t row_words) {
  const std::int64_t n = n_rows * row_words;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = idx / row_words, w = idx % row_words;
    dst[idx] = src[std::int64_t(rows[r]) * row_words + w];
  }
}

template <typename T>
__global__ void kv_store_kernel(const T* k, const T* v, T* k_cache, T* v_cache, const TokenSlot* tokens,
                                std::int64_t n_tokens, std::int64_t row, std::int64_t max_len) {
  const std::int64_t n = n_tokens * row;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t t = idx / row, e = idx % row;
    const TokenSlot at = tokens[t];
    const std::int64_t dst = (std::int64_t(at.slot) * max_len + at.pos) * row + e;
    k_cache[dst] = k[idx];
    v_cache[dst] = v[idx];
  }
}

}  // namespace

void rope(void* x, Elem elem, const std::int32_t* positions, const float* inv_freq, std::int64_t tokens,
          std::int64_t heads, std::int64_t dim, cudaStream_t stream) {
  const std::int64_t n = tokens * heads * (dim / 2);
  if (n == 0) return;
  dispatch(elem, [&](auto t) {
    using T = decltype(t);
    rope_kernel<T><<<blocks_for(n, 256), 256, 0, stream>>>(static_cast<T*>(x), positions, inv_freq, tokens, heads, dim);
  });
  check_launch("rope");
}

void swiglu(const void* gate_up, void* out, Elem elem, std::int64_t rows, std::int64_t width, cudaStream_t stream) {
  gated<Silu>(gate_up, out, elem, rows, width, stream, "swiglu");
}

void geglu(const void* gate_up, void* out, Elem elem, std::int64_t rows, std::int64_t width, cudaStream_t stream) {
  gated<GeluTanh>(gate_up, out, elem, rows, width, stream, "geglu");
}

void scale_or_softcap(void* x, Elem elem, std::int64_t n, float factor, float softcap, cudaStream_t stream) {
  if (n == 0) return;
  dispatch(elem, [&](auto t) {
    using T = decltype(t);
    scale_kernel<T><<<blocks_for(n, 256), 256, 0, stream>>>(static_cast<T*>(x), n, factor, softcap);
  });
  check_launch("scale_or_softcap");
}

void scatter_add_rows(const void* src, const std::int32_t* rows, const float* weights, void* dst, Elem elem,
                      std::int64_t n_rows, std::int64_t width, cudaStream_t stream) {
  if (n_rows == 0 || width == 0) return;
  dispatch(elem, [&](auto t) {
    using T = decltype(t);
    scatter_add_kernel<T><<<blocks_for(width, 128), 128, 0, stream>>>(static_cast<const T*>(src), rows, weights,
                                                                      static_cast<T*>(dst), n_rows, width);
  });
  check_launch("scatter_add_rows");
}

void embedding(const std::int32_t* ids, const void* table, Elem table_elem, void* out, Elem out_elem,
               std::int64_t tokens, std::int64_t width, std::int64_t vocab_offset, std::int64_t local_vocab,
               cudaStream_t stream) {
  const std::int64_t n = tokens * width;
  if (n == 0) return;
  dispatch(table_elem, [&](auto t) {
    using T = decltype(t);
    dispatch(out_elem, [&](auto o) {
      using O = decltype(o);
      embedding_kernel<T, O><<<blocks_for(n, 256), 256, 0, stream>>>(
          ids, static_cast<const T*>(table), static_cast<O*>(out), tokens, width, vocab_offset, local_vocab);
    });
  });
  check_launch("embedding");
}

void gather_rows(const void* src, const std::int32_t* rows, void* dst, std::int64_t n_rows, std::int64_t row_bytes,
                 cudaStream_t stream) {
  if (n_rows == 0 || row_bytes == 0) return;
  const bool aligned = reinterpret_cast<std::uintptr_t>(src) % 4 == 0 && reinterpret_cast<std::uintptr_t>(dst) % 4 == 0;
  if (row_bytes % 4 == 0 && aligned) {
    const std::int64_t words = row_bytes / 4;
    gather_kernel<std::uint32_t><<<blocks_for(n_rows * words, 256), 256, 0, stream>>>(
        static_cast<const std::uint32_t*>(src), rows, static_cast<std::uint32_t*>(dst), n_rows, words);
  } else {
    gather_kernel<std::uint8_t><<<blocks_for(n_rows * row_bytes, 256), 256, 0, stream>>>(
        static_cast<const std::uint8_t*>(src), rows, static_cast<std::uint8_t*>(dst), n_rows, row_bytes);
  }
  check_launch("gather_rows");
}

void kv_store(const void* k, const void* v, void* k_cache, void* v_cache, Elem elem, const TokenSlot* tokens,
              std::int64_t n_tokens, std::int64_t row, std::int64_t max_len, cudaStream_t stream) {
  const std::int64_t n = n_tokens * row;
  if (n == 0) return;
  dispatch(elem, [&](auto t) {
    using T = decltype(t);
    kv_store_kernel<T><<<blocks_for(n, 256), 256, 0, stream>>>(static_cast<const T*>(k), static_cast<const T*>(v),
                                                               static_cast<T*>(k_cache), static_cast<T*>(v_cache),
                                                               tokens, n_tokens, row, max_len);
  });
  check_launch("kv_store");
}

}  // namespace strata::cuda
