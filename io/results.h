// The results file: JSONL, one record per prompt, in input order. Records may arrive in any order (data-parallel
// replicas finish at different times); each is written and flushed as soon as every earlier one has been, so a
// crash keeps everything finished before it. An existing non-empty file is never clobbered without --overwrite.
#pragma once
#include <cstdio>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

namespace strata {

class ResultWriter {
 public:
  // path "-" writes to stdout. Throws Error(Io) if the file exists and is not empty and !overwrite.
  ResultWriter(const std::string& path, bool overwrite, std::size_t total);
  ~ResultWriter();
  ResultWriter(const ResultWriter&) = delete;
  ResultWriter& operator=(const ResultWriter&) = delete;

  // Record `index` (0-based input position). Invalid UTF-8 inside strings is written as U+FFFD.
  void submit(std::size_t index, const nlohmann::json& record);
  std::size_t written() const { return next_; }
  std::size_t total() const { return total_; }
  // Throws unless every record was written.
  void finish();

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::FILE* out_ = nullptr;
  bool owns_ = false;
  std::size_t total_ = 0, next_ = 0;
  std::map<std::size_t, std::string> waiting_;  // finished out of order, waiting for earlier ones
};

}  // namespace strata
