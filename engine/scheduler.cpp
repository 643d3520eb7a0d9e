// See scheduler.h.
#include "engine/scheduler.h"

#include <algorithm>
#include <utility>

#include "engine/engine.h"
#include "runtime/base/error.h"

namespace strata {

struct Scheduler::Sequence {
  Request request;
  std::int32_t slot = -1;
  std::int32_t cached = 0;  // positions already in the KV cache
  std::vector<std::int32_t> generated;
  std::vector<float> logits;
  std::vector<RowLogprobs> logprobs;
  double first_token = 0;
  int sample = 0;                        // which of the request's n samples
  std::vector<std::int32_t> fork_slots;  // sample 0, before its first token: the slots reserved for samples 1..n-1
  std::int32_t copy_from = -1;           // a forked sample, before its first step: the slot holding its prompt
};

Scheduler::Scheduler(std::vector<Request> requests, SchedulerLimits limits, const StopMatcher& stops,
                     std::int64_t vocab)
    : limits_(limits),
      stops_(stops),
      vocab_(vocab),
      waiting_(std::make_move_iterator(requests.begin()), std::make_move_iterator(requests.end())),
      groups_(std::size_t(std::max(limits.micro_batches, 1))),
      slots_(limits.max_batch_size),
      release_after_copies_(groups_.size()) {
  limits_.micro_batches = int(groups_.size());
}

Scheduler::~Scheduler() = default;

bool Scheduler::idle(int group) const { return groups_[std::size_t(group)].empty(); }
std::size_t Scheduler::waiting() const { return waiting_.size(); }

void Scheduler::admit(int group) {
  auto& members = groups_[std::size_t(group)];
  const std::int64_t groups = limits_.micro_batches;
  std::int64_t running = 0;
  for (const auto& g : groups_) running += std::int64_t(g.size());
  // Spread sequences evenly over the micro-batches so every stage has work: of the sequences that can be in flight
  // (slots, or all there are), micro-batch g takes total / groups, and the first total % groups one more. Capping
  // every group at the rounded-up share instead let the first groups fill up and left the last one empty.
  const std::int64_t total = std::min<std::int64_t>(limits_.max_batch_size, running + std::int64_t(waiting_.size()));
  const std::int64_t cap = total / groups + (group < total % groups ? 1 : 0);
  std::int64_t budget = limits_.max_num_batched_tokens - std::int64_t(members.size());
  // A request of n samples takes its n slots at once (its samples fork after the prompt), so none waits for a slot
  // mid-way and no two requests can hold each other's slots.
  while (!waiting_.empty() && slots_.available(std::max(waiting_.front().n, 1)) && std::int64_t(members.size()) < cap &&
         std::int64_t(waiting_.front().prompt.size()) <= budget) {
    auto s = std::make_unique<Sequence>();
    s->request = std::move(waiting_.front());
    waiting_.pop_front();
    s->slot = slots_.acquire();
    for (std::int32_t j = 1; j < s->request.n; ++j) s->fork_slots.push_back(slots_.acquire());
    budget -= std::int64_t(s->request.prompt.size());
    counts_.prompt_tokens += std::int64_t(s->request.prompt.size());
    counts_.computed_prompt_tokens += std::int64_t(s->request.prompt.size());
    members.push_back(std::move(s));
  }
}

void Scheduler::build_step(int group, std::vector<ChunkMeta>& metas, std::vector<std::int32_t>& ids) {
  metas.clear();
  ids.clear();
  for (const auto& s : groups_[std::size_t(group)]) {
    const bool prefill = s->cached == 0;
    ChunkMeta m;
    m.chunk =
        SeqChunk{s->slot, s->cached, prefill ? std::int32_t(s->request.prompt.size()) : 1, std::int32_t(ids.size())};
    m.copy_from = std::exchange(s->copy_from, -1);
    m.record_logits = limits_.record_logits;
    m.top_k = s->request.sampling.top_k;
    m.temperature = s->request.sampling.temperature;
    m.top_p = s->request.sampling.top_p;
    m.seed = s->request.sampling.seed;
    m.step = std::int64_t(s->generated.size());
    m.logprobs = s->request.logprobs;
    if (prefill)
      ids.insert(ids.end(), s->request.prompt.begin(), s->request.prompt.end());
    else if (s->generated.empty())  // a forked sample's first step: the prompt's last token, on a copied prefix
      ids.push_back(s->request.prompt.back());
    else
      ids.push_back(s->generated.back());
    metas.push_back(m);
  }
  // This group's copies are in this step, ahead of anything a later step writes: the slots they read from may go
  // now (not another group's: its copies are still to be built).
  auto& pending = release_after_copies_[std::size_t(group)];
  for (std::int32_t slot : pending) slots_.release(slot);
  pending.clear();
}

void Scheduler::fork_samples(Sequence& first, std::vector<std::unique_ptr<Sequence>>& into) {
  const auto prompt = std::int32_t(first.request.prompt.size());
  for (std::size_t j = 0; j < first.fork_slots.size(); ++j) {
    auto f = std::make_unique<Sequence>();
    f->request = first.request;
    f->request.sampling.seed = first.request.sample_seeds.at(j);
    f->sample = int(j) + 1;
    f->slot = first.fork_slots[j];
    // All but the prompt's last token come from sample 0's cache; that token runs again in the sample's own slot,
    // which gives the sample its own logits row for its first token.
    f->cached = prompt - 1;
    f->copy_from = prompt > 1 ? first.slot : -1;
    counts_.computed_prompt_tokens += 1;
    into.push_back(std::move(f));
  }
  first.fork_slots.clear();
}

void Scheduler::finish(Sequence& s, FinishReason reason, double now,
                       const std::function<void(Completion&&)>& complete) {
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
  auto& members = groups_[std::size_t(group)];
  STRATA_CHECK(result.tokens.size() == members.size(), Communication, "received ", result.tokens.size(),
               " tokens for a micro-batch of ", members.size(), " sequences");
  std::size_t logit_row = 0, logprob_row = 0;
  std::int64_t step_sequences = 0, step_tokens = 0;
  std::vector<std::unique_ptr<Sequence>> still_running;
  for (std::size_t i = 0; i < members.size(); ++i) {
    Sequence& s = *members[i];
    if (limits_.record_logits) {
      const auto row = result.logits.begin() + std::int64_t(logit_row++ * std::size_t(result.vocab));
      s.logits.insert(s.logits.end(), row, row + result.vocab);
    }
    if (s.request.logprobs >= 0) {
      STRATA_CHECK(logprob_row < result.logprobs.size(), Communication, "received ", result.logprobs.size(),
                   " log-probability rows for a micro-batch that asked for more");
      s.logprobs.push_back(result.logprobs[logprob_row++]);
    }
    s.cached += s.cached == 0 ? std::int32_t(s.request.prompt.size()) : 1;
    ++step_sequences;  // held through this step, finishing or not
    step_tokens += s.cached;
    s.generated.push_back(result.tokens[i]);
    if (s.generated.size() == 1) s.first_token = now;
    ++counts_.generated_tokens;
    const bool forking = !s.fork_slots.empty();  // sample 0's first token: the other samples start now
    if (forking) fork_samples(s, still_running);
    const auto reason = stops_.finished(s.request, s.generated, s.cached);
    if (!reason) {
      still_running.push_back(std::move(members[i]));
      continue;
    }
    if (forking && s.request.prompt.size() > 1)
      release_after_copies_[std::size_t(group)].push_back(s.slot);  // its new samples still copy its prompt
    else
      slots_.release(s.slot);
    finish(s, *reason, now, complete);
  }
  members = std::move(still_running);
  note_peaks(group, step_sequences, step_tokens);
}

void Scheduler::note_peaks(int group, std::int64_t sequences, std::int64_t tokens) {
  for (int g = 0; g < int(groups_.size()); ++g)
    if (g != group)
      for (const auto& s : groups_[std::size_t(g)]) {
        ++sequences;
        tokens += s->cached;
      }
  counts_.peak_sequences = std::max(counts_.peak_sequences, sequences);
  counts_.peak_tokens = std::max(counts_.peak_tokens, tokens);
}

}  // namespace strata
