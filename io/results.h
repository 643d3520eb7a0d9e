// The results file: JSONL, one record per prompt, in input order. Records may arrive in any order (data-parallel
// replicas finish at different times); each is written as soon as every earlier one has been, so a crash keeps
// everything finished before it. The file only ever holds whole records: a failed write (disk full, quota, I/O
// error) is cut back to the end of the last complete record before the error is raised.
//
// Nothing is touched before the run has something to write: check_output_target() validates the path up front
// (never the prompt file, never a non-empty file without --overwrite, never a directory), and the file is
// created or truncated only when the writer is constructed, after the model has loaded.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata {

// What an interrupted run left in its output: the complete records at its start (each a line of valid JSON ending
// in a newline), and the bytes they take. A final line cut off mid-write is not counted (a resumed run cuts it
// off); an invalid line before the end is an Error naming the file and line (the file is not a strata output, or
// was edited), since results are only ever appended whole.
struct ExistingResults {
  std::size_t records = 0;
  std::int64_t bytes = 0;           // of the complete records
  std::int64_t partial_bytes = 0;   // of a final line cut off mid-write
  std::vector<nlohmann::json> ids;  // each complete record's prompt id ("custom_id" for OpenAI batch lines)
};
ExistingResults scan_results(const std::string& path);

// The identity of a run, written beside its output at the start (`<output>.meta.json`, replaced atomically), so
// that --resume continues only the same run: same checkpoint, prompts and generation options (the layout may
// differ; outputs do not depend on it).
std::string metadata_path(const std::string& output);
void write_metadata(const std::string& output, const nlohmann::json& identity);
nlohmann::json read_metadata(const std::string& output);  // Error naming the file when missing or invalid
// "what: before -> now" for every leaf that differs between two identities; empty when they match.
std::vector<std::string> identity_differences(const nlohmann::json& before, const nlohmann::json& now);

// FNV-1a (64 bits) of bytes, or of a file's bytes, as 16 hex digits: cheap content identity (not a cryptographic
// hash). With `ends` > 0 only the file's first and last `ends` bytes are read (large files).
std::string content_hash_of(std::string_view bytes);
std::string content_hash(const std::string& path, std::int64_t ends = 0);

// A record as the line it is written as: compact JSON, invalid UTF-8 inside strings as U+FFFD.
std::string record_line(const nlohmann::json& record);

// Replaces `path` with `content` whole: written to `path`.tmp, then renamed over it (a reader never sees half).
void write_file_atomically(const std::string& path, const std::string& content);

// Throws Error(Usage/Io) naming the path and the reason if `path` may not be (over)written: it is one of
// `inputs` (same file, by device and inode), a directory, in a folder that does not exist or cannot be written,
// or an existing non-empty file while !overwrite. "-" (stdout) always passes. Touches nothing.
void check_output_target(const std::string& path, bool overwrite, const std::vector<std::string>& inputs);

class ResultWriter {
 public:
  // path "-" writes to stdout. Runs check_output_target(path, overwrite, {}) and then creates or truncates the
  // file; errors name the path and the system's reason.
  ResultWriter(const std::string& path, bool overwrite, std::size_t total);
  // Resuming: keeps the first `existing.records` records (cutting off anything after them, such as a line cut off
  // mid-write) and appends from record `existing.records` on.
  ResultWriter(const std::string& path, const ExistingResults& existing, std::size_t total);
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
  void write_line(std::string line);
  std::string path_;
  int fd_ = -1;
  bool owns_ = false;
  std::int64_t committed_ = 0;  // bytes of complete records in the file
  std::size_t total_ = 0, next_ = 0;
  std::map<std::size_t, std::string> waiting_;  // finished out of order, waiting for earlier ones
};

}  // namespace strata
