// cpu::Workers, the CPU backend's team of threads: every item of a loop runs exactly once, on the team's threads;
// an exception on any thread reaches the caller after every thread has left the loop; helpers that went to sleep
// wake for the next loop (a lost wake-up would hang the backend: the hand-over tests run under a deadline). And
// LoopForecast, the order of a step's loops that lets the threads request the next loop's memory between loops.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

#include "runtime/backend/cpu/cpu_features.h"
#include "runtime/backend/cpu/tiles.h"
#include "runtime/backend/cpu/workers.h"

using strata::cpu::Workers;
using namespace std::chrono_literals;

namespace {

// Runs `body` on its own thread; a body still running after `limit` is a hang: the test program aborts with the
// test's name instead of waiting for ctest's timeout.
template <typename Body>
void within(std::chrono::seconds limit, Body body) {
  auto done = std::async(std::launch::async, body);
  if (done.wait_for(limit) == std::future_status::timeout) {
    std::fprintf(stderr, "%s: still running after %lld s (a lost wake-up or a deadlock)\n",
                 ::testing::UnitTest::GetInstance()->current_test_info()->name(), (long long)limit.count());
    std::abort();
  }
  done.get();
}

// How many times each of n items ran under split (or balance).
std::vector<int> split_counts(Workers& workers, std::int64_t n, bool balance = false) {
  std::vector<std::atomic<int>> hits(std::size_t(n + 1));
  auto count = [&](std::int64_t begin, std::int64_t end) {
    EXPECT_LE(0, begin);
    EXPECT_LE(begin, end);
    EXPECT_LE(end, n);
    for (std::int64_t i = begin; i < end; ++i) hits[std::size_t(i)].fetch_add(1);
  };
  if (balance)
    workers.balance(n, count);
  else
    workers.split(n, count);
  std::vector<int> counts;
  for (std::int64_t i = 0; i < n; ++i) counts.push_back(hits[std::size_t(i)].load());
  return counts;
}

}  // namespace

TEST(Workers, SplitRunsEveryItemOnce) {
  within(60s, [] {
    for (int threads : {1, 2, 3}) {  // 3: more threads than this CI machine's cores
      Workers workers(threads);
      EXPECT_EQ(workers.size(), threads);
      for (std::int64_t n : {0, 1, 2, 3, 5, 16, 17, 1000})
        EXPECT_EQ(split_counts(workers, n), std::vector<int>(std::size_t(n), 1)) << threads << " threads, n " << n;
    }
  });
}

TEST(Workers, BalanceRunsEveryItemOnce) {
  within(60s, [] {
    for (int threads : {1, 2, 3}) {
      Workers workers(threads);
      for (std::int64_t n : {0, 1, 2, 3, 5, 16, 17, 47, 1000})
        EXPECT_EQ(split_counts(workers, n, true), std::vector<int>(std::size_t(n), 1))
            << threads << " threads, n " << n;
    }
  });
}

TEST(Workers, BalanceGivesASlowThreadLess) {
  within(60s, [] {
    Workers workers(2);
    std::vector<std::atomic<int>> items_of(2);
    const auto caller = std::this_thread::get_id();
    workers.balance(64, [&](std::int64_t begin, std::int64_t end) {
      const bool slow = std::this_thread::get_id() != caller;
      if (slow) std::this_thread::sleep_for(20ms);
      items_of[slow ? 1 : 0].fetch_add(int(end - begin));
    });
    EXPECT_EQ(items_of[0].load() + items_of[1].load(), 64);
    EXPECT_GT(items_of[0].load(), items_of[1].load()) << "the helper sleeps on every chunk: the caller takes most";
  });
}

