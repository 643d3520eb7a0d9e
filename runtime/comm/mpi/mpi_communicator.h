// The MPI implementation of Communicator, and the RAII owner of the MPI environment.
// Communicators are duplicated from the parent and set to MPI_ERRORS_RETURN so every failure reaches
// STRATA_MPI_CHECK (which names the call and the place) instead of MPI's default handler.
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "runtime/base/error.h"
#include "runtime/base/parallel_layout.h"
#include "runtime/comm/communicator.h"

namespace strata {

std::string mpi_error_string(int code);

#define STRATA_MPI_CHECK(statement) \
  STRATA_LIBRARY_CHECK(             \
      "MPI", Communication, statement, int, [](int s) { return s == MPI_SUCCESS; }, ::strata::mpi_error_string)

// Owns MPI_Init/MPI_Finalize. Finalize only runs on the normal path; error paths call abort_job().
class MpiEnvironment {
 public:
  MpiEnvironment(int* argc, char*** argv);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  int world_rank() const;
  int world_size() const;
  // Ends every rank of the job now with `code` (MPI_Abort). Never returns.
  [[noreturn]] static void abort_job(int code);
};

// Wraps a duplicate of `parent` (the caller keeps ownership of parent).
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm parent);
// Splits world into the tp, pp and dp groups of `layout`.
CommGroups make_mpi_groups(const ParallelLayout& layout);

}  // namespace strata
