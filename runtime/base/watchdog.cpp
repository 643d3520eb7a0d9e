// Watchdog thread; see watchdog.h.
#include "runtime/base/watchdog.h"

#include <algorithm>

namespace strata {
namespace {
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

Watchdog::Watchdog(StallTimeout timeout, StallHandler on_stall, ResumeHandler on_resumed)
    : automatic_(timeout.automatic),
      timeout_(timeout.automatic ? StallTimeout::kAutoStartupSeconds : timeout.seconds),
      on_stall_(std::move(on_stall)),
      on_resumed_(std::move(on_resumed)) {
  last_beat_ns_ = now_ns();
  if (this->timeout() > 0) thread_ = std::thread([this] { watch(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  stop_signal_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::beat(const char* activity) {
  activity_.store(activity, std::memory_order_relaxed);
  last_beat_ns_.store(now_ns(), std::memory_order_relaxed);
}

void Watchdog::observe_step(double seconds) {
  if (!automatic_ || seconds <= slowest_step_) return;
  slowest_step_ = seconds;
  timeout_.store(std::max(StallTimeout::kAutoFloorSeconds, StallTimeout::kAutoStepFactor * slowest_step_),
                 std::memory_order_relaxed);
}

void Watchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  std::int64_t last_wake = now_ns();
  for (;;) {
    const double limit = timeout();
    const auto period = std::chrono::milliseconds(std::clamp<std::int64_t>(std::int64_t(limit * 100), 20, 500));
    if (stop_signal_.wait_for(lock, period, [this] { return stopping_; })) return;
    const std::int64_t now = now_ns();
    const double asleep = double(now - last_wake) * 1e-9;
    last_wake = now;
    // Woken far later than asked: this whole process was not running (stopped, frozen). Its peers were not the
    // ones that stalled; count again from now.
    if (asleep > std::max(2.0, 20 * double(period.count()) * 1e-3)) {
      last_beat_ns_.store(now, std::memory_order_relaxed);
      if (on_resumed_) on_resumed_(asleep);
      continue;
    }
    const double idle = double(now - last_beat_ns_.load(std::memory_order_relaxed)) * 1e-9;
    if (idle > limit) {
      on_stall_(activity_.load(std::memory_order_relaxed), idle);
      return;  // the handler normally ends the process; never call it twice
    }
  }
}

}  // namespace strata
