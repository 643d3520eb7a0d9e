// See progress.h.
#include "engine/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "runtime/base/clock.h"
#include "runtime/base/error.h"
#include "runtime/base/log.h"

namespace strata {
namespace {
std::string fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", digits, value);
  return text;
}
}  // namespace

Progress::Progress(std::size_t total, const std::string& mode)
    : total_(total),
      quiet_(mode == "none"),
      terminal_(mode == "live" || (mode == "auto" && isatty(STDERR_FILENO))),
      start_(monotonic_seconds()) {}

void Progress::record(std::int64_t tokens) {
  ++done_;
  tokens_ += tokens;
  show(false);
}

void Progress::show(bool final) {
  if (quiet_) return;
  const double now = monotonic_seconds();
  if (!final && now - last_ < (terminal_ ? 0.2 : 5.0)) return;
  last_ = now;
  const std::string line = summary();
  if (terminal_) {
    std::fprintf(stderr, "\r[strata] %s%s", line.c_str(), final ? "\n" : "");
    std::fflush(stderr);
  } else if (!final) {
    log_info(line);
  }
}

std::string Progress::summary() const {
  const double elapsed = std::max(monotonic_seconds() - start_, 1e-9);
  return cat(done_, "/", total_, " prompts, ", tokens_, " tokens generated in ", fixed(elapsed, 1), " s (",
             fixed(double(tokens_) / elapsed, 1), " tokens/s)");
}

}  // namespace strata
