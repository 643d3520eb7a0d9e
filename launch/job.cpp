// Job setup: validation first, then loading; errors end the whole job with the failing rank's message.
#include "launch/job.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "layers/checkpoint_weights.h"
#include "runtime/base/log.h"
#ifdef STRATA_WITH_CUDA
#include "runtime/backend/cuda/cuda_backend.h"
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

StageLimits stage_limits(const LimitOptions& limits, const ModelConfig& config) {
  const auto model_len = std::int32_t(limits.max_model_len ? limits.max_model_len : config.max_position_embeddings);
  return {std::max(limits.max_num_batched_tokens, model_len), limits.max_batch_size, model_len};
}

ModelFit model_fit(const ModelConfig& config, const StageLimits& limits, bool on_gpus, DType stored) {
  ModelFit fit;
  fit.split_problem = [config](int tp, int pp) {
    try {
      check_split(config, tp, pp);
      return std::string();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
  };
  const DType weights = on_gpus ? DType::F32 : stored;  // GPUs: the host-side estimate as before
  fit.bytes_per_rank = [config, limits, weights](int tp, int pp) {
    std::int64_t most = 0;  // stages differ (embedding, head): the busiest decides
    for (int stage = 0; stage < pp; ++stage)
      most = std::max(
          most, estimate_stage_memory(ShardPlan(config, {tp, 0, pp, stage}), limits, weights, DType::F32).total());
    return most;
  };
  fit.on_gpus = on_gpus;
  return fit;
}

namespace {

std::string visible_devices(const DetectOptions& options) {
  return options.cuda_visible_devices ? *options.cuda_visible_devices : std::string("unset");
}

#ifdef STRATA_WITH_CUDA
// "00000000:3B:00.0" (NVML) and "0000:3b:00.0" (CUDA) name the same device: compare the numbers.
bool same_pci_bus(const std::string& a, const std::string& b) {
  unsigned domain[2] = {}, bus[2] = {}, device[2] = {}, function[2] = {};
  const std::string* ids[2] = {&a, &b};
  for (int i = 0; i < 2; ++i)
    if (std::sscanf(ids[i]->c_str(), "%x:%x:%x.%x", &domain[i], &bus[i], &device[i], &function[i]) != 4) return false;
  return domain[0] == domain[1] && bus[0] == bus[1] && device[0] == device[1] && function[0] == function[1];
}
#endif

// --device cuda, one rank per GPU: node-local rank i drives visible GPU i. Where NVML sees the node's GPUs, topology/
// checks the count (naming host, ranks, devices and CUDA_VISIBLE_DEVICES) and the device is then found in CUDA's own
// enumeration by PCI bus id, which does not depend on CUDA_DEVICE_ORDER; without NVML, CUDA's enumeration decides.
void bind_gpu(Job& job, const DetectOptions& options) {
#ifdef STRATA_WITH_CUDA
  const auto gpus = cuda_devices();
  const GpuScan scan = scan_gpus(options.nvml_library);
  if (!scan.devices.empty() || gpus.empty()) {  // with no GPU at all, bind_device says so naming host and ranks
    const NodeTopology& node = job.topology.node_of(job.layout->world_rank());
    const std::string status =
        gpus.empty() ? cat(scan.status, "; CUDA sees no device (CUDA_VISIBLE_DEVICES=", visible_devices(options), ")")
                     : scan.status;
    job.gpu_binding = bind_device(BindRequest{node.hostname, node.ranks, job.node.local_rank,
                                              apply_visible_devices(scan.devices, options.cuda_visible_devices),
                                              int(scan.devices.size()), options.cuda_visible_devices, status});
    for (const auto& gpu : gpus)
      if (same_pci_bus(gpu.pci_bus_id, job.gpu_binding->pci_bus_id)) job.gpu = gpu.index;
  }
  STRATA_CHECK(!gpus.empty(), Usage, "--device cuda: no GPU visible to CUDA on ", job.node.hostname,
               " (CUDA_VISIBLE_DEVICES=", visible_devices(options), "; ", scan.status, ")");
  STRATA_CHECK(job.node.local_size <= int(gpus.size()), Usage, "--device cuda: ", job.node.hostname, " runs ",
               job.node.local_size, " ranks but CUDA sees ", gpus.size(),
               " GPU(s) (CUDA_VISIBLE_DEVICES=", visible_devices(options),
               "); run one rank per GPU (fewer ranks per node, or more nodes)");
  if (job.gpu < 0) job.gpu = gpus[std::size_t(job.node.local_rank)].index;
  const CudaDevice& gpu = gpus[std::size_t(job.gpu)];
  log_info("rank ", job.layout->world_rank(), ": GPU ", gpu.index, " (", gpu.name, ", PCI ", gpu.pci_bus_id,
           ", CUDA_VISIBLE_DEVICES=", visible_devices(options), ")");
#else
  (void)job;
  (void)options;
  throw Error(ErrorKind::Usage, "--device cuda: this strata was built without CUDA (STRATA_CUDA=OFF or no nvcc)");
#endif
}

}  // namespace

void prepare_job(Job& job, const std::string& model_dir, const ParallelOptions& parallel,
                 const std::function<StageLimits(const ModelConfig&)>& limits_for) {
  int world_size = 0, world_rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  STRATA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  job.manifest = Manifest::read(model_dir);
  job.config = ModelConfig::from_json(job.manifest.model, manifest_path(model_dir));
  // Every rank computes the same placement from the same topology: no rank arithmetic elsewhere.
  const DetectOptions options = detect_options();
  job.topology =
      parallel.topology.empty() ? detect_topology(MPI_COMM_WORLD, options) : Topology::load(parallel.topology);
  STRATA_CHECK(job.topology.world_size() == world_size, Usage, "the topology ", parallel.topology, " describes ",
               job.topology.world_size(), " ranks but this job has ", world_size);
  const ModelFit fit = model_fit(job.config, limits_for ? limits_for(job.config) : StageLimits{1, 1, 1},
                                 parallel.device == "cuda", job.manifest.dtype);
  // Memory sizes `auto` layouts here; a fixed layout is checked by check_memory against what is available now.
  ModelFit split_only = fit;
  if (!limits_for || (parallel.tp && parallel.pp)) split_only.bytes_per_rank = nullptr;
  const Placement placement =
      place_ranks(job.topology, LayoutSizes{parallel.dp, parallel.pp, parallel.tp}, parallel.force, &split_only);
  if (world_rank == 0) {
    for (const auto& note : placement.notes) log_info("placement: ", note);
    for (const auto& warning : placement.warnings) log_warn(warning, " (running anyway: --force)");
  }
  const LayoutSizes sizes = placement.sizes;
  job.parallel = parallel;
  job.layout = std::make_unique<ParallelLayout>(sizes, placement.ranks_by_position, world_rank);
  set_log_prefix(cat("rank ", world_rank, " (", job.layout->coordinates(), ") ", job.node.hostname));
  job.groups = make_mpi_groups(*job.layout);

  job.device = parallel.device;
  if (job.device == "cuda") bind_gpu(job, options);

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

namespace {

// Device memory the CUDA backend holds outside its arena besides its step buffers: cuBLAS workspace (32 MiB), f32
// staging (16 MiB), step inputs (KiBs), with room for the allocator's granularity.
constexpr std::int64_t kCudaBackendFixed = std::int64_t(64) << 20;
// Kept free beyond the estimate for device memory taken after the check and outside the arena (unless
// --gpu-reserve-mib says otherwise). NCCL: its communicator is created after the arena (it runs on the backend's
// stream) and its buffers and proxy state take hundreds of MiB on an H100 (channels x peers x NCCL_BUFFSIZE, NVLS).
// Graphs: instantiated step graphs and cuBLAS's work under capture, a few MiB per batch size.
constexpr std::int64_t kNcclReserve = std::int64_t(512) << 20;
constexpr std::int64_t kGraphReserve = std::int64_t(64) << 20;

#ifdef STRATA_WITH_CUDA
DType gpu_dtype(const Job& job) { return cuda_compute_dtype(job.manifest.dtype); }
std::int64_t gpu_reserve_bytes(const Job& job) {
  if (job.parallel.gpu_reserve_mib >= 0) return std::int64_t(job.parallel.gpu_reserve_mib) << 20;
  return kGraphReserve + (job.groups.tp->size() > 1 ? kNcclReserve : 0);
}
#endif

// The GPU check: run on every rank, then agreed over the world so that every rank stops, each with a message.
void check_gpu_memory(const Job& job, const StageLimits& limits) {
#ifdef STRATA_WITH_CUDA
  const StageMemory need = estimate_stage_memory(*job.plan, limits, gpu_dtype(job), gpu_dtype(job));
  const std::int64_t backend =
      kCudaBackendFixed + std::int64_t(cuda_step_buffer_bytes(limits.max_seqs, job.plan->local_heads(),
                                                              job.config.head_dim, limits.max_seq_len));
  const std::int64_t reserve = gpu_reserve_bytes(job);
  const CudaMemoryInfo gpu = cuda_memory_info(job.gpu);
  const bool fits = need.total() + backend + reserve <= std::int64_t(gpu.free_bytes);
  const bool all_fit = job.groups.world->all_reduce_max(fits ? 0 : 1) == 0;
  STRATA_CHECK(fits, Memory, "rank ", job.layout->world_rank(), " (host ", job.node.hostname, ", GPU ", job.gpu,
               "): needs ", gib(need.total() + backend + reserve), " (weights ", gib(need.weights), ", KV cache ",
               gib(need.kv_cache), ", workspace ", gib(need.workspace + backend), ", reserved ", gib(reserve),
               " for NCCL and CUDA graphs, see --gpu-reserve-mib), ", gib(std::int64_t(gpu.free_bytes)), " free of ",
               gib(std::int64_t(gpu.total_bytes)),
               "; try a larger -tp/-pp or a smaller --max-batch-size / --max-model-len");
  STRATA_CHECK(all_fit, Memory, "rank ", job.layout->world_rank(), " (host ", job.node.hostname, ", GPU ", job.gpu,
               ") fits, but another rank is out of GPU memory (see its message); try a larger -tp/-pp or a "
               "smaller --max-batch-size / --max-model-len");
#else
  (void)job;
  (void)limits;
#endif
}

}  // namespace

void check_memory(const Job& job, const StageLimits& limits) {
  if (job.device == "cuda") return check_gpu_memory(job, limits);
  // The CPU backend keeps matrix weights as the checkpoint stores them, activations in f32.
  const StageMemory need = estimate_stage_memory(*job.plan, limits, job.manifest.dtype, DType::F32);
  const std::int64_t available = available_memory_bytes();
  if (available < 0) return;  // no /proc/meminfo: nothing to check against
  const std::int64_t share = available / std::max(1, job.node.local_size);
  STRATA_CHECK(need.total() <= share, Memory, "this rank needs ", gib(need.total()), " (weights ", gib(need.weights),
               ", KV cache ", gib(need.kv_cache), ", workspace ", gib(need.workspace), ") but its node has ",
               gib(available), " available for ", job.node.local_size, " ranks (", gib(share),
               " each); use a larger --tensor-parallel-size or --pipeline-parallel-size, or a smaller "
               "--max-batch-size, --max-model-len or --max-num-batched-tokens");
}

namespace {

std::unique_ptr<Backend> make_backend(const Job& job, const StageLimits& limits, int threads) {
  if (job.device != "cuda") return make_cpu_backend(threads, job.manifest.dtype);  // weights kept as stored
#ifdef STRATA_WITH_CUDA
  CudaBackendOptions options;
  options.device = job.gpu;
  options.dtype = gpu_dtype(job);
  const char* graphs = std::getenv("STRATA_CUDA_GRAPHS");  // "0": run decode steps op by op (debugging)
  options.graphs = !(graphs && std::string(graphs) == "0");
  // The arena holds what the stage allocates; each tensor is rounded up to 256 bytes (a layer has ~15 tensors, so
  // 256 KiB of slack per layer is ample).
  const StageMemory need = estimate_stage_memory(*job.plan, limits, options.dtype, options.dtype);
  options.arena_bytes =
      std::size_t(need.total()) + (std::size_t(256) << 10) * std::size_t(job.plan->local_layers() + 4);
  return make_cuda_backend(options);
#else
  throw Error(ErrorKind::Usage, "--device cuda: this strata was built without CUDA");
#endif
}

}  // namespace

LoadReport load_stage(Job& job, const std::string& model_dir, const StageLimits& limits) {
  const int threads = cpu_threads_per_rank(job.node);
  const int machine_cores = int(std::thread::hardware_concurrency());
  if (job.node.local_rank == 0 && threads * job.node.local_size < machine_cores)
    log_info("the ", job.node.local_size, " rank(s) on ", job.node.hostname, " use ", threads * job.node.local_size,
             " of ", machine_cores, " cores (the launcher bound each rank to ", threads,
             "); with mpirun add --bind-to socket or --bind-to none to use them all");
  if (!job.backend) job.backend = make_backend(job, limits, threads);
  attach_device_groups(job);  // before the stage: its layers all-reduce over groups.tp_device when set
  job.stage.reset();          // a reload frees the previous weights first
  CheckpointWeightSource source(model_dir, job.manifest, *job.plan, !job.parallel.no_mmap);
  Communicator& tp = job.groups.tp_device ? *job.groups.tp_device : *job.groups.tp;  // device tensors: NCCL
  job.stage = std::make_unique<TransformerStage>(*job.plan, source, *job.backend, tp, limits);
  std::string files;
  for (const auto& path : source.opened()) files += (files.empty() ? "" : ", ") + path;
  log_debug("loaded layers ", job.plan->layer_begin(), "-", job.plan->layer_end() - 1, " from ", files, " (", threads,
            " threads): ", source.mapped_bytes(), " bytes of weights used in place from the page cache, ",
            source.read_bytes(), " read into memory");
  if (job.layout->world_rank() == 0 && (job.manifest.tensor_parallel_size != job.layout->sizes().tp ||
                                        job.manifest.pipeline_parallel_size != job.layout->sizes().pp))
    log_info("resharding on load: checkpoint written for tensor-parallel ", job.manifest.tensor_parallel_size,
             " x pipeline-parallel ", job.manifest.pipeline_parallel_size, ", running ", job.layout->sizes().tp, " x ",
             job.layout->sizes().pp);
  return LoadReport{source.opened(), source.mapped_bytes(), source.read_bytes()};
}

}  // namespace strata

namespace strata {

int with_topology(const std::string& description, int argc, char** argv,
                  const std::function<void(const Topology&)>& show) {
  if (!description.empty()) {
    try {
      show(Topology::load(description));
      return 0;
    } catch (const std::exception& e) {
      log_line(LogLevel::Error, e.what());
      return 1;
    }
  }
  return run_as_mpi_job(argc, argv, [&](Job&) {
    const Topology topology = detect_topology(MPI_COMM_WORLD, detect_options());
    int rank = 0;
    STRATA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    if (rank == 0) show(topology);
    return 0;
  });
}

namespace {
// Whether the GPUs of a TP group's ranks (node-local rank i drives device i) share one NVLink island.
bool group_in_one_island(const NodeTopology& node, const std::vector<int>& group) {
  for (const auto& island : nvlink_islands(node.devices)) {
    std::size_t inside = 0;
    for (int rank : group) {
      const auto local = std::find(node.ranks.begin(), node.ranks.end(), rank) - node.ranks.begin();
      inside += std::count(island.begin(), island.end(), int(local));
    }
    if (inside == group.size()) return island.size() > 1;
  }
  return false;
}
}  // namespace

std::string plan_table(const Topology& topology, const ParallelLayout& layout, const ModelConfig& config,
                       const StageLimits& limits, bool on_gpus, DType stored) {
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
  std::snprintf(line, sizeof line, "%-5s %-16s %-5s %-7s %-4s %-4s %-4s %-8s %-10s %-28s %s\n", "rank", "host", "local",
                "device", "dp", "pp", "tp", "layers", "memory", "TP all-reduce per token", "pipeline send per token");
  out << line;
  // The CUDA backend keeps weights and activations in 16 bits (bf16, or f16 for f16 checkpoints); the CPU keeps
  // matrix weights as stored and activations in f32.
  const DType dtype = on_gpus ? DType::BF16 : DType::F32;
  const DType weights = on_gpus ? DType::BF16 : stored;
  const double hidden_bytes = double(config.hidden_size) * double(dtype_size(dtype));
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
    const StageMemory memory = estimate_stage_memory(plan, limits, weights, dtype);
    // Ring all-reduce: each rank sends 2 (tp - 1) / tp of the buffer; two per layer (attention, MLP), one more for
    // the embedding on the first stage.
    const double reduces = 2.0 * double(plan.local_layers()) + (at.is_first_stage() ? 1 : 0);
    const double tp_bytes = sizes.tp == 1 ? 0 : reduces * hidden_bytes * 2.0 * (sizes.tp - 1) / sizes.tp;
    bool tp_crosses = false;
    for (int peer : at.tp_group()) tp_crosses = tp_crosses || node_index(peer) != node_index(rank);
    std::string tp_text = sizes.tp == 1 ? "-" : bytes(tp_bytes) + (tp_crosses ? " (inter-node!)" : " (intra-node)");
    if (on_gpus && sizes.tp > 1 && !tp_crosses && !node.devices.empty())
      tp_text = bytes(tp_bytes) + (group_in_one_island(node, at.tp_group()) ? " (NVLink)" : " (PCIe)");
    const bool has_gpu = on_gpus && local < int(node.devices.size());
    const std::string device = !on_gpus ? "cpu" : has_gpu ? "gpu:" + std::to_string(local) : "gpu:?";
    std::string pp_text = "-";
    if (!at.is_last_stage()) {
      const bool crosses = node_index(at.next_stage_rank()) != node_index(rank);
      pp_text = bytes(hidden_bytes) + " to rank " + std::to_string(at.next_stage_rank()) +
                (crosses ? " (inter-node " + topology.fabric() + ")" : " (intra-node)");
    }
    const std::string layers = std::to_string(plan.layer_begin()) + "-" + std::to_string(plan.layer_end() - 1);
    std::snprintf(line, sizeof line, "%-5d %-16s %-5d %-7s %-4d %-4d %-4d %-8s %-10s %-28s %s\n", rank,
                  node.hostname.c_str(), local, device.c_str(), at.dp_rank(), at.pp_rank(), at.tp_rank(),
                  layers.c_str(), bytes(double(memory.total())).c_str(), tp_text.c_str(), pp_text.c_str());
    out << line;
  }
  return out.str();
}

}  // namespace strata
