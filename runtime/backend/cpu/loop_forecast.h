// What a decode step's parallel loops will read first, learned from the step before, so that the CPU backend's
// threads can ask for it while they would otherwise wait (cpu::Workers::forecast).
//
// A batch-1 decode step runs ~50 loops of products on the backend's threads, and between them the calling thread
// alone runs the ops between the products (RMSNorm, RoPE, quantizing the activations, storing keys and values) while
// the helpers wait; the products stream their weights from memory. The loops come in the same order every step (the
// layers' products, one after another), so the loop after this one is the one that followed it last time; its
// weights' addresses are known. A helper that requests its part of them into its L2 while it would wait, and the
// caller its own while it waits for the helpers at a loop's end, start the next loop's memory traffic early
// (docs/performance.md: batch-1 decode of quantized weights 4-5% faster on the 100m, bf16 1-2%).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace strata::cpu {

class LoopForecast {
 public:
  // Bytes from `begin` a thread reads first in a loop (none where bytes is 0).
  struct Reads {
    const char* begin = nullptr;
    std::size_t bytes = 0;
  };
  static constexpr int kReadsPerThread = 4;
  // More distinct loops than a step runs (a 7B model's decode step runs ~130): the order is forgotten and learned
  // again rather than kept growing.
  static constexpr std::size_t kMaxLoops = 4096;

  explicit LoopForecast(int threads) : threads_(threads) {}

  // A keyed loop starts (the key names it: its first weight's address): it becomes the loop after the previous
  // keyed one. Returns where its first reads go, thread t's kReadsPerThread from t * kReadsPerThread, cleared;
  // valid until the next call.
  std::span<Reads> enter(const void* key);

  // The first reads of the loop that followed the current keyed loop last time (as enter gave them), or none.
  std::span<const Reads> next() const;

 private:
  struct Loop {
    const void* key = nullptr;
    std::vector<Reads> reads;      // threads_ * kReadsPerThread
    std::size_t follower = kNone;  // index of the loop that followed it last time
  };
  static constexpr std::size_t kNone = SIZE_MAX;
  std::size_t find(const void* key) const;

  int threads_;
  std::vector<Loop> loops_;  // in the order first seen
  std::size_t current_ = kNone;
};

// Requests `reads` into this core's L2 (prefetch instructions: they never fault, so reads of memory freed since they
// were learned are harmless), a line at a time, looking at stop() every 16 lines. Returns whether it requested them
// all (false: stop() said stop first).
template <typename Stop>
bool request_into_cache(std::span<const LoopForecast::Reads> reads, Stop&& stop) {
  constexpr std::size_t kLine = 64, kBetweenLooks = 16 * kLine;
  for (const LoopForecast::Reads& r : reads)
    for (std::size_t at = 0; at < r.bytes; at += kBetweenLooks) {
      if (stop()) return false;
      const std::size_t end = at + kBetweenLooks < r.bytes ? at + kBetweenLooks : r.bytes;
      for (std::size_t line = at; line < end; line += kLine) __builtin_prefetch(r.begin + line, 0, 2);
    }
  return true;
}

}  // namespace strata::cpu
