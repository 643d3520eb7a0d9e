# Test registration. One helper for GoogleTest executables, one for Python-driven CLI tests.
#
#   strata_add_test(NAME n SOURCES s... [LIBS l...] [MPI_RANKS n] [TIMEOUT s])
#     MPI_RANKS: launched with mpiexec -n n --oversubscribe; the test binary itself fails when the world size it
#     got differs (a test that cannot get its ranks fails, it never quietly skips).
#   strata_add_script_test(NAME n SCRIPT file [ARGS a...] [TIMEOUT s])
#     Runs a Python 3 script (Debian's, with NumPy and h5py) with --strata, --mpiexec and --workdir arguments.
# Every test is also wrapped in `timeout -s KILL`, so a hang is a failure, never a stuck CI run.
find_package(GTest REQUIRED)

set(STRATA_PYTHON /usr/bin/python3 CACHE FILEPATH "Python with NumPy and h5py (Debian's) for reference tests")
execute_process(COMMAND ${STRATA_PYTHON} -c "import numpy, h5py" RESULT_VARIABLE _strata_py_ok OUTPUT_QUIET ERROR_QUIET)
if(NOT _strata_py_ok EQUAL 0)
  message(FATAL_ERROR "${STRATA_PYTHON} cannot import numpy and h5py: run scripts/install-deps.sh")
endif()

# Oversubscription and yielding: CI has 2 cores and tests run up to 4 ranks. Root is allowed (CI runs as root).
set(STRATA_MPI_ENV
  OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none)

add_library(strata_mpi_test_main STATIC ${PROJECT_SOURCE_DIR}/tests/mpi/mpi_test_main.cpp)
target_link_libraries(strata_mpi_test_main PUBLIC GTest::gtest MPI::MPI_CXX strata_base)

function(strata_add_test)
  cmake_parse_arguments(T "" "NAME;MPI_RANKS;TIMEOUT" "SOURCES;LIBS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} strata_warnings)
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  if(T_MPI_RANKS)
    target_link_libraries(${T_NAME} PRIVATE strata_mpi_test_main)
    add_test(NAME ${T_NAME}
             COMMAND timeout -s KILL ${T_TIMEOUT} ${MPIEXEC_EXECUTABLE} -n ${T_MPI_RANKS} --oversubscribe
                     $<TARGET_FILE:${T_NAME}> --expect-ranks=${T_MPI_RANKS})
  else()
    target_link_libraries(${T_NAME} PRIVATE GTest::gtest_main)
    add_test(NAME ${T_NAME} COMMAND timeout -s KILL ${T_TIMEOUT} $<TARGET_FILE:${T_NAME}>)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES TIMEOUT ${T_TIMEOUT} ENVIRONMENT "${STRATA_MPI_ENV}")
endfunction()

function(strata_add_script_test)
  cmake_parse_arguments(T "" "NAME;SCRIPT;TIMEOUT" "ARGS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set(workdir ${CMAKE_CURRENT_BINARY_DIR}/work/${T_NAME})
  add_test(NAME ${T_NAME}
           COMMAND timeout -s KILL ${T_TIMEOUT} ${STRATA_PYTHON} ${T_SCRIPT} --strata $<TARGET_FILE:strata>
                   --mpiexec ${MPIEXEC_EXECUTABLE} --workdir ${workdir} ${T_ARGS})
  set_tests_properties(${T_NAME} PROPERTIES TIMEOUT ${T_TIMEOUT} ENVIRONMENT "${STRATA_MPI_ENV}")
endfunction()
