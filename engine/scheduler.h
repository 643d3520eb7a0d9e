// The scheduler of one replica (continuous batching over a paged KV cache): requests wait in arrival order; each
// micro-batch admits them while its share of the sequences in flight allows and the KV pool has the blocks their
// prompt needs (after the cached blocks of its prefix: engine/block_pool.h), spreading sequences evenly over the
// micro-batches so every pipeline stage has work. Each step of a micro-batch first gives every decoding sequence its
// one token, then fills the rest of the step's token budget with prefill chunks (chunked prefill: a long prompt
// takes several steps and never stalls the others' decoding). When a sequence needs a block and the pool has none,
// the youngest sequence of the micro-batch is preempted: its blocks are freed and it is computed again later from
// its prompt and the tokens it had generated (its sampling is a function of seed and position, so it continues
// with the same tokens). Pure bookkeeping: no communication, no backend.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/block_pool.h"
#include "engine/stop_matcher.h"
#include "engine/wire.h"

namespace strata {

struct Request;
struct Completion;

struct SchedulerLimits {
  std::int32_t max_batch_size = 16;            // sequences in flight, and in one step
  std::int32_t max_num_batched_tokens = 2048;  // tokens in one step
  std::int32_t micro_batches = 1;
  bool record_logits = false;
  std::int32_t kv_blocks = 0;    // blocks in the KV pool (0: max_batch_size contexts of max_model_len)
  std::int32_t block_size = 16;  // positions per block
  bool prefix_caching = true;
  bool chunked_prefill = true;     // false: a prompt is prefilled in one step (which may exceed the token budget)
  std::int32_t max_model_len = 0;  // positions per sequence (sizes the default pool)
};

struct SchedulerCounts {
  std::int64_t prompt_tokens = 0, generated_tokens = 0, completed = 0;
  std::int64_t peak_sequences = 0, peak_tokens = 0;  // most sequences, and KV positions, held at once
  std::int64_t computed_prompt_tokens = 0;  // prompt tokens the model ran (prefix cache hits and shared samples not)
  std::int64_t cached_prompt_tokens = 0;    // prompt tokens found in the prefix cache
  std::int64_t preemptions = 0, recomputed_tokens = 0;  // sequences preempted, and tokens computed again for them
  std::int64_t refused = 0;        // requests whose prompt can never fit the pool (error completions)
  std::int64_t out_of_blocks = 0;  // sequences ended (length) because they alone filled the whole pool
  double longest_token_gap = 0;    // seconds: the longest wait of a sequence between two of its tokens
  std::int64_t kv_blocks = 0, kv_block_size = 0, peak_kv_blocks = 0;
  std::int64_t prefix_block_queries = 0, prefix_block_hits = 0, prefix_evictions = 0;
};

class Scheduler {
 public:
  Scheduler(std::vector<Request> requests, SchedulerLimits limits, const StopMatcher& stops, std::int64_t vocab);
  ~Scheduler();
  int micro_batches() const { return limits_.micro_batches; }
  bool idle(int group) const;            // nothing running in this micro-batch
  std::size_t waiting() const;           // requests not yet admitted (preempted ones included)
  std::int64_t running() const;          // sequences admitted, in every micro-batch
  std::string describe_waiting() const;  // why the first waiting request waits (for error messages)
  const SchedulerCounts& counts() const;
  const BlockPool& pool() const { return pool_; }

  // More requests, queued after the waiting ones.
  void add(std::vector<Request> requests);
  // Admits waiting requests into micro-batch `group`. A request whose prompt can never fit the pool is completed
  // at once through `complete` with an error.
  void admit(int group, const std::function<void(Completion&&)>& complete = {});
  // The next step of `group`: one chunk per scheduled sequence, their KV blocks (each chunk's from its
  // table_offset), and the ids to embed. Empty when nothing of the group can run now.
  void build_step(int group, std::vector<ChunkMeta>& metas, std::vector<std::int32_t>& block_table,
                  std::vector<std::int32_t>& ids);
  // The sampled tokens of the step `group` sent, one per chunk in step order; each sequence that ends is completed
  // through `complete` and frees its blocks. `now`: seconds since generation started, stamped on each sequence's
  // first token and on its completion.
  void apply(int group, const StepResult& result, const std::function<void(Completion&&)>& complete, double now = 0);

 private:
  struct Sequence;
  struct Scheduled {
    Sequence* sequence;
    std::int32_t tokens;
    bool sample;
  };
  enum class Admission { Admitted, Ended, NoRoom };
  Admission admit_one(int group, const std::function<void(Completion&&)>& complete);
  Admission refuse(const std::function<void(Completion&&)>& complete);
  bool grow_blocks(Sequence& s, std::int64_t positions);
  void preempt(Sequence& s);
  void release_blocks(Sequence& s);
  std::int32_t take_slot();
  void release_slot(std::int32_t slot);
  void register_full_blocks(Sequence& s, std::int64_t positions);
  bool prefix_being_scheduled(const Sequence& s) const;
  std::vector<std::int32_t> schedule_tokens(int group);
  void finish(Sequence& s, FinishReason reason, double now, const std::function<void(Completion&&)>& complete);
  void fork_samples(Sequence& first, std::vector<std::unique_ptr<Sequence>>& into);

  SchedulerLimits limits_;
  const StopMatcher& stops_;
  std::int64_t vocab_;
  BlockPool pool_;
  std::deque<std::unique_ptr<Sequence>> waiting_;  // new requests, and preempted sequences at the front
  std::vector<std::vector<std::unique_ptr<Sequence>>> groups_;
  std::vector<std::vector<Scheduled>> scheduled_;     // per micro-batch: its step in flight
  std::vector<std::int32_t> slot_refs_, free_slots_;  // sequence slots (SeqChunk::slot): holders of each, free ones
  // Per micro-batch: blocks held for copies its next step makes (the source of a sample's copied block)
  std::vector<std::vector<std::int32_t>> release_after_copies_;
  // n > 1: per request index, how many samples finished, and those samples
  std::map<std::int64_t, std::pair<std::int32_t, std::vector<Completion>>> samples_;
  std::int64_t admitted_ = 0;  // admission order, for "youngest"
  double last_now_ = 0;        // the latest step's time (a sequence ended outside apply is stamped with it)
  mutable SchedulerCounts counts_;
};

}  // namespace strata
