// Rank-aware logging to stderr; one fprintf per line so lines from ranks do not interleave mid-line.
#include "runtime/base/log.h"

#include <cstdio>

namespace strata {
namespace {
std::string g_prefix = "strata";  // process-wide presentation state only, never parallel state
LogLevel g_level = LogLevel::Info;
}  // namespace

void set_log_prefix(const std::string& prefix) { g_prefix = prefix; }
const std::string& log_prefix() { return g_prefix; }
void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

void log_line(LogLevel level, const std::string& text) {
  const char* tag = level == LogLevel::Warn ? "warning: " : level == LogLevel::Error ? "error: " : "";
  std::fprintf(stderr, "[%s] %s%s\n", g_prefix.c_str(), tag, text.c_str());
  std::fflush(stderr);
}

}  // namespace strata
