// See scheduler.h.
#include "engine/scheduler.h"

#include <algorithm>
#include <utility>

#include "engine/engine.h"
#include "runtime/base/error.h"

namespace strata {

struct Scheduler::Sequence {
  Request request;
  std::vector<std::int32_t> ids;  // the prompt, then the generated tokens: what a recompute runs
  std::int32_t computed = 0;      // leading positions whose keys and values are in the cache
  std::vector<std::int32_t> blocks;
  std::int32_t registered = 0;  // leading full blocks offered to the prefix cache
  std::uint64_t chain = 0;      // the chain hash after them
  std::vector<std::int32_t> generated;
  std::vector<float> logits;
  std::vector<RowLogprobs> logprobs;
  double first_token = 0, last_token = 0;
  int sample = 0;              // which of the request's n samples
  bool forks_pending = false;  // sample 0 of n > 1 before its first token
  // A forked sample before its first step: copy block copy_src (held for it) into its block copy_dst
  std::int32_t copy_src = -1, copy_dst = -1;
  std::int32_t slot = -1;           // its row of the sliding-window caches, while admitted
  std::int32_t copy_slot_src = -1;  // a forked sample before its first step: the slot it copies (held for it)
  std::int64_t order = -1;          // first admission: the youngest sequence has the largest
  std::uint64_t first_block = 0;    // prefix caching: the chain hash of its first full block (0: none)
};

Scheduler::Scheduler(std::vector<Request> requests, SchedulerLimits limits, const StopMatcher& stops,
                     std::int64_t vocab)
    : limits_(limits),
      stops_(stops),
      vocab_(vocab),
      pool_(limits.kv_blocks > 0
                ? limits.kv_blocks
                : std::int32_t(std::int64_t(limits.max_batch_size) *
                               ((limits.max_model_len + limits.block_size - 1) / std::max(limits.block_size, 1))),
            limits.block_size, limits.prefix_caching),
      groups_(std::size_t(std::max(limits.micro_batches, 1))),
      scheduled_(groups_.size()),
      slot_refs_(std::size_t(std::max(limits.max_batch_size, 1)), 0),
      release_after_copies_(groups_.size()) {
  limits_.micro_batches = int(groups_.size());
  for (auto slot = std::int32_t(slot_refs_.size()); slot-- > 0;) free_slots_.push_back(slot);  // 0 first
  add(std::move(requests));
}

void Scheduler::add(std::vector<Request> requests) {
  for (auto& r : requests) {
    auto s = std::make_unique<Sequence>();
    s->ids = r.prompt;
    s->forks_pending = r.n > 1;
    if (limits_.prefix_caching && std::int64_t(s->ids.size()) > limits_.block_size)
      s->first_block = BlockPool::chain_hash(0, std::span(s->ids).first(std::size_t(limits_.block_size)));
    s->request = std::move(r);
    waiting_.push_back(std::move(s));
  }
}

Scheduler::~Scheduler() = default;

bool Scheduler::idle(int group) const { return groups_[std::size_t(group)].empty(); }

std::string Scheduler::describe_waiting() const {
  if (waiting_.empty()) return "none waiting";
  const Sequence& s = *waiting_.front();
  std::int64_t running = 0;
  for (const auto& g : groups_) running += std::int64_t(g.size());
  return cat("the first waiting is request ", s.request.index, " (", s.ids.size(), " tokens, ",
             pool_.blocks_for(std::int64_t(s.ids.size())), " blocks; n ", s.request.n, "); ", running,
             " running; the pool has ", pool_.available(), " of ", pool_.total(), " blocks available");
}
std::size_t Scheduler::waiting() const { return waiting_.size(); }

std::int64_t Scheduler::running() const {
  std::int64_t n = 0;
  for (const auto& g : groups_) n += std::int64_t(g.size());
  return n;
}

const SchedulerCounts& Scheduler::counts() const {
  const BlockPoolCounts& p = pool_.counts();
  counts_.kv_blocks = pool_.total();
  counts_.kv_block_size = pool_.block_size();
  counts_.peak_kv_blocks = p.peak_used;
  counts_.prefix_block_queries = p.prefix_queries;
  counts_.prefix_block_hits = p.prefix_hits;
  counts_.prefix_evictions = p.evictions;
  return counts_;
}

// ------------------------------------------------------------------------------------------------ admission

void Scheduler::admit(int group, const std::function<void(Completion&&)>& complete) {
  auto& members = groups_[std::size_t(group)];
  const std::int64_t groups = limits_.micro_batches;
  // A sample 0 still to fork counts for all its samples: they join its micro-batch after its first token.
  auto load = [](const std::vector<std::unique_ptr<Sequence>>& m) {
    std::int64_t n = 0;
    for (const auto& s : m) n += s->forks_pending ? s->request.n : 1;
    return n;
  };
  std::int64_t running = 0;
  for (const auto& g : groups_) running += load(g);
  // Spread sequences evenly over the micro-batches so every stage has work: of the sequences that can be in flight
  // (max_batch_size, or all there are), micro-batch g takes total / groups, and the first total % groups one more.
  const std::int64_t total = std::min<std::int64_t>(limits_.max_batch_size, running + std::int64_t(waiting_.size()));
  const std::int64_t cap = total / groups + (group < total % groups ? 1 : 0);
  while (!waiting_.empty() && load(members) < cap &&
         running + (waiting_.front()->forks_pending ? std::max(waiting_.front()->request.n, 1) : 1) <=
             std::max<std::int64_t>(limits_.max_batch_size, 1) &&
         !prefix_being_scheduled(*waiting_.front())) {
    const std::int64_t n = waiting_.front()->forks_pending ? waiting_.front()->request.n : 1;
    const Admission admission = admit_one(group, complete);
    if (admission == Admission::NoRoom) break;
    if (admission == Admission::Admitted) running += n;  // an ended request takes no room
  }
}

// The first waiting request cannot run (its error), or its prompt can never fit the pool, whatever finishes: it is
// completed with that error and the job goes on.
Scheduler::Admission Scheduler::refuse(const std::function<void(Completion&&)>& complete) {
  const Sequence& s = *waiting_.front();
  Completion c;
  c.index = s.request.index;
  c.prompt_tokens = std::int64_t(s.request.prompt.size());
  c.vocab = vocab_;
  c.error = !s.request.error.empty() ? s.request.error
            : s.ids.empty()
                ? std::string("the prompt is empty (0 tokens): there is nothing to continue from")
                : cat("the prompt needs ", pool_.blocks_for(std::int64_t(s.ids.size())), " KV-cache blocks of ",
                      pool_.block_size(), " positions (", s.ids.size(), " tokens) but the whole pool has ",
                      pool_.total(), "; raise --kv-cache-memory or shorten the prompt");
  ++counts_.refused;
  ++counts_.completed;
  waiting_.pop_front();
  if (complete) complete(std::move(c));
  return Admission::Ended;
}

// A running sequence starts with the same block as `s` and has not been scheduled to compute it yet: `s` waits one
// step for it, then finds that prefix cached instead of computing it again (sequences admitted together would
// otherwise all compute a shared system prompt).
bool Scheduler::prefix_being_scheduled(const Sequence& s) const {
  if (s.first_block == 0) return false;
  for (const auto& g : groups_)
    for (const auto& m : g)
      if (m->first_block == s.first_block && m->registered == 0) return true;
  return false;
}

// Admits the first waiting sequence with every block its known tokens need (the cached ones of its prefix shared),
// so a prefill never waits for blocks mid-way; NoRoom (nothing changed) when the pool cannot give them now, Ended when
// the request can never fit (completed with an error, or with "length" if it had generated tokens).
Scheduler::Admission Scheduler::admit_one(int group, const std::function<void(Completion&&)>& complete) {
  Sequence& s = *waiting_.front();
  const std::int64_t need = pool_.blocks_for(std::int64_t(s.ids.size()));
  if (need > pool_.total() && !s.generated.empty()) {  // grew to the whole pool alone: it can go no further
    std::unique_ptr<Sequence> alone = std::move(waiting_.front());
    waiting_.pop_front();
    ++counts_.out_of_blocks;
    finish(*alone, FinishReason::Length, last_now_, complete);
    return Admission::Ended;
  }
  if (!s.request.error.empty() || s.ids.empty() || need > pool_.total()) return refuse(complete);
  // The last known token is always computed (its logits give the next token), so at most all but it is cached.
  BlockPool::Prefix prefix = pool_.acquire_prefix(s.ids, (std::int64_t(s.ids.size()) - 1) / pool_.block_size());
  if (pool_.available() < need - std::int64_t(prefix.blocks.size())) {
    for (std::int32_t b : prefix.blocks) pool_.release(b);
    return Admission::NoRoom;
  }
  s.blocks = std::move(prefix.blocks);
  s.registered = std::int32_t(s.blocks.size());
  s.chain = prefix.chain;
  s.computed = s.registered * pool_.block_size();
  while (std::int64_t(s.blocks.size()) < need)
    s.blocks.push_back(pool_.allocate(s.blocks.empty() ? -1 : s.blocks.back()));
  s.slot = take_slot();
  const auto known = std::int64_t(s.ids.size());
  if (s.order < 0) {
    s.order = admitted_++;
    counts_.prompt_tokens += std::int64_t(s.request.prompt.size());
    counts_.cached_prompt_tokens += s.computed;
    counts_.computed_prompt_tokens += known - s.computed;
  } else {
    counts_.recomputed_tokens += known - s.computed;
  }
  auto& members = groups_[std::size_t(group)];
  auto at = std::upper_bound(members.begin(), members.end(), s.order,
                             [](std::int64_t order, const auto& m) { return order < m->order; });
  members.insert(at, std::move(waiting_.front()));
  waiting_.pop_front();
  return Admission::Admitted;
}

// ------------------------------------------------------------------------------------------------ blocks

bool Scheduler::grow_blocks(Sequence& s, std::int64_t positions) {
  while (std::int64_t(s.blocks.size()) < pool_.blocks_for(positions)) {
    const std::int32_t b = pool_.allocate(s.blocks.empty() ? -1 : s.blocks.back());  // after its last, if free
    if (b < 0) return false;
    s.blocks.push_back(b);
  }
  return true;
}

void Scheduler::release_blocks(Sequence& s) {
  for (std::int32_t b : s.blocks) pool_.release(b);
  s.blocks.clear();
  if (s.copy_src >= 0) pool_.release(std::exchange(s.copy_src, -1));
  s.copy_dst = -1;
  if (s.slot >= 0) release_slot(std::exchange(s.slot, -1));
  if (s.copy_slot_src >= 0) release_slot(std::exchange(s.copy_slot_src, -1));
}

// Slots: one per admitted sequence (at most max_batch_size), reference-counted like blocks so that a slot a
// forked sample still has to copy is not handed out before the copy.
std::int32_t Scheduler::take_slot() {
  STRATA_CHECK(!free_slots_.empty(), Internal, "no free sequence slot with ", running(), " sequences admitted of ",
               limits_.max_batch_size);
  const std::int32_t slot = free_slots_.back();
  free_slots_.pop_back();
  slot_refs_[std::size_t(slot)] = 1;
  return slot;
}

void Scheduler::release_slot(std::int32_t slot) {
  if (--slot_refs_[std::size_t(slot)] == 0) free_slots_.push_back(slot);
}

// Frees the sequence's blocks and queues it first to be computed again (prompt and generated tokens).
void Scheduler::preempt(Sequence& s) {
  release_blocks(s);
  s.computed = 0;
  s.registered = 0;
  s.chain = 0;
  ++counts_.preemptions;
}

// Offers the blocks that `positions` fill to the prefix cache, as soon as the step computing them is scheduled: a
// sequence admitted later is scheduled in the same step or after it (and within a step every chunk's keys and values
// are stored before any attention reads them), so it may share them at once.
void Scheduler::register_full_blocks(Sequence& s, std::int64_t positions) {
  if (!pool_.prefix_caching()) return;
  const std::int32_t size = pool_.block_size();
  while ((s.registered + 1) * std::int64_t(size) <= positions) {
    const auto tokens =
        std::span<const std::int32_t>(s.ids).subspan(std::size_t(s.registered * size), std::size_t(size));
    s.chain = pool_.register_full(s.blocks[std::size_t(s.registered)], s.chain, tokens);
    ++s.registered;
  }
}

// ------------------------------------------------------------------------------------------------ steps

// How many tokens each member of `group` runs in its next step (0: not in it). Decoding sequences first, one token
// each (oldest first; when one needs a block the pool lacks, the youngest not yet scheduled is preempted, itself
// if it is the youngest), then prefill chunks from what is left of the token budget, oldest first.
std::vector<std::int32_t> Scheduler::schedule_tokens(int group) {
  auto& members = groups_[std::size_t(group)];
  std::vector<std::int32_t> tokens(members.size(), 0);
  std::int64_t budget = limits_.max_num_batched_tokens, chunks = 0;
  std::vector<bool> gone(members.size(), false);
  for (std::size_t i = 0; i < members.size() && budget > 0 && chunks < limits_.max_batch_size; ++i) {
    Sequence& s = *members[i];
    if (gone[i] || std::int64_t(s.ids.size()) - s.computed != 1) continue;
    while (!grow_blocks(s, s.computed + 1)) {
      std::size_t youngest = i;
      for (std::size_t j = i + 1; j < members.size(); ++j)
        if (!gone[j]) youngest = j;
      preempt(*members[youngest]);
      gone[youngest] = true;
      if (youngest == i) break;
    }
    if (gone[i]) continue;
    tokens[i] = 1;
    --budget;
    ++chunks;
  }
  for (std::size_t i = 0; i < members.size() && budget > 0 && chunks < limits_.max_batch_size; ++i) {
    const Sequence& s = *members[i];
    const std::int64_t left = std::int64_t(s.ids.size()) - s.computed;
    if (gone[i] || left <= 1) continue;
    // Without chunking a prompt runs whole: beside others within the budget, or alone in a step of its own
    // (the stage's workspace then holds a whole context).
    const bool alone = budget == limits_.max_num_batched_tokens;
    const std::int64_t n = limits_.chunked_prefill ? std::min(left, budget) : (left <= budget || alone ? left : 0);
    if (n == 0) continue;
    tokens[i] = std::int32_t(n);
    budget -= n;
    ++chunks;
  }
  // Preempted sequences wait first in line, the oldest first.
  for (std::size_t i = members.size(); i-- > 0;)
    if (gone[i]) waiting_.push_front(std::move(members[i]));
  std::size_t kept = 0;
  for (std::size_t i = 0; i < members.size(); ++i)
    if (!gone[i]) {
      tokens[kept] = tokens[i];
      members[kept++] = std::move(members[i]);
    }
  members.resize(kept);
  tokens.resize(kept);
  return tokens;
}

void Scheduler::build_step(int group, std::vector<ChunkMeta>& metas, std::vector<std::int32_t>& block_table,
                           std::vector<std::int32_t>& ids) {
  metas.clear();
  block_table.clear();
  ids.clear();
  auto& scheduled = scheduled_[std::size_t(group)];
  scheduled.clear();
  auto& members = groups_[std::size_t(group)];
  const std::vector<std::int32_t> tokens = schedule_tokens(group);
  auto& copies = release_after_copies_[std::size_t(group)];
  std::vector<std::int32_t> slot_copies;
  for (std::size_t i = 0; i < members.size(); ++i) {
    if (tokens[i] == 0) continue;
    Sequence& s = *members[i];
    const std::int32_t n = tokens[i];
    const bool sample = s.computed + n == std::int32_t(s.ids.size());
    ChunkMeta m;
    m.chunk = SeqChunk{std::int32_t(block_table.size()), s.computed, n,
                       std::int32_t(ids.size()),         s.slot,     std::int32_t(s.request.prompt.size())};
    const auto used = pool_.blocks_for(s.computed + n);
    block_table.insert(block_table.end(), s.blocks.begin(), s.blocks.begin() + used);
    ids.insert(ids.end(), s.ids.begin() + s.computed, s.ids.begin() + s.computed + n);
    if (s.copy_src >= 0) {  // a forked sample's first step: its copy of the prompt's last, partly filled block
      m.copy_src = s.copy_src;
      m.copy_dst = s.copy_dst;
      copies.push_back(std::exchange(s.copy_src, -1));
      s.copy_dst = -1;
    }
    if (s.copy_slot_src >= 0) {  // and of its first sample's sliding windows
      m.copy_slot_src = s.copy_slot_src;
      slot_copies.push_back(std::exchange(s.copy_slot_src, -1));
    }
    m.sample = sample ? 1 : 0;
    m.record_logits = sample && limits_.record_logits;
    m.logprobs = sample ? s.request.logprobs : -1;
    m.top_k = s.request.sampling.top_k;
    m.temperature = s.request.sampling.temperature;
    m.top_p = s.request.sampling.top_p;
    m.seed = s.request.sampling.seed;
    m.step = std::int64_t(s.generated.size());
    register_full_blocks(s, s.computed + n);
    metas.push_back(m);
    scheduled.push_back(Scheduled{&s, n, sample});
  }
  // The copies are in this step, ahead of anything a later step writes (every stage runs steps in order): their
  // source blocks may be handed out again from now on.
  for (std::int32_t b : copies) pool_.release(b);
  copies.clear();
  for (std::int32_t slot : slot_copies) release_slot(slot);
}

void Scheduler::fork_samples(Sequence& first, std::vector<std::unique_ptr<Sequence>>& into) {
  const auto prompt = std::int32_t(first.request.prompt.size());
  const std::int32_t size = pool_.block_size();
  // All but the prompt's last token come from sample 0's cache: its full blocks are shared, the partly filled one
  // (if any) copied. That last token runs again in each sample, which gives it its own logits row.
  const std::int32_t shared = (prompt - 1) / size;
  const bool partial = (prompt - 1) % size != 0;
  for (std::int32_t j = 1; j < first.request.n; ++j) {
    auto f = std::make_unique<Sequence>();
    f->request = first.request;
    f->request.sampling.seed = first.request.sample_seeds.at(std::size_t(j - 1));
    f->sample = j;
    f->ids = first.request.prompt;
    f->order = first.order;
    const std::int32_t copy = partial ? pool_.allocate() : -1;
    if (partial && copy < 0) {  // no block for the copy now: computed again from its prompt when blocks free up
      waiting_.push_front(std::move(f));
      continue;
    }
    for (std::int32_t b = 0; b < shared; ++b) {
      pool_.retain(first.blocks[std::size_t(b)]);
      f->blocks.push_back(first.blocks[std::size_t(b)]);
    }
    if (partial) {
      f->blocks.push_back(copy);
      f->copy_src = first.blocks[std::size_t(shared)];
      f->copy_dst = copy;
      pool_.retain(f->copy_src);
    }
    f->computed = prompt - 1;
    f->slot = take_slot();
    f->copy_slot_src = first.slot;
    ++slot_refs_[std::size_t(first.slot)];
    counts_.computed_prompt_tokens += 1;
    into.push_back(std::move(f));
  }
}

void Scheduler::finish(Sequence& s, FinishReason reason, double now,
                       const std::function<void(Completion&&)>& complete) {
  release_blocks(s);
  Completion c;
  c.index = s.request.index;
  c.prompt_tokens = std::int64_t(s.request.prompt.size());
  c.token_ids = s.generated;
  c.finish_reason = reason;
  c.text = stops_.text(s.request, s.generated, reason);
  c.logits = std::move(s.logits);
  c.logprobs = std::move(s.logprobs);
  c.first_token_seconds = s.first_token;
  c.finished_seconds = now;
  c.vocab = vocab_;
  c.seed = s.request.sampling.seed;
  ++counts_.completed;
  if (s.request.n <= 1) {
    if (complete) complete(std::move(c));
    return;
  }
  auto& [finished, done] = samples_[s.request.index];  // the request completes with its last sample
  if (done.empty()) done.resize(std::size_t(s.request.n));
  done[std::size_t(s.sample)] = std::move(c);
  if (++finished < s.request.n) return;
  Completion all = std::move(done[0]);
  for (std::size_t j = 1; j < done.size(); ++j) {
    all.first_token_seconds = std::min(all.first_token_seconds, done[j].first_token_seconds);
    all.finished_seconds = std::max(all.finished_seconds, done[j].finished_seconds);
    all.more.push_back(std::move(done[j]));
  }
  samples_.erase(s.request.index);
  if (complete) complete(std::move(all));
}

void Scheduler::apply(int group, const StepResult& result, const std::function<void(Completion&&)>& complete,
                      double now) {
  last_now_ = now;
  auto& members = groups_[std::size_t(group)];
  auto& scheduled = scheduled_[std::size_t(group)];
  STRATA_CHECK(result.tokens.size() == scheduled.size(), Communication, "received ", result.tokens.size(),
               " tokens for a step of ", scheduled.size(), " sequences");
  std::size_t logit_row = 0, logprob_row = 0;
  std::vector<std::unique_ptr<Sequence>> forked;
  std::vector<Sequence*> ended;
  for (std::size_t i = 0; i < scheduled.size(); ++i) {
    Sequence& s = *scheduled[i].sequence;
    s.computed += scheduled[i].tokens;
    if (!scheduled[i].sample) continue;  // a prefill chunk short of the prompt's end
    if (limits_.record_logits) {
      const auto row = result.logits.begin() + std::int64_t(logit_row++ * std::size_t(result.vocab));
      s.logits.insert(s.logits.end(), row, row + result.vocab);
    }
    if (s.request.logprobs >= 0) {
      STRATA_CHECK(logprob_row < result.logprobs.size(), Communication, "received ", result.logprobs.size(),
                   " log-probability rows for a micro-batch that asked for more");
      s.logprobs.push_back(result.logprobs[logprob_row++]);
    }
    s.generated.push_back(result.tokens[i]);
    s.ids.push_back(result.tokens[i]);
    if (s.generated.size() == 1) s.first_token = now;
    if (s.generated.size() >= 2) counts_.longest_token_gap = std::max(counts_.longest_token_gap, now - s.last_token);
    s.last_token = now;
    ++counts_.generated_tokens;
    if (std::exchange(s.forks_pending, false)) fork_samples(s, forked);
    if (const auto reason = stops_.finished(s.request, s.generated, s.computed)) {
      finish(s, *reason, now, complete);
      ended.push_back(&s);
    }
  }
  scheduled.clear();
  std::int64_t sequences = 0, tokens = 0;  // held through this step, finishing ones included
  for (const auto& g : groups_)
    for (const auto& s : g) {
      ++sequences;
      tokens += s->computed;
    }
  counts_.peak_sequences = std::max(counts_.peak_sequences, sequences);
  counts_.peak_tokens = std::max(counts_.peak_tokens, tokens);
  std::erase_if(members, [&](const auto& s) { return std::count(ended.begin(), ended.end(), s.get()) > 0; });
  for (auto& f : forked) {
    auto at = std::upper_bound(members.begin(), members.end(), f->order,
                               [](std::int64_t order, const auto& m) { return order < m->order; });
    members.insert(at, std::move(f));
  }
}

}  // namespace strata
