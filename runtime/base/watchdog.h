// A per-rank watchdog: the code calls beat("what I am about to wait for") as it makes progress; if no beat comes
// for the timeout, a background thread calls `on_stall(activity, seconds)` once (launch/ prints the message and
// aborts the MPI job). This turns a stuck rank, a lost message or a dead peer into a clear error on every rank
// still alive, instead of ranks waiting forever in a collective or a receive.
//
// The timeout is fixed, or automatic: derived from the step times the engine reports (observe_step), so a fast job
// notices a frozen peer in a minute and a slow one (a large model on CPUs) is not killed for a long prefill:
//   before the first step: kAutoStartupSeconds (warm-up: page faults, CUDA graph capture, the first prefill);
//   afterwards: max(kAutoFloorSeconds, kAutoStepFactor x the slowest step seen).
// When this process itself did not run for a while (SIGSTOP, a frozen node or VM), the gap is not blamed on peers:
// the watchdog reports it through `on_resumed` and starts counting again.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace strata {

struct StallTimeout {
  static constexpr double kAutoStartupSeconds = 600, kAutoFloorSeconds = 60, kAutoStepFactor = 25;
  bool automatic = true;
  double seconds = 0;  // fixed timeout when !automatic; <= 0: disabled
  static StallTimeout fixed(double s) { return {false, s}; }
  static StallTimeout derived() { return {true, 0}; }
};

class Watchdog {
 public:
  using StallHandler = std::function<void(const std::string& activity, double seconds)>;
  using ResumeHandler = std::function<void(double seconds_not_running)>;
  Watchdog(StallTimeout timeout, StallHandler on_stall, ResumeHandler on_resumed = {});
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Records progress and what comes next. `activity` must outlive the next beat (string literals, or built once).
  void beat(const char* activity);
  // A step took `seconds`: with an automatic timeout, the timeout follows the slowest step.
  void observe_step(double seconds);
  // The timeout in force now (seconds; <= 0: disabled).
  double timeout() const { return timeout_.load(std::memory_order_relaxed); }
  bool automatic() const { return automatic_; }

 private:
  void watch();
  bool automatic_;
  std::atomic<double> timeout_;
  double slowest_step_ = 0;
  StallHandler on_stall_;
  ResumeHandler on_resumed_;
  std::atomic<std::int64_t> last_beat_ns_{0};
  std::atomic<const char*> activity_{"starting"};
  std::mutex mutex_;
  std::condition_variable stop_signal_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace strata
