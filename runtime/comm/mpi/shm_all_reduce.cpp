#include "runtime/comm/mpi/shm_all_reduce.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "runtime/base/log.h"
#include "runtime/comm/mpi/mpi_communicator.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

namespace {

static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "flags shared between processes must be lock-free");

// Linux 6.3 on warns about (and with vm.memfd_noexec = 2 refuses) a memory file made without saying it is not
// executable.
#ifdef MFD_NOEXEC_SEAL
constexpr unsigned kMemfdFlags = MFD_CLOEXEC | MFD_NOEXEC_SEAL;
#else
constexpr unsigned kMemfdFlags = MFD_CLOEXEC;
#endif

void pause() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// Spins until ready(), then yields the core between looks (ranks may outnumber cores).
template <typename Ready>
void wait_until(Ready&& ready) {
  for (std::uint32_t spins = 0; !ready(); ++spins) {
    if (spins < 4096)
      pause();
    else
      sched_yield();
  }
}

}  // namespace

std::unique_ptr<ShmAllReduce> ShmAllReduce::create(MPI_Comm comm) {
  int size = 0, rank = 0;
  STRATA_MPI_CHECK(MPI_Comm_size(comm, &size));
  STRATA_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  if (size == 1) return nullptr;
  // Whether every rank of comm shares this node's memory (and wants the segment: STRATA_MPI_SHM_ALLREDUCE=0 turns
  // it off; every rank must agree, so the answer is the group's).
  MPI_Comm local = MPI_COMM_NULL;
  STRATA_MPI_CHECK(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local));
  int local_size = 0;
  STRATA_MPI_CHECK(MPI_Comm_size(local, &local_size));
  STRATA_MPI_CHECK(MPI_Comm_free(&local));
  const char* setting = std::getenv("STRATA_MPI_SHM_ALLREDUCE");
  int wanted = local_size == size && !(setting && std::string(setting) == "0") ? 1 : 0;
  STRATA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &wanted, 1, MPI_INT, MPI_MIN, comm));
  if (!wanted) return nullptr;

  // Rank 0 makes the segment, an anonymous memory file (memfd: no name in /dev/shm to leave behind if the job dies,
  // and not bounded by /dev/shm's size), reserving its pages so that a lack of memory is an error here, not a SIGBUS
  // later; the others open it through /proc/<rank 0's pid>/fd. If any rank fails, all use MPI_Allreduce.
  const std::size_t bytes = std::size_t(size) * sizeof(Rank);
  // Rank 0's pid and descriptor (-1: none), and the file's device and inode, which the others check: where ranks
  // share a node but not a pid namespace, that path could name some other process's file.
  long long where[4] = {0, -1, 0, 0};
  int error = 0;
  if (rank == 0) {
    const int fd = memfd_create("strata-allreduce", kMemfdFlags);
    struct stat file {};
    error = fd < 0 ? errno : posix_fallocate(fd, 0, off_t(bytes));  // posix_fallocate returns its error
    if (error == 0 && fstat(fd, &file) != 0) error = errno;
    if (fd >= 0 && error != 0) close(fd);
    if (error == 0)
      where[0] = getpid(), where[1] = fd, where[2] = static_cast<long long>(file.st_dev),
      where[3] = static_cast<long long>(file.st_ino);
  }
  STRATA_MPI_CHECK(MPI_Bcast(where, 4, MPI_LONG_LONG, 0, comm));
  void* base = MAP_FAILED;
  if (where[1] >= 0) {
    const std::string path = "/proc/" + std::to_string(where[0]) + "/fd/" + std::to_string(where[1]);
    const int fd = rank == 0 ? int(where[1]) : open(path.c_str(), O_RDWR | O_CLOEXEC);
    struct stat file {};
    if (fd < 0 || fstat(fd, &file) != 0)
      error = errno;
    else if (static_cast<long long>(file.st_dev) != where[2] || static_cast<long long>(file.st_ino) != where[3] ||
             file.st_size != off_t(bytes))
      error = ENXIO;  // not rank 0's file
    else if ((base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
      error = errno;
    if (fd >= 0 && rank != 0) close(fd);
  }
  int mapped = base != MAP_FAILED ? 1 : 0;
  STRATA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &mapped, 1, MPI_INT, MPI_MIN, comm));
  if (rank == 0 && where[1] >= 0) close(int(where[1]));  // every rank has it mapped, or none will
  if (!mapped) {
    if (base != MAP_FAILED) munmap(base, bytes);
    if (rank == 0 || error != 0)
      log_warn("no shared memory of ", bytes, " bytes for the tensor-parallel all-reduce",
               error != 0 ? cat(" (", std::strerror(error), ")") : std::string(" (another rank could not map it)"),
               ": using MPI_Allreduce");
    return nullptr;
  }
  std::unique_ptr<ShmAllReduce> shm(new ShmAllReduce(base, rank, size));
  Rank& own = shm->part(rank);
  new (&own.arrived) std::atomic<std::uint64_t>(0);
  new (&own.reduced) std::atomic<std::uint64_t>(0);
  STRATA_MPI_CHECK(MPI_Barrier(comm));  // every rank's flags made before anyone looks at them
  return shm;
}

ShmAllReduce::ShmAllReduce(void* base, int rank, int size) : base_(base), rank_(rank), size_(size) {}

ShmAllReduce::~ShmAllReduce() { munmap(base_, std::size_t(size_) * sizeof(Rank)); }

ShmAllReduce::Rank& ShmAllReduce::part(int rank) const { return static_cast<Rank*>(base_)[rank]; }

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
    wait_until([&] { return peer.arrived.load(std::memory_order_acquire) >= sequence; });
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
    wait_until([&] { return peer.reduced.load(std::memory_order_acquire) >= sequence; });
    each(r, peer);
  }
}

void ShmAllReduce::finish(std::uint64_t sequence) {
  finish(sequence, [](int, const Rank&) {});
}

}  // namespace strata
