// Rank 0's view of a generate job's progress: a live line on a terminal, a log line every few seconds otherwise.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace strata {

class Progress {
 public:
  // mode: "live" (one line rewritten in place), "log" (a line every 5 s), "none"; "auto" picks live on a terminal.
  Progress(std::size_t total, const std::string& mode);
  void record(std::int64_t tokens);
  void show(bool final);
  std::string summary() const;

 private:
  std::size_t total_, done_ = 0;
  std::int64_t tokens_ = 0;
  bool quiet_, terminal_;
  double start_, last_ = 0;
};

}  // namespace strata
