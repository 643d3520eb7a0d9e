// See slot_allocator.h.
#include "engine/slot_allocator.h"

#include <algorithm>
#include <functional>

#include "runtime/base/error.h"

namespace strata {

SlotAllocator::SlotAllocator(std::int32_t slots) : used_(std::size_t(std::max(slots, 0)), false) {
  STRATA_CHECK(slots >= 1, Usage, "--max-batch-size must be >= 1 (got ", slots, ")");
  for (std::int32_t s = slots - 1; s >= 0; --s) free_.push_back(s);
}

std::int32_t SlotAllocator::acquire() {
  STRATA_CHECK(!free_.empty(), Internal, "no KV-cache slot free (all ", used_.size(), " in use)");
  const std::int32_t slot = free_.back();
  free_.pop_back();
  used_[std::size_t(slot)] = true;
  return slot;
}

void SlotAllocator::release(std::int32_t slot) {
  STRATA_CHECK(slot >= 0 && std::size_t(slot) < used_.size() && used_[std::size_t(slot)], Internal, "KV-cache slot ",
               slot, " released but not held");
  used_[std::size_t(slot)] = false;
  free_.insert(std::upper_bound(free_.begin(), free_.end(), slot, std::greater<>()), slot);
}

}  // namespace strata
