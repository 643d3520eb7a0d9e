// The MPI communicator's all_reduce_sum alone, for docs/performance.md: the time of one sum of N floats over the
// ranks, for a batch-1, -16 and -64 decode step's activations of a 768-wide model, and a 2048-token prefill step's:
//   mpiexec -n 2 strata_allreduce_bench [--width W]
// Run it with STRATA_MPI_SHM_ALLREDUCE=0 for MPI_Allreduce instead of the shared-memory sum (shm_all_reduce.h).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "runtime/comm/mpi/mpi_communicator.h"

int main(int argc, char** argv) {
  using namespace strata;
  MpiEnvironment mpi(&argc, &argv);
  std::int64_t width = 768;
  if (argc == 3 && std::string(argv[1]) == "--width") width = std::atoll(argv[2]);
  if (width < 1 || (argc != 1 && argc != 3)) {
    std::fprintf(stderr, "usage: mpiexec -n R %s [--width W]\n", argv[0]);
    return 2;
  }
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  const char* setting = std::getenv("STRATA_MPI_SHM_ALLREDUCE");
  if (world->rank() == 0)
    std::printf("%d ranks, %s\n", world->size(),
                setting && std::string(setting) == "0" ? "MPI_Allreduce (STRATA_MPI_SHM_ALLREDUCE=0)"
                                                       : "shared memory where the ranks share a node");
  for (const std::int64_t tokens : {1, 16, 64, 256, 2048}) {
    const std::int64_t n = tokens * width;
    std::vector<float> values(std::size_t(n), 0.0f);  // summed in place again and again: zeros stay zeros
    const TensorView view{values.data(), {n}, DType::F32};
    const int calls = int(std::max<std::int64_t>(20, 30000000 / n));
    for (int c = 0; c < calls / 10; ++c) world->all_reduce_sum(view);  // warm-up
    double best = 1e30;
    for (int round = 0; round < 3; ++round) {
      world->barrier();
      const auto t0 = std::chrono::steady_clock::now();
      for (int c = 0; c < calls; ++c) world->all_reduce_sum(view);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls);
    }
    if (world->rank() == 0)
      std::printf("%5lld tokens x %lld: %9.2f us per all-reduce (%.1f KB)\n", static_cast<long long>(tokens),
                  static_cast<long long>(width), best * 1e6, double(n) * 4 / 1024);
  }
}
