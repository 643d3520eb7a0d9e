// The CUDA backend: every op queued on one stream of one device; device memory from one arena; small per-step
// inputs (token ids, positions, the token -> (slot, position) table) mirrored in device buffers and re-uploaded only
// when they change; host waits poll the stream so a monitor (NCCL errors, timeouts) runs while they wait.
// Step graphs: the second decode step of a batch size is captured (relaxed mode: no host sync happens inside a
// step), later ones replay it. Every step input is copied from its pinned mirror inside the graph, so a replay only
// has to rewrite the pinned mirrors (after the previous launch has finished: an event recorded after each launch
// guards them); any buffer that moves (a mirror or the attention partials growing) drops the
// graphs, which are captured again.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <thread>
#include <vector>

#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/cuda/cuda_resources.h"
#include "runtime/backend/cuda/gemm.h"
#include "runtime/backend/cuda/kernels/kernels.h"
#include "runtime/backend/host_candidates.h"
#include "runtime/backend/kv_blocks.h"
#include "runtime/base/error.h"

namespace strata {
namespace {

static_assert(int(DType::F32) == int(cuda::Elem::F32) && int(DType::F16) == int(cuda::Elem::F16) &&
              int(DType::BF16) == int(cuda::Elem::BF16));
cuda::Elem elem(DType d) { return cuda::Elem(int(d)); }

constexpr std::size_t kArenaAlignment = 256;                   // cudaMalloc's own alignment
constexpr std::int64_t kStagingElems = std::int64_t(4) << 20;  // 16 MiB of f32 per upload/download chunk
constexpr std::int64_t kKeysPerSplit = 256;  // decode attention: keys per block (at most kMaxSplits ranges)
constexpr int kMaxSplits = 64;

// Decode attention's key ranges for a cache of max_len positions (1: no split). Depends on the cache only, so a
// recorded decode step stays valid as sequences grow.
int decode_splits(std::int64_t max_len) {
  return int(std::clamp<std::int64_t>((max_len + kKeysPerSplit - 1) / kKeysPerSplit, 1, kMaxSplits));
}

// Host bytes mirrored in device memory. `copied` marks when the pinned copy has been read by the device, so the
// next change waits for it before overwriting.
// Invariant: the pinned buffer holds `last`.
struct Mirror {
  std::vector<char> last;
  bool valid = false, pending = false;
  std::uint64_t written_in_step = 0;  // graph steps: a mirror may take only one content per step
  std::size_t capacity = 0;
  cuda::PinnedMemory host;
  cuda::DeviceMemory device;
  cuda::Event copied = cuda::make_event();
};

// Makes `device` current before any member that creates CUDA objects (events, streams) is initialised.
int bind_device(int device) {
  STRATA_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options)
      : device_(bind_device(options.device)), dtype_(options.dtype), graphs_enabled_(options.graphs) {
    STRATA_CHECK(dtype_ == DType::BF16 || dtype_ == DType::F16, Usage, "the CUDA backend computes in bf16 or f16, not ",
                 dtype_name(dtype_));
    stream_ = cuda::make_stream();
    gemm_ = std::make_unique<cuda::Gemm>(stream_.get());
    up_pinned_ = cuda::pinned_alloc(std::size_t(kStagingElems) * 4);
    down_pinned_ = cuda::pinned_alloc(std::size_t(kStagingElems) * 4);
    scratch_ = cuda::device_alloc(std::size_t(kStagingElems) * 4);
    if (options.arena_bytes > 0) {
      void* p = nullptr;
      const cudaError_t status = cudaMalloc(&p, options.arena_bytes);
      if (status != cudaSuccess) {
        cudaGetLastError();
        throw Error(ErrorKind::Memory, cat("GPU ", device_, ": cudaMalloc of the ", gib(options.arena_bytes),
                                           " arena failed (", cudaGetErrorName(status), ")"));
      }
      arena_ = cuda::DeviceMemory(p);
      arena_size_ = options.arena_bytes;
    }
  }

  ~CudaBackend() override {
    abort_step();
    if (stream_) cudaStreamSynchronize(stream_.get());  // nothing may still read what is about to be freed
  }

