// Scheduler (stage 0), followers (later stages) and the wire format of steps and tokens.
#include "runtime/engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <type_traits>

#include "runtime/base/error.h"

namespace strata {

const char* finish_reason_name(FinishReason reason) { return reason == FinishReason::Stop ? "stop" : "length"; }

namespace {

// ------------------------------------------------------------------------------------------------ wire format
// Step (stage s -> s+1, Tag::Activations): StepHeader, ChunkMeta[n_chunks], float hidden[n_tokens * hidden_size].
// Tokens (last stage -> stage 0, Tag::Tokens): TokensHeader, int32 tokens[n_chunks], float logits[n_rows * vocab].
enum : std::int32_t { kStep = 1, kStop = 2 };

struct StepHeader {
  std::int32_t kind = kStep, n_chunks = 0, n_tokens = 0, reserved = 0;
};

struct ChunkMeta {
  SeqChunk chunk;
  std::int32_t record_logits = 0, top_k = 0;
  float temperature = 0, top_p = 1;
  std::uint64_t seed = 0;
  std::int64_t step = 0;  // index of the token this chunk generates
};

struct TokensHeader {
  std::int32_t n_chunks = 0, n_logit_rows = 0;
  std::int64_t vocab = 0;
};

static_assert(std::is_trivially_copyable_v<ChunkMeta> && std::is_trivially_copyable_v<StepHeader>);

template <typename T>
void append(std::vector<char>& out, const T* data, std::size_t count) {
  const std::size_t at = out.size(), bytes = count * sizeof(T);
  out.resize(at + bytes);
  if (bytes) std::memcpy(out.data() + at, data, bytes);
}

std::vector<char> pack_step(const std::vector<ChunkMeta>& metas, std::int32_t tokens, const float* hidden,
                            std::int64_t hidden_size) {
  std::vector<char> message;
  const StepHeader header{kStep, std::int32_t(metas.size()), tokens, 0};
  message.reserve(sizeof header + metas.size() * sizeof(ChunkMeta) + std::size_t(tokens * hidden_size) * 4);
  append(message, &header, 1);
  append(message, metas.data(), metas.size());
  append(message, hidden, std::size_t(tokens * hidden_size));
  return message;
}

std::vector<char> pack_stop() {
  std::vector<char> message;
  const StepHeader header{kStop, 0, 0, 0};
  append(message, &header, 1);
  return message;
}

struct ParsedStep {
  StepHeader header;
  std::vector<ChunkMeta> metas;
  const float* hidden = nullptr;
};

ParsedStep parse_step(const std::vector<char>& message, std::int64_t hidden_size) {
  ParsedStep step;
  STRATA_CHECK(message.size() >= sizeof(StepHeader), Communication, "truncated step message (", message.size(),
               " bytes)");
  std::memcpy(&step.header, message.data(), sizeof(StepHeader));
  const std::size_t metas_bytes = std::size_t(step.header.n_chunks) * sizeof(ChunkMeta);
  const std::size_t expected = sizeof(StepHeader) + metas_bytes + std::size_t(step.header.n_tokens * hidden_size) * 4;
  STRATA_CHECK(step.header.kind == kStop || message.size() == expected, Communication, "step message of ",
               message.size(), " bytes, expected ", expected, " (stages disagree about the model?)");
  step.metas.resize(std::size_t(step.header.n_chunks));
  std::memcpy(step.metas.data(), message.data() + sizeof(StepHeader), metas_bytes);
  step.hidden = reinterpret_cast<const float*>(message.data() + sizeof(StepHeader) + metas_bytes);
  std::int64_t tokens = 0;
  for (const auto& m : step.metas) tokens += m.chunk.n_tokens;
  STRATA_CHECK(tokens == step.header.n_tokens, Communication, "step message lists ", tokens,
               " tokens in its chunks but carries ", step.header.n_tokens);
  return step;
}

struct StepResult {
  std::vector<std::int32_t> tokens;
  std::vector<float> logits;  // n_rows * vocab, rows of the chunks with record_logits, in chunk order
  std::int64_t vocab = 0;
};

std::vector<char> pack_tokens(const StepResult& result) {
  std::vector<char> message;
  const TokensHeader header{std::int32_t(result.tokens.size()),
                            std::int32_t(result.vocab ? result.logits.size() / std::size_t(result.vocab) : 0),
                            result.vocab};
  append(message, &header, 1);
  append(message, result.tokens.data(), result.tokens.size());
  append(message, result.logits.data(), result.logits.size());
  return message;
}

StepResult parse_tokens(const std::vector<char>& message) {
  TokensHeader header;
  STRATA_CHECK(message.size() >= sizeof header, Communication, "truncated tokens message");
  std::memcpy(&header, message.data(), sizeof header);
  const std::size_t expected = sizeof header + std::size_t(header.n_chunks) * 4 +
                               std::size_t(header.n_logit_rows) * std::size_t(header.vocab) * 4;
  STRATA_CHECK(message.size() == expected, Communication, "tokens message of ", message.size(), " bytes, expected ",
               expected);
  StepResult result;
  result.vocab = header.vocab;
  result.tokens.resize(std::size_t(header.n_chunks));
  std::memcpy(result.tokens.data(), message.data() + sizeof header, result.tokens.size() * 4);
  result.logits.resize(std::size_t(header.n_logit_rows) * std::size_t(header.vocab));
  std::memcpy(result.logits.data(), message.data() + sizeof header + result.tokens.size() * 4,
              result.logits.size() * 4);
  return result;
}

std::vector<SeqChunk> chunks_of(const std::vector<ChunkMeta>& metas) {
  std::vector<SeqChunk> chunks;
  chunks.reserve(metas.size());
  for (const auto& m : metas) chunks.push_back(m.chunk);
  return chunks;
}

// The last stage's work on a step's logits (in the backend's memory): sample from per-row candidates, and gather
// whole-vocabulary rows that were asked for (downloaded as f32).
StepResult finish_step(const std::vector<ChunkMeta>& metas, TensorView logits, TransformerStage& stage,
                       Communicator& tp) {
  const ShardPlan& plan = stage.plan();
  std::vector<SampleRow> rows;
  rows.reserve(metas.size());
  for (const auto& m : metas) rows.push_back(SampleRow{{m.temperature, m.top_k, m.top_p, m.seed}, m.step});
  StepResult result;
  const std::int64_t local_vocab = plan.local_vocab();
  result.tokens = sample_tokens(stage.backend(), logits, plan.vocab_offset(), rows, tp);
  result.vocab = plan.config().vocab_size;
  std::vector<float> shard;
  for (std::size_t i = 0; i < metas.size(); ++i) {
    if (!metas[i].record_logits) continue;
    shard.resize(std::size_t(local_vocab));
    stage.backend().download(logits.slice_rows(std::int64_t(i), std::int64_t(i) + 1), shard.data());
    const std::size_t at = result.logits.size();
    result.logits.resize(at + std::size_t(result.vocab));  // shards are contiguous in tp-rank order
    tp.all_gather(shard.data(), result.logits.data() + at, std::size_t(local_vocab) * 4);
  }
  return result;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

// ------------------------------------------------------------------------------------------------ engine

struct Engine::Sequence {
  Request request;
  std::int32_t slot = -1;
  std::int32_t cached = 0;  // positions already in the KV cache
  std::vector<std::int32_t> generated;
  std::vector<float> logits;
};

Engine::Engine(TransformerStage& stage, const ParallelLayout& layout, Communicator& world, Communicator& tp,
               const Tokenizer& tokenizer, EngineOptions options)
    : stage_(stage), layout_(layout), world_(world), tp_(tp), tokenizer_(tokenizer), options_(options) {
  if (options_.micro_batches <= 0) options_.micro_batches = layout.sizes().pp;
  STRATA_CHECK(options_.max_batch_size >= 1, Usage, "--max-batch-size must be >= 1");
  STRATA_CHECK(options_.max_model_len >= 2, Usage, "--max-model-len must be >= 2");
  if (!layout.is_first_stage())
    waiting_for_activations_ =
        cat("waiting for activations from rank ", layout.prev_stage_rank(), " (stage ", layout.pp_rank() - 1, ")");
  if (layout.sizes().pp > 1)
    waiting_for_tokens_ =
        cat("waiting for new tokens from rank ",
            layout.rank_of(layout.dp_rank(), layout.sizes().pp - 1, layout.tp_rank()), " (the last stage)");
}

EngineStats Engine::run(std::vector<Request> requests, const EngineHooks& hooks) {
  if (layout_.is_first_stage()) return run_scheduler(std::move(requests), hooks);
  run_follower();
  return EngineStats{};
}

void Engine::run_follower() {
  SendQueue sends(std::size_t(options_.micro_batches) + 1);
  const std::int64_t hidden = stage_.hidden_size();
  const int scheduler = layout_.rank_of(layout_.dp_rank(), 0, layout_.tp_rank());
  for (;;) {
    beat(waiting_for_activations_.c_str());
    const std::vector<char> message = world_.recv(layout_.prev_stage_rank(), Tag::Activations);
    beat("computing a step or waiting for its tensor-parallel peers (all-reduces, sampling all-gathers, sends)");
    const ParsedStep step = parse_step(message, hidden);
    if (step.header.kind == kStop) {
      if (!layout_.is_last_stage()) sends.push(world_.isend(pack_stop(), layout_.next_stage_rank(), Tag::Activations));
      break;
    }
    const std::vector<SeqChunk> chunks = chunks_of(step.metas);
    const TensorView out = stage_.forward(chunks, {}, step.hidden);
    if (layout_.is_last_stage())
      sends.push(world_.isend(pack_tokens(finish_step(step.metas, out, stage_, tp_)), scheduler, Tag::Tokens));
    else
      sends.push(world_.isend(pack_step(step.metas, step.header.n_tokens, out.f32(), hidden), layout_.next_stage_rank(),
                              Tag::Activations));
  }
  beat("waiting for the next stage to receive the last messages");
  sends.drain();
}

EngineStats Engine::run_scheduler(std::vector<Request> requests, const EngineHooks& hooks) {
  const double start = now_seconds();
  const int groups_count = options_.micro_batches;
  const bool single_stage = layout_.sizes().pp == 1;
  const int last_stage =
      single_stage ? -1 : layout_.rank_of(layout_.dp_rank(), layout_.sizes().pp - 1, layout_.tp_rank());
  EngineStats stats;

  std::deque<Request> pending(std::make_move_iterator(requests.begin()), std::make_move_iterator(requests.end()));
  std::vector<std::vector<std::unique_ptr<Sequence>>> groups(static_cast<std::size_t>(groups_count));
  std::vector<bool> in_flight(static_cast<std::size_t>(groups_count), false);
  std::vector<std::int32_t> free_slots;
  for (std::int32_t s = options_.max_batch_size - 1; s >= 0; --s) free_slots.push_back(s);
  SendQueue sends(std::size_t(groups_count) + 1);
  std::int64_t active = 0;

  auto finish_reason = [&](const Sequence& s) -> std::optional<FinishReason> {
    if (tokenizer_.is_eos(s.generated.back()) && !s.request.ignore_eos) return FinishReason::Stop;
    if (!s.request.stop.empty()) {
      const std::string text = tokenizer_.decode(s.generated);
      for (const auto& stop : s.request.stop)
        if (!stop.empty() && text.find(stop) != std::string::npos) return FinishReason::Stop;
    }
    if (std::int64_t(s.generated.size()) >= s.request.max_tokens) return FinishReason::Length;
    if (s.cached >= options_.max_model_len) return FinishReason::Length;  // no position left for another token
    return std::nullopt;
  };

  auto complete = [&](Sequence& s, FinishReason reason) {
    Completion c;
    c.index = s.request.index;
    c.prompt_tokens = std::int64_t(s.request.prompt.size());
    c.token_ids = s.generated;
    c.finish_reason = reason;
    std::span<const std::int32_t> text_ids(s.generated);
    if (reason == FinishReason::Stop && !text_ids.empty() && tokenizer_.is_eos(text_ids.back()))
      text_ids = text_ids.first(text_ids.size() - 1);
    c.text = tokenizer_.decode(text_ids);
    std::size_t cut = std::string::npos;
    for (const auto& stop : s.request.stop)
      if (!stop.empty()) cut = std::min(cut, c.text.find(stop));
    if (cut != std::string::npos) c.text.resize(cut);
    c.logits = std::move(s.logits);
    c.vocab = stage_.plan().config().vocab_size;
    ++stats.completed;
    if (hooks.on_complete) hooks.on_complete(std::move(c));
  };

  // New tokens for group g, one per sequence in the order the step listed them.
  auto apply = [&](std::vector<std::unique_ptr<Sequence>>& group, const StepResult& result) {
    STRATA_CHECK(result.tokens.size() == group.size(), Communication, "received ", result.tokens.size(),
                 " tokens for a micro-batch of ", group.size(), " sequences");
    std::size_t logit_row = 0;
    std::vector<std::unique_ptr<Sequence>> still_running;
    for (std::size_t i = 0; i < group.size(); ++i) {
      Sequence& s = *group[i];
      if (options_.record_logits) {
        const auto row = result.logits.begin() + std::int64_t(logit_row++ * std::size_t(result.vocab));
        s.logits.insert(s.logits.end(), row, row + result.vocab);
      }
      s.cached += s.cached == 0 ? std::int32_t(s.request.prompt.size()) : 1;
      s.generated.push_back(result.tokens[i]);
      ++stats.generated_tokens;
      if (auto reason = finish_reason(s)) {
        complete(s, *reason);
        free_slots.push_back(s.slot);
        --active;
      } else {
        still_running.push_back(std::move(group[i]));
      }
    }
    group = std::move(still_running);
  };

  auto admit = [&](std::vector<std::unique_ptr<Sequence>>& group) {
    // Spread sequences evenly over the micro-batches so every stage has work.
    const std::int64_t waiting = active + std::int64_t(pending.size());
    const std::int64_t cap =
        std::min<std::int64_t>((options_.max_batch_size + groups_count - 1) / groups_count,
                               std::max<std::int64_t>(1, (waiting + groups_count - 1) / groups_count));
    std::int64_t budget = options_.max_num_batched_tokens - std::int64_t(group.size());
    while (!pending.empty() && !free_slots.empty() && std::int64_t(group.size()) < cap &&
           std::int64_t(pending.front().prompt.size()) <= budget) {
      auto s = std::make_unique<Sequence>();
      s->request = std::move(pending.front());
      pending.pop_front();
      s->slot = free_slots.back();
      free_slots.pop_back();
      budget -= std::int64_t(s->request.prompt.size());
      stats.prompt_tokens += std::int64_t(s->request.prompt.size());
      group.push_back(std::move(s));
      ++active;
    }
  };

  std::vector<ChunkMeta> metas;
  std::vector<std::int32_t> ids;
  for (;;) {
    bool anything = false;
    for (int g = 0; g < groups_count; ++g) {
      auto& group = groups[std::size_t(g)];
      if (in_flight[std::size_t(g)]) {
        beat(waiting_for_tokens_.c_str());
        const std::vector<char> tokens = world_.recv(last_stage, Tag::Tokens);
        beat("scheduling");
        apply(group, parse_tokens(tokens));
        in_flight[std::size_t(g)] = false;
      }
      admit(group);
      if (group.empty()) continue;
      anything = true;

      metas.clear();
      ids.clear();
      for (const auto& s : group) {
        const bool prefill = s->cached == 0;
        ChunkMeta m;
        m.chunk = SeqChunk{s->slot, s->cached, prefill ? std::int32_t(s->request.prompt.size()) : 1,
                           std::int32_t(ids.size())};
        m.record_logits = options_.record_logits;
        m.top_k = s->request.sampling.top_k;
        m.temperature = s->request.sampling.temperature;
        m.top_p = s->request.sampling.top_p;
        m.seed = s->request.sampling.seed;
        m.step = std::int64_t(s->generated.size());
        if (prefill)
          ids.insert(ids.end(), s->request.prompt.begin(), s->request.prompt.end());
        else
          ids.push_back(s->generated.back());
        metas.push_back(m);
      }
      const std::vector<SeqChunk> chunks = chunks_of(metas);
      beat("computing a step or waiting for its tensor-parallel peers (all-reduces, sampling all-gathers, sends)");
      const TensorView out = stage_.forward(chunks, ids, nullptr);
      ++stats.steps;
      if (single_stage) {
        apply(group, finish_step(metas, out, stage_, tp_));
      } else {
        sends.push(world_.isend(pack_step(metas, std::int32_t(ids.size()), out.f32(), stage_.hidden_size()),
                                layout_.next_stage_rank(), Tag::Activations));
        in_flight[std::size_t(g)] = true;
        stats.max_in_flight =
            std::max<std::int64_t>(stats.max_in_flight, std::count(in_flight.begin(), in_flight.end(), true));
      }
      if (hooks.on_round) hooks.on_round();
    }
    if (!anything) {  // nothing running and nothing in flight: done, unless a request could never be admitted
      STRATA_CHECK(pending.empty(), Internal, "scheduler stalled with ", pending.size(), " requests not admitted");
      break;
    }
  }
  if (!single_stage) sends.push(world_.isend(pack_stop(), layout_.next_stage_rank(), Tag::Activations));
  beat("waiting for the next stage to receive the last messages");
  sends.drain();
  stats.seconds = now_seconds() - start;
  return stats;
}

}  // namespace strata
