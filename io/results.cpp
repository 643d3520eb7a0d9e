// In-order JSONL results with a reorder buffer and a flush per record.
#include "io/results.h"

#include <filesystem>

#include "runtime/base/error.h"

namespace strata {

ResultWriter::ResultWriter(const std::string& path, bool overwrite, std::size_t total) : path_(path), total_(total) {
  if (path == "-") {
    out_ = stdout;
    return;
  }
  std::error_code ec;
  const bool has_content = std::filesystem::exists(path, ec) && std::filesystem::file_size(path, ec) > 0;
  STRATA_CHECK(!has_content || overwrite, Io, "output file ", path,
               " already exists and is not empty; pass --overwrite to replace it (it was left untouched)");
  out_ = std::fopen(path.c_str(), "w");
  STRATA_CHECK(out_, Io, "cannot open output file ", path, " for writing");
  owns_ = true;
}

ResultWriter::~ResultWriter() {
  if (owns_ && out_) std::fclose(out_);
}

void ResultWriter::write_line(const std::string& line) {
  const bool ok = std::fwrite(line.data(), 1, line.size(), out_) == line.size() && std::fputc('\n', out_) != EOF &&
                  std::fflush(out_) == 0;
  STRATA_CHECK(ok, Io, "error writing ", path_, " (disk full?) after ", next_, " records");
}

void ResultWriter::submit(std::size_t index, const nlohmann::json& record) {
  STRATA_CHECK(index < total_ && index >= next_ && !waiting_.count(index), Internal, "result ", index,
               " submitted twice or out of range");
  waiting_.emplace(index, record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  for (auto it = waiting_.begin(); it != waiting_.end() && it->first == next_; it = waiting_.erase(it)) {
    write_line(it->second);
    ++next_;
  }
}

void ResultWriter::finish() {
  STRATA_CHECK(next_ == total_, Internal, "only ", next_, " of ", total_, " results were written to ", path_);
  if (owns_) {
    STRATA_CHECK(std::fclose(out_) == 0, Io, "error closing ", path_);
    out_ = nullptr;
  }
}

}  // namespace strata
