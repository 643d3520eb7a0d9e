// A small rank-aware logger. The prefix (rank, host, coordinates) is set once by launch/ after MPI starts;
// library code only calls log_info/log_warn. Output goes to stderr, one line per call.
#pragma once
#include <string>

#include "runtime/base/error.h"

namespace strata {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3, Quiet = 4 };

void set_log_prefix(const std::string& prefix);
const std::string& log_prefix();
void set_log_level(LogLevel level);
LogLevel log_level();
void log_line(LogLevel level, const std::string& text);

template <typename... Args>
void log_info(const Args&... args) {
  if (log_level() <= LogLevel::Info) log_line(LogLevel::Info, cat(args...));
}
template <typename... Args>
void log_warn(const Args&... args) {
  if (log_level() <= LogLevel::Warn) log_line(LogLevel::Warn, cat(args...));
}
template <typename... Args>
void log_debug(const Args&... args) {
  if (log_level() <= LogLevel::Debug) log_line(LogLevel::Debug, cat(args...));
}

}  // namespace strata
