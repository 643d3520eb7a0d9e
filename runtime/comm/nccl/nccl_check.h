// STRATA_NCCL_CHECK: the NCCL instance of the check-macro family (names the call and the place). Private to
// runtime/comm/nccl (it includes nccl.h). ncclInProgress is not a failure here: non-blocking communicators return
// it while an operation is still being set up, and the caller then polls ncclCommGetAsyncError.
#pragma once
#include <nccl.h>

#include <string>

#include "runtime/base/error.h"

#define STRATA_NCCL_CHECK(statement)                                                                  \
  STRATA_LIBRARY_CHECK(                                                                               \
      "NCCL", Communication, statement, ncclResult_t,                                                 \
      [](ncclResult_t s) { return s == ncclSuccess || s == ncclInProgress; },                         \
      [](ncclResult_t s) {                                                                            \
        return std::string(ncclGetErrorString(s)) + " (ncclResult_t " + std::to_string(int(s)) + ")"; \
      })
