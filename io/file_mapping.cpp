// Read-only whole-file mappings (see io/file_mapping.h).
#include "io/file_mapping.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "runtime/base/error.h"
#include "runtime/base/log.h"

namespace strata {
namespace {

// A page of a mapping that cannot be read (the file was truncated or replaced in place, or the disk or network file
// system failed) faults with SIGBUS, where read(2) would have returned an error. Say so before dying, in the log's
// format, instead of a bare "Bus error". The text is composed beforehand: a signal handler may only write(2).
char bus_error_text[1024];
volatile sig_atomic_t bus_error_length = 0;

void on_bus_error(int) {
  if (bus_error_length > 0) {
    const ssize_t written = ::write(2, bus_error_text, std::size_t(bus_error_length));
    (void)written;  // nothing more to do if stderr is gone
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void explain_bus_errors() {
  const std::string text = cat("[", log_prefix(), "] error: bus error (SIGBUS) reading a checkpoint shard mapped into ",
                               "memory: the file was truncated or rewritten while the job ran, or its file system ",
                               "failed; rerun with --no-mmap to read it with read(2) and get the system's error\n");
  const std::size_t length = std::min(text.size(), sizeof bus_error_text);
  bus_error_length = 0;
  std::memcpy(bus_error_text, text.data(), length);
  bus_error_length = sig_atomic_t(length);
  struct sigaction action {};
  action.sa_handler = on_bus_error;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, nullptr);
}

}  // namespace

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
  explain_bus_errors();
  return std::shared_ptr<const FileMapping>(new FileMapping(path, static_cast<const char*>(data), size));
}

FileMapping::~FileMapping() { ::munmap(const_cast<char*>(data_), size_); }

}  // namespace strata