TEST(Workers, SplitGivesEachThreadAContiguousPart) {
  within(60s, [] {
    Workers workers(2);
    std::mutex m;
    std::set<std::thread::id> ids;
    std::vector<std::pair<std::int64_t, std::int64_t>> parts;
    workers.split(11, [&](std::int64_t begin, std::int64_t end) {
      std::lock_guard<std::mutex> lock(m);
      ids.insert(std::this_thread::get_id());
      parts.emplace_back(begin, end);
    });
    ASSERT_EQ(parts.size(), 2u) << "two threads, two parts";
    std::sort(parts.begin(), parts.end());
    EXPECT_EQ(parts[0], std::make_pair(std::int64_t(0), std::int64_t(6)));
    EXPECT_EQ(parts[1], std::make_pair(std::int64_t(6), std::int64_t(11)));
    EXPECT_EQ(ids.size(), 2u) << "the parts ran on two different threads";
  });
}

TEST(Workers, RunCallsEveryThreadIndexOnce) {
  within(60s, [] {
    Workers workers(3);
    std::vector<std::atomic<int>> calls(3);
    std::atomic<int> on_caller{0};
    const auto caller = std::this_thread::get_id();
    workers.run([&](int thread) {
      calls[std::size_t(thread)].fetch_add(1);
      if (std::this_thread::get_id() == caller) on_caller.fetch_add(thread == 0 ? 1 : 100);
    });
    for (auto& c : calls) EXPECT_EQ(c.load(), 1);
    EXPECT_EQ(on_caller.load(), 1) << "thread 0, and only it, is the caller";
  });
}

TEST(Workers, ShareRunsEveryItemOnceWhateverItsCost) {
  within(60s, [] {
    Workers workers(2);
    for (std::int64_t chunk : {1, 2, 7}) {
      const std::int64_t n = 97;
      std::vector<std::atomic<int>> hits(n);
      std::atomic<int> bad_thread{0};
      workers.share(n, chunk, [&](int thread, std::int64_t item) {
        if (thread < 0 || thread >= 2) bad_thread.fetch_add(1);
        if (item % 13 == 0) std::this_thread::sleep_for(200us);  // a few long items
        hits[std::size_t(item)].fetch_add(1);
      });
      EXPECT_EQ(bad_thread.load(), 0);
      for (std::int64_t i = 0; i < n; ++i)
        EXPECT_EQ(hits[std::size_t(i)].load(), 1) << "chunk " << chunk << " item " << i;
    }
  });
}

TEST(Workers, AHelpersExceptionReachesTheCallerAndTheTeamGoesOn) {
  within(60s, [] {
    Workers workers(2);
    EXPECT_THROW(workers.run([](int thread) {
      if (thread == 1) throw std::runtime_error("helper failed");
    }),
                 std::runtime_error);
    EXPECT_EQ(split_counts(workers, 40), std::vector<int>(40, 1)) << "the next loop after a failed one";
  });
}

TEST(Workers, TheCallersExceptionWaitsForTheHelpers) {
  within(60s, [] {
    Workers workers(2);
    std::atomic<bool> helper_done{false};
    try {
      workers.run([&](int thread) {
        if (thread == 0) throw std::runtime_error("caller failed");
        std::this_thread::sleep_for(50ms);
        helper_done = true;
      });
      ADD_FAILURE() << "no exception";
    } catch (const std::runtime_error&) {
      EXPECT_TRUE(helper_done.load()) << "run() returned while a helper was still in the loop";
    }
  });
}

TEST(Workers, SleepingHelpersWakeForEveryLoop) {
  within(120s, [] {
    Workers workers(2, Workers::Team::Own,
                    0us);  // no spinning: every loop wakes a helper that went (or is going) to sleep
    for (int i = 0; i < 20000; ++i) ASSERT_EQ(split_counts(workers, 2), std::vector<int>(2, 1)) << "loop " << i;
    for (int i = 0; i < 20; ++i) {  // and after long idle gaps
      std::this_thread::sleep_for(2ms);
      ASSERT_EQ(split_counts(workers, 5), std::vector<int>(5, 1));
    }
  });
}

TEST(Workers, ManyLoopsWithSpinningHelpers) {
  within(120s, [] {
    Workers workers(2);
    for (int i = 0; i < 50000; ++i) ASSERT_EQ(split_counts(workers, 3), std::vector<int>(3, 1)) << "loop " << i;
  });
}

