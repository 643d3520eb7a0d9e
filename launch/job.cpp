// Job setup: validation first, then loading; errors end the whole job with the failing rank's message.
#include "launch/job.h"

#include <algorithm>
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
  // Every rank computes the same placement from the same topology: no rank arithmetic elsewhere.
  job.topology = parallel.topology.empty() ? detect_topology(MPI_COMM_WORLD) : Topology::load(parallel.topology);
  STRATA_CHECK(job.topology.world_size() == world_size, Usage, "the topology ", parallel.topology, " describes ",
               job.topology.world_size(), " ranks but this job has ", world_size);
  const Placement placement =
      place_ranks(job.topology, LayoutSizes{parallel.dp, parallel.pp, parallel.tp}, parallel.force);
  if (world_rank == 0)
    for (const auto& warning : placement.warnings) log_warn(warning, " (running anyway: --force)");
  const LayoutSizes sizes = placement.sizes;
  job.layout = std::make_unique<ParallelLayout>(sizes, placement.ranks_by_position, world_rank);
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
  job.tokenizer =
      make_tokenizer(job.manifest.tokenizer, manifest_path(model_dir),
                     job.manifest.source.is_object() ? job.manifest.source.value("generation_config", nlohmann::json())
                                                     : nlohmann::json());
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

namespace strata {

std::string plan_table(const Topology& topology, const ParallelLayout& layout, const ModelConfig& config,
                       const StageLimits& limits) {
  const LayoutSizes& sizes = layout.sizes();
  auto bytes = [](double b) {
    char text[32];
    if (b >= 1e6)
      std::snprintf(text, sizeof text, "%.1f MB", b / 1e6);
    else if (b >= 1e3)
      std::snprintf(text, sizeof text, "%.1f KB", b / 1e3);
    else
      std::snprintf(text, sizeof text, "%.0f B", b);
    return std::string(text);
  };
  auto node_index = [&](int rank) {
    for (std::size_t n = 0; n < topology.nodes.size(); ++n)
      for (int r : topology.nodes[n].ranks)
        if (r == rank) return int(n);
    return -1;
  };
  std::ostringstream out;
  out << "plan: " << sizes.world() << " ranks = dp " << sizes.dp << " x pp " << sizes.pp << " x tp " << sizes.tp
      << " on " << topology.nodes.size() << " node(s), inter-node fabric " << topology.fabric() << "\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-5s %-16s %-5s %-4s %-4s %-4s %-8s %-10s %-28s %s\n", "rank", "host", "local",
                "dp", "pp", "tp", "layers", "memory", "TP all-reduce per token", "pipeline send per token");
  out << line;
  const double hidden_bytes = double(config.hidden_size) * 4;
  for (int rank = 0; rank < sizes.world(); ++rank) {
    const NodeTopology& node = topology.node_of(rank);
    const int local = int(std::find(node.ranks.begin(), node.ranks.end(), rank) - node.ranks.begin());
    const ParallelLayout at(
        sizes,
        [&] {
          std::vector<int> order(static_cast<std::size_t>(sizes.world()));
          for (int d = 0; d < sizes.dp; ++d)
            for (int p = 0; p < sizes.pp; ++p)
              for (int t = 0; t < sizes.tp; ++t)
                order[std::size_t((d * sizes.pp + p) * sizes.tp + t)] = layout.rank_of(d, p, t);
          return order;
        }(),
        rank);
    const ShardPlan plan(config, {sizes.tp, at.tp_rank(), sizes.pp, at.pp_rank()});
    const StageMemory memory = estimate_stage_memory(plan, limits);
    // Ring all-reduce: each rank sends 2 (tp - 1) / tp of the buffer; two per layer (attention, MLP), one more for
    // the embedding on the first stage.
    const double reduces = 2.0 * double(plan.local_layers()) + (at.is_first_stage() ? 1 : 0);
    const double tp_bytes = sizes.tp == 1 ? 0 : reduces * hidden_bytes * 2.0 * (sizes.tp - 1) / sizes.tp;
    bool tp_crosses = false;
    for (int peer : at.tp_group()) tp_crosses = tp_crosses || node_index(peer) != node_index(rank);
    std::string tp_text = sizes.tp == 1 ? "-" : bytes(tp_bytes) + (tp_crosses ? " (inter-node!)" : " (intra-node)");
    std::string pp_text = "-";
    if (!at.is_last_stage()) {
      const bool crosses = node_index(at.next_stage_rank()) != node_index(rank);
      pp_text = bytes(hidden_bytes) + " to rank " + std::to_string(at.next_stage_rank()) +
                (crosses ? " (inter-node " + topology.fabric() + ")" : " (intra-node)");
    }
    const std::string layers = std::to_string(plan.layer_begin()) + "-" + std::to_string(plan.layer_end() - 1);
    std::snprintf(line, sizeof line, "%-5d %-16s %-5d %-4d %-4d %-4d %-8s %-10s %-28s %s\n", rank,
                  node.hostname.c_str(), local, at.dp_rank(), at.pp_rank(), at.tp_rank(), layers.c_str(),
                  bytes(double(memory.total())).c_str(), tp_text.c_str(), pp_text.c_str());
    out << line;
  }
  return out.str();
}

}  // namespace strata
