# OpenBLAS as an IMPORTED target, linked PRIVATE by the CPU backend only. We use Debian's OpenMP build of OpenBLAS
# (libopenblas-openmp-dev): where it computes products (CPUs without AVX-512), the backend runs its own loops on the
# same OpenMP team (cpu::Workers::Team::OpenMP), so two teams never spin against each other on the same cores. Both OpenBLAS builds share the soname
# libopenblas.so.0, so the build RPATH (set by CMake for this non-default directory) is what selects this one.
find_package(OpenMP REQUIRED COMPONENTS CXX)
# CMAKE_PREFIX_PATH entries are searched first: scripts/gpu-validate.sh builds against Debian packages unpacked
# under a prefix on a machine that cannot install them.
set(_strata_blas_roots)
foreach(prefix IN LISTS CMAKE_PREFIX_PATH)
  list(APPEND _strata_blas_roots ${prefix})
endforeach()
list(APPEND _strata_blas_roots /usr)
set(_strata_blas_includes)
set(_strata_blas_libs)
foreach(root IN LISTS _strata_blas_roots)
  foreach(arch x86_64-linux-gnu aarch64-linux-gnu)
    list(APPEND _strata_blas_includes ${root}/include/${arch}/openblas-openmp)
    list(APPEND _strata_blas_libs ${root}/lib/${arch}/openblas-openmp)
  endforeach()
endforeach()
find_path(OPENBLAS_INCLUDE_DIR cblas.h NO_DEFAULT_PATH PATHS ${_strata_blas_includes})
find_library(OPENBLAS_LIBRARY NAMES openblas NO_DEFAULT_PATH PATHS ${_strata_blas_libs})
if(NOT OPENBLAS_INCLUDE_DIR OR NOT OPENBLAS_LIBRARY)
  message(FATAL_ERROR "OpenBLAS (OpenMP build) not found: run scripts/install-deps.sh (libopenblas-openmp-dev)")
endif()
add_library(strata::openblas UNKNOWN IMPORTED)
set_target_properties(strata::openblas PROPERTIES
  IMPORTED_LOCATION "${OPENBLAS_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${OPENBLAS_INCLUDE_DIR}"
  INTERFACE_LINK_LIBRARIES OpenMP::OpenMP_CXX)
message(STATUS "strata: OpenBLAS ${OPENBLAS_LIBRARY}")
