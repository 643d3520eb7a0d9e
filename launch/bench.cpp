// `strata bench`: prefill and decode throughput of the engine next to this machine's roofline, measured in the
// same run: memory read bandwidth (every rank of the node streaming a buffer at once) bounds decode, which must
// read every weight once per step; the sgemm rate bounds prefill (2 FLOPs per parameter per token). With
// --device cuda the same two bounds come from the GPU: HBM bandwidth of a device-to-device copy and the bf16 cuBLAS
// GEMM rate (runtime/backend/cuda/roofline_probe.cu), measured after loading, in the same run. On the CPU the probes
// are read again after each batch size's runs, and each row's roofline uses the readings on either side of it.
#include <cblas.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>
#include <thread>

#include "engine/engine.h"
#include "launch/mpi_job.h"
#include "launch/session.h"
#include "plan/step_cost.h"
#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/quant.h"
#include "runtime/base/clock.h"
#include "runtime/base/log.h"
#include "runtime/tensor/tensor.h"
#ifdef STRATA_WITH_CUDA
#include "runtime/backend/cuda/roofline_probe.h"
#endif

namespace strata {
namespace {

// Sums `count` floats as 4 streams (the quarters of the range, read side by side), each in 16 independent lanes, so
// the loop vectorises and is limited by memory, not by latency. One stream per thread read 13-18% slower here: the
// kernels, which read 4 weight streams at once, streamed faster than that probe.
float sum_floats(const float* data, std::size_t count) {
  constexpr std::size_t kStreams = 4, kLanes = 16;
  const std::size_t quarter = count / kStreams / kLanes * kLanes;
  float lanes[kStreams][kLanes] = {};
  for (std::size_t i = 0; i < quarter; i += kLanes)
    for (std::size_t s = 0; s < kStreams; ++s)
      for (std::size_t j = 0; j < kLanes; ++j) lanes[s][j] += data[s * quarter + i + j];
  for (std::size_t i = kStreams * quarter; i < count; ++i) lanes[0][0] += data[i];
  float total = 0;
  for (const auto& stream : lanes)
    for (float lane : stream) total += lane;
  return total;
}

// Node-wide read bandwidth in bytes/s: every rank of the node, each with as many threads as it runs BLAS with,
// streams a private buffer at the same time (what a decode step does with the weights).
double measure_read_bandwidth(const NodeInfo& node, Communicator& world, double gib) {
  const int threads = cpu_threads_per_rank(node);
  const std::size_t count = std::size_t(gib * double(1ull << 30) / 4 / std::max(1, node.local_size));
  // In the memory the CPU backend gives its weights (allocate_host: transparent huge pages where the system has
  // them): a probe in 4 KiB pages read slower than the kernels stream the weights (one-token decode at 107-116% of
  // it), its TLB misses and page-bound prefetch streams not the weights' own.
  Buffer memory = allocate_host(count * sizeof(float));
  float* buffer = static_cast<float*>(memory.data());
  std::fill(buffer, buffer + count, 1.0f);
  std::vector<float> partial(static_cast<std::size_t>(threads));
  double best = 1e30;
  for (int repeat = 0; repeat < 5; ++repeat) {
    world.barrier();
    const double start = monotonic_seconds();
    std::vector<std::thread> workers;
    const std::size_t per_thread = count / std::size_t(threads);
    for (int t = 0; t < threads; ++t)
      workers.emplace_back([&, t] { partial[std::size_t(t)] = sum_floats(buffer + t * per_thread, per_thread); });
    for (auto& w : workers) w.join();
    const std::int64_t elapsed_ns = world.all_reduce_max(std::int64_t((monotonic_seconds() - start) * 1e9));
    best = std::min(best, double(elapsed_ns) * 1e-9);
  }
  volatile float keep = std::accumulate(partial.begin(), partial.end(), 0.0f);  // the sums must be computed
  (void)keep;
  return double(count / std::size_t(threads) * threads) * 4 * node.local_size / best;
}

// The slowest core's rate over the fastest's at identical work, every core of the job's ranks busy at once (each
// rank's threads, as many as the backend runs, one a core): a tensor-parallel group splits a step's work evenly
// over its ranks, which then wait for the slowest at every sum, where one rank's threads share each loop's work as
// they go. The work: dot products over 2 x 384 KB (in L2) of huge-page memory, a thread's own half on a page of its
// own, so that every core's lines fall in the same cache sets.
double measure_core_spread(const NodeInfo& node, Communicator& world) {
  constexpr std::size_t kFloats = 96 * 1024, kPage = std::size_t(2) << 20;
  constexpr double kSeconds = 0.25;
  const int threads = cpu_threads_per_rank(node);
  Buffer memory = allocate_host(std::size_t(threads + 1) * kPage);
  const auto page = [&](int i) { return reinterpret_cast<float*>(static_cast<char*>(memory.data()) + i * kPage); };
  for (int i = 0; i <= threads; ++i) std::fill(page(i), page(i) + kFloats, 1.0f / float(i + 1));
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  // Pinned where the rank is bound to as many cores as it runs threads (mpirun's binding, srun --cpu-bind, or one
  // rank owning the machine); ranks that share their cores (unbound) leave the placement to the scheduler.
  const bool pin = sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) == threads;
  std::vector<int> cores;
  for (int c = 0; pin && c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) cores.push_back(c);
  std::vector<double> rates(static_cast<std::size_t>(threads));
  std::vector<float> sums(static_cast<std::size_t>(threads));
  world.barrier();
  std::vector<std::thread> busy;
  for (int t = 0; t < threads; ++t)
    busy.emplace_back([&, t] {
      if (pin) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cores[std::size_t(t)], &one);
        pthread_setaffinity_np(pthread_self(), sizeof one, &one);  // unpinned where it fails: still a reading
      }
      const float *w = page(0), *x = page(t + 1);
      float lanes[16] = {};
      std::int64_t passes = 0;
      const double start = monotonic_seconds();
      double now = start;
      for (; now - start < kSeconds; now = monotonic_seconds(), ++passes)
        for (std::size_t i = 0; i < kFloats; i += 16)
          for (std::size_t j = 0; j < 16; ++j) lanes[j] += w[i + j] * x[i + j];
      rates[std::size_t(t)] = double(passes) / (now - start);
      sums[std::size_t(t)] = std::accumulate(lanes, lanes + 16, 0.0f);
    });
  for (auto& b : busy) b.join();
  volatile float keep = std::accumulate(sums.begin(), sums.end(), 0.0f);  // the sums must be computed
  (void)keep;
  // Rates in passes per kilosecond, exact enough as integers: the job's lowest through the maximum of negatives.
  const auto fastest = std::int64_t(*std::max_element(rates.begin(), rates.end()) * 1e3);
  const auto slowest = std::int64_t(*std::min_element(rates.begin(), rates.end()) * 1e3);
  return double(-world.all_reduce_max(-slowest)) / double(std::max<std::int64_t>(1, world.all_reduce_max(fastest)));
}

