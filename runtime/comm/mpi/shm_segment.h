// Memory every rank of a one-node communicator maps: one part of a fixed size per rank, through a shared anonymous
// memory file (memfd). Not an MPI-3 shared window: ending one takes the collective MPI_Win_free, which a rank
// unwinding towards MPI_Abort must not wait in; not a named POSIX segment: a job killed before unlinking it would
// leave it in /dev/shm. The tensor-parallel all-reduce (shm_all_reduce.h) and the sequence-parallel reduce-scatter
// (shm_rows.h) are made on it.
#pragma once
#include <mpi.h>

#include <sched.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace strata {

class ShmSegment {
 public:
  // Collective over `comm`. Null (on every rank) when it has one rank, its ranks are not all on one node
  // (MPI_COMM_TYPE_SHARED), STRATA_MPI_SHM_ALLREDUCE=0 on any of them, or the memory cannot be had or mapped (a
  // warning naming `what` and the `fallback` used instead). The parts start zeroed.
  static std::unique_ptr<ShmSegment> create(MPI_Comm comm, std::size_t part_bytes, const char* what,
                                            const char* fallback);
  ~ShmSegment();  // unmaps: no collective call
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  void* part(int rank) const { return static_cast<char*>(base_) + std::size_t(rank) * part_bytes_; }
  int size() const { return size_; }

 private:
  ShmSegment(void* base, std::size_t part_bytes, int size) : base_(base), part_bytes_(part_bytes), size_(size) {}
  void* base_;
  std::size_t part_bytes_;
  int size_;
};

// Spins until ready(), then yields the core between looks (ranks may outnumber cores): the waits on the flags other
// ranks set in a segment. A rank that never sets its flag is the watchdog's to report.
template <typename Ready>
void spin_until(Ready&& ready) {
  for (std::uint32_t spins = 0; !ready(); ++spins) {
    if (spins < 4096) {
#if defined(__x86_64__)
      _mm_pause();
#endif
    } else {
      sched_yield();
    }
  }
}

}  // namespace strata
