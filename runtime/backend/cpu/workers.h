// The CPU backend's threads: one team, started with the backend and kept for its life, that runs the parallel
// loops of its kernels one at a time (the products, attention, the row-wise ops).
//
// Why not OpenMP: a libgomp parallel region costs ~3.5 us to fork and join on the VMs this was measured on (its
// barrier wakes waiters with a futex system call every time, even spinning ones), and a batch-1 decode step runs ~60
// loops; handing a loop to a spinning helper and waiting for it costs ~1.2 us (docs/performance.md). Helpers spin
// between loops for a while (a step's loops come microseconds apart), then sleep, so an idle backend frees its cores.
//
// Where OpenBLAS computes the products (CPUs without AVX-512, unquantized weights) the loops run on OpenMP's team
// instead (Team::OpenMP): OpenBLAS's own threaded GEMM was 10-14% faster there than single-threaded calls from
// these threads, and its OpenMP threads spin ~9 ms after each call, which a second team would fight on the same cores.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <span>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/backend/cpu/loop_forecast.h"

namespace strata::cpu {

class Workers {
 public:
  enum class Team { Own, OpenMP };

  // How long an idle helper spins before it sleeps: the gap between two steps' loops (sampling, scheduling) stays
  // well inside it, the time a pipeline stage waits for its input often does not.
  static constexpr std::chrono::microseconds kDefaultSpin{2000};

  // `threads` - 1 helper threads (threads <= 0: one per hardware thread); the caller of each loop is thread 0.
  explicit Workers(int threads, Team team = Team::Own, std::chrono::microseconds spin = kDefaultSpin);
  ~Workers();
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  int size() const { return size_; }
  bool openmp() const { return team_ == Team::OpenMP; }

  // body(thread) for every thread 0..size()-1, the caller running thread 0; returns once every call has returned,
  // then rethrows the first exception any of them threw. Called from inside a loop (nested), the calls run one
  // after another on the calling thread.
  template <typename Body>
  void run(Body&& body) {
    using Plain = std::remove_reference_t<Body>;
    run_erased(const_cast<void*>(static_cast<const void*>(&body)),
               [](void* b, int thread) { (*static_cast<Plain*>(b))(thread); });
  }

  // body(begin, end) over size() contiguous parts of [0, n), part t on thread t (OpenMP's schedule(static)): for
  // loops whose items cost the same. A loop of one item runs on the caller alone.
  template <typename Body>
  void split(std::int64_t n, Body&& body) {
    if (n <= 0) return;
    const std::int64_t parts = std::min<std::int64_t>(size_, n);
    if (parts == 1) return body(std::int64_t(0), n);
    run([&](int thread) {
      if (thread >= parts) return;
      const std::int64_t base = n / parts, extra = n % parts, t = thread;
      const std::int64_t begin = t * base + std::min(t, extra);
      body(begin, begin + base + (t < extra ? 1 : 0));
    });
  }

  // body(begin, end) over [0, n): each thread first runs a contiguous part of 3/4 of its static share (one stream
  // through memory, as split), then the last quarter of the items is handed out from a shared counter in chunks of
  // about n / (4 * size() * kChunksPerThread). For products, whose items cost the same but whose threads need not run
  // at the same speed (measured on a 2-vCPU VM: the helper's half of a decode product took ~25% longer than the
  // caller's, who then waited); whoever is done first takes more of the tail. Handing out every item from the
  // counter instead cost batch-16 decode ~10%: each chunk boundary breaks the hardware prefetcher's stream.
  template <typename Body>
  void balance(std::int64_t n, Body&& body) {
    if (n <= 0) return;
    if (size_ == 1 || n == 1) return body(std::int64_t(0), n);
    const std::int64_t own = n * 3 / 4 / size_, tail = n - own * size_;
    const std::int64_t chunk = std::max<std::int64_t>(1, tail / (size_ * kChunksPerThread));
    std::atomic<std::int64_t> next{own * size_};
    run([&](int thread) {
      if (own > 0) body(thread * own, (thread + 1) * own);
      for (std::int64_t first; (first = next.fetch_add(chunk, std::memory_order_relaxed)) < n;)
        body(first, std::min(n, first + chunk));
    });
  }
  static constexpr std::int64_t kChunksPerThread = 4;

  // For loops that run in the same order every step (products of one token pass: a decode step's, a short prefill
  // chunk's; `key`, their first weight, names them): call just before the loop. Returns where the caller writes
  // what each thread will read first in it (LoopForecast::enter), or an empty span where no thread would use it (one
  // thread, OpenMP's team, inside a loop). After this loop and the unkeyed ones up to the next keyed loop (the ops
  // between products, attention), each helper that has finished its part requests into its cache, until the next
  // loop starts, its share of what the caller wrote for the keyed loop that followed this one last time; the caller
  // requests its own while it waits for the helpers at a loop's end. Each thread requests a forecast's reads once.
  std::span<LoopForecast::Reads> forecast(const void* key);
  // Bytes thread t has requested in forecasts it finished requesting before the next loop started (for tests).
  std::uint64_t requested_bytes(int thread) const { return requested_[std::size_t(thread)].load(); }

  // body(thread, item) for every item < n, handed out `chunk` items at a time to whichever thread asks first
  // (schedule(dynamic, chunk)): for loops whose items differ in cost, like attention over sequences of different
  // lengths.
  template <typename Body>
  void share(std::int64_t n, std::int64_t chunk, Body&& body) {
    if (n <= 0) return;
    std::atomic<std::int64_t> next{0};
    run([&](int thread) {
      for (std::int64_t first; (first = next.fetch_add(chunk, std::memory_order_relaxed)) < n;)
        for (std::int64_t item = first; item < std::min(n, first + chunk); ++item) body(thread, item);
    });
  }

 private:
  using Call = void (*)(void* body, int thread);
  void run_erased(void* body, Call call);
  void run_openmp(void* body, Call call);
  void helper(int thread);
  std::uint32_t next_generation(std::uint32_t seen);
  void wait_for_helpers();
  void keep_first_error(std::exception_ptr error);
  std::span<const LoopForecast::Reads> next_reads(int thread) const;
  void count_requested(int thread, std::span<const LoopForecast::Reads> reads);

  int size_;
  Team team_;
  std::chrono::microseconds spin_;
  std::vector<std::thread> helpers_;
  // Each on its own cache line: the caller writes generation_ and reads pending_, the helpers the other way round.
  alignas(64) std::atomic<std::uint32_t> generation_{0};  // bumped to start a loop (or to stop)
  alignas(64) std::atomic<int> pending_{0};               // helpers still in the current loop
  alignas(64) std::atomic<int> sleeping_{0};              // helpers asleep on generation_
  void* body_ = nullptr;                                  // the current loop, published by generation_
  Call call_ = nullptr;
  bool stopping_ = false;
  LoopForecast forecast_;
  // The next keyed loop's first reads (forecast_.next()), thread t's from t * kReadsPerThread, or null, and the
  // number of the forecast() that set them: set by the caller between loops, read by the helpers during one.
  const LoopForecast::Reads* next_reads_ = nullptr;
  std::uint64_t forecasts_ = 0;
  std::uint64_t caller_finished_ = 0;                  // the last forecast whose reads the caller requested in full
  std::vector<std::atomic<std::uint64_t>> requested_;  // requested_bytes, per thread
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace strata::cpu
