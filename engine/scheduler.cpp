// See scheduler.h.
#include "engine/scheduler.h"

#include <algorithm>

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
};

Scheduler::Scheduler(std::vector<Request> requests, SchedulerLimits limits, const StopMatcher& stops,
                     std::int64_t vocab)
    : limits_(limits),
      stops_(stops),
      vocab_(vocab),
      waiting_(std::make_move_iterator(requests.begin()), std::make_move_iterator(requests.end())),
      groups_(std::size_t(std::max(limits.micro_batches, 1))),
      slots_(limits.max_batch_size) {
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
  while (!waiting_.empty() && slots_.available() && std::int64_t(members.size()) < cap &&
         std::int64_t(waiting_.front().prompt.size()) <= budget) {
    auto s = std::make_unique<Sequence>();
    s->request = std::move(waiting_.front());
    waiting_.pop_front();
    s->slot = slots_.acquire();
    budget -= std::int64_t(s->request.prompt.size());
    counts_.prompt_tokens += std::int64_t(s->request.prompt.size());
    members.push_back(std::move(s));
  }
}

void Scheduler::build_step(int group, std::vector<ChunkMeta>& metas, std::vector<std::int32_t>& ids) const {
  metas.clear();
  ids.clear();
  for (const auto& s : groups_[std::size_t(group)]) {
    const bool prefill = s->cached == 0;
    ChunkMeta m;
    m.chunk = SeqChunk{s->slot, s->cached, prefill ? std::int32_t(s->request.prompt.size()) : 1,
                       std::int32_t(ids.size())};
    m.record_logits = limits_.record_logits;
    m.top_k = s->request.sampling.top_k;
    m.temperature = s->request.sampling.temperature;
    m.top_p = s->request.sampling.top_p;
    m.seed = s->request.sampling.seed;
    m.step = std::int64_t(s->generated.size());
    m.logprobs = s->request.logprobs;
    if (prefill)
      ids.insert(ids.end(), s->request.prompt.begin(), s->request.prompt.end());
    else
      ids.push_back(s->generated.back());
    metas.push_back(m);
  }
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
    const auto reason = stops_.finished(s.request, s.generated, s.cached);
    if (!reason) {
      still_running.push_back(std::move(members[i]));
      continue;
    }
    Completion c;
    c.index = s.request.index;
    c.prompt_tokens = std::int64_t(s.request.prompt.size());
    c.token_ids = s.generated;
    c.finish_reason = *reason;
    c.text = stops_.text(s.request, s.generated, *reason);
    c.logits = std::move(s.logits);
    c.logprobs = std::move(s.logprobs);
    c.first_token_seconds = s.first_token;
    c.finished_seconds = now;
    c.vocab = vocab_;
    slots_.release(s.slot);
    ++counts_.completed;
    if (complete) complete(std::move(c));
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
