#include "runtime/comm/mpi/shm_all_reduce.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <string>

#include "runtime/base/log.h"
#include "runtime/comm/mpi/mpi_communicator.h"

namespace strata {

// One rank's part of the segment: the sequence number of the last sum whose values it has put in its slot
// (`arrived`, with the sum's `count`) and of the last one whose share of sums it has put there (`reduced`); two
// slots, sum s in slot s % 2, so that a rank may start the next sum while a slower one still copies the last. (A
// rank writes slot s % 2 again at sum s + 2, after every rank has arrived at s + 1, so after each has finished
// reading it for s.) Each flag on its own cache line: one rank writes it, the others spin on it.
struct ShmAllReduce::Rank {
  alignas(64) std::atomic<std::uint64_t> arrived;
  std::int64_t count;
  alignas(64) std::atomic<std::uint64_t> reduced;
  alignas(64) float slots[2][kSlotFloats];
};

std::unique_ptr<ShmAllReduce> ShmAllReduce::create(MPI_Comm comm) {
  int size = 0, rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_size(comm, &size));
  STRATA_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  auto segment = ShmSegment::create(comm, sizeof(Rank), "the tensor-parallel all-reduce", "MPI_Allreduce");
  if (!segment) return nullptr;
  std::unique_ptr<ShmAllReduce> shm(new ShmAllReduce(std::move(segment), rank, size));
  Rank& own = shm->part(rank);
  new (&own.arrived) std::atomic<std::uint64_t>(0);
  new (&own.reduced) std::atomic<std::uint64_t>(0);
  STRATA_MPI_CHECK(MPI_Barrier(comm));  // every rank's flags made before anyone looks at them
  return shm;
}

ShmAllReduce::ShmAllReduce(std::unique_ptr<ShmSegment> segment, int rank, int size)
    : segment_(std::move(segment)), rank_(rank), size_(size) {}

ShmAllReduce::~ShmAllReduce() = default;

ShmAllReduce::Rank& ShmAllReduce::part(int rank) const { return *static_cast<Rank*>(segment_->part(rank)); }

void ShmAllReduce::sum(float* values, std::int64_t count) {
  STRATA_CHECK(count >= 0 && count <= kSlotFloats, Internal, "shared-memory all-reduce of ", count,
               " values: a slot holds ", kSlotFloats);
  const std::uint64_t sequence = ++sequence_;
  const int slot = int(sequence % 2);
  Rank& own = part(rank_);
  if (count > 0) std::memcpy(own.slots[slot], values, std::size_t(count) * sizeof(float));
  own.count = count;
  own.arrived.store(sequence, std::memory_order_release);
  int differs = -1;  // a rank whose count is not this one's
  for (int r = 0; r < size_; ++r) {
    const Rank& peer = part(r);
    spin_until([&] { return peer.arrived.load(std::memory_order_acquire) >= sequence; });
    if (peer.count != count) differs = r;
  }
  if (differs >= 0) {
    // Every rank sees a count unlike its own (else all were equal). Each still finishes the sum's protocol before it
    // throws: a rank that left early would write its next sum's slot, or count, while another still reads them.
    const std::int64_t theirs = part(differs).count;
    finish(sequence);
    throw Error(ErrorKind::Communication,
                cat("shared-memory all-reduce: rank ", differs, " sums ", theirs, " values where rank ", rank_,
                    " sums ", count, " (every rank must give the same count)"));
  }
  // This rank's share of the elements, summed in rank order into its own slot (no other rank reads it there until
  // `reduced` says so; each reads only its own share of this slot meanwhile).
  const auto share = [&](int r) { return count * r / size_; };
  constexpr std::int64_t kBlock = 512;
  float block[kBlock];
  for (std::int64_t i = share(rank_); i < share(rank_ + 1); i += kBlock) {
    const std::int64_t n = std::min(kBlock, share(rank_ + 1) - i);
    std::memcpy(block, part(0).slots[slot] + i, std::size_t(n) * sizeof(float));
    for (int r = 1; r < size_; ++r) {
      const float* peer = part(r).slots[slot] + i;
      for (std::int64_t j = 0; j < n; ++j) block[j] += peer[j];
    }
    std::memcpy(own.slots[slot] + i, block, std::size_t(n) * sizeof(float));
  }
  finish(sequence, [&](int r, const Rank& peer) {
    if (share(r + 1) > share(r))
      std::memcpy(values + share(r), peer.slots[slot] + share(r), std::size_t(share(r + 1) - share(r)) * sizeof(float));
  });
}

template <typename Each>
void ShmAllReduce::finish(std::uint64_t sequence, Each&& each) {
  part(rank_).reduced.store(sequence, std::memory_order_release);
  for (int r = 0; r < size_; ++r) {
    const Rank& peer = part(r);
    spin_until([&] { return peer.reduced.load(std::memory_order_acquire) >= sequence; });
    each(r, peer);
  }
}

void ShmAllReduce::finish(std::uint64_t sequence) {
  finish(sequence, [](int, const Rank&) {});
}

}  // namespace strata
