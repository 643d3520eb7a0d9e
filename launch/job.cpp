// Job setup: validation first, then loading; errors end the whole job with the failing rank's message.
#include "launch/job.h"

#include <fstream>
#include <sstream>
#include <thread>

#include "layers/checkpoint_weights.h"
#include "runtime/base/log.h"
#ifdef STRATA_WITH_CUDA
#include "runtime/backend/cuda/device_info.h"
#endif

namespace strata {

int run_as_mpi_job(int argc, char** argv, const std::function<int(Job&)>& body) {
  std::unique_ptr<MpiEnvironment> mpi;
  try {
    mpi = std::make_unique<MpiEnvironment>(&argc, &argv);
  } catch (const std::exception& e) {
    log_line(LogLevel::Error, e.what());
    return 1;
  }
  Job job;
  try {
    job.node = discover_node(MPI_COMM_WORLD);
    set_log_prefix(cat("rank ", mpi->world_rank(), " ", job.node.hostname));
    const int code = body(job);
    STRATA_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));  // nobody finalizes while another rank may still fail
    return code;
  } catch (const std::exception& e) {
    log_line(LogLevel::Error, e.what());
    MpiEnvironment::abort_job(1);
  }
}

void prepare_job(Job& job, const std::string& model_dir, const ParallelOptions& parallel) {
  int world_size = 0, world_rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  STRATA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  LayoutSizes sizes{parallel.dp, parallel.pp, parallel.tp};
  if (sizes.dp == 0) {
    STRATA_CHECK(world_size % (sizes.pp * sizes.tp) == 0, Usage, "world size ", world_size,
                 " is not a multiple of pipeline-parallel x tensor-parallel = ", sizes.pp, " x ", sizes.tp, " = ",
                 sizes.pp * sizes.tp, "; launch a multiple of ", sizes.pp * sizes.tp, " ranks");
    sizes.dp = world_size / (sizes.pp * sizes.tp);
  }
  job.layout = std::make_unique<ParallelLayout>(sizes, world_size, world_rank);
  set_log_prefix(cat("rank ", world_rank, " (", job.layout->coordinates(), ") ", job.node.hostname));
  job.groups = make_mpi_groups(*job.layout);

  if (parallel.device == "cuda") {
#ifdef STRATA_WITH_CUDA
    const auto gpus = cuda_devices();
    throw Error(ErrorKind::Usage, cat("--device cuda: this build sees ", gpus.size(),
                                      " GPU(s) but the CUDA backend is not implemented yet; use --device cpu"));
#else
    throw Error(ErrorKind::Usage, "--device cuda: this strata was built without CUDA (STRATA_CUDA=OFF or no nvcc)");
#endif
  }

  job.manifest = Manifest::read(model_dir);
  job.config = ModelConfig::from_json(job.manifest.model, manifest_path(model_dir));
  check_split(job.config, sizes.tp, sizes.pp);  // before anything loads, with the numbers
  job.tokenizer = make_tokenizer(job.manifest.tokenizer, manifest_path(model_dir));
  STRATA_CHECK(job.tokenizer->vocab_size() <= job.config.vocab_size, Checkpoint, manifest_path(model_dir),
               ": the tokenizer has ", job.tokenizer->vocab_size(), " tokens but the model's vocab_size is only ",
               job.config.vocab_size);
  job.plan = std::make_unique<ShardPlan>(
      job.config, StageCoordinates{sizes.tp, job.layout->tp_rank(), sizes.pp, job.layout->pp_rank()});
}

namespace {
std::int64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::int64_t value = 0;
  std::string unit;
  while (meminfo >> key >> value >> unit)
    if (key == "MemAvailable:") return value * 1024;
  return -1;
}

std::string gib(std::int64_t bytes) {
  std::ostringstream out;
  out.precision(2);
  out << std::fixed << double(bytes) / double(1ll << 30) << " GiB";
  return out.str();
}
}  // namespace

void check_memory(const Job& job, const StageLimits& limits) {
  const StageMemory need = estimate_stage_memory(*job.plan, limits);
  const std::int64_t available = available_memory_bytes();
  if (available < 0) return;  // no /proc/meminfo: nothing to check against
  const std::int64_t share = available / std::max(1, job.node.local_size);
  STRATA_CHECK(need.total() <= share, Memory, "this rank needs ", gib(need.total()), " (weights ", gib(need.weights),
               ", KV cache ", gib(need.kv_cache), ", workspace ", gib(need.workspace), ") but its node has ",
               gib(available), " available for ", job.node.local_size, " ranks (", gib(share),
               " each); use a larger --tensor-parallel-size or --pipeline-parallel-size, or a smaller "
               "--max-batch-size, --max-model-len or --max-num-batched-tokens");
}

std::vector<std::string> load_stage(Job& job, const std::string& model_dir, const StageLimits& limits) {
  const int threads = cpu_threads_per_rank(job.node);
  const int machine_cores = int(std::thread::hardware_concurrency());
  if (job.node.local_rank == 0 && threads * job.node.local_size < machine_cores)
    log_info("the ", job.node.local_size, " rank(s) on ", job.node.hostname, " use ", threads * job.node.local_size,
             " of ", machine_cores, " cores (the launcher bound each rank to ", threads,
             "); with mpirun add --bind-to socket or --bind-to none to use them all");
  if (!job.backend) job.backend = make_cpu_backend(threads);
  job.stage.reset();  // a reload frees the previous weights first
  CheckpointWeightSource source(model_dir, job.manifest, *job.plan);
  job.stage = std::make_unique<TransformerStage>(*job.plan, source, *job.backend, *job.groups.tp, limits);
  std::string files;
  for (const auto& path : source.opened()) files += (files.empty() ? "" : ", ") + path;
  log_debug("loaded layers ", job.plan->layer_begin(), "-", job.plan->layer_end() - 1, " from ", files, " (", threads,
            " threads)");
  if (job.layout->world_rank() == 0 && (job.manifest.tensor_parallel_size != job.layout->sizes().tp ||
                                        job.manifest.pipeline_parallel_size != job.layout->sizes().pp))
    log_info("resharding on load: checkpoint written for tensor-parallel ", job.manifest.tensor_parallel_size,
             " x pipeline-parallel ", job.manifest.pipeline_parallel_size, ", running ", job.layout->sizes().tp, " x ",
             job.layout->sizes().pp);
  return source.opened();
}

}  // namespace strata
