// MPI communicator: collectives and point-to-point, 64-bit sizes chunked into int-sized MPI calls.
#include "runtime/comm/mpi/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <exception>

#include "runtime/base/sum_in_order.h"
#include "runtime/comm/mpi/shm_all_reduce.h"
#include "runtime/comm/mpi/shm_rows.h"

namespace strata {

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return cat("MPI error ", code);
  return std::string(text, std::size_t(length));
}

MpiEnvironment::MpiEnvironment(int* argc, char*** argv) {
  int provided = 0;
  // MULTIPLE: the watchdog thread may call MPI_Abort while the main thread is blocked in MPI.
  STRATA_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  STRATA_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

MpiEnvironment::~MpiEnvironment() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

int MpiEnvironment::world_rank() const {
  int rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  return rank;
}

int MpiEnvironment::world_size() const {
  int size = 0;
  STRATA_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  return size;
}

void MpiEnvironment::abort_job(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest if it ever did
}

namespace {

constexpr std::size_t kMaxChunk = std::size_t(INT_MAX) / 8 * 8;  // MPI counts are int

class MpiSendRequest final : public SendRequest {
 public:
  MpiSendRequest(std::vector<char> message) : message_(std::move(message)) {}
  ~MpiSendRequest() override {
    if (request_ == MPI_REQUEST_NULL) return;
    if (std::uncaught_exceptions() > 0) {
      // Unwinding towards MPI_Abort: waiting here could block on a receiver that never comes. Let MPI finish (or
      // drop) the send on its own, and keep the buffer alive for it: leaked on purpose, the job is ending.
      MPI_Request_free(&request_);
      new std::vector<char>(std::move(message_));
      return;
    }
    MPI_Wait(&request_, MPI_STATUS_IGNORE);  // no throw in a destructor
  }
  void wait() override {
    if (request_ != MPI_REQUEST_NULL) STRATA_MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE));
  }
  std::vector<char> message_;
  MPI_Request request_ = MPI_REQUEST_NULL;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm parent) {
    STRATA_MPI_CHECK(MPI_Comm_dup(parent, &comm_));
    STRATA_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    STRATA_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    STRATA_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(TensorView data) override {
    if (size_ == 1) return;
    STRATA_CHECK(data.kind == MemoryKind::Host, Communication, "MPI all-reduce of ", shape_string(data.shape),
                 " in device memory: MPI carries host data only (the device tensor-parallel group is NCCL's)");
    float* values = data.f32();
    if (!shm_checked_) {  // collective: every rank reaches its first all-reduce of this group at the same call
      shm_ = ShmAllReduce::create(comm_);
      shm_checked_ = true;
    }
    if (shm_ && data.numel() <= ShmAllReduce::kSlotFloats) return shm_->sum(values, data.numel());
    for (std::int64_t done = 0; done < data.numel();) {
      const int count = int(std::min<std::int64_t>(data.numel() - done, std::int64_t(kMaxChunk / 4)));
      STRATA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, values + done, count, MPI_FLOAT, MPI_SUM, comm_));
      done += count;
    }
  }

  Buffer shared_workspace(std::size_t bytes) override {
    if (size_ == 1) return {};
    std::unique_ptr<ShmRows> rows = ShmRows::create(comm_, bytes);
    if (!rows) return {};
    ShmRows* made = rows.get();
    rows_.push_back(std::move(rows));
    return Buffer(made->data(), bytes, MemoryKind::Host, [this, made](void*) {
      std::erase_if(rows_, [&](const std::unique_ptr<ShmRows>& r) { return r.get() == made; });
    });
  }

  SharedRows* shared_rows(const void* workspace) override {
    for (const auto& rows : rows_)
      if (rows->data() == workspace) return rows.get();
    return nullptr;
  }

  bool all_reduce_with(TensorView data, const PartsUser& use) override {
    STRATA_CHECK(data.kind == MemoryKind::Host && data.dtype == DType::F32, Communication, "MPI all-reduce of ",
                 shape_string(data.shape), ": f32 host tensors");
    ShmRows* rows = workspace_of(data);
    if (!rows) return false;
    rows->all_parts(std::size_t(data.f32() - static_cast<const float*>(rows->data())), data.numel(), use);
    return true;
  }

  // Data in the shared workspace: each rank sums its rows out of every rank's in place (shm_rows.h). Elsewhere each
  // peer's rows of this rank's data go to it, its rows of this rank's share come back, and the share is summed in
  // rank order. Open MPI 4.1's MPI_Reduce_scatter_block took 4-5 ms for a 2048-token step's 6 MB over 2 ranks on
  // one node, its MPI_Allreduce 0.6 ms, and these sends 0.5 ms with the sum (docs/performance.md).
  void reduce_scatter_sum(TensorView data, RowStarts starts, TensorView share) override {
    check_shares("MPI reduce-scatter", data, starts);
    const auto [from, count] = own_floats(data, starts);
    STRATA_CHECK(share.kind == MemoryKind::Host && share.dtype == DType::F32 && share.numel() == count, Communication,
                 "MPI reduce-scatter of ", shape_string(data.shape), " into ", shape_string(share.shape), " on rank ",
                 rank_, ": its share is ", count, " values");
    float* sum = share.f32();
    if (ShmRows* rows = workspace_of(data))
      return rows->reduce_scatter(std::size_t(data.f32() - static_cast<const float*>(rows->data())) + from, count,
                                  [&](std::span<const float* const> parts) { sum_in_order(parts, count, sum); });
    const std::int64_t width = data.row_elems();
    const auto floats_of = [&](int r) { return (starts[std::size_t(r) + 1] - starts[std::size_t(r)]) * width; };
    for (int r = 0; r < size_; ++r)
      STRATA_CHECK(std::size_t(floats_of(r)) * sizeof(float) <= kMaxChunk, Communication, "reduce-scatter of ",
                   floats_of(r), " values to rank ", r, " exceeds one MPI call");
    const float* values = data.f32();
    received_.resize(std::size_t(size_) * std::size_t(count));  // peer r's rows of this share at r * count
    std::vector<MPI_Request> requests;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      requests.emplace_back();
      STRATA_MPI_CHECK(MPI_Irecv(received_.data() + std::int64_t(r) * count, int(count), MPI_FLOAT, r,
                                 int(Tag::ReduceScatter), comm_, &requests.back()));
      requests.emplace_back();
      STRATA_MPI_CHECK(MPI_Isend(values + starts[std::size_t(r)] * width, int(floats_of(r)), MPI_FLOAT, r,
                                 int(Tag::ReduceScatter), comm_, &requests.back()));
    }
    STRATA_MPI_CHECK(MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
    std::vector<const float*> parts;
    for (int r = 0; r < size_; ++r)
      parts.push_back(r == rank_ ? values + from : received_.data() + std::int64_t(r) * count);
    sum_in_order(parts, count, sum);
  }

  void all_gather(const void* send, void* recv, std::size_t bytes_per_rank) override {
    STRATA_CHECK(bytes_per_rank <= kMaxChunk, Communication, "all_gather of ", bytes_per_rank,
                 " bytes per rank exceeds one MPI call");
    const bool in_place = send == static_cast<const char*>(recv) + std::size_t(rank_) * bytes_per_rank;
    STRATA_MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : send, int(bytes_per_rank), MPI_BYTE, recv,
                                   int(bytes_per_rank), MPI_BYTE, comm_));
  }

  void all_gather_rows(void* rows, std::size_t row_bytes, RowStarts starts) override {
    check_row_starts("MPI all-gather of rows", starts, size_, starts.empty() ? 0 : starts.back());
    gather_counts_.clear();  // each rank's bytes, then their offsets (kept between calls: none allocated a step)
    for (std::size_t r = 0; r < std::size_t(size_); ++r) {
      const std::size_t end = std::size_t(starts[r + 1]) * row_bytes;
      STRATA_CHECK(end <= kMaxChunk, Communication, "all-gather of ", end, " bytes: rank ", r,
                   "'s rows end past one MPI call");
      gather_counts_.push_back(int(end - std::size_t(starts[r]) * row_bytes));
    }
    for (std::size_t r = 0; r < std::size_t(size_); ++r)
      gather_counts_.push_back(int(std::size_t(starts[r]) * row_bytes));
    const int* c = gather_counts_.data();
    STRATA_MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_BYTE, rows, c, c + size_, MPI_BYTE, comm_));
  }

  void all_to_all(const void* send, const std::size_t* send_bytes, const std::size_t* send_offsets, void* recv,
                  const std::size_t* recv_bytes, const std::size_t* recv_offsets) override {
    std::vector<int> counts(4 * std::size_t(size_));  // send counts, send displacements, recv counts, recv displs
    for (int r = 0; r < size_; ++r) {
      for (const std::size_t value : {send_bytes[r], send_offsets[r], recv_bytes[r], recv_offsets[r]})
        STRATA_CHECK(value <= kMaxChunk, Communication, "all_to_all: ", value, " bytes (count or offset) to/from rank ",
                     r, " exceed one MPI call");
      counts[std::size_t(r)] = int(send_bytes[r]);
      counts[std::size_t(size_ + r)] = int(send_offsets[r]);
      counts[std::size_t(2 * size_ + r)] = int(recv_bytes[r]);
      counts[std::size_t(3 * size_ + r)] = int(recv_offsets[r]);
    }
    const int* c = counts.data();
    STRATA_MPI_CHECK(MPI_Alltoallv(send, c, c + size_, MPI_BYTE, recv, c + 2 * size_, c + 3 * size_, MPI_BYTE, comm_));
  }

  void broadcast(void* data, std::size_t bytes, int root) override {
    auto* bytes_ptr = static_cast<char*>(data);
    for (std::size_t done = 0; done < bytes;) {
      const int count = int(std::min(bytes - done, kMaxChunk));
      STRATA_MPI_CHECK(MPI_Bcast(bytes_ptr + done, count, MPI_BYTE, root, comm_));
      done += std::size_t(count);
    }
  }

  std::int64_t all_reduce_max(std::int64_t value) override {
    std::int64_t result = value;
    STRATA_MPI_CHECK(MPI_Allreduce(&value, &result, 1, MPI_INT64_T, MPI_MAX, comm_));
    return result;
  }

  void barrier() override { STRATA_MPI_CHECK(MPI_Barrier(comm_)); }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    STRATA_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
    auto group = std::make_unique<MpiCommunicator>(sub);  // duplicates sub
    STRATA_MPI_CHECK(MPI_Comm_free(&sub));
    return group;
  }

  std::unique_ptr<SendRequest> isend(std::vector<char> message, int dest, Tag tag) override {
    STRATA_CHECK(message.size() <= kMaxChunk, Communication, "message of ", message.size(),
                 " bytes exceeds one MPI send");
    auto request = std::make_unique<MpiSendRequest>(std::move(message));
    STRATA_MPI_CHECK(MPI_Isend(request->message_.data(), int(request->message_.size()), MPI_BYTE, dest, int(tag), comm_,
                               &request->request_));
    return request;
  }

  std::vector<char> recv(int src, Tag tag) override {
    MPI_Status status;
    STRATA_MPI_CHECK(MPI_Probe(src, int(tag), comm_, &status));
    return receive_probed(status);
  }

  bool try_recv_any(Tag tag, std::vector<char>& message, int& src) override {
    int flag = 0;
    MPI_Status status;
    STRATA_MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, int(tag), comm_, &flag, &status));
    if (!flag) return false;
    src = status.MPI_SOURCE;
    message = receive_probed(status);
    return true;
  }

 private:
  // A sequence-parallel call's data and shares: f32 host rows, size_ + 1 starts from 0 to its rows.
  void check_shares(const char* call, TensorView data, RowStarts starts) const {
    STRATA_CHECK(data.kind == MemoryKind::Host && data.dtype == DType::F32, Communication, call, " of ",
                 shape_string(data.shape), " over ", size_, " ranks: f32 host rows");
    check_row_starts(call, starts, size_, data.rows());
  }
  // This rank's share of `data`: its first float (from data's start) and how many.
  std::pair<std::size_t, std::int64_t> own_floats(TensorView data, RowStarts starts) const {
    const std::int64_t width = data.row_elems(), first = starts[std::size_t(rank_)];
    return {std::size_t(first * width), (starts[std::size_t(rank_) + 1] - first) * width};
  }

  // The shared workspace `data` lies in, if any.
  ShmRows* workspace_of(TensorView data) const {
    for (const auto& rows : rows_)
      if (rows->holds(data.data, std::size_t(data.numel()) * sizeof(float))) return rows.get();
    return nullptr;
  }

  std::vector<char> receive_probed(MPI_Status& status) {
    int count = 0;
    STRATA_MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &count));
    std::vector<char> message(static_cast<std::size_t>(count));
    STRATA_MPI_CHECK(
        MPI_Recv(message.data(), count, MPI_BYTE, status.MPI_SOURCE, status.MPI_TAG, comm_, MPI_STATUS_IGNORE));
    return message;
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  // all_reduce_sum through shared memory where the ranks share a node (made at the first all-reduce; see
  // shm_all_reduce.h), else MPI_Allreduce.
  std::unique_ptr<ShmAllReduce> shm_;
  bool shm_checked_ = false;
  std::vector<float> received_;                 // reduce_scatter_sum's rows from the peers (kept between calls)
  std::vector<int> gather_counts_;              // all_gather_rows' counts and offsets (kept between calls)
  std::vector<std::unique_ptr<ShmRows>> rows_;  // shared_workspace's memory (each until its Buffer goes)
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm parent) {
  return std::make_unique<MpiCommunicator>(parent);
}

CommGroups make_mpi_groups(const ParallelLayout& layout) {
  CommGroups groups;
  groups.world = make_mpi_communicator(MPI_COMM_WORLD);
  // Colour = the coordinates the group shares; key = the coordinate that varies (so group rank == that coordinate).
  groups.tp = groups.world->split(layout.dp_rank() * layout.sizes().pp + layout.pp_rank(), layout.tp_rank());
  groups.pp = groups.world->split(layout.dp_rank() * layout.sizes().tp + layout.tp_rank(), layout.pp_rank());
  groups.dp = groups.world->split(layout.pp_rank() * layout.sizes().tp + layout.tp_rank(), layout.dp_rank());
  return groups;
}

}  // namespace strata
