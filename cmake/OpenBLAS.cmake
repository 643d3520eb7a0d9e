# OpenBLAS as an IMPORTED target, linked PRIVATE by the CPU backend only. We use Debian's OpenMP build of OpenBLAS
# (libopenblas-openmp-dev) so that its GEMM threads and our own OpenMP kernels (GEMV, attention) share one thread
# pool instead of two pools spinning against each other on the same cores. Both OpenBLAS builds share the soname
# libopenblas.so.0, so the build RPATH (set by CMake for this non-default directory) is what selects this one.
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_path(OPENBLAS_INCLUDE_DIR cblas.h NO_DEFAULT_PATH
  PATHS /usr/include/x86_64-linux-gnu/openblas-openmp /usr/include/aarch64-linux-gnu/openblas-openmp)
find_library(OPENBLAS_LIBRARY NAMES openblas NO_DEFAULT_PATH
  PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/aarch64-linux-gnu/openblas-openmp)
if(NOT OPENBLAS_INCLUDE_DIR OR NOT OPENBLAS_LIBRARY)
  message(FATAL_ERROR "OpenBLAS (OpenMP build) not found: run scripts/install-deps.sh (libopenblas-openmp-dev)")
endif()
add_library(strata::openblas UNKNOWN IMPORTED)
set_target_properties(strata::openblas PROPERTIES
  IMPORTED_LOCATION "${OPENBLAS_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${OPENBLAS_INCLUDE_DIR}"
  INTERFACE_LINK_LIBRARIES OpenMP::OpenMP_CXX)
message(STATUS "strata: OpenBLAS ${OPENBLAS_LIBRARY}")
