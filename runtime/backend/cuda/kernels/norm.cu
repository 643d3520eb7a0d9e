// RMSNorm (plain and fused with the residual add), residual add and bias add. One block per row for the norms:
// fp32 sum of squares, the row read once more to scale (hidden sizes are a few thousand: it stays in L1/L2).
#include "runtime/backend/cuda/kernels/common.cuh"

namespace strata::cuda {
namespace {

constexpr int kNormThreads = 256;

// Fused = true: residual += x first (stored rounded to T, and the norm reads the rounded value, as a framework
// keeping the residual stream in T would).
template <typename T, typename W, bool Fused>
__global__ void rms_norm_kernel(T* residual, const T* x, const W* weight, T* y, std::int64_t width, float eps) {
  __shared__ float scratch[32];
  const std::int64_t base = std::int64_t(blockIdx.x) * width;
  float sum = 0.0f;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    float v;
    if (Fused) {
      const float r = load(residual, base + i) + load(x, base + i);
      store(residual, base + i, r);
      v = load(residual, base + i);  // the rounded value
    } else {
      v = load(x, base + i);
    }
    sum += v * v;
  }
  const float total = block_sum(sum, scratch);
  const float inv = rsqrtf(total / float(width) + eps);
  const T* src = Fused ? residual : x;
  // Each thread rereads only the elements it wrote itself (same i stride), so no sync is needed for residual.
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x)
    store(y, base + i, load(src, base + i) * inv * load(weight, i));
}

template <typename T>
__global__ void add_kernel(T* y, const T* x, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    store(y, i, load(y, i) + load(x, i));
}

// The fp32 GEMM result plus the bias, rounded once to T (acc may alias y when T is float).
template <typename T, typename B>
__global__ void add_bias_kernel(const float* acc, const B* bias, T* y, std::int64_t n, std::int64_t width) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    store(y, i, acc[i] + load(bias, i % width));
}

template <bool Fused>
void launch_norm(void* residual, const void* x, const void* weight, void* y, Elem act, Elem wt, std::int64_t rows,
                 std::int64_t width, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch(act, [&](auto a) {
    using T = decltype(a);
    dispatch(wt, [&](auto w) {
      using W = decltype(w);
      rms_norm_kernel<T, W, Fused>
          <<<unsigned(rows), kNormThreads, 0, stream>>>(static_cast<T*>(residual), static_cast<const T*>(x),
                                                        static_cast<const W*>(weight), static_cast<T*>(y), width, eps);
    });
  });
  check_launch(Fused ? "rms_norm_residual" : "rms_norm");
}

}  // namespace

void rms_norm(const void* x, const void* weight, void* y, Elem act, Elem wt, std::int64_t rows, std::int64_t width,
              float eps, cudaStream_t stream) {
  launch_norm<false>(nullptr, x, weight, y, act, wt, rows, width, eps, stream);
}

void rms_norm_residual(void* residual, const void* x, const void* weight, void* y, Elem act, Elem wt, std::int64_t rows,
                       std::int64_t width, float eps, cudaStream_t stream) {
  launch_norm<true>(residual, x, weight, y, act, wt, rows, width, eps, stream);
}

void add(void* y, const void* x, Elem elem, std::int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch(elem, [&](auto t) {
    using T = decltype(t);
    add_kernel<T><<<blocks_for(n, 256), 256, 0, stream>>>(static_cast<T*>(y), static_cast<const T*>(x), n);
  });
  check_launch("add");
}

void add_bias(const float* acc, const void* bias, Elem bias_elem, void* y, Elem y_elem, std::int64_t rows,
              std::int64_t width, cudaStream_t stream) {
  const std::int64_t n = rows * width;
  if (n == 0) return;
  dispatch(y_elem, [&](auto t) {
    using T = decltype(t);
    dispatch(bias_elem, [&](auto b) {
      using B = decltype(b);
      add_bias_kernel<T, B>
          <<<blocks_for(n, 256), 256, 0, stream>>>(acc, static_cast<const B*>(bias), static_cast<T*>(y), n, width);
    });
  });
  check_launch("add_bias");
}

}  // namespace strata::cuda
