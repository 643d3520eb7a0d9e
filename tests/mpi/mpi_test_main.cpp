// main() for GoogleTest programs launched under mpiexec: MPI up, the world size checked against --expect-ranks
// (fail, never skip, when the launcher gave other than what the test asked for), output from rank 0 only, and the
// exit code agreed by every rank (one rank's failure fails the test everywhere).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int expected = -1;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--expect-ranks=", 15) == 0) expected = std::stoi(argv[i] + 15);
  if (expected != size) {
    std::fprintf(stderr, "rank %d: this test needs %d MPI ranks but runs on %d\n", rank, expected, size);
    MPI_Finalize();
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed) std::fprintf(stderr, "rank %d: tests failed on this rank\n", rank);
  MPI_Finalize();
  return any_failed;
}