  StepMode begin_step(std::int64_t key) override {
    if (mode_ != StepMode::Run) abort_step();  // a previous step ended without end_step
    ++step_;
    if (!graphs_enabled_ || key < 0) return StepMode::Run;
    key_ = key;
    if (graphs_.count(key)) return mode_ = StepMode::Replay;
    if (++warm_[key] < 2) return StepMode::Run;  // the warm-up grows every buffer this shape needs
    invalidate_mirrors();                        // so each one's first use records its copy in the graph
    STRATA_CUDA_CHECK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeRelaxed));
    return mode_ = StepMode::Capture;
  }

  void end_step() override {
    const StepMode mode = std::exchange(mode_, StepMode::Run);
    if (mode == StepMode::Run) return;
    if (mode == StepMode::Capture) {
      try {
        cudaGraph_t raw = nullptr;
        STRATA_CUDA_CHECK(cudaStreamEndCapture(stream(), &raw));
        const cuda::Graph graph(raw);
        cudaGraphExec_t exec = nullptr;
        STRATA_CUDA_CHECK(cudaGraphInstantiate(&exec, graph.get(), 0));
        graphs_[key_] = cuda::GraphExec(exec);
      } catch (const Error& e) {
        invalidate_mirrors();  // the recorded copies never ran
        throw Error(e.kind(), cat(e.what(), " (recording a decode step of batch size ", key_,
                                  " as a CUDA graph; STRATA_CUDA_GRAPHS=0 runs steps op by op)"));
      }
    }
    STRATA_CUDA_CHECK(cudaGraphLaunch(graphs_.at(key_).get(), stream()));  // a capture ran nothing yet
    // The graph's copy nodes read the pinned mirrors: the next write to any of them waits for this event.
    STRATA_CUDA_CHECK(cudaEventRecord(step_done_.get(), stream()));
    step_pending_ = true;
  }

  void abort_step() noexcept override {
    const StepMode mode = std::exchange(mode_, StepMode::Run);
    if (mode == StepMode::Run) return;
    if (mode == StepMode::Capture) {
      cudaGraph_t raw = nullptr;
      cudaStreamEndCapture(stream_.get(), &raw);
      if (raw) cudaGraphDestroy(raw);
      cudaGetLastError();
    }
    // A capture's recorded copies never ran; a replay rewrote `last` and the pinned buffers but never launched the
    // graph that copies them. Either way the device buffers may not hold `last`.
    invalidate_mirrors();
  }

  std::string name() const override { return "cuda"; }
  DType activation_dtype() const override { return dtype_; }
  DType weight_dtype() const override { return dtype_; }
  MemoryKind memory_kind() const override { return MemoryKind::Device; }
  cudaStream_t stream() const { return stream_.get(); }
  void set_monitor(std::function<void()> monitor, double timeout) {
    monitor_ = std::move(monitor);
    timeout_ = timeout;
  }

  Tensor allocate(Shape shape, DType dtype) override {
    outside_graph_steps("allocate");
    const std::size_t bytes = std::size_t(shape_numel(shape)) * dtype_size(dtype);
    if (!arena_) {
      void* p = nullptr;
      if (bytes) STRATA_CUDA_CHECK(cudaMalloc(&p, bytes));
      return Tensor(Buffer(p, bytes, MemoryKind::Device,
                           [this](void* q) {
                             forget_graphs();  // a recording may point into this memory
                             cudaFree(q);
                           }),
                    std::move(shape), dtype);
    }
    const std::size_t rounded = (bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
    STRATA_CHECK(arena_used_ + rounded <= arena_size_, Memory, "GPU ", device_, ": the device arena of ",
                 gib(arena_size_), " is exhausted allocating ", shape_string(shape), " ", dtype_name(dtype), " (",
                 gib(arena_used_), " in use): the memory estimate is too small");
    void* p = static_cast<char*>(arena_.get()) + arena_used_;
    arena_used_ += rounded;
    ++arena_live_;
    // A bump allocator: memory comes back when every tensor is gone (a reload frees the whole stage first).
    return Tensor(Buffer(p, bytes, MemoryKind::Device,
                         [this](void*) {
                           forget_graphs();
                           if (--arena_live_ > 0) return;
                           cudaStreamSynchronize(stream_.get());  // no queued kernel may still use the memory
                           arena_used_ = 0;
                         }),
                  std::move(shape), dtype);
  }

  void upload(const float* host, TensorView dst) override {
    on_device(dst, "upload");
    outside_graph_steps("upload");
    const std::int64_t n = dst.numel();
    const std::size_t elem_bytes = dtype_size(dst.dtype);
    for (std::int64_t done = 0; done < n;) {
      const std::int64_t count = std::min(n - done, kStagingElems);
      if (up_pending_) wait_event(up_done_.get(), "the previous upload's staging copy");
      std::memcpy(up_pinned_.get(), host + done, std::size_t(count) * 4);
      char* target = static_cast<char*>(dst.data) + std::size_t(done) * elem_bytes;
      if (dst.dtype == DType::F32) {
        STRATA_CUDA_CHECK(
            cudaMemcpyAsync(target, up_pinned_.get(), std::size_t(count) * 4, cudaMemcpyHostToDevice, stream()));
      } else {
        STRATA_CUDA_CHECK(cudaMemcpyAsync(scratch_.get(), up_pinned_.get(), std::size_t(count) * 4,
                                          cudaMemcpyHostToDevice, stream()));
        cuda::convert_from_f32(static_cast<const float*>(scratch_.get()), target, elem(dst.dtype), count, stream());
      }
      STRATA_CUDA_CHECK(cudaEventRecord(up_done_.get(), stream()));
      up_pending_ = true;
      done += count;
    }
  }

  void download(TensorView src, float* host) override {
    on_device(src, "download");
    outside_graph_steps("download");
    const std::int64_t n = src.numel();
    const std::size_t elem_bytes = dtype_size(src.dtype);
    for (std::int64_t done = 0; done < n;) {
      const std::int64_t count = std::min(n - done, kStagingElems);
      const char* from = static_cast<const char*>(src.data) + std::size_t(done) * elem_bytes;
      if (src.dtype != DType::F32) {
        cuda::convert_to_f32(from, elem(src.dtype), static_cast<float*>(scratch_.get()), count, stream());
        from = static_cast<const char*>(scratch_.get());
      }
      STRATA_CUDA_CHECK(
          cudaMemcpyAsync(down_pinned_.get(), from, std::size_t(count) * 4, cudaMemcpyDeviceToHost, stream()));
      wait_stream("a device-to-host copy (download)");
      std::memcpy(host + done, down_pinned_.get(), std::size_t(count) * 4);
      done += count;
    }
  }

  void linear(TensorView x, TensorView w, TensorView bias, TensorView y) override {
    const std::int64_t tokens = x.rows(), in = x.row_elems(), out = w.rows();
    STRATA_CHECK(w.row_elems() == in && y.rows() == tokens && y.row_elems() == out, Internal, "linear: x ",
                 shape_string(x.shape), " w ", shape_string(w.shape), " y ", shape_string(y.shape));
    STRATA_CHECK(x.dtype == w.dtype && (y.dtype == x.dtype || y.dtype == DType::F32), Internal, "linear: dtypes x ",
                 dtype_name(x.dtype), " w ", dtype_name(w.dtype), " y ", dtype_name(y.dtype));
    on_device(x, "linear");
    on_device(w, "linear");
    on_device(y, "linear");
    if (bias.data) {
      STRATA_CHECK(bias.numel() == out, Internal, "linear: bias ", shape_string(bias.shape), " for ", out, " outputs");
      on_device(bias, "linear bias");
    }
    if (replaying()) return;
    if (!bias.data) {
      gemm_->linear(x.data, w.data, y.data, elem(x.dtype), elem(y.dtype), tokens, out, in);
      return;
    }
    if (y.dtype == DType::F32) {
      gemm_->linear(x.data, w.data, y.data, elem(x.dtype), cuda::Elem::F32, tokens, out, in);
      cuda::add_bias(y.f32(), bias.data, elem(bias.dtype), y.data, cuda::Elem::F32, tokens, out, stream());
      return;
    }
    // The GEMM writes f32 into the staging scratch, rows at a time, and the bias is added before the one rounding.
    const std::int64_t chunk = kStagingElems / std::max<std::int64_t>(out, 1);
    STRATA_CHECK(chunk >= 1, Internal, "linear: ", out, " biased outputs exceed the ", kStagingElems,
                 "-element f32 scratch");
    auto* acc = static_cast<float*>(scratch_.get());
    const std::size_t x_row = std::size_t(in) * dtype_size(x.dtype), y_row = std::size_t(out) * dtype_size(y.dtype);
    for (std::int64_t r = 0; r < tokens; r += chunk) {
      const std::int64_t rows = std::min(chunk, tokens - r);
      gemm_->linear(static_cast<const char*>(x.data) + std::size_t(r) * x_row, w.data, acc, elem(x.dtype),
                    cuda::Elem::F32, rows, out, in);
      cuda::add_bias(acc, bias.data, elem(bias.dtype), static_cast<char*>(y.data) + std::size_t(r) * y_row,
                     elem(y.dtype), rows, out, stream());
    }
  }

  void rms_norm(TensorView x, TensorView weight, float eps, TensorView y) override {
    check_norm(x, weight, y, "rms_norm");
    if (replaying()) return;
    cuda::rms_norm(x.data, weight.data, y.data, elem(x.dtype), elem(weight.dtype), x.rows(), x.row_elems(), eps,
                   stream());
  }

  void rms_norm_residual(TensorView residual, TensorView x, TensorView weight, float eps, TensorView y) override {
    check_norm(x, weight, y, "rms_norm_residual");
    check_norm(residual, weight, y, "rms_norm_residual");
    if (replaying()) return;
    cuda::rms_norm_residual(residual.data, x.data, weight.data, y.data, elem(x.dtype), elem(weight.dtype), x.rows(),
                            x.row_elems(), eps, stream());
  }

  void add(TensorView y, TensorView x) override {
    STRATA_CHECK(y.numel() == x.numel() && y.dtype == x.dtype, Internal, "add: ", shape_string(y.shape), " ",
                 dtype_name(y.dtype), " vs ", shape_string(x.shape), " ", dtype_name(x.dtype));
    on_device(y, "add");
    on_device(x, "add");
    if (replaying()) return;
    cuda::add(y.data, x.data, elem(y.dtype), y.numel(), stream());
  }

  void rope(TensorView x, std::span<const std::int32_t> positions, const RopeParams& params) override {
    const std::int64_t tokens = x.rows(), dim = params.head_dim;
    STRATA_CHECK(dim > 0 && dim % 2 == 0 && x.row_elems() % dim == 0 &&
                     std::int64_t(params.inv_freq.size()) == dim / 2 && std::int64_t(positions.size()) == tokens,
                 Internal, "rope: x ", shape_string(x.shape), ", head_dim ", dim, ", ", params.inv_freq.size(),
                 " frequencies, ", positions.size(), " positions");
    on_device(x, "rope");
    if (tokens == 0) return;
    const auto* pos = static_cast<const std::int32_t*>(mirror(positions_, positions.data(), positions.size_bytes()));
    const auto* freq =
        static_cast<const float*>(mirror(inv_freq_, params.inv_freq.data(), params.inv_freq.size() * sizeof(float)));
    if (replaying()) return;
    cuda::rope(x.data, elem(x.dtype), pos, freq, tokens, x.row_elems() / dim, dim, stream());
  }

  void swiglu(TensorView gate_up, TensorView out) override {
    STRATA_CHECK(
        gate_up.rows() == out.rows() && gate_up.row_elems() == 2 * out.row_elems() && gate_up.dtype == out.dtype,
        Internal, "swiglu: gate_up ", shape_string(gate_up.shape), " out ", shape_string(out.shape));
    on_device(gate_up, "swiglu");
    on_device(out, "swiglu");
    if (replaying()) return;
    cuda::swiglu(gate_up.data, out.data, elem(out.dtype), out.rows(), out.row_elems(), stream());
  }

  void geglu(TensorView gate_up, TensorView out) override {
    STRATA_CHECK(
        gate_up.rows() == out.rows() && gate_up.row_elems() == 2 * out.row_elems() && gate_up.dtype == out.dtype,
        Internal, "geglu: gate_up ", shape_string(gate_up.shape), " out ", shape_string(out.shape));
    on_device(gate_up, "geglu");
    on_device(out, "geglu");
    if (replaying()) return;
    cuda::geglu(gate_up.data, out.data, elem(out.dtype), out.rows(), out.row_elems(), stream());
  }

  void scale(TensorView x, float factor) override {
    on_device(x, "scale");
    if (replaying()) return;
    cuda::scale_or_softcap(x.data, elem(x.dtype), x.numel(), factor, 0.0f, stream());
  }

  void softcap(TensorView x, float cap) override {
    on_device(x, "softcap");
    if (replaying()) return;
    cuda::scale_or_softcap(x.data, elem(x.dtype), x.numel(), 1.0f, cap, stream());
  }

  void fill_zero(TensorView x) override {
    on_device(x, "fill_zero");
    if (replaying()) return;
    STRATA_CUDA_CHECK(cudaMemsetAsync(x.data, 0, std::size_t(x.numel()) * dtype_size(x.dtype), stream()));
  }

  // Rows and weights travel in one mirrored buffer (rows, then the weights' bits), like every other host input.
  void scatter_add_rows(TensorView src, std::span<const std::int32_t> rows, std::span<const float> weights,
                        TensorView dst) override {
    const std::int64_t width = dst.row_elems();
    STRATA_CHECK(src.row_elems() == width && src.dtype == dst.dtype && src.rows() >= std::int64_t(rows.size()) &&
                     weights.size() == rows.size(),
                 Internal, "scatter_add_rows: src ", shape_string(src.shape), " dst ", shape_string(dst.shape), " for ",
                 rows.size(), " rows");
    for (const auto r : rows)
      STRATA_CHECK(r >= 0 && r < dst.rows(), Internal, "scatter_add_rows: row ", r, " outside ",
                   shape_string(dst.shape));
    on_device(src, "scatter_add_rows");
    on_device(dst, "scatter_add_rows");
    if (rows.empty()) return;
    scatter_host_.assign(rows.begin(), rows.end());
    for (const float w : weights) {
      std::int32_t bits;
      std::memcpy(&bits, &w, sizeof bits);
      scatter_host_.push_back(bits);
    }
    const auto* dev = static_cast<const std::int32_t*>(
        mirror(scatter_, scatter_host_.data(), scatter_host_.size() * sizeof(std::int32_t)));
    if (replaying()) return;
    cuda::scatter_add_rows(src.data, dev, reinterpret_cast<const float*>(dev + rows.size()), dst.data, elem(dst.dtype),
                           std::int64_t(rows.size()), width, stream());
  }

  void embedding(std::span<const std::int32_t> ids, TensorView table, std::int64_t vocab_offset,
                 TensorView out) override {
    const std::int64_t width = table.row_elems();
    STRATA_CHECK(out.row_elems() == width && out.rows() >= std::int64_t(ids.size()), Internal, "embedding: table ",
                 shape_string(table.shape), " out ", shape_string(out.shape), " for ", ids.size(), " ids");
    on_device(table, "embedding");
    on_device(out, "embedding");
    if (ids.empty()) return;
    const auto* dev_ids = static_cast<const std::int32_t*>(mirror(ids_, ids.data(), ids.size_bytes()));
    if (replaying()) return;
    cuda::embedding(dev_ids, table.data, elem(table.dtype), out.data, elem(out.dtype), std::int64_t(ids.size()), width,
                    vocab_offset, table.rows(), stream());
  }

  void kv_store(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table, TensorView k, TensorView v,
                TensorView k_cache, TensorView v_cache) override {
    const std::int64_t row = k.row_elems(), block_size = k_cache.shape.at(1);
    STRATA_CHECK(k_cache.shape.size() == 4 && k_cache.shape[2] * k_cache.shape[3] == row && v.row_elems() == row &&
                     k.dtype == k_cache.dtype && v.dtype == v_cache.dtype && k.dtype == v.dtype,
                 Internal, "kv_store: k ", shape_string(k.shape), " cache ", shape_string(k_cache.shape));
    on_device(k, "kv_store");
    on_device(v, "kv_store");
    on_device(k_cache, "kv_store");
    on_device(v_cache, "kv_store");
    // (block, row in block) of every token: the kernel writes row block * block_size + offset.
    const KvBlocks blocks(k_cache, block_table);
    std::vector<cuda::TokenSlot> rows;
    for (const auto& c : chunks) {
      check_chunk(c, blocks, std::int64_t(rows.size()), "kv_store");
      for (std::int32_t i = 0; i < c.n_tokens; ++i) {
        const std::int32_t pos = c.start_pos + i;
        rows.push_back(cuda::TokenSlot{block_table[std::size_t(c.table_offset + pos / block_size)],
                                       std::int32_t(pos % block_size)});
      }
    }
    STRATA_CHECK(std::int64_t(rows.size()) <= k.rows(), Internal, "kv_store: ", rows.size(), " tokens for ", k.rows(),
                 " rows");
    if (rows.empty()) return;
    const auto* dev =
        static_cast<const cuda::TokenSlot*>(mirror(store_rows_, rows.data(), rows.size() * sizeof(cuda::TokenSlot)));
    if (replaying()) return;
    cuda::kv_store(k.data, v.data, k_cache.data, v_cache.data, elem(k.dtype), dev, std::int64_t(rows.size()), row,
                   block_size, stream());
  }

  void attention(std::span<const SeqChunk> chunks, std::span<const std::int32_t> block_table, TensorView q,
                 TensorView k_cache, TensorView v_cache, const AttentionParams& params, TensorView out) override {
    cuda::AttentionShape s;
    s.block_size = k_cache.shape.at(1);
    s.kv_heads = k_cache.shape.at(2);
    s.head_dim = k_cache.shape.at(3);
    s.q_heads = q.row_elems() / s.head_dim;
    s.scale = params.scale;
    s.window = params.window;
    s.softcap = params.softcap;
    STRATA_CHECK(s.q_heads * s.head_dim == q.row_elems() && s.q_heads % s.kv_heads == 0 && out.numel() == q.numel() &&
                     q.dtype == k_cache.dtype && out.dtype == q.dtype && s.head_dim <= cuda::kAttentionMaxHeadDim,
                 Internal, "attention: q ", shape_string(q.shape), " cache ", shape_string(k_cache.shape), " out ",
                 shape_string(out.shape));
    for (const TensorView* t : {&q, &k_cache, &v_cache, &out}) on_device(*t, "attention");
    // Each chunk's blocks are copied to a row of max_blocks entries (padded with block 0, never read): the table's
    // size then depends on the number of chunks only, so a recorded decode step's copy stays valid as sequences
    // grow.
    const KvBlocks blocks(k_cache, block_table);
    std::int64_t longest = 0;
    for (const auto& c : chunks) longest = std::max<std::int64_t>(longest, std::int64_t(c.start_pos) + c.n_tokens);
    s.max_len = std::max(max_len_, longest);
    const std::int64_t max_blocks = KvBlocks::needed(s.max_len, s.block_size);
    std::vector<cuda::TokenSlot> tokens;
    std::vector<std::int32_t> padded(chunks.size() * std::size_t(max_blocks), 0);
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      const SeqChunk& c = chunks[i];
      check_chunk(c, blocks, std::int64_t(tokens.size()), "attention");
      const std::int64_t used = KvBlocks::needed(std::int64_t(c.start_pos) + c.n_tokens, s.block_size);
      std::copy_n(block_table.begin() + c.table_offset, used, padded.begin() + std::int64_t(i) * max_blocks);
      for (std::int32_t j = 0; j < c.n_tokens; ++j)
        tokens.push_back(cuda::TokenSlot{std::int32_t(std::int64_t(i) * max_blocks), c.start_pos + j});
    }
    STRATA_CHECK(std::int64_t(tokens.size()) <= q.rows(), Internal, "attention: ", tokens.size(), " tokens for ",
                 q.rows(), " rows");
    s.tokens = std::int64_t(tokens.size());
    if (tokens.empty()) return;
    const auto* dev =
        static_cast<const cuda::TokenSlot*>(mirror(tokens_, tokens.data(), tokens.size() * sizeof(cuda::TokenSlot)));
    const auto* dev_table =
        static_cast<const std::int32_t*>(mirror(block_table_, padded.data(), padded.size() * sizeof(std::int32_t)));
    // Decode steps (every chunk one token) split the sequence length into ranges, one block each (flash-decoding);
    // prefill already has a block per (token, head). The split depends on the configured length only, never on the
    // sequences' lengths, so a recorded decode step stays valid (ranges past a sequence's end return at once).
    bool decode = true;
    for (const auto& c : chunks) decode = decode && c.n_tokens == 1;
    const int splits = decode ? decode_splits(s.max_len) : 1;
    const std::int64_t per_split = (s.max_len + splits - 1) / splits;
    if (splits > 1) reserve_partials(std::size_t(s.tokens * s.q_heads * splits), std::size_t(s.head_dim));
    if (replaying()) return;
    cuda::attention(q.data, k_cache.data, v_cache.data, out.data, elem(q.dtype), dev, dev_table, s, splits, per_split,
                    static_cast<float*>(partial_out_.get()), static_cast<float*>(partial_ml_.get()), stream());
  }

  void gather_rows(TensorView src, std::span<const std::int32_t> rows, TensorView dst) override {
    STRATA_CHECK(
        src.dtype == dst.dtype && src.row_elems() == dst.row_elems() && dst.rows() >= std::int64_t(rows.size()),
        Internal, "gather_rows: src ", shape_string(src.shape), " dst ", shape_string(dst.shape));
    for (const auto r : rows)
      STRATA_CHECK(r >= 0 && r < src.rows(), Internal, "gather_rows: row ", r, " outside ", shape_string(src.shape));
    on_device(src, "gather_rows");
    on_device(dst, "gather_rows");
    if (rows.empty()) return;
    const auto* dev = static_cast<const std::int32_t*>(mirror(rows_, rows.data(), rows.size_bytes()));
    if (replaying()) return;
    cuda::gather_rows(src.data, dev, dst.data, std::int64_t(rows.size()),
                      src.row_elems() * std::int64_t(dtype_size(src.dtype)), stream());
  }

  void reserve_step_buffers(std::int64_t max_tokens, std::int64_t max_seqs, std::int64_t max_len,
                            std::int64_t block_size, std::int64_t q_heads, std::int64_t head_dim) override {
    const auto tokens = std::size_t(max_tokens), seqs = std::size_t(max_seqs);
    max_len_ = max_len;
    grow(ids_, tokens * sizeof(std::int32_t));
    grow(positions_, tokens * sizeof(std::int32_t));
    grow(tokens_, tokens * sizeof(cuda::TokenSlot));
    grow(store_rows_, tokens * sizeof(cuda::TokenSlot));
    grow(block_table_,
         seqs * std::size_t(KvBlocks::needed(max_len, std::max<std::int64_t>(block_size, 1))) * sizeof(std::int32_t));
    grow(rows_, seqs * sizeof(std::int32_t));
    grow(inv_freq_, std::size_t(head_dim / 2) * sizeof(float));
    grow(requests_, seqs * sizeof(cuda::DeviceCandidateRequest));
    reserve_candidates(seqs * cuda::kMaxDeviceTopK);
    const int splits = decode_splits(max_len);
    if (splits > 1) reserve_partials(seqs * std::size_t(q_heads) * std::size_t(splits), std::size_t(head_dim));
  }

  void sample_candidates(TensorView logits, std::int64_t vocab_offset, std::span<const CandidateRequest> requests,
                         std::span<const std::int64_t> offsets, SampleCandidate* out) override {
    STRATA_CHECK(logits.dtype == DType::F32 && std::int64_t(requests.size()) <= logits.rows() &&
                     offsets.size() >= requests.size(),
                 Internal, "sample_candidates: ", requests.size(), " requests for ", shape_string(logits.shape), " ",
                 dtype_name(logits.dtype));
    on_device(logits, "sample_candidates");
    outside_graph_steps("sample_candidates");
    const std::int64_t vocab = logits.row_elems();
    // Rows asking for few candidates are reduced on the device; the rest (top-p without top-k) download the row.
    std::vector<cuda::DeviceCandidateRequest> device_rows(requests.size());
    std::int64_t on_device_total = 0;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      const CandidateRequest& r = requests[i];
      STRATA_CHECK(r.count >= 1 && r.count <= vocab, Internal, "sample_candidates: ", r.count, " of ", vocab);
      const bool here = r.count <= cuda::kMaxDeviceTopK;
      device_rows[i] = cuda::DeviceCandidateRequest{
          r.seed, r.step, on_device_total, r.temperature, here ? r.count : 0, int(r.mode), 0};
      if (here) on_device_total += r.count;
    }
    if (on_device_total > 0) {
      reserve_candidates(std::size_t(on_device_total));
      const auto* dev = static_cast<const cuda::DeviceCandidateRequest*>(
          mirror(requests_, device_rows.data(), device_rows.size() * sizeof(cuda::DeviceCandidateRequest)));
      cuda::sample_candidates(logits.f32(), std::int64_t(requests.size()), vocab, vocab_offset, dev,
                              static_cast<SampleCandidate*>(candidates_dev_.get()), stream());
      STRATA_CUDA_CHECK(cudaMemcpyAsync(candidates_host_.get(), candidates_dev_.get(),
                                        std::size_t(on_device_total) * sizeof(SampleCandidate), cudaMemcpyDeviceToHost,
                                        stream()));
      wait_stream("the sampling candidates");
    }
    const auto* found = static_cast<const SampleCandidate*>(candidates_host_.get());
    std::vector<float> row;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (device_rows[i].count > 0) {
        std::copy(found + device_rows[i].out_offset, found + device_rows[i].out_offset + requests[i].count,
                  out + offsets[i]);
      } else {
        row.resize(std::size_t(vocab));
        download(logits.slice_rows(std::int64_t(i), std::int64_t(i) + 1), row.data());
        host_candidates(row.data(), vocab, vocab_offset, requests[i], out + offsets[i]);
      }
    }
  }

 private:
  static std::string gib(std::size_t bytes) { return cat(double(bytes) / double(1ull << 30), " GiB"); }

  bool replaying() const { return mode_ == StepMode::Replay; }
  void outside_graph_steps(const char* op) const {
    STRATA_CHECK(mode_ == StepMode::Run, Internal, op, " inside a recorded step (it waits for the host)");
  }
  std::array<Mirror*, 8> mirrors() noexcept {
    return {&ids_, &positions_, &inv_freq_, &tokens_, &store_rows_, &block_table_, &rows_, &requests_};
  }
  void invalidate_mirrors() noexcept {
    for (Mirror* m : mirrors()) m->valid = false;
  }
  // Buffers a recorded step points to are moving: forget every recording (they are captured again).
  void drop_graphs(const char* why) {
    STRATA_CHECK(mode_ == StepMode::Run, Internal, "GPU ", device_, ": ", why, " inside a recorded step");
    forget_graphs();
  }
  void forget_graphs() noexcept {
    graphs_.clear();
    warm_.clear();
  }

  void on_device(const TensorView& t, const char* op) const {
    STRATA_CHECK(t.kind == MemoryKind::Device, Internal, op, ": a host tensor ", shape_string(t.shape),
                 " given to the CUDA backend");
  }

  void check_norm(const TensorView& x, const TensorView& weight, const TensorView& y, const char* op) const {
    STRATA_CHECK(
        x.rows() == y.rows() && x.row_elems() == y.row_elems() && weight.numel() == x.row_elems() && x.dtype == y.dtype,
        Internal, op, ": x ", shape_string(x.shape), " weight ", shape_string(weight.shape), " y ",
        shape_string(y.shape));
    on_device(x, op);
    on_device(weight, op);
    on_device(y, op);
  }

  // A chunk's rows follow the previous chunks' and its blocks exist (validated like the CPU backend does).
  static void check_chunk(const SeqChunk& c, const KvBlocks& blocks, std::int64_t row, const char* op) {
    STRATA_CHECK(c.token_offset == row, Internal, op, ": chunk at row ", c.token_offset, " after ", row, " rows");
    blocks.check(c);
  }

  // The device copy of `data`. In a replay only the pinned buffer is rewritten: the recording copies it.
  const void* mirror(Mirror& m, const void* data, std::size_t bytes) {
    if (m.valid && m.last.size() == bytes && (bytes == 0 || std::memcmp(m.last.data(), data, bytes) == 0))
      return m.device.get();
    if (mode_ != StepMode::Run) {
      STRATA_CHECK(m.written_in_step != step_, Internal, "GPU ", device_,
                   ": one step input takes two values in a recorded step");
      m.written_in_step = step_;
    }
    if (m.pending) wait_event(m.copied.get(), "a step-input copy to the device");
    // A launched graph copies from the pinned buffers too; waiting for its launch to finish does not rely on the
    // event recorded inside the graph (an external event node) having been replayed.
    if (step_pending_) {
      wait_event(step_done_.get(), "the previous recorded step (it reads the step inputs' pinned buffers)");
      step_pending_ = false;
    }
    grow(m, bytes);
    std::memcpy(m.host.get(), data, bytes);
    m.last.assign(static_cast<const char*>(data), static_cast<const char*>(data) + bytes);
    m.valid = true;
    if (replaying()) return m.device.get();  // the recording's copy node reads the pinned buffer
    STRATA_CUDA_CHECK(cudaMemcpyAsync(m.device.get(), m.host.get(), bytes, cudaMemcpyHostToDevice, stream()));
    // Inside a capture the record must become a node of the graph (external), so replays record it too.
    if (mode_ == StepMode::Capture)
      STRATA_CUDA_CHECK(cudaEventRecordWithFlags(m.copied.get(), stream(), cudaEventRecordExternal));
    else
      STRATA_CUDA_CHECK(cudaEventRecord(m.copied.get(), stream()));
    m.pending = true;
    return m.device.get();
  }

  // Step buffers are sized by reserve_step_buffers at setup; they grow here only for a caller that did not.
  void grow(Mirror& m, std::size_t bytes) {
    if (bytes <= m.capacity) return;
    drop_graphs("a step-input buffer grows");
    if (m.device) wait_stream("queued kernels before growing a step-input buffer");
    const std::size_t capacity = std::max<std::size_t>({bytes, 2 * m.capacity, 4096});
    m.device = cuda::device_alloc(capacity);
    m.host = cuda::pinned_alloc(capacity);
    m.capacity = capacity;
  }
  void reserve_partials(std::size_t rows, std::size_t dim) {
    if (rows <= partial_rows_ && dim <= partial_dim_) return;
    drop_graphs("the attention partials grow");
    if (partial_out_) wait_stream("queued attention before growing its partials");
    partial_rows_ = std::max(rows, partial_rows_);
    partial_dim_ = std::max(dim, partial_dim_);
    partial_out_ = cuda::device_alloc(partial_rows_ * partial_dim_ * sizeof(float));
    partial_ml_ = cuda::device_alloc(partial_rows_ * 2 * sizeof(float));
  }
  void reserve_candidates(std::size_t count) {
    if (count <= candidates_capacity_) return;
    if (candidates_dev_) wait_stream("queued sampling before growing its buffers");
    candidates_capacity_ = std::max(count, 2 * candidates_capacity_);
    candidates_dev_ = cuda::device_alloc(candidates_capacity_ * sizeof(SampleCandidate));
    candidates_host_ = cuda::pinned_alloc(candidates_capacity_ * sizeof(SampleCandidate));
  }

  void wait_stream(const char* what) {
    poll([this] { return cudaStreamQuery(stream()); }, what);
  }
  void wait_event(cudaEvent_t event, const char* what) {
    poll([event] { return cudaEventQuery(event); }, what);
  }

  // Polls instead of blocking so the monitor runs (an NCCL error on a peer would otherwise leave us waiting on a
  // collective forever) and a wait can time out with a message naming what it waited for.
  template <typename Query>
  void poll(Query query, const char* what) {
    const auto start = std::chrono::steady_clock::now();
    for (std::uint64_t spin = 0;; ++spin) {
      const cudaError_t status = query();
      if (status == cudaSuccess) return;
      if (status != cudaErrorNotReady)
        throw Error(ErrorKind::Cuda, cat("GPU ", device_, ": CUDA error while waiting for ", what, ": ",
                                         cudaGetErrorName(status), ": ", cudaGetErrorString(status)));
      if (monitor_) monitor_();
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (timeout_ > 0 && waited > timeout_)
        throw Error(ErrorKind::Communication,
                    cat("GPU ", device_, ": waited ", waited, " s for ", what,
                        " and its stream is still busy (a collective whose peers never arrived, or a hung kernel)"));
      if (spin < 1000)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  int device_;  // first member: bind_device runs before the others are built
  DType dtype_;
  cuda::Stream stream_;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::function<void()> monitor_;
  double timeout_ = 0;

  cuda::DeviceMemory arena_;
  std::size_t arena_size_ = 0, arena_used_ = 0, arena_live_ = 0;

  cuda::PinnedMemory up_pinned_, down_pinned_;
  cuda::DeviceMemory scratch_;  // f32 staging on the device for dtype conversion
  cuda::Event up_done_ = cuda::make_event();
  bool up_pending_ = false;

  Mirror ids_, positions_, inv_freq_, tokens_, store_rows_, block_table_, rows_, requests_, scatter_;
  std::vector<std::int32_t> scatter_host_;  // scatter_add_rows' rows then weights, staged for its mirror
  std::int64_t max_len_ = 0;  // positions per sequence (reserve_step_buffers): sets the decode attention splits
  cuda::DeviceMemory partial_out_, partial_ml_;
  std::size_t partial_rows_ = 0, partial_dim_ = 0;
  cuda::DeviceMemory candidates_dev_;
  cuda::PinnedMemory candidates_host_;
  std::size_t candidates_capacity_ = 0;

  bool graphs_enabled_;
  StepMode mode_ = StepMode::Run;
  std::uint64_t step_ = 0;
  std::int64_t key_ = -1;
  std::map<std::int64_t, cuda::GraphExec> graphs_;  // recorded decode steps by batch size
  cuda::Event step_done_ = cuda::make_event();      // recorded after each graph launch
  bool step_pending_ = false;                       // step_done_ recorded and not yet waited for
  std::map<std::int64_t, int> warm_;                // steps seen per batch size before recording
};

CudaBackend& as_cuda(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  STRATA_CHECK(cuda != nullptr, Internal, "expected the CUDA backend, got the ", backend.name(), " backend");
  return *cuda;
}

}  // namespace

DType cuda_compute_dtype(DType stored) { return stored == DType::F16 ? DType::F16 : DType::BF16; }

std::size_t cuda_step_buffer_bytes(std::int64_t max_seqs, std::int64_t q_heads, std::int64_t head_dim,
                                   std::int64_t max_len) {
  const int splits = decode_splits(max_len);
  const std::size_t partials =
      splits > 1 ? std::size_t(max_seqs * q_heads * splits) * std::size_t(head_dim + 2) * 4 : 0;
  return partials + std::size_t(max_seqs) * cuda::kMaxDeviceTopK * sizeof(SampleCandidate);
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

void* cuda_backend_stream(Backend& backend) { return as_cuda(backend).stream(); }

void set_cuda_wait_monitor(Backend& backend, std::function<void()> monitor, double timeout_seconds) {
  as_cuda(backend).set_monitor(std::move(monitor), timeout_seconds);
}

}  // namespace strata
