// A per-rank watchdog: the engine calls beat("what I am about to wait for") as it makes progress; if no beat comes
// for `timeout` seconds, a background thread calls `on_stall(activity, seconds)` once (launch/ prints the message
// and aborts the MPI job). This turns a stuck rank, a lost message or a dead peer into a clear error on every
// rank still alive, instead of ranks waiting forever in a collective or a receive.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace strata {

class Watchdog {
 public:
  using StallHandler = std::function<void(const std::string& activity, double seconds)>;
  // timeout_seconds <= 0: disabled (beat() is then nearly free).
  Watchdog(double timeout_seconds, StallHandler on_stall);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Records progress and what comes next. `activity` must outlive the next beat (string literals, or built once).
  void beat(const char* activity);

 private:
  void watch();
  double timeout_;
  StallHandler on_stall_;
  std::atomic<std::int64_t> last_beat_ns_{0};
  std::atomic<const char*> activity_{"starting"};
  std::mutex mutex_;
  std::condition_variable stop_signal_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace strata
