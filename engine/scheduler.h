// The scheduler of one replica (continuous batching): requests wait in arrival order; each micro-batch admits
// them while a KV-cache slot is free and the step's token budget allows (spreading sequences evenly over the
// micro-batches so every pipeline stage has work), builds its next step (a prefill chunk for a new sequence, one
// token for a running one), and applies the tokens the last stage sampled, completing sequences as they end.
// Pure bookkeeping: no communication, no backend.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "engine/slot_allocator.h"
#include "engine/stop_matcher.h"
#include "engine/wire.h"

namespace strata {

struct Request;
struct Completion;

struct SchedulerLimits {
  std::int32_t max_batch_size = 16;            // sequences in flight (= KV-cache slots)
  std::int32_t max_num_batched_tokens = 2048;  // tokens in one step
  std::int32_t micro_batches = 1;
  bool record_logits = false;
};

struct SchedulerCounts {
  std::int64_t prompt_tokens = 0, generated_tokens = 0, completed = 0;
  std::int64_t peak_sequences = 0, peak_tokens = 0;  // most sequences, and KV positions, held at once
  std::int64_t computed_prompt_tokens = 0;  // prompt tokens run through the model (once per prompt, 1 per extra sample)
};

class Scheduler {
 public:
  Scheduler(std::vector<Request> requests, SchedulerLimits limits, const StopMatcher& stops, std::int64_t vocab);
  ~Scheduler();
  int micro_batches() const { return limits_.micro_batches; }
  bool idle(int group) const;   // nothing running in this micro-batch
  std::size_t waiting() const;  // requests not yet admitted
  const SchedulerCounts& counts() const { return counts_; }

  // Admits waiting requests into micro-batch `group`.
  void admit(int group);
  // The next step of `group`: one chunk per sequence, and the ids to embed (prompts for prefill chunks, the last
  // generated token otherwise).
  void build_step(int group, std::vector<ChunkMeta>& metas, std::vector<std::int32_t>& ids);
  // The sampled tokens of the step `group` sent, one per sequence in step order; each sequence that ends is
  // completed through `complete` and frees its slot.
  // `now`: seconds since generation started, stamped on each sequence's first token and on its completion.
  void apply(int group, const StepResult& result, const std::function<void(Completion&&)>& complete, double now = 0);

 private:
  struct Sequence;
  // After a step of `group`: its sequences and KV positions (finishing ones included) plus the other groups'.
  void note_peaks(int group, std::int64_t sequences, std::int64_t tokens);
  void finish(Sequence& s, FinishReason reason, double now, const std::function<void(Completion&&)>& complete);
  void fork_samples(Sequence& first, std::vector<std::unique_ptr<Sequence>>& into);
  SchedulerLimits limits_;
  const StopMatcher& stops_;
  std::int64_t vocab_;
  std::deque<Request> waiting_;
  std::vector<std::vector<std::unique_ptr<Sequence>>> groups_;
  SlotAllocator slots_;
  // Per micro-batch: slots of finished sequences whose prompt that micro-batch's next step still copies
  std::vector<std::vector<std::int32_t>> release_after_copies_;
  // n > 1: per request index, how many samples finished, and those samples
  std::map<std::int64_t, std::pair<std::int32_t, std::vector<Completion>>> samples_;
  SchedulerCounts counts_;
};

}  // namespace strata
