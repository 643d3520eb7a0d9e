// See mpi_job.h.
#include "launch/mpi_job.h"

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>

#include "runtime/base/log.h"
#include "runtime/comm/mpi/mpi_communicator.h"
#include "topology/gpus.h"
#ifdef STRATA_WITH_CUDA
#include "runtime/backend/cuda/device_info.h"
#endif

namespace strata {
namespace {

// SIGTERM: the launcher (mpirun forwarding a Ctrl-C or its own timeout, Slurm preempting or cancelling) is ending
// the job. Results are written one whole record per write(2), so what is on disk is complete; say which rank was
// told to stop, then exit as the signal would have made us.
char g_sigterm_message[512] = "strata: terminated by SIGTERM\n";

void on_sigterm(int) {
  const ssize_t ignored = ::write(STDERR_FILENO, g_sigterm_message, std::strlen(g_sigterm_message));
  (void)ignored;
  ::_exit(128 + SIGTERM);
}

}  // namespace

std::string describe_error(const std::exception& e) {
  const auto* error = dynamic_cast<const Error*>(&e);
  const std::string where = error ? error->where() : "";
  return where.empty() ? std::string(e.what()) : cat(e.what(), " (at ", where, ")");
}

void name_this_rank(const std::string& prefix) {
  set_log_prefix(prefix);
  const std::string text = cat("[", prefix, "] ", prefix,
                               " was terminated by SIGTERM (the launcher or the batch system is ending the job); "
                               "results already written are complete records\n");
  std::snprintf(g_sigterm_message, sizeof g_sigterm_message, "%s", text.c_str());
  struct sigaction action {};
  action.sa_handler = on_sigterm;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
}

int run_as_mpi_job(int argc, char** argv, const std::function<int(const NodeInfo&)>& body) {
  std::unique_ptr<MpiEnvironment> mpi;
  try {
    mpi = std::make_unique<MpiEnvironment>(&argc, &argv);
  } catch (const std::exception& e) {
    log_line(LogLevel::Error, describe_error(e));
    return 1;
  }
  try {
    const NodeInfo node = discover_node(MPI_COMM_WORLD);
    name_this_rank(cat("rank ", mpi->world_rank(), " ", node.hostname));
    const int code = body(node);
    STRATA_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));  // nobody finalizes while another rank may still fail
    return code;
  } catch (const std::exception& e) {
    log_line(LogLevel::Error, describe_error(e));
    MpiEnvironment::abort_job(1);
  }
}

DetectOptions detect_options() {
  DetectOptions options;
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES")) options.cuda_visible_devices = std::string(visible);
  // Another NVML (a driver outside the loader's path), or a name that cannot load to use CUDA's view instead.
  if (const char* nvml = std::getenv("STRATA_NVML_LIBRARY")) options.nvml_library = nvml;
#ifdef STRATA_WITH_CUDA
  options.cuda_fallback = [] {
    std::vector<CudaGpu> gpus;
    for (const auto& d : cuda_devices()) gpus.push_back(CudaGpu{d.name, std::int64_t(d.memory_bytes), d.pci_bus_id});
    std::vector<std::vector<CudaPeer>> peers;
    for (const auto& row : cuda_peer_access()) {
      peers.emplace_back();
      for (const auto& p : row) peers.back().push_back(CudaPeer{p.access, p.native_atomics});
    }
    return gpus_from_cuda(gpus, peers);
  };
#endif
  return options;
}

int with_topology(const std::string& description, int argc, char** argv,
                  const std::function<void(const Topology&)>& show) {
  if (!description.empty()) {
    try {
      show(Topology::load(description));
      return 0;
    } catch (const std::exception& e) {
      log_line(LogLevel::Error, describe_error(e));
      return 1;
    }
  }
  return run_as_mpi_job(argc, argv, [&](const NodeInfo&) {
    const Topology topology = detect_topology(MPI_COMM_WORLD, detect_options());
    int rank = 0;
    STRATA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    if (rank == 0) show(topology);
    return 0;
  });
}

}  // namespace strata
