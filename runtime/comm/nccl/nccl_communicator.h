// The NCCL implementation of Collectives, for DEVICE tensors: collectives and point-to-point are enqueued on the
// CUDA stream given at creation (so a CUDA graph can capture them) and return before they complete. Host memory is
// refused; host messages (results, pipeline steps of the CPU path) are the MPI Communicator's, not NCCL's.
// Free of CUDA and NCCL headers (both are linked PRIVATE); STRATA_NCCL_CHECK lives in nccl_check.h.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "runtime/comm/communicator.h"

namespace strata {

struct NcclOptions {
  // Longest wait for initialisation, a split, finalisation or synchronize() before the communicator is aborted and
  // an Error thrown; <= 0 waits forever (not recommended: a dead peer then hangs this rank).
  double timeout_seconds = 300;
  // Names the group in every message, e.g. "tp group 1 (world rank 3)".
  std::string label = "nccl";
};

class NcclCommunicator : public Collectives {
 public:
  // The sub-group of the ranks passing the same `color`, ordered by `key` (ncclCommSplit). Collective.
  virtual std::unique_ptr<NcclCommunicator> split(int color, int key) = 0;

  // Point-to-point on device memory (ncclSend / ncclRecv), enqueued on the stream. The receiver names the sender
  // and the same byte count; a pair's messages match in the order they were enqueued.
  virtual void send_device(const void* data, std::size_t bytes, int peer) = 0;
  virtual void recv_device(void* data, std::size_t bytes, int peer) = 0;

  // NCCL collectives are enqueued on the stream with no host wait, so the CUDA backend may record them in its graphs.
  bool graph_capturable() const override { return true; }

  // Checks NCCL's asynchronous error (a peer gone, a network failure, an internal error). On one, aborts the
  // communicator and throws Error(Communication) naming the rank, the group and NCCL's message. Cheap: call it
  // while waiting for the stream.
  virtual void poll_async_error() = 0;
  // Aborts the communicator (ncclCommAbort): operations in flight end, every later call throws. For timeouts.
  virtual void abort() = 0;
  // Waits for the stream, polling the asynchronous error, and aborts + throws after the timeout.
  virtual void synchronize() = 0;

  virtual int device() const = 0;
  virtual void* stream() const = 0;  // cudaStream_t
  virtual const NcclOptions& options() const = 0;
};

// Collective over `bootstrap` (an MPI group of exactly the ranks of the new communicator, same rank order): rank 0
// creates the NCCL unique id and broadcasts it over bootstrap, then every rank joins a non-blocking communicator on
// CUDA `device` (-1: the calling thread's current device) whose initialisation is polled under
// options.timeout_seconds. `stream` is a cudaStream_t (nullptr:
// the legacy default stream).
std::unique_ptr<NcclCommunicator> make_nccl_communicator(Communicator& bootstrap, int device, void* stream,
                                                         NcclOptions options = {});

// NCCL's version as "2.28.9" (the library loaded at run time).
std::string nccl_version();

}  // namespace strata
