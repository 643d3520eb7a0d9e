#include "runtime/backend/cpu/loop_forecast.h"

#include <algorithm>

namespace strata::cpu {

std::size_t LoopForecast::find(const void* key) const {
  // Most often the loop that followed the current one last time; else a search (the first step, or an order that
  // changed: a prefill step's loops between decode steps).
  if (current_ != kNone) {
    const std::size_t guess = loops_[current_].follower;
    if (guess != kNone && loops_[guess].key == key) return guess;
  }
  const auto found = std::find_if(loops_.begin(), loops_.end(), [&](const Loop& l) { return l.key == key; });
  return found == loops_.end() ? kNone : std::size_t(found - loops_.begin());
}

std::span<LoopForecast::Reads> LoopForecast::enter(const void* key) {
  std::size_t index = find(key);
  if (index == kNone) {
    if (loops_.size() == kMaxLoops) {
      loops_.clear();
      current_ = kNone;
    }
    index = loops_.size();
    loops_.push_back({key, std::vector<Reads>(std::size_t(threads_) * kReadsPerThread), kNone});
  }
  if (current_ != kNone) loops_[current_].follower = index;
  current_ = index;
  std::vector<Reads>& reads = loops_[index].reads;
  std::fill(reads.begin(), reads.end(), Reads{});
  return reads;
}

std::span<const LoopForecast::Reads> LoopForecast::next() const {
  if (current_ == kNone || loops_[current_].follower == kNone) return {};
  return loops_[loops_[current_].follower].reads;
}

}  // namespace strata::cpu
