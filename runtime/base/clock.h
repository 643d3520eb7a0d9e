// The one clock for durations and deadlines: seconds on the monotonic clock (never jumps with the wall clock).
#pragma once
#include <chrono>

namespace strata {

inline double monotonic_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace strata
