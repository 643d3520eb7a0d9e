// The communication interfaces: Collectives (what layers need, on host or device memory) and Communicator (host
// messaging: collectives plus point-to-point) and CommGroups, the
// explicit bundle of the groups a rank belongs to. MPI implements it now (mpi/), NCCL with the CUDA backend.
// Every method is collective over the group unless it says "point-to-point". Failures throw strata::Error;
// nothing here waits without the job being abortable (launch/ turns any Error into MPI_Abort).
#pragma once
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/base/error.h"
#include "runtime/base/row_starts.h"
#include "runtime/base/shared_rows.h"
#include "runtime/tensor/tensor.h"

namespace strata {

// Tags of point-to-point messages (typed so two protocols can never collide).
// Result: a finished record for world rank 0; Heartbeat: "still running" (replica leaders to rank 0, rank 0 to ranks
// that finished); Done: a rank finished its part; Exit: rank 0 has written everything, every rank may end.
// Work / WorkReply: a replica leader asks rank 0 for prompts, and gets their indices; WorkShare: the leader passes
// them on to the other tensor-parallel ranks of its first stage (engine/dispatch.h). ReduceScatter: the rows of a
// reduce_scatter_sum.
enum class Tag : int {
  Activations = 101,
  Tokens = 102,
  Result = 103,
  Heartbeat = 104,
  Done = 105,
  Exit = 106,
  Work = 107,
  WorkReply = 108,
  WorkShare = 109,
  ReduceScatter = 110
};

// A pending non-blocking send; wait() completes it. Destroying an incomplete request waits for it.
class SendRequest {
 public:
  virtual ~SendRequest() = default;
  virtual void wait() = 0;
};

// Non-blocking sends kept alive until complete, at most `depth` outstanding: bounds the memory they pin and how far a
// sender can run ahead of its receiver.
class SendQueue {
 public:
  explicit SendQueue(std::size_t depth) : depth_(depth) {}
  void push(std::unique_ptr<SendRequest> request) {
    pending_.push_back(std::move(request));
    while (pending_.size() > depth_) {
      pending_.front()->wait();
      pending_.pop_front();
    }
  }
  void drain() {
    for (auto& r : pending_) r->wait();
    pending_.clear();
  }

