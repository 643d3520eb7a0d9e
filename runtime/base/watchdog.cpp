// Watchdog thread; see watchdog.h.
#include "runtime/base/watchdog.h"

namespace strata {
namespace {
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

Watchdog::Watchdog(double timeout_seconds, StallHandler on_stall)
    : timeout_(timeout_seconds), on_stall_(std::move(on_stall)) {
  last_beat_ns_ = now_ns();
  if (timeout_ > 0) thread_ = std::thread([this] { watch(); });
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

void Watchdog::watch() {
  const auto period = std::chrono::milliseconds(std::min<std::int64_t>(500, std::int64_t(timeout_ * 250)));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_signal_.wait_for(lock, period, [this] { return stopping_; })) {
    const double idle = double(now_ns() - last_beat_ns_.load(std::memory_order_relaxed)) * 1e-9;
    if (idle > timeout_) {
      on_stall_(activity_.load(std::memory_order_relaxed), idle);
      return;  // the handler normally ends the process; never call it twice
    }
  }
}

}  // namespace strata
