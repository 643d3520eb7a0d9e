#include "runtime/backend/cpu/workers.h"

#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace strata::cpu {
namespace {

// Whether this thread is running a loop's body: a loop started from inside one runs on the calling thread.
thread_local bool inside_loop = false;

void pause() {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace

Workers::Workers(int threads, Team team, std::chrono::microseconds spin)
    : size_(threads > 0 ? threads : std::max(1, int(std::thread::hardware_concurrency()))),
      team_(team),
      spin_(spin),
      forecast_(size_),
      requested_(std::size_t(size_)) {
  if (team_ == Team::OpenMP) return;
  helpers_.reserve(std::size_t(size_ - 1));
  for (int t = 1; t < size_; ++t) helpers_.emplace_back([this, t] { helper(t); });
}

Workers::~Workers() {
  stopping_ = true;
  generation_.fetch_add(1, std::memory_order_seq_cst);
  generation_.notify_all();
  for (auto& h : helpers_) h.join();
}

void Workers::run_erased(void* body, Call call) {
  if (size_ == 1 || inside_loop) {
    for (int t = 0; t < size_; ++t) call(body, t);
    return;
  }
  if (team_ == Team::OpenMP) return run_openmp(body, call);
  body_ = body;
  call_ = call;
  error_ = nullptr;
  pending_.store(size_ - 1, std::memory_order_relaxed);
  // seq_cst on both sides (here, and a helper's sleeping_ increment before its last look at generation_): either
  // the helper sees the new generation, or this sees it asleep and wakes it.
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (sleeping_.load(std::memory_order_seq_cst) > 0) generation_.notify_all();
  inside_loop = true;
  try {
    call(body, 0);
  } catch (...) {
    keep_first_error(std::current_exception());
  }
  inside_loop = false;
  if (caller_finished_ != forecasts_ &&
      request_into_cache(next_reads(0), [&] { return pending_.load(std::memory_order_acquire) == 0; })) {
    caller_finished_ = forecasts_;
    count_requested(0, next_reads(0));
  }
  wait_for_helpers();  // even after an exception: the helpers still use the body
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

void Workers::run_openmp(void* body, Call call) {
  error_ = nullptr;
#pragma omp parallel num_threads(size_)
  {
    inside_loop = true;
    // OpenMP may start fewer threads than asked (OMP_THREAD_LIMIT): each then runs every team-size-th call.
    for (int t = omp_get_thread_num(); t < size_; t += omp_get_num_threads()) {
      try {
        call(body, t);
      } catch (...) {
        keep_first_error(std::current_exception());
      }
    }
    inside_loop = false;
  }
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

void Workers::wait_for_helpers() {
  // The helpers are running (not asleep) until they have finished: spin, yielding the core after a while in case
  // one of them shares it with this thread (more threads than cores).
  for (std::uint64_t spins = 0; pending_.load(std::memory_order_acquire) > 0; ++spins) {
    if (spins < (1u << 16))
      pause();
    else
      std::this_thread::yield();
  }
}

void Workers::helper(int thread) {
  inside_loop = true;
  std::uint64_t finished = 0;  // the last forecast whose reads this helper requested in full
  for (std::uint32_t seen = 0;;) {
    seen = next_generation(seen);
    if (stopping_) return;
    try {
      call_(body_, thread);
    } catch (...) {
      keep_first_error(std::current_exception());
    }
    // Copied before this helper counts itself done: then the caller may learn the next loop's.
    LoopForecast::Reads reads[LoopForecast::kReadsPerThread];
    const std::uint64_t forecast = forecasts_;
    const std::span<const LoopForecast::Reads> next =
        finished == forecast ? std::span<const LoopForecast::Reads>{} : next_reads(thread);
    std::copy(next.begin(), next.end(), reads);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
    const std::span<const LoopForecast::Reads> mine(reads, next.size());
    if (!mine.empty() &&
        request_into_cache(mine, [&] { return generation_.load(std::memory_order_relaxed) != seen; })) {
      finished = forecast;
      count_requested(thread, mine);
    }
  }
}

void Workers::count_requested(int thread, std::span<const LoopForecast::Reads> reads) {
  std::uint64_t bytes = 0;
  for (const LoopForecast::Reads& r : reads) bytes += r.bytes;
  requested_[std::size_t(thread)].fetch_add(bytes, std::memory_order_relaxed);
}

std::span<LoopForecast::Reads> Workers::forecast(const void* key) {
  if (size_ == 1 || team_ == Team::OpenMP || inside_loop) return {};
  next_reads_ = nullptr;  // enter may move or free the storage (and throw)
  const std::span<LoopForecast::Reads> reads = forecast_.enter(key);
  const std::span<const LoopForecast::Reads> next = forecast_.next();
  next_reads_ = next.empty() ? nullptr : next.data();
  ++forecasts_;
  return reads;
}

std::span<const LoopForecast::Reads> Workers::next_reads(int thread) const {
  if (!next_reads_) return {};
  return {next_reads_ + thread * LoopForecast::kReadsPerThread, LoopForecast::kReadsPerThread};
}

std::uint32_t Workers::next_generation(std::uint32_t seen) {
  const auto start = std::chrono::steady_clock::now();
  for (std::uint32_t spins = 1;; ++spins) {
    const std::uint32_t now = generation_.load(std::memory_order_acquire);
    if (now != seen) return now;
    pause();
    if (spins % 256 == 0 && std::chrono::steady_clock::now() - start > spin_) break;
  }
  sleeping_.fetch_add(1, std::memory_order_seq_cst);
  std::uint32_t now;
  while ((now = generation_.load(std::memory_order_seq_cst)) == seen) generation_.wait(seen, std::memory_order_seq_cst);
  sleeping_.fetch_sub(1, std::memory_order_relaxed);
  return now;
}

void Workers::keep_first_error(std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(error_mutex_);
  if (!error_) error_ = std::move(error);
}

}  // namespace strata::cpu
