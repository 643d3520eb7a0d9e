// STRATA_CUDA_CHECK: the CUDA runtime instance of the one check-macro family (names the call and the place).
#pragma once
#include <cuda_runtime.h>

#include "runtime/base/error.h"

#define STRATA_CUDA_CHECK(statement)                                                                    \
  STRATA_LIBRARY_CHECK(                                                                                 \
      "CUDA", Cuda, statement, cudaError_t, [](cudaError_t status_) { return status_ == cudaSuccess; }, \
      [](cudaError_t status_) { return std::string(cudaGetErrorName(status_)) + ": " + cudaGetErrorString(status_); })