// Seconds to read `files` whole with plain read(2) calls (what `cat file > /dev/null` does): the best of three
// passes after one to warm the page cache.
double raw_read_seconds(const std::vector<std::string>& files, std::int64_t& bytes) {
  std::vector<char> buffer(std::size_t(8) << 20);
  double best = 1e30;
  for (int pass = 0; pass < 4; ++pass) {
    bytes = 0;
    const double start = monotonic_seconds();
    for (const auto& path : files) {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      STRATA_CHECK(fd >= 0, Io, "cannot open ", path, ": ", std::strerror(errno));
      for (ssize_t got; (got = ::read(fd, buffer.data(), buffer.size())) > 0;) bytes += got;
      ::close(fd);
    }
    if (pass > 0) best = std::min(best, monotonic_seconds() - start);
  }
  return best;
}

// Aggregate sgemm FLOP/s of the node's ranks running at once, with OpenBLAS threaded as the CPU backend runs it: on
// the OpenMP team, or single-threaded on each of the backend's own threads (cpu::Workers).
double measure_sgemm_rate(const NodeInfo& node, Communicator& world, cpu::Workers& workers) {
  const int n = 2048;  // large enough for OpenBLAS to reach its peak rate
  std::vector<float> a(static_cast<std::size_t>(n) * n, 0.5f), b(a), c(a);
  auto rows = [&](std::int64_t first, std::int64_t last) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(last - first), n, n, 1.0f, a.data() + first * n, n,
                b.data(), n, 0.0f, c.data() + first * n, n);
  };
  double best = 1e30;
  for (int repeat = 0; repeat < 3; ++repeat) {
    world.barrier();
    const double start = monotonic_seconds();
    if (workers.openmp())
      rows(0, n);
    else
      workers.split(n, rows);
    std::int64_t elapsed_ns = world.all_reduce_max(std::int64_t((monotonic_seconds() - start) * 1e9));
    best = std::min(best, double(elapsed_ns) * 1e-9);
  }
  return 2.0 * n * n * n * node.local_size / best;
}

