// Read-only whole-file mappings (see io/file_mapping.h).
#include "io/file_mapping.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "runtime/base/error.h"
#include "runtime/base/log.h"

namespace strata {
namespace {

// A page of a mapping that cannot be read (the file was truncated or replaced in place, or the disk or network file
// system failed) faults with SIGBUS, where read(2) would have returned an error. For faults inside a live mapping,
// say so before dying, in the log's format, instead of a bare "Bus error"; any other SIGBUS (say /dev/shm running
// out under NCCL) goes to whatever handled it before. A signal handler may only read plain memory and write(2): the
// live ranges sit in fixed slots of atomics and the text is composed beforehand.
constexpr int kSlots = 256;  // live mappings the handler knows (one per shard a rank opened; more are not explained)
std::atomic<std::uintptr_t> slot_begin[kSlots], slot_end[kSlots];
char bus_error_text[1024];
std::atomic<std::size_t> bus_error_length{0};
struct sigaction previous_action;

bool inside_a_mapping(std::uintptr_t at) {
  for (int i = 0; i < kSlots; ++i) {
    const std::uintptr_t begin = slot_begin[i].load(std::memory_order_acquire);
    if (begin != 0 && at >= begin && at < slot_end[i].load(std::memory_order_acquire)) return true;
  }
  return false;
}

void on_bus_error(int signal, siginfo_t* info, void*) {
  if (inside_a_mapping(reinterpret_cast<std::uintptr_t>(info->si_addr))) {
    const ssize_t written = ::write(2, bus_error_text, bus_error_length.load());
    (void)written;  // nothing more to do if stderr is gone
    struct sigaction fallback {};
    fallback.sa_handler = SIG_DFL;
    ::sigaction(signal, &fallback, nullptr);
  } else {
    ::sigaction(signal, &previous_action, nullptr);
  }
  // Returning re-runs the faulting access, which now meets the restored disposition; a SIGBUS sent by a process
  // (no fault to re-run) is sent again.
  if (info->si_code <= 0) ::raise(signal);
}

void explain_bus_errors(const char* begin, std::size_t size) {
  const std::string text = cat("[", log_prefix(), "] error: bus error (SIGBUS) reading a checkpoint shard mapped into ",
                               "memory: the file was truncated or rewritten while the job ran, or its file system ",
                               "failed; with --no-mmap strata reads shards with read(2) and reports the error\n");
  bus_error_length.store(0);
  const std::size_t length = std::min(text.size(), sizeof bus_error_text);
  std::memcpy(bus_error_text, text.data(), length);
  bus_error_length.store(length);
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction action {};
    action.sa_sigaction = on_bus_error;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGBUS, &action, &previous_action);
  });
  for (int i = 0; i < kSlots; ++i) {
    std::uintptr_t free = 0;
    if (slot_begin[i].compare_exchange_strong(free, reinterpret_cast<std::uintptr_t>(begin))) {
      slot_end[i].store(reinterpret_cast<std::uintptr_t>(begin) + size, std::memory_order_release);
      return;
    }
  }
}

void forget(const char* begin) {
  for (int i = 0; i < kSlots; ++i) {
    if (slot_begin[i].load() != reinterpret_cast<std::uintptr_t>(begin)) continue;
    slot_end[i].store(0, std::memory_order_release);  // an empty range until the slot is reused
    slot_begin[i].store(0, std::memory_order_release);
    return;
  }
}

}  // namespace

std::shared_ptr<const FileMapping> FileMapping::map(int fd, const std::string& path) {
  struct stat info {};
  STRATA_CHECK(::fstat(fd, &info) == 0, Checkpoint, "cannot map ", path, ": ", std::strerror(errno));
  STRATA_CHECK(info.st_size > 0, Checkpoint, "cannot map ", path, ": empty file");
  const auto size = std::size_t(info.st_size);
  // MAP_SHARED and read-only: the page cache's pages themselves, never copied; a stray write faults. The mapping
  // keeps the file referenced after `fd` is closed.
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  STRATA_CHECK(data != MAP_FAILED, Checkpoint, "cannot map ", path, " (", size, " bytes): ", std::strerror(errno));
  explain_bus_errors(static_cast<const char*>(data), size);
  return std::shared_ptr<const FileMapping>(new FileMapping(path, static_cast<const char*>(data), size));
}

FileMapping::~FileMapping() {
  forget(data_);
  ::munmap(const_cast<char*>(data_), size_);
}

}  // namespace strata
