# NCCL as an IMPORTED target (strata::nccl), found beside the CUDA toolkit (/usr/local/cuda ships nccl.h and
# libnccl.so) or under NCCL_ROOT. Included only when STRATA_WITH_CUDA; linked PRIVATE by runtime/comm/nccl alone.
find_path(NCCL_INCLUDE_DIR nccl.h
  HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}
  PATH_SUFFIXES include)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2  # pip's nvidia-nccl wheels ship only the versioned name
  HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)
if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
  message(FATAL_ERROR "NCCL not found beside CUDA (${CUDAToolkit_LIBRARY_DIR}): install NCCL or set NCCL_ROOT")
endif()
file(STRINGS ${NCCL_INCLUDE_DIR}/nccl.h _strata_nccl_version REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
string(REGEX REPLACE "[^0-9;]" "" _strata_nccl_version "${_strata_nccl_version}")
string(REPLACE ";" "." _strata_nccl_version "${_strata_nccl_version}")
add_library(strata::nccl UNKNOWN IMPORTED)
set_target_properties(strata::nccl PROPERTIES
  IMPORTED_LOCATION "${NCCL_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
message(STATUS "strata: NCCL ${_strata_nccl_version} at ${NCCL_LIBRARY}")
