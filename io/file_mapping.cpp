// Read-only whole-file mappings (see io/file_mapping.h).
#include "io/file_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "runtime/base/error.h"

namespace strata {

std::shared_ptr<const FileMapping> FileMapping::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STRATA_CHECK(fd >= 0, Checkpoint, "cannot open ", path, ": ", std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || info.st_size <= 0) {
    const std::string reason = info.st_size <= 0 ? "empty file" : std::strerror(errno);
    ::close(fd);
    throw Error(ErrorKind::Checkpoint, cat("cannot map ", path, ": ", reason));
  }
  const auto size = std::size_t(info.st_size);
  // MAP_SHARED and read-only: the page cache's pages themselves, never copied; a stray write faults.
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file referenced
  STRATA_CHECK(data != MAP_FAILED, Checkpoint, "cannot map ", path, " (", size, " bytes): ", std::strerror(map_errno));
  return std::shared_ptr<const FileMapping>(new FileMapping(path, static_cast<const char*>(data), size));
}

FileMapping::~FileMapping() { ::munmap(const_cast<char*>(data_), size_); }

}  // namespace strata
