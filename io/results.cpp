// In-order JSONL results with a reorder buffer; one write(2) per record, cut back to whole records on failure.
#include "io/results.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

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
  STRATA_CHECK(!S_ISDIR(target.st_mode), Usage, "output file ", path, " is a directory; name a file (e.g. ",
               (std::filesystem::path(path) / "results.jsonl").string(), ")");
  for (const auto& input : inputs) {
    struct stat in {};
    STRATA_CHECK(::stat(input.c_str(), &in) != 0 || in.st_dev != target.st_dev || in.st_ino != target.st_ino, Usage,
                 "output file ", path, " is the prompt file ", input,
                 "; writing results there would destroy the prompts (it was left untouched)");
  }
  STRATA_CHECK(!S_ISREG(target.st_mode) || target.st_size == 0 || overwrite, Io, "output file ", path,
               " already exists and is not empty; pass --overwrite to replace it (it was left untouched)");
  STRATA_CHECK(::access(path.c_str(), W_OK) == 0, Io, "output file ", path, " is not writable: ", std::strerror(errno));
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

ResultWriter::ResultWriter(const std::string& path, const ExistingResults& existing, std::size_t total)
    : path_(path), committed_(existing.bytes), total_(total), next_(existing.records) {
  STRATA_CHECK(path != "-", Usage, "--resume needs an output file, not stdout");
  STRATA_CHECK(existing.records <= total, Usage, "output file ", path, " holds ", existing.records,
               " records but this run has only ", total, " prompts");
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  STRATA_CHECK(fd_ >= 0, Io, "cannot open output file ", path, " to resume: ", std::strerror(errno));
  owns_ = true;
  STRATA_CHECK(::ftruncate(fd_, committed_) == 0 && ::lseek(fd_, committed_, SEEK_SET) == committed_, Io, "cannot cut ",
               path, " back to its ", existing.records, " complete records: ", std::strerror(errno));
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
  waiting_.emplace(index, record_line(record));
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

ExistingResults scan_results(const std::string& path) {
  ExistingResults found;
  std::ifstream in(path, std::ios::binary);
  if (!in) return found;  // nothing yet: a fresh start
  std::string line;
  std::int64_t at = 0;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    const bool whole = !in.eof();  // getline stopped at a newline
    nlohmann::json record;
    bool valid = true;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      valid = false;
    }
    valid = valid && record.is_object() && record.contains("id");
    if (!whole) {  // the last line, without its newline: cut off mid-write, however much of it was written
      found.partial_bytes = std::int64_t(line.size());
      break;
    }
    STRATA_CHECK(valid, Io, path, ":", number, ": not a complete result record (results are only appended whole; ",
                 "was the file edited, or is it not strata's output?)");
    at += std::int64_t(line.size()) + 1;
    found.ids.push_back(record.contains("custom_id") ? record["custom_id"] : record["id"]);
    found.records = number;
    found.bytes = at;
  }
  return found;
}

std::string metadata_path(const std::string& output) { return output + ".meta.json"; }

void write_metadata(const std::string& output, const nlohmann::json& identity) {
  write_file_atomically(metadata_path(output), identity.dump(2) + "\n");
}

std::string record_line(const nlohmann::json& record) {
  return record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void write_file_atomically(const std::string& path, const std::string& content) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << content;
    out.flush();
    STRATA_CHECK(out.good(), Io, "cannot write ", temporary, ": ", std::strerror(errno));
  }
  STRATA_CHECK(::rename(temporary.c_str(), path.c_str()) == 0, Io, "cannot rename ", temporary, " to ", path, ": ",
               std::strerror(errno));
}

nlohmann::json read_metadata(const std::string& output) {
  const std::string path = metadata_path(output);
  std::ifstream in(path, std::ios::binary);
  STRATA_CHECK(in, Usage, "--resume: ", output, " has no ", path,
               " describing the run that wrote it (not a strata output, or written before --resume existed); "
               "run without --resume to start again (--overwrite)");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Io, cat(path, ": not valid JSON (", e.what(), ")"));
  }
}

namespace {
void collect_differences(const nlohmann::json& before, const nlohmann::json& now, const std::string& where,
                         std::vector<std::string>& out) {
  if (before.is_object() && now.is_object()) {
    for (const auto& [key, value] : before.items())
      collect_differences(value, now.contains(key) ? now.at(key) : nlohmann::json(),
                          where.empty() ? key : where + "." + key, out);
    for (const auto& [key, value] : now.items())
      if (!before.contains(key))
        collect_differences(nlohmann::json(), value, where.empty() ? key : where + "." + key, out);
    return;
  }
  if (before != now) out.push_back(cat(where, ": ", before.dump(), " -> ", now.dump()));
}
}  // namespace

std::vector<std::string> identity_differences(const nlohmann::json& before, const nlohmann::json& now) {
  std::vector<std::string> out;
  collect_differences(before, now, "", out);
  return out;
}

namespace {
// FNV-1a, fed in pieces.
struct Fnv1a {
  std::uint64_t hash = 0xcbf29ce484222325ull;
  void add(const char* data, std::size_t size) {
    for (std::size_t i = 0; i < size; ++i) {
      hash ^= std::uint8_t(data[i]);
      hash *= 0x100000001b3ull;
    }
  }
  std::string hex() const {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
    return text;
  }
};
}  // namespace

std::string content_hash_of(std::string_view bytes) {
  Fnv1a fnv;
  fnv.add(bytes.data(), bytes.size());
  return fnv.hex();
}

std::string content_hash(const std::string& path, std::int64_t ends) {
  std::ifstream in(path, std::ios::binary);
  STRATA_CHECK(in, Io, "cannot open ", path, ": ", std::strerror(errno));
  Fnv1a fnv;
  std::vector<char> buffer(std::size_t(1) << 20);
  const auto add = [&](std::int64_t limit) {  // up to `limit` bytes from the current position (< 0: to the end)
    while (limit != 0) {
      const auto want =
          limit < 0 ? std::int64_t(buffer.size()) : std::min<std::int64_t>(limit, std::int64_t(buffer.size()));
      in.read(buffer.data(), std::streamsize(want));
      const std::streamsize got = in.gcount();
      if (got <= 0) break;
      fnv.add(buffer.data(), std::size_t(got));
      if (limit > 0) limit -= got;
    }
  };
  if (ends <= 0) {
    add(-1);
  } else {
    in.seekg(0, std::ios::end);
    const std::int64_t size = std::int64_t(in.tellg());
    in.seekg(0);
    add(std::min(ends, size));
    if (size > ends) {
      in.clear();
      in.seekg(std::max(ends, size - ends));
      add(-1);
    }
  }
  return fnv.hex();
}

}  // namespace strata
