// STRATA_CUBLAS_CHECK: the cuBLAS instance of the one check-macro family (names the call, the status and the place).
#pragma once
#include <cublas_v2.h>

#include <string>

#include "runtime/base/error.h"

#define STRATA_CUBLAS_CHECK(statement)                                                            \
  STRATA_LIBRARY_CHECK(                                                                           \
      "cuBLAS", Cuda, statement, cublasStatus_t,                                                  \
      [](cublasStatus_t status_) { return status_ == CUBLAS_STATUS_SUCCESS; },                    \
      [](cublasStatus_t status_) {                                                                \
        return std::string(cublasGetStatusName(status_)) + ": " + cublasGetStatusString(status_); \
      })