// Operations per second of `call` (ops_per_call each), best of 3 x 20 calls after a warm-up, every rank of the node
// at once (as measure_sgemm_rate): the slowest rank's time, times the ranks.
double measure_rate(const NodeInfo& node, Communicator& world, double ops_per_call, const std::function<void()>& call) {
  call();  // warm-up
  double best = 1e30;
  for (int repeat = 0; repeat < 3; ++repeat) {
    world.barrier();
    const double start = monotonic_seconds();
    for (int i = 0; i < 20; ++i) call();
    std::int64_t elapsed_ns = world.all_reduce_max(std::int64_t((monotonic_seconds() - start) * 1e9));
    best = std::min(best, double(elapsed_ns) * 1e-9 / 20);
  }
  return ops_per_call * node.local_size / best;
}

// The compute rate of the backend's own products with weights of `weights` (bf16, f16, f32 or quantized) on a weight
// of the model's width `in` of up to 8 MiB (in L3 where it fits), 128 tokens a call: the compute roofline of a model
// whose products never go through sgemm (the quantized kernels, and the AVX-512 row kernels, which run products of
// any size). The model's width, as a 768-wide probe of a 4096-wide model measured below the kernel's rate on the
// model's rows (its prefill read 102-126% of it, docs/performance.md). The weight is made as a loaded one is
// (allocate, upload, which quantizes, prepare_weight), so the rate is that of the layout and kernel the model's
// products use. Counted as 2 operations per weight per token, as sgemm's FLOPs are.
struct ProductsRate {
  double ops_per_second = 0;
  Layout layout = Layout::Rows;  // the probe weight's, as prepare_weight gave it
};
ProductsRate measure_products_rate(const NodeInfo& node, Communicator& world, Backend& backend, DType weights,
                                   std::int64_t in) {
  // 4096 rows (fewer where that would pass 8 MiB): each call's own work (the activations rounded or quantized
  // once for all rows, the threads' start and join) weighs on the rate as little as on a model's longer products;
  // 768 rows measured 10-22% below the peak (bf16), 16-36% (q8_0) and ~29% (q4_0) on the 100m's width.
  const std::int64_t row_bytes = std::int64_t(dtype_bytes(weights, in)), tokens = 128;
  const std::int64_t out = std::clamp<std::int64_t>((std::int64_t(8) << 20) / row_bytes / 16 * 16, 16, 4096);
  const std::vector<float> w(std::size_t(out * in), 0.25f), x(std::size_t(tokens * in), 0.5f);
  Tensor weight = backend.allocate({out, in}, weights);
  backend.upload(w.data(), weight.view());
  weight = backend.prepare_weight(std::move(weight));
  const Tensor input = backend.allocate({tokens, in}, DType::F32), output = backend.allocate({tokens, out}, DType::F32);
  backend.upload(x.data(), input.view());
  const double rate = measure_rate(node, world, 2.0 * double(out * in * tokens),
                                   [&] { backend.linear(input.view(), weight.view(), TensorView{}, output.view()); });
  return {rate, weight.layout()};
}

const char* layout_words(Layout layout) {
  return layout == Layout::Interleaved16 ? "weights interleaved by 16 rows" : "weights in rows";
}

// The GPU bounds of one pipeline stage: the slowest GPU's copy bandwidth and GEMM rate, times the tp GPUs of a
// stage (each reads its own shard of the weights at once; the stages of one token run one after another).
struct GpuBounds {
  std::string name;
  double per_gpu_bandwidth = 0, per_gpu_flops = 0, bandwidth = 0, flops = 0;
};

