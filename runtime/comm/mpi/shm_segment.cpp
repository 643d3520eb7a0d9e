#include "runtime/comm/mpi/shm_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "runtime/base/log.h"
#include "runtime/comm/mpi/mpi_communicator.h"

namespace strata {
namespace {

// Linux 6.3 on warns about (and with vm.memfd_noexec = 2 refuses) a memory file made without saying it is not
// executable.
#ifdef MFD_NOEXEC_SEAL
constexpr unsigned kMemfdFlags = MFD_CLOEXEC | MFD_NOEXEC_SEAL;
#else
constexpr unsigned kMemfdFlags = MFD_CLOEXEC;
#endif

}  // namespace

std::unique_ptr<ShmSegment> ShmSegment::create(MPI_Comm comm, std::size_t part_bytes, const char* what,
                                               const char* fallback) {
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
  // later; the others open it through /proc/<rank 0's pid>/fd. If any rank fails, none has one.
  const std::size_t bytes = std::size_t(size) * part_bytes;
  // Rank 0's pid and descriptor (-1: none), and the file's device and inode, which the others check: where ranks
  // share a node but not a pid namespace, that path could name some other process's file.
  long long where[4] = {0, -1, 0, 0};
  int error = 0;
  if (rank == 0) {
    const int fd = memfd_create("strata-shm", kMemfdFlags);
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
      log_warn("no shared memory of ", bytes, " bytes for ", what,
               error != 0 ? cat(" (", std::strerror(error), ")") : std::string(" (another rank could not map it)"),
               ": using ", fallback);
    return nullptr;
  }
  return std::unique_ptr<ShmSegment>(new ShmSegment(base, part_bytes, size));
}

ShmSegment::~ShmSegment() { munmap(base_, std::size_t(size_) * part_bytes_); }

}  // namespace strata
