// NCCL communicator: a non-blocking ncclComm_t whose every call is followed by polling ncclCommGetAsyncError under
// a deadline, so that a dead or stuck peer ends in an Error naming this rank and group instead of a hang.
#include "runtime/comm/nccl/nccl_communicator.h"

#include <cuda_runtime.h>

#include <chrono>
#include <exception>
#include <thread>

#include "runtime/backend/cuda/cuda_check.h"
#include "runtime/comm/nccl/nccl_check.h"

namespace strata {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return ncclFloat32;
    case DType::F16:
      return ncclFloat16;
    case DType::BF16:
      return ncclBfloat16;
    case DType::Q8_0:
    case DType::Q4_0:
      break;  // weights only: never reduced
  }
  throw Error(ErrorKind::Internal, cat("no NCCL type for dtype ", int(dtype)));
}

[[noreturn]] void refuse_host(const char* what) {
  throw Error(ErrorKind::Usage, cat("NcclCommunicator::", what,
                                    " works on device memory only: use the MPI communicator (groups.tp, groups.world) "
                                    "for host memory and host messages"));
}

// True when `pointer` is device (or managed) memory the current CUDA context can use.
bool is_device_pointer(const void* pointer) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, pointer) != cudaSuccess) {
    (void)cudaGetLastError();  // a pointer CUDA does not know: clear the (non-sticky) error, and it is not device
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

// NCCL's last message for `comm` (nullptr: the last one of any communicator); empty when it has none.
std::string last_error(ncclComm_t comm) {
  const char* text = ncclGetLastError(comm);
  return text != nullptr ? std::string(text) : std::string();
}

class NcclCommunicatorImpl final : public NcclCommunicator {
 public:
  NcclCommunicatorImpl(int rank, int size, int device, void* stream, NcclOptions options)
      : rank_(rank),
        size_(size),
        device_(device),
        stream_(static_cast<cudaStream_t>(stream)),
        options_(std::move(options)) {}

  // Joins the communicator named by `id` (non-blocking init, then polled to completion).
  void init(const ncclUniqueId& id) {
    STRATA_CUDA_CHECK(cudaSetDevice(device_));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every call returns at once; we poll, so a stuck peer cannot hang us past the deadline
    config.commName = options_.label.c_str();
    ncclUniqueId unique = id;
    guarded("ncclCommInitRankConfig",
            [&] { STRATA_NCCL_CHECK(ncclCommInitRankConfig(&comm_, size_, unique, rank_, &config)); });
    settle("initialisation (ncclCommInitRankConfig)");
  }

  // A communicator made by ncclCommSplit of `parent` (collective over the parent).
  void init_split(NcclCommunicatorImpl& parent, int color, int key) {
    STRATA_CUDA_CHECK(cudaSetDevice(device_));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    config.commName = options_.label.c_str();
    parent.guarded("ncclCommSplit",
                   [&] { STRATA_NCCL_CHECK(ncclCommSplit(parent.comm_, color, key, &comm_, &config)); });
    parent.settle("ncclCommSplit");  // both the parent and the new communicator report the split's progress
    STRATA_CHECK(comm_ != nullptr, Communication, where(), ": ncclCommSplit gave no communicator for colour ", color);
    settle("split initialisation");
    STRATA_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    STRATA_NCCL_CHECK(ncclCommCount(comm_, &size_));
  }

  ~NcclCommunicatorImpl() override {
    // On the error path (an exception unwinding) peers may never come: abort, never wait. On the normal path
    // finalise (flushes the operations in flight) under the deadline, then destroy.
    if (comm_ != nullptr) {
      if (std::uncaught_exceptions() > 0 || !finalized_in_time())
        ncclCommAbort(comm_);
      else
        ncclCommDestroy(comm_);
    }
    // Only now: cudaFree synchronises the device and would wait forever behind a collective stuck on a missing peer.
    if (barrier_word_ != nullptr) cudaFree(barrier_word_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const override { return device_; }
  void* stream() const override { return stream_; }
  const NcclOptions& options() const override { return options_; }

  void all_reduce_sum(TensorView data) override {
    if (data.kind != MemoryKind::Device) refuse_host("all_reduce_sum");
    const ncclDataType_t type = nccl_type(data.dtype);
    const std::size_t count = std::size_t(data.numel());
    enqueue("ncclAllReduce",
            [&] { STRATA_NCCL_CHECK(ncclAllReduce(data.data, data.data, count, type, ncclSum, comm_, stream_)); });
  }

  void all_gather(const void* send, void* recv, std::size_t bytes_per_rank) override {
    if (!is_device_pointer(send) || !is_device_pointer(recv)) refuse_host("all_gather");
    enqueue("ncclAllGather",
            [&] { STRATA_NCCL_CHECK(ncclAllGather(send, recv, bytes_per_rank, ncclInt8, comm_, stream_)); });
  }

  // NCCL has no all-to-all: grouped sends and receives, one pair per peer (the pattern NCCL documents for it).
  void all_to_all(const void* send, const std::size_t* send_bytes, const std::size_t* send_offsets, void* recv,
                  const std::size_t* recv_bytes, const std::size_t* recv_offsets) override {
    if (!is_device_pointer(send) || !is_device_pointer(recv)) refuse_host("all_to_all");
    const auto* from = static_cast<const char*>(send);
    auto* to = static_cast<char*>(recv);
    enqueue("ncclSend/ncclRecv (all-to-all)", [&] {
      STRATA_NCCL_CHECK(ncclGroupStart());
      for (int r = 0; r < size_; ++r) {
        if (send_bytes[r] > 0)
          STRATA_NCCL_CHECK(ncclSend(from + send_offsets[r], send_bytes[r], ncclInt8, r, comm_, stream_));
        if (recv_bytes[r] > 0)
          STRATA_NCCL_CHECK(ncclRecv(to + recv_offsets[r], recv_bytes[r], ncclInt8, r, comm_, stream_));
      }
      STRATA_NCCL_CHECK(ncclGroupEnd());
    });
  }

  void broadcast(void* data, std::size_t bytes, int root) override {
    if (!is_device_pointer(data)) refuse_host("broadcast");
    check_peer(root, "broadcast root");
    enqueue("ncclBroadcast",
            [&] { STRATA_NCCL_CHECK(ncclBroadcast(data, data, bytes, ncclInt8, root, comm_, stream_)); });
  }

  // A device all-reduce of one value, then a polled wait: every rank has reached this point.
  void barrier() override {
    if (barrier_word_ == nullptr) STRATA_CUDA_CHECK(cudaMalloc(&barrier_word_, sizeof(float)));
    all_reduce_sum(TensorView{barrier_word_, {1}, DType::F32, MemoryKind::Device});
    synchronize();
  }

  std::unique_ptr<NcclCommunicator> split(int color, int key) override {
    NcclOptions child_options = options_;
    child_options.label = cat(options_.label, " / split colour ", color);
    auto child = std::make_unique<NcclCommunicatorImpl>(0, 0, device_, stream_, child_options);
    child->init_split(*this, color, key);
    return child;
  }

  void send_device(const void* data, std::size_t bytes, int peer) override {
    if (!is_device_pointer(data)) refuse_host("send_device");
    check_peer(peer, "send_device peer");
    enqueue("ncclSend", [&] { STRATA_NCCL_CHECK(ncclSend(data, bytes, ncclInt8, peer, comm_, stream_)); });
  }

  void recv_device(void* data, std::size_t bytes, int peer) override {
    if (!is_device_pointer(data)) refuse_host("recv_device");
    check_peer(peer, "recv_device peer");
    enqueue("ncclRecv", [&] { STRATA_NCCL_CHECK(ncclRecv(data, bytes, ncclInt8, peer, comm_, stream_)); });
  }

  void poll_async_error() override {
    check_usable();
    ncclResult_t state = ncclSuccess;
    guarded("ncclCommGetAsyncError", [&] { STRATA_NCCL_CHECK(ncclCommGetAsyncError(comm_, &state)); });
    if (state != ncclSuccess && state != ncclInProgress) fail(cat("asynchronous error: ", ncclGetErrorString(state)));
  }

  void abort() override {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    failed_ = true;
  }

  void synchronize() override {
    check_usable();
    const auto start = Clock::now();
    const auto deadline = deadline_from_now();
    for (;;) {
      const cudaError_t status = cudaStreamQuery(stream_);
      if (status == cudaSuccess) return;
      if (status != cudaErrorNotReady) STRATA_CUDA_CHECK(status);
      poll_async_error();
      if (Clock::now() > deadline) {
        const double waited = std::chrono::duration<double>(Clock::now() - start).count();
        fail(cat("timed out after ", waited, " s waiting for the stream (limit ", options_.timeout_seconds,
                 " s): a peer is missing, stuck or dead"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // Runs one NCCL call; on failure aborts and rethrows with the rank, group and NCCL's last message.
  template <typename Call>
  void guarded(const char* what, Call&& call) {
    try {
      call();
    } catch (const Error& e) {
      const std::string last = last_error(comm_);
      abort();
      throw Error(ErrorKind::Communication,
                  cat(where(), ": ", what, ": ", e.what(), last.empty() ? "" : cat(" (NCCL: ", last, ")"),
                      "; communicator aborted"));
    }
  }

  // Polls a non-blocking call until it is set up, with the deadline.
  void settle(const char* what) {
    const auto deadline = deadline_from_now();
    for (;;) {
      ncclResult_t state = ncclSuccess;
      guarded(what, [&] { STRATA_NCCL_CHECK(ncclCommGetAsyncError(comm_, &state)); });
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) fail(cat(what, ": ", ncclGetErrorString(state)));
      if (Clock::now() > deadline)
        fail(cat(what, " did not complete in ", options_.timeout_seconds, " s (a peer missing or stuck?)"));
      std::this_thread::yield();
    }
  }

 private:
  template <typename Call>
  void enqueue(const char* what, Call&& call) {
    check_usable();
    guarded(what, call);
    settle(what);
  }

  bool finalized_in_time() noexcept {
    const ncclResult_t started = ncclCommFinalize(comm_);
    if (started != ncclSuccess && started != ncclInProgress) return false;
    const auto deadline = deadline_from_now();
    ncclResult_t state = ncclInProgress;
    while (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclInProgress) {
      if (Clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return state == ncclSuccess;
  }

  std::string where() const { return cat("NCCL ", options_.label, " rank ", rank_, " of ", size_); }

  [[noreturn]] void fail(const std::string& why) {
    const std::string last = comm_ != nullptr ? last_error(comm_) : std::string();
    abort();
    throw Error(ErrorKind::Communication,
                cat(where(), ": ", why, last.empty() ? "" : cat(" (NCCL: ", last, ")"), "; communicator aborted"));
  }

  void check_usable() const {
    STRATA_CHECK(!failed_ && comm_ != nullptr, Communication, where(), ": used after it was aborted");
  }

  void check_peer(int peer, const char* what) const {
    STRATA_CHECK(peer >= 0 && peer < size_, Usage, where(), ": ", what, " ", peer, " is not a rank of the group");
  }

  Clock::time_point deadline_from_now() const {
    if (options_.timeout_seconds <= 0) return Clock::time_point::max();
    return Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.timeout_seconds));
  }

  ncclComm_t comm_ = nullptr;
  int rank_, size_, device_;
  cudaStream_t stream_;
  NcclOptions options_;
  bool failed_ = false;
  void* barrier_word_ = nullptr;  // one float on the device for barrier(), allocated on first use
};

}  // namespace

std::unique_ptr<NcclCommunicator> make_nccl_communicator(Communicator& bootstrap, int device, void* stream,
                                                         NcclOptions options) {
  if (device < 0) STRATA_CUDA_CHECK(cudaGetDevice(&device));
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) STRATA_NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap.broadcast(&id, sizeof id, 0);
  auto comm =
      std::make_unique<NcclCommunicatorImpl>(bootstrap.rank(), bootstrap.size(), device, stream, std::move(options));
  comm->init(id);
  return comm;
}

std::string nccl_version() {
  int version = 0;
  STRATA_NCCL_CHECK(ncclGetVersion(&version));
  // NCCL_VERSION(X,Y,Z) = X*10000 + Y*100 + Z since 2.9
  return cat(version / 10000, ".", version / 100 % 100, ".", version % 100);
}

}  // namespace strata