GpuBounds measure_gpu_bounds(int tp, Communicator& world, double gib) {
#ifdef STRATA_WITH_CUDA
  world.barrier();
  const GpuRoofline roof = measure_gpu_roofline(std::size_t(gib * double(1ull << 30)));
  GpuBounds bounds;
  bounds.name = roof.device_name;
  // The slowest rank bounds everyone: minimum = -max(-x), in whole bytes/s and FLOP/s.
  bounds.per_gpu_bandwidth = -double(world.all_reduce_max(-std::int64_t(roof.copy_bytes_per_second)));
  bounds.per_gpu_flops = -double(world.all_reduce_max(-std::int64_t(roof.bf16_flops_per_second)));
  bounds.bandwidth = bounds.per_gpu_bandwidth * tp;
  bounds.flops = bounds.per_gpu_flops * tp;
  return bounds;
#else
  (void)tp;
  (void)world;
  (void)gib;
  throw Error(ErrorKind::Usage, "bench --device cuda: this strata was built without CUDA");
#endif
}

// One engine run over `batch` synthetic prompts: its wall time (the same on every rank) and, on the scheduler's rank
// (world rank 0 here), when each sequence got its first token and when the last one finished (seconds since the
// engine started).
struct RunTimes {
  double wall = 0, last_finished = 0;
  std::vector<double> first_tokens;  // each sequence's
  double last_first_token() const {
    return first_tokens.empty() ? 0 : *std::max_element(first_tokens.begin(), first_tokens.end());
  }
  // Decode: the time after every sequence has its first token, in the same run (a difference of two runs' times
  // carries both runs' noise, and at large batches the prefill's noise exceeds the decode's whole time).
  double decode_seconds() const { return last_finished - last_first_token(); }
  // The tokens generated in that time: each sequence's gen_len - 1 after its first, less those it decoded while
  // later prompts still prefilled (a prefill over several steps: one per later step that gave first tokens; with
  // pipeline micro-batches, whose steps overlap, this count is an estimate).
  std::int64_t decode_tokens(int gen_len) const {
    std::vector<double> steps = first_tokens;
    std::sort(steps.begin(), steps.end());
    steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
    std::int64_t tokens = 0;
    for (double t : first_tokens)
      tokens += gen_len - 1 - (steps.end() - std::upper_bound(steps.begin(), steps.end(), t));
    return tokens;
  }
};

RunTimes timed_run(Session& session, int batch, int prompt_len, int max_tokens) {
  Communicator& world = session.world();
  const RunPlan& plan = session.plan();
  std::vector<Request> requests;
  if (session.layout().is_first_stage()) {
    for (int i = 0; i < batch; ++i) {
      Request r;
      r.index = i;
      r.max_tokens = max_tokens;
      r.ignore_eos = true;
      for (int t = 0; t < prompt_len; ++t) r.prompt.push_back(std::int32_t((i * 131 + t * 7) % 256));
      requests.push_back(std::move(r));
    }
  }
  // Steps of up to the plan's tokens (--max-num-batched-tokens, within the largest batch's prompts).
  EngineOptions options{batch, std::min(batch * prompt_len, plan.stage.max_tokens), plan.stage.max_seq_len,
                        plan.micro_batches, false};
  Engine engine(session.stage(), session.layout(), world, session.tp(), session.tokenizer(), options);
  RunTimes times;
  EngineHooks hooks;
  hooks.on_complete = [&](Completion&& c) {
    times.first_tokens.push_back(c.first_token_seconds);
    times.last_finished = std::max(times.last_finished, c.finished_seconds);
  };
  world.barrier();
  const double start = monotonic_seconds();
  engine.run(std::move(requests), hooks);
  world.barrier();
  times.wall = monotonic_seconds() - start;
  return times;
}

// Sequence parallelism's shares of the rows after a row's runs, rank by rank ("0.56/0.44"; "-" without it).
std::string row_shares(std::span<const double> fractions) {
  std::string out;
  for (const double f : fractions) out += cat(out.empty() ? "" : "/", std::lround(100 * f) / 100.0);
  return out.empty() ? "-" : out;
}

// One reading of the CPU's probes (see bench).
struct CpuProbes {
  double bandwidth = 0, sgemm = 0, attention = 0;  // bytes/s, FLOP/s, attention's FLOP/s
  ProductsRate products;                           // the products' own rate, where they never use sgemm
  double core_spread = 1;                          // measure_core_spread
  double compute() const { return products.ops_per_second > 0 ? products.ops_per_second : sgemm; }
};

// The bounds a row's roofline uses: memory bytes/s, products' and attention's operations/s.
struct Bounds {
  double bandwidth = 0, compute = 0, attention = 0;
};

// The mean of two readings, the ones just before and just after a row's runs.
Bounds mean_bounds(const CpuProbes& before, const CpuProbes& after) {
  return {(before.bandwidth + after.bandwidth) / 2, (before.compute() + after.compute()) / 2,
          (before.attention + after.attention) / 2};
}

