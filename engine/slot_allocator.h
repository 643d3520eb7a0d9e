// KV-cache slots of one replica: a running sequence holds one slot (max_model_len positions) from admission until
// it finishes. Lowest free slot first, so a short run touches the fewest cache pages.
#pragma once
#include <cstdint>
#include <vector>

namespace strata {

class SlotAllocator {
 public:
  explicit SlotAllocator(std::int32_t slots);
  bool available(std::int32_t count = 1) const { return std::int32_t(free_.size()) >= count; }
  std::int32_t in_use() const { return std::int32_t(used_.size() - free_.size()); }
  // The lowest free slot; Error(Internal) when none is free.
  std::int32_t acquire();
  // Error(Internal) for a slot that is not held (a double release would hand one slot to two sequences).
  void release(std::int32_t slot);

 private:
  std::vector<std::int32_t> free_;  // descending, so back() is the lowest
  std::vector<bool> used_;
};

}  // namespace strata
