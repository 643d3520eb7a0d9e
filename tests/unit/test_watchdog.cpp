// The watchdog: a fixed timeout fires once, after the timeout, naming the last activity, and never while beats
// come; a disabled one starts no thread; the automatic timeout follows the slowest step; and a process that was
// stopped (SIGSTOP) reports that it was not running instead of blaming a stall on its peers.
#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/base/watchdog.h"

using namespace strata;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Threads of this process, from /proc (a watchdog with a timeout runs one).
int thread_count() {
  int n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// The thread count once it reaches `expected` (a joined thread may linger in /proc for a moment), or after 2 s.
int threads_settled_at(int expected) {
  const auto until = Clock::now() + 2s;
  while (thread_count() != expected && Clock::now() < until) std::this_thread::sleep_for(5ms);
  return thread_count();
}

struct Stalls {
  std::mutex mutex;
  int count = 0;
  std::string activity;
  double seconds = 0;
  Watchdog::StallHandler handler() {
    return [this](const std::string& what, double idle) {
      std::lock_guard<std::mutex> lock(mutex);
      ++count;
      activity = what;
      seconds = idle;
    };
  }
  int fired() {
    std::lock_guard<std::mutex> lock(mutex);
    return count;
  }
  // Waits up to `limit` for the first stall; true when it came.
  bool wait(std::chrono::milliseconds limit) {
    const auto until = Clock::now() + limit;
    while (Clock::now() < until) {
      if (fired() > 0) return true;
      std::this_thread::sleep_for(10ms);
    }
    return fired() > 0;
  }
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

TEST(Watchdog, FixedTimeoutFiresOnceWithTheLastActivity) {
  Stalls stalls;
  Watchdog dog(StallTimeout::fixed(0.3), stalls.handler());
  EXPECT_DOUBLE_EQ(dog.timeout(), 0.3);
  dog.beat("loading weights");
  dog.beat("waiting for tokens from rank 3");
  const auto last_beat = Clock::now();
  ASSERT_TRUE(stalls.wait(3000ms)) << "no stall reported 3 s after the last beat (timeout 0.3 s)";
  const double waited = seconds_since(last_beat);
  std::this_thread::sleep_for(600ms);  // two more timeouts: it must not fire again
  std::lock_guard<std::mutex> lock(stalls.mutex);
  EXPECT_EQ(stalls.count, 1);
  EXPECT_EQ(stalls.activity, "waiting for tokens from rank 3");
  EXPECT_GE(stalls.seconds, 0.3) << "the idle time it reports is at least the timeout";
  EXPECT_LE(stalls.seconds, waited + 0.05) << "and no more than the time since the last beat";
}

TEST(Watchdog, BeatsKeepItQuietUntilTheyStop) {
  Stalls stalls;
  Watchdog dog(StallTimeout::fixed(0.3), stalls.handler());
  const auto start = Clock::now();
  while (seconds_since(start) < 1.2) {  // four timeouts' worth of steady progress
    dog.beat("decoding");
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(stalls.fired(), 0) << "fired while beats came every 20 ms";
  dog.beat("receiving activations");
  ASSERT_TRUE(stalls.wait(3000ms)) << "the control: once beats stop, it fires";
  std::lock_guard<std::mutex> lock(stalls.mutex);
  EXPECT_EQ(stalls.activity, "receiving activations");
}

TEST(Watchdog, DisabledStartsNoThreadAndNeverFires) {
  const int before = threads_settled_at(1);  // gtest runs tests on the main thread alone
  Stalls stalls;
  {
    Watchdog off(StallTimeout::fixed(0), stalls.handler());
    EXPECT_LE(off.timeout(), 0);
    EXPECT_EQ(thread_count(), before) << "a disabled watchdog runs no thread";
    off.observe_step(100);
    EXPECT_LE(off.timeout(), 0) << "a fixed timeout does not follow steps";
    std::this_thread::sleep_for(300ms);
  }
  {
    Watchdog negative(StallTimeout::fixed(-1), stalls.handler());
    EXPECT_EQ(thread_count(), before);
  }
  EXPECT_EQ(stalls.fired(), 0);
  {  // The control: an enabled one does run a thread, and it is gone after destruction.
    Watchdog on(StallTimeout::fixed(30), stalls.handler());
    EXPECT_EQ(thread_count(), before + 1);
  }
  EXPECT_EQ(threads_settled_at(before), before) << "and it is joined on destruction";
}

TEST(Watchdog, AutomaticTimeoutFollowsTheSlowestStep) {
  Stalls stalls;
  const auto constructed = Clock::now();
  {
    Watchdog dog(StallTimeout::derived(), stalls.handler());
    EXPECT_DOUBLE_EQ(dog.timeout(), StallTimeout::kAutoStartupSeconds);
    dog.observe_step(1.0);
    EXPECT_DOUBLE_EQ(dog.timeout(), std::max(StallTimeout::kAutoFloorSeconds, StallTimeout::kAutoStepFactor * 1.0));
    EXPECT_DOUBLE_EQ(dog.timeout(), 60.0);
    dog.observe_step(0.01);
    EXPECT_DOUBLE_EQ(dog.timeout(), 60.0) << "the floor holds for fast steps";
    dog.observe_step(10);
    EXPECT_DOUBLE_EQ(dog.timeout(), StallTimeout::kAutoStepFactor * 10);
    EXPECT_DOUBLE_EQ(dog.timeout(), 250.0);
    dog.observe_step(3);
    EXPECT_DOUBLE_EQ(dog.timeout(), 250.0) << "a faster step later does not lower it";
    dog.observe_step(12);
    EXPECT_DOUBLE_EQ(dog.timeout(), 300.0);
  }
  EXPECT_LT(seconds_since(constructed), 5.0) << "destruction does not wait out the watch period";
  EXPECT_EQ(stalls.fired(), 0);
  Watchdog fixed(StallTimeout::fixed(5), stalls.handler());
  fixed.observe_step(10);
  EXPECT_DOUBLE_EQ(fixed.timeout(), 5.0) << "a fixed timeout ignores step times";
}

namespace {
// Reads lines from `fd` until one equals an entry of `wanted` (returned) or `limit` passes ("" then).
std::string read_until(int fd, const std::vector<std::string>& wanted, std::chrono::milliseconds limit,
                       std::string& seen) {
  const auto until = Clock::now() + limit;
  std::string buffer;
  for (;;) {
    for (std::size_t nl; (nl = buffer.find('\n')) != std::string::npos;) {
      const std::string line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      seen += line + " ";
      for (const auto& w : wanted)
        if (line == w) return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    if (left <= 0) return "";
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, int(left)) <= 0) continue;
    char chunk[256];
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) return "";  // the child is gone
    buffer.append(chunk, std::size_t(n));
  }
}

void say(int fd, const char* line) {
  const std::size_t n = std::strlen(line);
  if (::write(fd, line, n) != ssize_t(n)) ::_exit(3);
}
}  // namespace

TEST(Watchdog, StoppedProcessReportsResumedNotStall) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // a rank making steady progress that the parent will freeze
    ::close(pipe_fds[0]);
    const int out = pipe_fds[1];
    {
      Watchdog dog(
          StallTimeout::fixed(1.0), [out](const std::string&, double) { say(out, "STALL\n"); },
          [out](double) { say(out, "RESUMED\n"); });
      say(out, "READY\n");
      const auto start = Clock::now();
      while (seconds_since(start) < 60) {  // never outlives a lost parent for long
        dog.beat("decoding");
        ::usleep(50 * 1000);
      }
    }
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  const int in = pipe_fds[0];
  std::string seen;
  const std::string ready = read_until(in, {"READY"}, 10000ms, seen);
  std::string verdict;
  if (ready == "READY") {
    std::this_thread::sleep_for(300ms);  // some beats and watch periods before the freeze
    EXPECT_EQ(::kill(child, SIGSTOP), 0);
    int status = 0;
    EXPECT_EQ(::waitpid(child, &status, WUNTRACED), child);
    EXPECT_TRUE(WIFSTOPPED(status)) << "the child is stopped";
    std::this_thread::sleep_for(3s);  // three timeouts, and more than the 2 s a late wake-up must exceed
    EXPECT_EQ(::kill(child, SIGCONT), 0);
    verdict = read_until(in, {"RESUMED", "STALL"}, 2000ms, seen);
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ::close(in);
  ASSERT_EQ(ready, "READY") << "the child never started its watchdog; read: " << seen;
  EXPECT_EQ(verdict, "RESUMED") << "after 3 s stopped, the watchdog must report the gap as its own, not a stall; "
                                   "read: "
                                << seen;
}