int bench(const NodeInfo& node, const BenchOptions& o) {
  const int max_batch = *std::max_element(o.batch_sizes.begin(), o.batch_sizes.end());
  RunLimits limits{max_batch, std::min(max_batch * o.prompt_len, o.max_num_batched_tokens), o.prompt_len + o.gen_len,
                   o.micro_batches};
  limits.kv_cache_dtype = o.kv_cache_dtype;
  limits.sequence_parallel_tokens = o.sequence_parallel_tokens;
  limits.even_row_shares = o.even_row_shares;
  Session session(node, o.model, o.parallel, limits);
  const ParallelLayout& layout = session.layout();
  STRATA_CHECK(layout.sizes().dp == 1, Usage, "bench measures one replica: launch exactly tp x pp ranks");
  Communicator& world = session.world();
  session.check_memory();
  session.load();  // also warms the page cache for the timed loads below
  // The best of three loads (the slowest rank of each), against the best of three raw reads: both warm, both on
  // every rank at once.
  LoadReport loaded;
  double load = 1e30;
  for (int attempt = 0; attempt < 3; ++attempt) {
    session.unload();  // freeing the previous copy is not part of a load
    world.barrier();
    const double load_start = monotonic_seconds();
    loaded = session.load();
    load = std::min(load, double(world.all_reduce_max(std::int64_t((monotonic_seconds() - load_start) * 1e9))) * 1e-9);
  }
  const std::vector<std::string>& files = loaded.files;
  std::int64_t file_bytes = 0;
  world.barrier();
  const double raw = double(world.all_reduce_max(std::int64_t(raw_read_seconds(files, file_bytes) * 1e9))) * 1e-9;

  const bool cuda = o.parallel.device == "cuda";
  const double params = double(session.config().parameter_count());
  const bool report = layout.world_rank() == 0;
  // The CPU backend keeps the weights as the checkpoint stores them (norms and biases in f32: negligible here).
  double bandwidth = 0, sgemm = 0,
         weight_bytes = double(dtype_bytes(session.plan().stored, std::int64_t(params) / 32 * 32));
  if (cuda) {
    const GpuBounds gpu = measure_gpu_bounds(layout.sizes().tp, world, o.memory_gib);
    bandwidth = gpu.bandwidth;
    sgemm = gpu.flops;
    weight_bytes = params * 2;  // the CUDA backend holds bf16 (or f16) weights whatever the checkpoint stores
    if (report) {
      std::printf("model %s: %.1fM parameters, %.0f MB of 16-bit weights; tp %d pp %d on %d GPU(s) (%s)\n",
                  o.model.c_str(), params / 1e6, weight_bytes / 1e6, layout.sizes().tp, layout.sizes().pp,
                  layout.world_size(), gpu.name.c_str());
      std::printf(
          "measured: HBM %.1f GB/s per GPU (device-to-device copy, bytes read + written), bf16 GEMM %.1f "
          "TFLOP/s per GPU; roofline below uses %.1f GB/s and %.1f TFLOP/s (one stage's %d GPU(s))\n",
          gpu.per_gpu_bandwidth / 1e9, gpu.per_gpu_flops / 1e12, bandwidth / 1e9, sgemm / 1e12, layout.sizes().tp);
    }
  }
  // The CPU's probes, read at the start (the lines below) and again after each batch size's runs: a row's roofline
  // uses the readings just before and just after its own runs (their mean), so that it follows this machine's
  // phase while that row ran (on a shared VM the memory probe read 36-69 GB/s across one run of a few minutes, and
  // a roofline read once at the start made the rows' percentages follow the probe more than the engine).
  // Quantized weights: every product runs on the blocks (quant.h), so that kernel's rate is the compute bound; the
  // AVX-512 row kernel runs every unquantized product of any size: its rate is the bound then.
  const DType weights = session.plan().stored;
  const bool row_kernel_only = !cuda && cpu::row_kernel_max_tokens(cpu::row_kernel_name()) == cpu::kAnyBatch;
  // The sgemm probe's threads: the kind of team the backend runs for these weights.
  std::optional<cpu::Workers> workers;
  if (!cuda) workers.emplace(cpu_threads_per_rank(node), cpu::team_for(session.plan().stored));
  const auto measure_cpu = [&] {
    CpuProbes p;
    p.bandwidth = measure_read_bandwidth(node, world, o.memory_gib);
    p.core_spread = measure_core_spread(node, world);
    p.sgemm = measure_sgemm_rate(node, world, *workers);
    if (is_quantized(weights) || row_kernel_only)
      p.products = measure_products_rate(node, world, session.backend(), weights, session.config().hidden_size);
    // Attention's FLOPs at the rate of the arithmetic that runs them (see below).
    p.attention = row_kernel_only
                      ? measure_products_rate(node, world, session.backend(), DType::F32, session.config().hidden_size)
                            .ops_per_second
                      : p.sgemm;
    return p;
  };
  CpuProbes start_probes;
  if (!cuda) {
    start_probes = measure_cpu();
    bandwidth = start_probes.bandwidth;
    sgemm = start_probes.sgemm;
  }
  const ProductsRate probe = start_probes.products;
  const double products = probe.ops_per_second;
  if (report && !cuda) {
    std::printf(
        "model %s: %.1fM parameters, %.0f MB of %s weights; tp %d pp %d on %d rank(s), %d thread(s) "
        "each\n",
        o.model.c_str(), params / 1e6, weight_bytes / 1e6, dtype_name(weights), layout.sizes().tp, layout.sizes().pp,
        layout.world_size(), cpu_threads_per_rank(node));
    std::printf("measured: memory read %.2f GB/s, sgemm %.1f GFLOP/s (all ranks of the node at once)\n",
                bandwidth / 1e9, sgemm / 1e9);
    std::printf(
        "measured: the slowest core at %.0f%% of the fastest's rate at the same work, all at once (the last column: "
        "before and after each row; a tp group runs at its slowest rank's pace)\n",
        100 * start_probes.core_spread);
    if (products > 0 && is_quantized(weights))
      std::printf(
          "measured: %s block products (%s kernel, %s) %.1f GOP/s: the compute roofline below (the products "
          "never use sgemm)\n",
          dtype_name(weights), quant::kernel_name().c_str(), layout_words(probe.layout), products / 1e9);
    const bool bf16_dots = weights == DType::BF16 && cpu::row_kernel_name() == "avx512bf16";
    if (products > 0 && !is_quantized(weights))
      std::printf(
          "measured: %s-weight products (%s kernel, %s, %s) %.1f GFLOP/s: the compute roofline below (the "
          "products never use sgemm)\n",
          dtype_name(weights), cpu::row_kernel_name().c_str(), layout_words(probe.layout),
          bf16_dots ? "bf16 dot products, activations rounded to bf16" : "f32 FMAs", products / 1e9);
  }
  // Products per token: 2 FLOPs per weight of the layers, plus the LM head, which a prefill runs for the prompt's
  // last token only (the embedding is a lookup). A decode step also reads every weight once (bandwidth bound) but
  // an embedding table of its own (one row per token), and its roofline is the lower of the two. Attention adds
  // its own FLOPs (plan/step_cost.h) at the rate of the arithmetic that runs it: f32 FMAs on the CPU (the f32
  // products' rate where the AVX-512 row kernel runs them, else sgemm's), the GEMM rate on GPUs; and a decode step
  // reads each sequence's keys and values besides the weights.
  // A mixture of experts' token multiplies only the experts it is routed to, and a decode step reads those of its
  // tokens (routing spread evenly: plan/step_cost.h).
  const auto& c = session.config();
  const double head = double(c.vocab_size) * double(c.hidden_size), routed = routed_expert_weights(c);
  const double unrouted = params - head * (c.tie_word_embeddings ? 1 : 2) - routed;
  const double layers = unrouted + routed * routed_share_multiplied(c);  // multiplied per token
  const auto step_bytes = [&](int batch) {
    return weight_bytes * (unrouted + routed * routed_share_read(c, batch) + head) / params;
  };
  // With more tp ranks than KV heads each rank keeps (and reads) its own copy of its KV head (shard_plan): the
  // stage's ranks read tp / kv_heads times the model's keys and values.
  const double kv_read_per_element = double(dtype_size(session.plan().kv_dtype)) *
                                     std::max(1.0, double(layout.sizes().tp) / double(c.num_key_value_heads));
  const double attention_rate = cuda ? sgemm : start_probes.attention;
  if (report)
    std::printf(
        "roofline below: products at the rate above, attention's FLOPs at %.1f GFLOP/s (%s), the weights and the "
        "KV cache's keys and values (%s) at the memory rate%s\n",
        attention_rate / 1e9,
        cuda              ? "the GEMM rate"
        : row_kernel_only ? "f32 products: the f32 FMAs attention runs"
                          : "sgemm",
        dtype_name(session.plan().kv_dtype),
        cuda ? ""
             : "; each row's from these probes read again just before and just after its runs (their mean; the "
               "two memory readings in its last column)");
  if (report) {
    std::printf(
        "load (page cache warm, slowest rank, best of 3): %.3f s for %.0f MB of shards on rank 0; reading the same "
        "files raw (best of 3): %.3f s; load speed = %.0f%% of raw\n",
        load, double(file_bytes) / 1e6, raw, 100 * raw / load);
    std::printf(
        "weights on rank 0: %.1f MB used in place from the page cache, %.1f MB read into memory%s; %.1f MB of weights "
        "then rearranged into the kernels' layout (a copy); KV cache %s\n",
        double(loaded.mapped_bytes) / 1e6, double(loaded.read_bytes) / 1e6,
        o.parallel.no_mmap         ? " (--no-mmap)"
        : session.weights_mapped() ? ""
                                   : " (copied: the default here, --mmap uses them in place)",
        double(loaded.rearranged_bytes) / 1e6, dtype_name(session.plan().kv_dtype));
    std::printf("%6s %8s %14s %14s %8s %14s %14s %8s%s\n", "batch", "prompt", "prefill tok/s", "roofline", "%",
                "decode tok/s", "roofline", "%", cuda ? "" : "   memory GB/s   cores   rows");
  }
  CpuProbes before = start_probes;
  for (int batch : o.batch_sizes) {
    double prefill = 1e30, decode_rate = 0;
    timed_run(session, batch, o.prompt_len, 2);  // warm-up
    for (int r = 0; r < o.repeats; ++r) {
      prefill = std::min(prefill, timed_run(session, batch, o.prompt_len, 1).wall);
      const RunTimes full = timed_run(session, batch, o.prompt_len, o.gen_len);
      if (report) decode_rate = std::max(decode_rate, double(full.decode_tokens(o.gen_len)) / full.decode_seconds());
    }
    CpuProbes after;
    if (!cuda) after = measure_cpu();
    // The GPU's bounds were read once (its probes are steady); the CPU's on either side of this row.
    const Bounds bounds = cuda ? Bounds{bandwidth, sgemm, attention_rate} : mean_bounds(before, after);
    const double prefill_rate = double(batch) * o.prompt_len / prefill;
    const double prefill_roof =
        o.prompt_len / (2.0 * (layers * o.prompt_len + head) / bounds.compute +
                        prompt_attention_work(c, o.prompt_len, kv_read_per_element).flops / bounds.attention);
    // The decode steps feed positions prompt_len .. prompt_len + gen_len - 2, each sequence attending up to its own.
    const double weights_read = step_bytes(batch);
    double decode_seconds = 0;
    for (int s = 0; s + 1 < o.gen_len; ++s) {
      const AttentionWork a = attention_work(c, o.prompt_len + s, kv_read_per_element);
      decode_seconds += std::max((weights_read + batch * a.kv_bytes) / bounds.bandwidth,
                                 batch * (2.0 * (layers + head) / bounds.compute + a.flops / bounds.attention));
    }
    const double decode_roof = double(batch) * (o.gen_len - 1) / decode_seconds;
    if (report) {
      std::printf("%6d %8d %14.1f %14.1f %7.0f%% %14.2f %14.2f %7.0f%%", batch, o.prompt_len, prefill_rate,
                  prefill_roof, 100 * prefill_rate / prefill_roof, decode_rate, decode_roof,
                  100 * decode_rate / decode_roof);
      if (!cuda)
        std::printf("   %.1f, %.1f   %.2f, %.2f   %s", before.bandwidth / 1e9, after.bandwidth / 1e9,
                    before.core_spread, after.core_spread, row_shares(session.stage().row_fractions()).c_str());
      std::printf("\n");
    }
    before = after;
  }
  return 0;
}

}  // namespace

int run_bench(const BenchOptions& options, int argc, char** argv) {
  return run_as_mpi_job(argc, argv, [&](const NodeInfo& node) { return bench(node, options); });
}

}  // namespace strata
