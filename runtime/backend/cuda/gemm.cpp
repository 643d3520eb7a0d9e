// cuBLAS GEMM for Backend::linear; see gemm.h. Row-major y[T,N] = x[T,K] w[N,K]^T is, in cuBLAS's column-major
// terms, Y^T (N x T, ld N) = op_T(W as K x N, ld K) . X^T (K x T, ld K).
#include "runtime/backend/cuda/gemm.h"

#include <climits>

#include "runtime/base/error.h"

namespace strata::cuda {
namespace {

constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;  // what cuBLAS recommends for Hopper

cudaDataType_t cuda_type(Elem e) {
  switch (e) {
    case Elem::F32:
      return CUDA_R_32F;
    case Elem::F16:
      return CUDA_R_16F;
    case Elem::BF16:
      return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

}  // namespace

Gemm::Gemm(cudaStream_t stream) : handle_(make_cublas()), workspace_(device_alloc(kWorkspaceBytes)) {
  STRATA_CUBLAS_CHECK(cublasSetStream(handle_.get(), stream));
  STRATA_CUBLAS_CHECK(cublasSetWorkspace(handle_.get(), workspace_.get(), kWorkspaceBytes));
  // Device-side alpha/beta would be needed for graph capture with changing scalars; ours are constants on the host.
  STRATA_CUBLAS_CHECK(cublasSetPointerMode(handle_.get(), CUBLAS_POINTER_MODE_HOST));
}

void Gemm::linear(const void* x, const void* w, void* y, Elem in, Elem out, std::int64_t tokens, std::int64_t n,
                  std::int64_t k) {
  STRATA_CHECK(tokens <= INT_MAX && n <= INT_MAX && k <= INT_MAX, Internal, "linear: dimensions ", tokens, " x ", n,
               " x ", k, " exceed cuBLAS's int range");
  STRATA_CHECK(out == in || out == Elem::F32, Internal, "linear: output dtype must be the input's or f32");
  if (tokens == 0 || n == 0) return;
  const float alpha = 1.0f, beta = 0.0f;
  const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;  // fp32 accumulation for every input type (no TF32)
  STRATA_CUBLAS_CHECK(cublasGemmEx(handle_.get(), CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(tokens), int(k), &alpha, w,
                                   cuda_type(in), int(k), x, cuda_type(in), int(k), &beta, y, cuda_type(out), int(n),
                                   compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace strata::cuda
