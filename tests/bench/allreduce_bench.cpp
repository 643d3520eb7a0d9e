// The MPI communicator's collectives alone, for docs/performance.md: the time of one sum of N floats over the ranks
// (all_reduce_sum), for a batch-1, -16 and -64 decode step's activations of a 768-wide model, and a 256- and
// 2048-token prefill step's; and sequence parallelism's two halves of it: the reduce-scatter of the same floats (in
// the group's shared workspace where it has one) and the all-gather of each rank's share of the rows as Q8_0 blocks.
//   mpiexec -n 2 strata_allreduce_bench [--width W]
// Run it with STRATA_MPI_SHM_ALLREDUCE=0 for MPI_Allreduce instead of the shared-memory sum (shm_all_reduce.h), and
// MPI's sends instead of the shared workspace (shm_rows.h).
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
  // Room for the largest step's rows padded to whole shares (ranks x ceil(2048 / ranks)).
  const std::int64_t ranks = world->size(), most = ranks * ((2048 + ranks - 1) / ranks) * width;
  Buffer workspace = world->shared_workspace(std::size_t(most) * sizeof(float));
  std::vector<float> own(workspace.data() ? 0 : std::size_t(most)), share(std::size_t(most / ranks + width));
  float* data = workspace.data() ? static_cast<float*>(workspace.data()) : own.data();
  std::fill(data, data + most, 0.0f);  // summed again and again: zeros stay zeros
  if (world->rank() == 0)
    std::printf("reduce-scatter: %s\n", workspace.data() ? "in the shared workspace" : "MPI sends");
  for (const std::int64_t tokens : {1, 16, 64, 256, 2048}) {
    const std::int64_t n = tokens * width, rows = (tokens + ranks - 1) / ranks;
    const int calls = int(std::max<std::int64_t>(20, 30000000 / n));
    // Microseconds per call of one collective: the best of three rounds of `calls`, after a tenth of them.
    const auto time = [&](auto&& call) {
      for (int c = 0; c < calls / 10; ++c) call();
      double best = 1e30;
      for (int round = 0; round < 3; ++round) {
        world->barrier();
        const auto t0 = std::chrono::steady_clock::now();
        for (int c = 0; c < calls; ++c) call();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls);
      }
      return best * 1e6;
    };
    const double all_reduce = time([&] { world->all_reduce_sum(TensorView{data, {n}, DType::F32}); });
    const double reduce_scatter = time([&] {
      world->reduce_scatter_sum(TensorView{data, {ranks * rows, width}, DType::F32},
                                even_row_starts(ranks, ranks * rows),
                                TensorView{share.data(), {rows, width}, DType::F32});
    });
    const std::size_t blocks = std::size_t(rows * width / 32) * 34;  // a share's rows as Q8_0 blocks
    std::vector<char> gathered(blocks * std::size_t(ranks));
    const double gather = time(
        [&] { world->all_gather(gathered.data() + std::size_t(world->rank()) * blocks, gathered.data(), blocks); });
    if (world->rank() == 0)
      std::printf(
          "%5lld tokens x %lld: %9.2f us per all-reduce (%.1f KB), %9.2f per reduce-scatter, %9.2f per all-gather "
          "of Q8_0 rows (%.1f KB a rank)\n",
          static_cast<long long>(tokens), static_cast<long long>(width), all_reduce, double(n) * 4 / 1024,
          reduce_scatter, gather, double(blocks) / 1024);
  }
}
