// The sum all-reduce of a communicator whose ranks share one node's memory (a tensor-parallel group inside a node,
// the CPU backend's), through a shared anonymous memory file (shm_segment.h) instead of MPI_Allreduce.
//
// Why: through strata's MPI communicator, Open MPI 4.1's all-reduce between the two ranks of a 2-vCPU VM took 2 us
// for a batch-1 decode step's activations (3 KB), 21-25 us for batch 16's (48 KB), 48-57 us for batch 64's (192 KB),
// two of them per layer; this takes 1.3-1.6, 9-10 and 31-36 us (docs/performance.md). Each rank copies its values
// into its slot of the segment, the ranks sum one share of the elements each, and every rank copies the sums back:
// three passes over the values, and two waits on the other ranks' flags.
//
// The sums are added in rank order (rank 0's value, plus rank 1's, ...), so every rank gets the same bits, and the
// same bits on every run (MPI's order is the implementation's). Up to a slot's values (1 MiB): above that, as for a
// prefill step's activations, Open MPI's single-copy transfers were faster (6 MB: 1.1 against 1.3-1.6 ms). Waits spin,
// then yield the core (oversubscribed ranks); a peer that never arrives is the watchdog's to report, as one stuck in
// MPI_Allreduce is. Every rank must call sum() with the same count, as for MPI_Allreduce: a mismatch is reported by
// name on every rank instead of corrupting the sums (counts on both sides of the 1 MiB limit would put some ranks
// in MPI_Allreduce and some here: the watchdog's, as such a mismatch in MPI_Allreduce alone is).
#pragma once
#include <mpi.h>

#include <cstdint>
#include <memory>

#include "runtime/comm/mpi/shm_segment.h"

namespace strata {

class ShmAllReduce {
 public:
  // Collective over `comm`. Null (on every rank) when it has one rank, its ranks are not all on one node
  // (MPI_COMM_TYPE_SHARED), STRATA_MPI_SHM_ALLREDUCE=0 on any of them, or the memory cannot be had or mapped.
  static std::unique_ptr<ShmAllReduce> create(MPI_Comm comm);
  ~ShmAllReduce();
  ShmAllReduce(const ShmAllReduce&) = delete;
  ShmAllReduce& operator=(const ShmAllReduce&) = delete;

  // values[0, count) = the sum over the ranks of their values, in place; count <= kSlotFloats. Collective.
  void sum(float* values, std::int64_t count);

  static constexpr std::int64_t kSlotFloats = std::int64_t(1) << 18;  // 1 MiB

 private:
  struct Rank;  // one rank's part of the segment: its flags and two slots (see shm_all_reduce.cpp)
  ShmAllReduce(std::unique_ptr<ShmSegment> segment, int rank, int size);
  Rank& part(int rank) const;
  // Publishes this rank's `reduced` for the sum, then waits for every rank's, calling each(rank, its part) once
  // that rank's has come.
  template <typename Each>
  void finish(std::uint64_t sequence, Each&& each);
  void finish(std::uint64_t sequence);

  std::unique_ptr<ShmSegment> segment_;  // a Rank per rank
  int rank_, size_;
  std::uint64_t sequence_ = 0;  // sums so far, the same on every rank
};

}  // namespace strata
