// In-order JSONL results with a reorder buffer; one write(2) per record, cut back to whole records on failure.
#include "io/results.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "runtime/base/error.h"

namespace strata {

namespace {
std::string parent_folder(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}
}  // namespace

void check_output_target(const std::string& path, bool overwrite, const std::vector<std::string>& inputs) {
  if (path == "-") return;
  struct stat target {};
  if (::stat(path.c_str(), &target) != 0) {
    STRATA_CHECK(errno == ENOENT, Io, "output file ", path, ": ", std::strerror(errno));
    const std::string folder = parent_folder(path);
    struct stat dir {};
    STRATA_CHECK(::stat(folder.c_str(), &dir) == 0, Io, "output file ", path, ": its folder ", folder, ": ",
                 std::strerror(errno));
    STRATA_CHECK(S_ISDIR(dir.st_mode), Io, "output file ", path, ": ", folder, " is not a folder");
    STRATA_CHECK(::access(folder.c_str(), W_OK | X_OK) == 0, Io, "output file ", path, ": cannot create files in ",
                 folder, ": ", std::strerror(errno));
    return;
  }
  STRATA_CHECK(!S_ISDIR(target.st_mode), Usage, "output file ", path,
               " is a directory; name a file (e.g. ", (std::filesystem::path(path) / "results.jsonl").string(), ")");
  for (const auto& input : inputs) {
    struct stat in {};
    STRATA_CHECK(::stat(input.c_str(), &in) != 0 || in.st_dev != target.st_dev || in.st_ino != target.st_ino, Usage,
                 "output file ", path, " is the prompt file ", input,
                 "; writing results there would destroy the prompts (it was left untouched)");
  }
  STRATA_CHECK(!S_ISREG(target.st_mode) || target.st_size == 0 || overwrite, Io, "output file ", path,
               " already exists and is not empty; pass --overwrite to replace it (it was left untouched)");
  STRATA_CHECK(::access(path.c_str(), W_OK) == 0, Io, "output file ", path, " is not writable: ",
               std::strerror(errno));
}

ResultWriter::ResultWriter(const std::string& path, bool overwrite, std::size_t total) : path_(path), total_(total) {
  if (path == "-") {
    fd_ = STDOUT_FILENO;
    return;
  }
  check_output_target(path, overwrite, {});
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  STRATA_CHECK(fd_ >= 0, Io, "cannot open output file ", path, " for writing: ", std::strerror(errno));
  owns_ = true;
}

ResultWriter::~ResultWriter() {
  if (owns_ && fd_ >= 0) ::close(fd_);
}

void ResultWriter::write_line(std::string line) {
  line.push_back('\n');
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n > 0) {
      done += std::size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    const int error = n < 0 ? errno : ENOSPC;  // a zero-byte write of a non-empty buffer: treat as full
    // Keep the file a sequence of whole records: a JSONL reader must never meet half a line.
    if (owns_ && done > 0 && ::ftruncate(fd_, committed_) == 0) ::lseek(fd_, committed_, SEEK_SET);
    throw Error(ErrorKind::Io, cat("error writing ", path_, ": ", std::strerror(error), " after ", next_,
                                   " complete records (the file keeps those ", next_, ", nothing partial)"));
  }
  committed_ += std::int64_t(line.size());
}

void ResultWriter::submit(std::size_t index, const nlohmann::json& record) {
  STRATA_CHECK(index < total_ && index >= next_ && !waiting_.count(index), Internal, "result ", index,
               " submitted twice or out of range");
  waiting_.emplace(index, record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  for (auto it = waiting_.begin(); it != waiting_.end() && it->first == next_; it = waiting_.erase(it)) {
    write_line(std::move(it->second));
    ++next_;
  }
}

void ResultWriter::finish() {
  STRATA_CHECK(next_ == total_, Internal, "only ", next_, " of ", total_, " results were written to ", path_);
  if (owns_) {
    const int fd = fd_;
    fd_ = -1;
    STRATA_CHECK(::fsync(fd) == 0 || errno == EINVAL, Io, "error syncing ", path_, ": ", std::strerror(errno));
    STRATA_CHECK(::close(fd) == 0, Io, "error closing ", path_, ": ", std::strerror(errno));
  }
}

}  // namespace strata
