// See session.h. Validation first, then loading; errors end the whole job with the failing rank's message.
#include "launch/session.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <thread>

#include "launch/mpi_job.h"
#include "layers/checkpoint_weights.h"
#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/quant.h"
#include "runtime/base/log.h"
#include "runtime/comm/mpi/mpi_communicator.h"
#ifdef STRATA_WITH_CUDA
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/cuda/device_info.h"
#endif

namespace strata {

PlanRequest plan_request(const Manifest& manifest, const ModelConfig& config, const Topology& topology,
                         const ParallelOptions& parallel, const RunLimits& limits) {
  PlanRequest request;
  request.config = config;
  request.stored = manifest.dtype;
  request.topology = topology;
  request.sizes = LayoutSizes{parallel.dp, parallel.pp, parallel.tp};
  request.ep = parallel.ep;
  if (!parallel.quantize.empty()) {  // the backend keeps (and the memory plan counts) the weights quantized
    STRATA_CHECK(parallel.device == "cpu", Usage, "--quantize ", parallel.quantize,
                 " runs on the CPU backend only (--device cpu)");
    request.stored = parse_quantized(parallel.quantize);
  }
  request.force = parallel.force;
  request.device = parse_device(parallel.device);
  request.limits = limits;
  request.gpu_reserve_mib = parallel.gpu_reserve_mib;
#ifdef STRATA_WITH_CUDA
  request.step_buffers = [](const ShardPlan& shard, const StageLimits& stage) {
    return std::int64_t(
        cuda_step_buffer_bytes(stage.max_seqs, shard.local_heads(), shard.config().head_dim, stage.max_seq_len));
  };
#endif
  return request;
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

std::int64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::int64_t value = 0;
  std::string unit;
  while (meminfo >> key >> value >> unit)
    if (key == "MemAvailable:") return value * 1024;
  return -1;
}

// Whether the kernel gives anonymous memory transparent huge pages when a buffer asks (allocate_host): "always" or
// "madvise" in /sys/kernel/mm/transparent_hugepage/enabled.
bool transparent_huge_pages() {
  std::ifstream file("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  return std::getline(file, modes) && modes.find("[never]") == std::string::npos;
}

// Weights used in place from the page cache (mapped), or copied into the rank's memory: --mmap / --no-mmap, by
// default copied on the CPU backend where that gives huge pages. Mapped shards come in 4 KiB pages (the page
// cache's large folios were not mapped whole on the 6.18 kernel measured), so a decode step walks the page tables
// every 4 KiB of weights and the hardware prefetchers stop at every page's end: bf16 decode measured 6-16% faster
// at batch 1, 16 and 64 on the copy (medians, docs/performance.md). Mapping stays the default where it costs nothing:
// weights a kernel copies into its own layout anyway (bf16 with the avx512bf16 kernel, quantized with the VNNI one:
// CpuBackend::prepare_weight), --quantize (which quantizes from the mapping into new buffers), and the CUDA backend
// (it uploads them).
bool map_weights(const ParallelOptions& p, const RunPlan& plan) {
  if (p.mmap || p.no_mmap) return p.mmap;
  if (plan.device != DeviceKind::Cpu || !p.quantize.empty()) return true;
  if (is_quantized(plan.stored) && quant::interleaves(quant::kernel_name())) return true;
  if (plan.stored == DType::BF16 && cpu::interleaves_bf16(cpu::row_kernel_name())) return true;
  return !transparent_huge_pages();
}

}  // namespace

Session::Session(const NodeInfo& node, const std::string& model_dir, const ParallelOptions& parallel,
                 const RunLimits& limits)
    : node_(node), model_dir_(model_dir), parallel_(parallel) {
  int world_size = 0, world_rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  STRATA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  manifest_ = Manifest::read(model_dir);
  const ModelConfig config = ModelConfig::from_json(manifest_.model, manifest_path(model_dir));
  // Every rank computes the same plan from the same inputs: no rank arithmetic anywhere else.
  const DetectOptions options = detect_options();
  const Topology topology =
      parallel.topology.empty() ? detect_topology(MPI_COMM_WORLD, options) : Topology::load(parallel.topology);
  STRATA_CHECK(topology.world_size() == world_size, Usage, "the topology ", parallel.topology, " describes ",
               topology.world_size(), " ranks but this job has ", world_size);
  PlanRequest request = plan_request(manifest_, config, topology, parallel, limits);
  request.fit_fixed_layout = false;  // a fixed layout is checked against what is free now (check_memory)
  plan_ = make_run_plan(request);
  if (world_rank == 0) {
    for (const auto& note : plan_.notes) log_info("placement: ", note);
    for (const auto& warning : plan_.warnings) log_warn(warning, " (running anyway: --force)");
  }
  layout_ = std::make_unique<ParallelLayout>(plan_.layout(world_rank));
  name_this_rank(cat("rank ", world_rank, " (", layout_->coordinates(), ") ", node_.hostname));
  groups_ = make_mpi_groups(*layout_);
  if (plan_.device == DeviceKind::Cuda) bind_gpu(options);

  tokenizer_ = make_tokenizer_of(manifest_.tokenizer, manifest_.source, manifest_path(model_dir));
  STRATA_CHECK(tokenizer_->vocab_size() <= config.vocab_size, Checkpoint, manifest_path(model_dir),
               ": the tokenizer has ", tokenizer_->vocab_size(), " tokens but the model's vocab_size is only ",
               config.vocab_size);
}

Session::~Session() = default;

// --device cuda, one rank per GPU: node-local rank i drives visible GPU i. Where NVML sees the node's GPUs, topology/
// checks the count (naming host, ranks, devices and CUDA_VISIBLE_DEVICES) and the device is then found in CUDA's own
// enumeration by PCI bus id, which does not depend on CUDA_DEVICE_ORDER; without NVML, CUDA's enumeration decides.
void Session::bind_gpu(const DetectOptions& options) {
#ifdef STRATA_WITH_CUDA
  const auto gpus = cuda_devices();
  const GpuScan scan = scan_gpus(options.nvml_library);
  if (!scan.devices.empty() || gpus.empty()) {  // with no GPU at all, bind_device says so naming host and ranks
    const NodeTopology& node = plan_.topology.node_of(layout_->world_rank());
    const std::string status =
        gpus.empty() ? cat(scan.status, "; CUDA sees no device (CUDA_VISIBLE_DEVICES=", visible_devices(options), ")")
                     : scan.status;
    gpu_binding_ = bind_device(BindRequest{node.hostname, node.ranks, node_.local_rank,
                                           apply_visible_devices(scan.devices, options.cuda_visible_devices),
                                           int(scan.devices.size()), options.cuda_visible_devices, status});
    for (const auto& gpu : gpus)
      if (same_pci_bus(gpu.pci_bus_id, gpu_binding_->pci_bus_id)) gpu_ = gpu.index;
  }
  STRATA_CHECK(!gpus.empty(), Usage, "--device cuda: no GPU visible to CUDA on ", node_.hostname,
               " (CUDA_VISIBLE_DEVICES=", visible_devices(options), "; ", scan.status, ")");
  STRATA_CHECK(node_.local_size <= int(gpus.size()), Usage, "--device cuda: ", node_.hostname, " runs ",
               node_.local_size, " ranks but CUDA sees ", gpus.size(),
               " GPU(s) (CUDA_VISIBLE_DEVICES=", visible_devices(options),
               "); run one rank per GPU (fewer ranks per node, or more nodes)");
  if (gpu_ < 0) gpu_ = gpus[std::size_t(node_.local_rank)].index;
  const CudaDevice& gpu = gpus[std::size_t(gpu_)];
  log_info("rank ", layout_->world_rank(), ": GPU ", gpu.index, " (", gpu.name, ", PCI ", gpu.pci_bus_id,
           ", CUDA_VISIBLE_DEVICES=", visible_devices(options), ")");
#else
  (void)options;
  throw Error(ErrorKind::Usage, "--device cuda: this strata was built without CUDA (STRATA_CUDA=OFF or no nvcc)");
#endif
}

void Session::check_memory() {
  const MemoryPlan& need = me().memory;
  const std::string parts = cat("weights ", gib(need.weights), ", KV cache ", gib(need.kv_cache), ", workspace ",
                                gib(need.workspace + need.backend));
  const std::string advice = "try a larger -tp/-pp or a smaller --max-batch-size / --max-model-len";
  bool fits = true;
  std::string refusal;
  if (plan_.device == DeviceKind::Cuda) {
#ifdef STRATA_WITH_CUDA
    const CudaMemoryInfo gpu = cuda_memory_info(gpu_);
    fits = need.total() <= std::int64_t(gpu.free_bytes);
    refusal =
        cat("rank ", layout_->world_rank(), " (host ", node_.hostname, ", GPU ", gpu_, "): needs ", gib(need.total()),
            " (", parts, ", reserved ", gib(need.reserve), " for NCCL and CUDA graphs, see --gpu-reserve-mib), ",
            gib(std::int64_t(gpu.free_bytes)), " free of ", gib(std::int64_t(gpu.total_bytes)), "; ", advice);
#endif
  } else if (const std::int64_t available = available_memory_bytes(); available >= 0) {
    const std::int64_t share = available / std::max(1, node_.local_size);
    fits = need.total() <= share;
    refusal = cat("this rank needs ", gib(need.total()), " (", parts, ") but its node has ", gib(available),
                  " available for ", node_.local_size, " ranks (", gib(share), " each); ", advice,
                  " or --max-num-batched-tokens");
  }
  const bool all_fit = groups_.world->all_reduce_max(fits ? 0 : 1) == 0;
  STRATA_CHECK(fits, Memory, refusal);
  STRATA_CHECK(all_fit, Memory, "rank ", layout_->world_rank(), " (host ", node_.hostname,
               ") fits, but another rank is out of memory (see its message); ", advice);
}

namespace {
std::unique_ptr<Backend> make_backend(const RunPlan& plan, const RankPlan& me, int gpu, int threads) {
  if (plan.device == DeviceKind::Cpu) return make_cpu_backend(threads, plan.stored, plan.kv_dtype);  // as stored
#ifdef STRATA_WITH_CUDA
  CudaBackendOptions options;
  options.device = gpu;
  options.dtype = me.memory.weights_dtype;
  const char* graphs = std::getenv("STRATA_CUDA_GRAPHS");  // "0": run decode steps op by op (debugging)
  options.graphs = !(graphs && std::string(graphs) == "0");
  options.arena_bytes = std::size_t(me.memory.arena(me.layer_end - me.layer_begin));
  return make_cuda_backend(options);
#else
  (void)me;
  (void)gpu;
  throw Error(ErrorKind::Usage, "--device cuda: this strata was built without CUDA");
#endif
}
}  // namespace

bool Session::weights_mapped() const { return map_weights(parallel_, plan_); }

LoadReport Session::load() {
  const int threads = cpu_threads_per_rank(node_);
  const int machine_cores = int(std::thread::hardware_concurrency());
  if (node_.local_rank == 0 && threads * node_.local_size < machine_cores)
    log_info("the ", node_.local_size, " rank(s) on ", node_.hostname, " use ", threads * node_.local_size, " of ",
             machine_cores, " cores (the launcher bound each rank to ", threads,
             "); with mpirun add --bind-to socket or --bind-to none to use them all");
  if (!backend_) backend_ = make_backend(plan_, me(), gpu_, threads);
  attach_device_groups();  // before the stage: its layers all-reduce over groups.tp_device when set
  stage_.reset();          // a reload frees the previous weights first
  const ShardPlan shard = plan_.shard(layout_->world_rank());
  CheckpointWeightSource source(model_dir_, manifest_, shard, weights_mapped());
  Collectives& tp = groups_.tp_device ? *groups_.tp_device : *groups_.tp;  // device tensors: NCCL
  timed_tp_ = std::make_unique<TimedCollectives>(tp);
  stage_ = std::make_unique<TransformerStage>(shard, source, *backend_, *timed_tp_, plan_.stage);
  std::string files;
  for (const auto& path : source.opened()) files += (files.empty() ? "" : ", ") + path;
  log_debug("loaded layers ", me().layer_begin, "-", me().layer_end - 1, " from ", files, " (", threads,
            " threads): ", source.mapped_bytes(), " bytes of weights used in place from the page cache, ",
            source.read_bytes(), " read into memory; ", stage_->rearranged_bytes(),
            " rearranged into the backend's layout");
  if (layout_->world_rank() == 0 &&
      (manifest_.tensor_parallel_size != plan_.sizes.tp || manifest_.pipeline_parallel_size != plan_.sizes.pp))
    log_info("resharding on load: checkpoint written for tensor-parallel ", manifest_.tensor_parallel_size,
             " x pipeline-parallel ", manifest_.pipeline_parallel_size, ", running ", plan_.sizes.tp, " x ",
             plan_.sizes.pp);
  return LoadReport{source.opened(), source.mapped_bytes(), source.read_bytes(), stage_->rearranged_bytes()};
}

}  // namespace strata