 private:
  std::size_t depth_;
  std::deque<std::unique_ptr<SendRequest>> pending_;
};

// Collectives over one group of ranks, on whatever memory the implementation serves: what tensor-parallel layers
// need (an all-reduce per layer half, all-gathers for sampling). MPI serves host memory, NCCL device memory.
class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Sum over the group, in place. Collective.
  virtual void all_reduce_sum(TensorView data) = 0;
  // Sequence parallelism's half of an all-reduce: data [rows, ...] (the same shape on every rank), rank r's share of
  // its rows [starts[r], starts[r + 1]) (runtime/base/row_starts.h: size() + 1 entries, the last `rows`; the same on
  // every rank), and share [its rows, ...] gets the sum over the group of this rank's rows of data. data may be
  // changed. Collective. This default sums all of data (all_reduce_sum) and copies the rows out (host memory only);
  // the MPI communicator sends each rank only its rows and adds them in rank order, as its shared-memory all-reduce
  // does.
  virtual void reduce_scatter_sum(TensorView data, RowStarts starts, TensorView share);
  // all_reduce_sum's operands handed to use() unsummed, where the group can do so without copying them (data in the
  // shared workspace, on every rank): parts[r] is all of rank r's data (data.numel() floats) on every rank, readable
  // during the call only; then true. Elsewhere false, having done nothing (the caller then calls all_reduce_sum).
  // Collective where it returns true. Lets a caller add the sums where it reads them. (Sequence parallelism's
  // reduce-scatter hands its rows over in rounds instead: shared_rows.)
  using PartsUser = std::function<void(std::span<const float* const> parts)>;
  virtual bool all_reduce_with(TensorView data, const PartsUser& use) { return false; }
  // Host memory of `bytes` (page-aligned) that the other ranks of the group can read, where they share a node: a
  // reduce_scatter_sum of data in it (on every rank, as every rank makes it) sums the ranks' rows in place instead
  // of sending them. Empty (on every rank) where the group cannot share memory, or has one rank. Collective. The
  // group must outlive it.
  virtual Buffer shared_workspace(std::size_t bytes) { return {}; }
  // The rounds (runtime/base/shared_rows.h) on a shared workspace's memory, `workspace` its Buffer's data; null for
  // any other memory. Lives as long as the workspace.
  virtual SharedRows* shared_rows(const void* workspace) { return nullptr; }
  // recv holds size() * bytes_per_rank bytes, rank r's contribution at offset r * bytes_per_rank. Collective.
  // send may be recv + rank() * bytes_per_rank (in place).
  virtual void all_gather(const void* send, void* recv, std::size_t bytes_per_rank) = 0;
  // In place, shares of any size: rows [starts[r], starts[r + 1]) of `rows` (row_bytes each, back to back) from rank
  // r, for every r (the same starts on every rank). Collective. This default serves host memory through all_to_all
  // (from a copy of this rank's rows: its send and receive buffers must not overlap); MPI's is MPI_Allgatherv.
  virtual void all_gather_rows(void* rows, std::size_t row_bytes, RowStarts starts);
  // Personalised exchange: this rank sends send_bytes[r] bytes from send + send_offsets[r] to rank r and receives
  // recv_bytes[r] bytes from rank r at recv + recv_offsets[r] (size() entries each; the pair's counts must agree).
  // Collective. The dispatch/combine of expert parallelism.
  virtual void all_to_all(const void* send, const std::size_t* send_bytes, const std::size_t* send_offsets, void* recv,
                          const std::size_t* recv_bytes, const std::size_t* recv_offsets) = 0;
  // Collective.
  virtual void broadcast(void* data, std::size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Whether all_reduce_sum on device tensors can be recorded in a CUDA graph on the backend's stream (NCCL can);
  // a group of one reduces nothing, so it can.
  virtual bool graph_capturable() const { return size() == 1; }
};

// A sequence-parallel call's shares of `rows` over `ranks`: ranks + 1 ascending starts from 0 to rows, else an error
// naming the call and the starts given.
inline void check_row_starts(const char* call, RowStarts starts, int ranks, std::int64_t rows) {
  bool ordered = starts.size() == std::size_t(ranks) + 1 && starts.front() == 0 && starts.back() == rows;
  for (std::size_t r = 1; ordered && r < starts.size(); ++r) ordered = starts[r - 1] <= starts[r];
  if (ordered) return;
  std::string given;
  for (const std::int64_t start : starts) given += cat(given.empty() ? "" : " ", start);
  throw Error(ErrorKind::Internal, cat(call, " of ", rows, " rows over ", ranks, " ranks: ", ranks + 1,
                                       " ascending share starts from 0 to the rows (given: ", given, ")"));
}

inline void Collectives::reduce_scatter_sum(TensorView data, RowStarts starts, TensorView share) {
  check_row_starts("reduce_scatter_sum", starts, size(), data.rows());
  STRATA_CHECK(data.kind == MemoryKind::Host && share.kind == MemoryKind::Host &&
                   share.rows() == starts[std::size_t(rank()) + 1] - starts[std::size_t(rank())] &&
                   data.row_elems() == share.row_elems() && data.dtype == share.dtype,
               Internal, "reduce_scatter_sum of ", shape_string(data.shape), " into ", shape_string(share.shape),
               " over ", size(), " ranks");
  all_reduce_sum(data);
  const std::size_t row = std::size_t(data.row_elems()) * dtype_size(data.dtype);
  std::memcpy(share.data, static_cast<const char*>(data.data) + std::size_t(starts[std::size_t(rank())]) * row,
              std::size_t(share.rows()) * row);
}

inline void Collectives::all_gather_rows(void* rows, std::size_t row_bytes, RowStarts starts) {
  check_row_starts("all_gather_rows", starts, size(), starts.empty() ? 0 : starts.back());
  const auto r0 = std::size_t(rank());
  auto* base = static_cast<char*>(rows);
  const std::vector<char> mine(base + std::size_t(starts[r0]) * row_bytes,
                               base + std::size_t(starts[r0 + 1]) * row_bytes);
  std::vector<std::size_t> send_bytes, send_offsets, recv_bytes, recv_offsets;
  for (std::size_t r = 0; r < std::size_t(size()); ++r) {
    send_bytes.push_back(r == r0 ? 0 : mine.size());
    send_offsets.push_back(0);
    recv_bytes.push_back(r == r0 ? 0 : std::size_t(starts[r + 1] - starts[r]) * row_bytes);
    recv_offsets.push_back(std::size_t(starts[r]) * row_bytes);
  }
  all_to_all(mine.data(), send_bytes.data(), send_offsets.data(), rows, recv_bytes.data(), recv_offsets.data());
}

// Host messaging (MPI): the collectives on host memory plus host values and point-to-point messages, which carry
// pipeline steps, sampled tokens, results and liveness between ranks. NCCL does not implement this.
class Communicator : public Collectives {
 public:
  // Maximum over the group of one value. Collective.
  virtual std::int64_t all_reduce_max(std::int64_t value) = 0;

  // The sub-group of the ranks passing the same `color`, ordered by `key` (MPI_Comm_split). Collective over this
  // group.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // Point-to-point. Messages between a pair with one tag arrive in the order sent.
  virtual std::unique_ptr<SendRequest> isend(std::vector<char> message, int dest, Tag tag) = 0;
  // Blocks until a message from src with tag arrives; its size is whatever was sent.
  virtual std::vector<char> recv(int src, Tag tag) = 0;
  // A message from any rank with tag, if one has arrived: returns false without blocking otherwise.
  virtual bool try_recv_any(Tag tag, std::vector<char>& message, int& src) = 0;
};

// The groups of one rank. world: every rank; tp: this rank's tensor-parallel group (layers all-reduce here);
// world is also used for point-to-point between stages and for results (ranks named by world rank).
struct CommGroups {
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Communicator> tp;
  // The tensor-parallel group for device tensors (NCCL with --device cuda); null means use tp.
  std::unique_ptr<Collectives> tp_device;
  std::unique_ptr<Communicator> pp;
  std::unique_ptr<Communicator> dp;
};

}  // namespace strata