TEST(Workers, ALoopInsideALoopRunsOnItsThread) {
  within(60s, [] {
    Workers workers(2);
    std::vector<std::atomic<int>> hits(2 * 10);
    workers.run([&](int outer) {
      const auto me = std::this_thread::get_id();
      workers.split(10, [&](std::int64_t begin, std::int64_t end) {
        EXPECT_EQ(std::this_thread::get_id(), me);
        for (std::int64_t i = begin; i < end; ++i) hits[std::size_t(outer * 10 + i)].fetch_add(1);
      });
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  });
}

TEST(Workers, DestroyedWhileHelpersSleep) {
  within(60s, [] {
    for (int i = 0; i < 20; ++i) {
      Workers workers(3, Workers::Team::Own, 0us);
      EXPECT_EQ(split_counts(workers, 9), std::vector<int>(9, 1));
      std::this_thread::sleep_for(1ms);
    }
  });
}

// Team::OpenMP (where OpenBLAS computes the products): the same contract on OpenMP's threads.
TEST(Workers, OnOpenMPsTeam) {
  within(60s, [] {
    for (int threads : {1, 2, 3}) {
      Workers workers(threads, Workers::Team::OpenMP);
      EXPECT_TRUE(workers.openmp());
      for (std::int64_t n : {0, 1, 2, 17, 1000}) {
        EXPECT_EQ(split_counts(workers, n), std::vector<int>(std::size_t(n), 1)) << threads << " threads, n " << n;
        EXPECT_EQ(split_counts(workers, n, true), std::vector<int>(std::size_t(n), 1)) << threads << " threads";
      }
      std::vector<std::atomic<int>> hits(50);
      workers.share(50, 3, [&](int, std::int64_t item) { hits[std::size_t(item)].fetch_add(1); });
      for (auto& h : hits) EXPECT_EQ(h.load(), 1);
      std::set<std::thread::id> ids;
      std::mutex m;
      workers.run([&](int) {
        std::lock_guard<std::mutex> lock(m);
        ids.insert(std::this_thread::get_id());
      });
      EXPECT_EQ(int(ids.size()), threads) << "each call on its own OpenMP thread";
      EXPECT_THROW(workers.run([&](int thread) {
        if (thread == threads - 1) throw std::runtime_error("last thread failed");
      }),
                   std::runtime_error);
      EXPECT_EQ(split_counts(workers, 40), std::vector<int>(40, 1)) << "the next loop after a failed one";
    }
  });
}

// LoopForecast: a step's keyed loops come in the order of the step before, so the next loop is the one that
// followed the current one last time, with the reads it was given then.
namespace {
using strata::cpu::LoopForecast;
using Reads = LoopForecast::Reads;

// Fills a loop's reads with values that name it (`tag`) and the thread.
void tag_reads(std::span<Reads> reads, const char* tag) {
  for (std::size_t i = 0; i < reads.size(); ++i) reads[i] = {tag + i, 64 * (i + 1)};
}

bool reads_are(std::span<const Reads> reads, const char* tag, int threads) {
  if (reads.size() != std::size_t(threads) * LoopForecast::kReadsPerThread) return false;
  for (std::size_t i = 0; i < reads.size(); ++i)
    if (reads[i].begin != tag + i || reads[i].bytes != 64 * (i + 1)) return false;
  return true;
}
}  // namespace

TEST(LoopForecast, TheNextLoopIsTheOneThatFollowedLastTime) {
  static const char a[64] = {}, b[64] = {}, c[64] = {};
  LoopForecast forecast(2);
  for (const char* key : {a, b, c}) {  // the first step: nothing known yet
    tag_reads(forecast.enter(key), key);
    EXPECT_TRUE(forecast.next().empty());
  }
  for (int step = 0; step < 3; ++step) {
    tag_reads(forecast.enter(a), a);
    EXPECT_TRUE(reads_are(forecast.next(), b, 2)) << "step " << step;
    tag_reads(forecast.enter(b), b);
    EXPECT_TRUE(reads_are(forecast.next(), c, 2));
    tag_reads(forecast.enter(c), c);
    EXPECT_TRUE(reads_are(forecast.next(), a, 2)) << "the last loop of a step: the next step's first";
  }
}

TEST(LoopForecast, AChangedOrderIsLearned) {
  static const char a[64] = {}, b[64] = {}, c[64] = {};
  LoopForecast forecast(3);
  for (const char* key : {a, b, c, a}) tag_reads(forecast.enter(key), key);
  EXPECT_TRUE(reads_are(forecast.next(), b, 3));
  tag_reads(forecast.enter(c), c);  // b left out this time
  tag_reads(forecast.enter(a), a);
  EXPECT_TRUE(reads_are(forecast.next(), c, 3));
}

TEST(LoopForecast, EnteringALoopClearsItsReads) {
  static const char a[64] = {}, b[64] = {};
  LoopForecast forecast(2);
  tag_reads(forecast.enter(a), a);
  tag_reads(forecast.enter(b), b);
  for (const Reads& r : forecast.enter(a)) {
    EXPECT_EQ(r.begin, nullptr);
    EXPECT_EQ(r.bytes, 0u);
  }
}

TEST(LoopForecast, ForgetsTheOrderPastItsLimitInsteadOfGrowing) {
  std::vector<char> keys(LoopForecast::kMaxLoops + 1);
  LoopForecast forecast(2);
  for (std::size_t i = 0; i < LoopForecast::kMaxLoops; ++i) tag_reads(forecast.enter(&keys[i]), &keys[i]);
  tag_reads(forecast.enter(&keys[0]), &keys[0]);
  EXPECT_TRUE(reads_are(forecast.next(), &keys[1], 2)) << "all kMaxLoops loops known";
  tag_reads(forecast.enter(&keys[LoopForecast::kMaxLoops]), &keys[LoopForecast::kMaxLoops]);  // one too many
  tag_reads(forecast.enter(&keys[0]), &keys[0]);
  EXPECT_TRUE(forecast.next().empty()) << "what followed key 0 before the limit was forgotten";
}

TEST(Workers, ForecastsOnlyWhereHelpersRun) {
  static const char key[64] = {};
  Workers one(1), openmp(2, Workers::Team::OpenMP), two(2);
  EXPECT_TRUE(one.forecast(key).empty());
  EXPECT_TRUE(openmp.forecast(key).empty());
  EXPECT_EQ(two.forecast(key).size(), 2u * LoopForecast::kReadsPerThread);
  two.run([&](int) { EXPECT_TRUE(two.forecast(key).empty()) << "inside a loop"; });
}

// The helpers and the caller request the next keyed loop's reads between loops (a decode step's products): every
// item still runs once, the memory read is left as it was, and reads of memory that cannot be read (a weight freed
// since its reads were learned) do not fault.
TEST(Workers, LoopsRunWhileTheThreadsRequestTheNextLoopsMemory) {
  within(120s, [] {
    const std::size_t bytes = std::size_t(4) << 20;
    std::vector<char> weights(3 * bytes, 7);
    // Memory no load may read (PROT_NONE; kept mapped so that nothing else is mapped there meanwhile).
    void* gone = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(gone, MAP_FAILED);
    Workers workers(3, Workers::Team::Own, 0us);
    for (int step = 0; step < 100; ++step)
      for (int loop = 0; loop < 4; ++loop) {
        const char* key = loop < 3 ? &weights[std::size_t(loop) * bytes] : static_cast<const char*>(gone);
        const std::span<Reads> reads = workers.forecast(key);
        ASSERT_EQ(reads.size(), 3u * LoopForecast::kReadsPerThread);
        for (int t = 0; t < 3; ++t) reads[std::size_t(t) * LoopForecast::kReadsPerThread] = {key, bytes};
        // The helpers slower than the caller, who then waits for them (and requests its reads meanwhile); then
        // a gap, as the ops between two products leave (the helpers' turn).
        workers.run([](int thread) {
          if (thread > 0) std::this_thread::sleep_for(20us);
        });
        std::this_thread::sleep_for(20us);
        ASSERT_EQ(split_counts(workers, 47, true), std::vector<int>(47, 1)) << "step " << step << ", loop " << loop;
      }
    EXPECT_EQ(std::count(weights.begin(), weights.end(), 7), std::ptrdiff_t(weights.size()));
    munmap(gone, bytes);
  });
}

// forecast_balanced (tiles.h) gives each thread, as what it reads first, the bytes of the items Workers::balance then
// hands it first (its own part), split where the products change, and no more than 3/4 of an L2.
namespace {
struct FakeProduct {
  const char* w;
  std::int64_t out;  // rows of 64 bytes, 16 to an item
};
std::pair<std::size_t, std::size_t> fake_item_bytes(const FakeProduct& p, std::int64_t i) {
  return {std::size_t(i) * 16 * 64, std::size_t(std::min(p.out, (i + 1) * 16)) * 64};
}
}  // namespace

TEST(Workers, ForecastOfABalancedLoopIsEachThreadsOwnPart) {
  within(60s, [] {
    static const char weights[1 << 16] = {};
    for (int threads : {2, 3}) {
      // 3 + 2 + 6 items (the first product's last one short): 3 threads own 2 items each, 2 threads 4.
      const std::vector<FakeProduct> products = {{weights, 40}, {weights + 10000, 32}, {weights + 30000, 90}};
      const strata::cpu::ProductItems items(std::span<const FakeProduct>(products),
                                            [](const FakeProduct& p) { return (p.out + 15) / 16; });
      Workers workers(threads);
      const std::span<const Reads> reads =
          strata::cpu::forecast_balanced(workers, items, std::span<const FakeProduct>(products), fake_item_bytes);
      ASSERT_EQ(reads.size(), std::size_t(threads) * LoopForecast::kReadsPerThread);
      std::vector<std::thread::id> ids(static_cast<std::size_t>(threads));
      workers.run([&](int t) { ids[std::size_t(t)] = std::this_thread::get_id(); });
      std::map<std::thread::id, std::pair<std::int64_t, std::int64_t>> first;
      std::mutex m;
      workers.balance(items.size(), [&](std::int64_t a, std::int64_t b) {
        std::lock_guard<std::mutex> lock(m);
        first.emplace(std::this_thread::get_id(), std::pair(a, b));
      });
      for (int t = 0; t < threads; ++t) {
        const auto [a, b] = first.at(ids[std::size_t(t)]);
        std::vector<Reads> expected;
        items.for_each(a, b, [&](std::size_t p, std::int64_t x, std::int64_t y) {
          const std::size_t begin = fake_item_bytes(products[p], x).first;
          expected.push_back({products[p].w + begin, fake_item_bytes(products[p], y - 1).second - begin});
        });
        expected.resize(LoopForecast::kReadsPerThread);
        for (std::size_t i = 0; i < expected.size(); ++i) {
          const Reads got = reads[std::size_t(t) * LoopForecast::kReadsPerThread + i];
          EXPECT_EQ(got.begin, expected[i].begin) << threads << " threads, thread " << t << ", read " << i;
          EXPECT_EQ(got.bytes, expected[i].bytes) << threads << " threads, thread " << t << ", read " << i;
        }
      }
    }
  });
}

TEST(Workers, ForecastOfALargePartStopsAtThreeQuartersOfAnL2) {
  // One product of 64 items of 16 rows of 64 KiB (1 MiB an item), in address space reserved for it (never read).
  const std::size_t size = std::size_t(64) << 20;
  void* reserved = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(reserved, MAP_FAILED);
  const char* base = static_cast<const char*>(reserved);
  const std::vector<FakeProduct> products = {{base, 64 * 16}};
  const auto big_item = [](const FakeProduct& p, std::int64_t i) {
    return std::pair(std::size_t(i) << 20, std::size_t(std::min(p.out, (i + 1) * 16)) << 16);
  };
  const strata::cpu::ProductItems items(std::span<const FakeProduct>(products),
                                        [](const FakeProduct& p) { return (p.out + 15) / 16; });
  Workers workers(2);
  const std::span<const Reads> reads =
      strata::cpu::forecast_balanced(workers, items, std::span<const FakeProduct>(products), big_item);
  ASSERT_EQ(reads.size(), 2u * LoopForecast::kReadsPerThread);
  const std::size_t cap = std::size_t(strata::cpu::l2_bytes()) / 4 * 3;
  EXPECT_EQ(reads[0].begin, base);
  EXPECT_EQ(reads[0].bytes, cap);
  EXPECT_EQ(reads[LoopForecast::kReadsPerThread].begin, base + (std::size_t(64 * 3 / 4 / 2) << 20));
  EXPECT_EQ(reads[LoopForecast::kReadsPerThread].bytes, cap);
  for (int t = 0; t < 2; ++t)
    for (int i = 1; i < LoopForecast::kReadsPerThread; ++i)
      EXPECT_EQ(reads[std::size_t(t * LoopForecast::kReadsPerThread + i)].bytes, 0u);
  munmap(reserved, size);
}

// Each thread requests its own share of the next keyed loop's reads, once per forecast however many unkeyed loops
// follow.
TEST(Workers, EachThreadRequestsItsOwnShareOncePerForecast) {
  within(120s, [] {
    constexpr int kThreads = 3, kRounds = 40;
    std::vector<char> memory(std::size_t(1) << 20, 1);
    const auto share = [](int t) { return std::size_t(t + 1) * 4096; };  // every thread's its own size
    Workers workers(kThreads, Workers::Team::Own, 0us);
    const auto keyed_loop = [&](std::size_t offset) {
      const std::span<Reads> reads = workers.forecast(&memory[offset]);
      ASSERT_EQ(reads.size(), std::size_t(kThreads) * LoopForecast::kReadsPerThread);
      for (int t = 0; t < kThreads; ++t)
        reads[std::size_t(t) * LoopForecast::kReadsPerThread] = {&memory[offset + std::size_t(t) * 65536], share(t)};
      // The helpers slower than the caller, who then has time to request its share while it waits.
      workers.run([](int thread) {
        if (thread > 0) std::this_thread::sleep_for(2ms);
      });
      for (int i = 0; i < 3; ++i) {  // unkeyed loops, with gaps for the helpers' requests
        std::this_thread::sleep_for(2ms);
        ASSERT_EQ(split_counts(workers, 5), std::vector<int>(5, 1));
      }
    };
    for (int round = 0; round < kRounds; ++round) {
      keyed_loop(0);
      keyed_loop(std::size_t(1) << 19);
    }
    std::vector<std::uint64_t> before(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      const std::uint64_t bytes = workers.requested_bytes(t);
      before[std::size_t(t)] = bytes;
      EXPECT_EQ(bytes % share(t), 0u) << "thread " << t << " requested another thread's share";
      EXPECT_GT(bytes, 0u) << "thread " << t << " requested nothing";
      // At most once per forecast whose follower was known (all but the first two), not after every loop.
      EXPECT_LE(bytes, share(t) * (2 * kRounds - 1)) << "thread " << t;
    }
    // More unkeyed loops (a prefill's products, which are not keyed): the last forecast's reads are not requested
    // again.
    for (int i = 0; i < 20; ++i) {
      std::this_thread::sleep_for(1ms);
      workers.run([](int thread) {
        if (thread > 0) std::this_thread::sleep_for(1ms);
      });
    }
    for (int t = 0; t < kThreads; ++t)
      EXPECT_EQ(workers.requested_bytes(t), before[std::size_t(t)]) << "thread " << t << " after more unkeyed loops";
  });
}
