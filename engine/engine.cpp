// Scheduler (stage 0) and followers (later stages): the steps of one replica (messages in engine/wire.cpp).
#include "engine/engine.h"

#include <algorithm>

#include "engine/dispatch.h"
#include "engine/scheduler.h"
#include "engine/wire.h"
#include "runtime/base/clock.h"
#include "runtime/base/error.h"

namespace strata {

const char* finish_reason_name(FinishReason reason) { return reason == FinishReason::Stop ? "stop" : "length"; }

namespace {

// The last stage's work on a step's logits (in the backend's memory): sample from per-row candidates, and gather
// whole-vocabulary rows that were asked for (downloaded as f32).
StepResult finish_step(const std::vector<ChunkMeta>& metas, TensorView logits, TransformerStage& stage,
                       Collectives& tp) {
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
    if (!metas[i].record_logits && metas[i].logprobs < 0) continue;
    shard.resize(std::size_t(local_vocab));
    stage.backend().download(logits.slice_rows(std::int64_t(i), std::int64_t(i) + 1), shard.data());
    if (metas[i].logprobs >= 0)
      result.logprobs.push_back(token_logprobs(shard.data(), local_vocab, plan.vocab_offset(), metas[i].temperature,
                                               result.tokens[i], metas[i].logprobs, tp));
    if (!metas[i].record_logits) continue;
    const std::size_t at = result.logits.size();
    result.logits.resize(at + std::size_t(result.vocab));  // shards are contiguous in tp-rank order
    tp.all_gather(shard.data(), result.logits.data() + at, std::size_t(local_vocab) * 4);
  }
  return result;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ engine

Engine::Engine(TransformerStage& stage, const ParallelLayout& layout, Communicator& world, Collectives& tp,
               const Tokenizer& tokenizer, EngineOptions options)
    : stage_(stage), layout_(layout), world_(world), tp_(tp), tokenizer_(tokenizer), options_(options) {
  if (options_.micro_batches <= 0) options_.micro_batches = layout.sizes().pp;
  STRATA_CHECK(options_.max_batch_size >= 1, Usage, "--max-batch-size must be >= 1");
  STRATA_CHECK(options_.max_model_len >= 2, Usage, "--max-model-len must be >= 2");
  if (!layout.is_first_stage())
    waiting_for_activations_ =
        cat("waiting for activations from rank ", layout.prev_stage_rank(), " (stage ", layout.pp_rank() - 1, ")");
  computing_ = "computing a step";
  if (layout.sizes().tp > 1) {
    std::string peers;
    for (int r : layout.tp_group())
      if (r != layout.world_rank()) peers += (peers.empty() ? "" : ", ") + std::to_string(r);
    computing_ = cat("computing a step or waiting for its tensor-parallel peers (rank",
                     layout.sizes().tp > 2 ? "s " : " ", peers, ") in an all-reduce or all-gather");
  }
  if (layout.sizes().pp > 1)
    waiting_for_tokens_ =
        cat("waiting for new tokens from rank ",
            layout.rank_of(layout.dp_rank(), layout.sizes().pp - 1, layout.tp_rank()), " (the last stage)");
}

// Samples of one prompt start from the first sample's KV cache (its partly filled last block copied, and its
// sliding windows), on every stage before the step.
void Engine::copy_blocks(const std::vector<ChunkMeta>& metas) {
  for (const ChunkMeta& m : metas) {
    if (m.copy_src >= 0) stage_.copy_block(m.copy_src, m.copy_dst);
    if (m.copy_slot_src >= 0) stage_.copy_slot(m.copy_slot_src, m.chunk.slot);
  }
}

EngineStats Engine::run(std::vector<Request> requests, const EngineHooks& hooks) {
  if (!layout_.is_first_stage()) return run_follower(hooks);
  const auto source = make_fixed_source(std::move(requests));
  return run_scheduler(*source, hooks);
}

EngineStats Engine::run(RequestSource* source, const EngineHooks& hooks) {
  if (!layout_.is_first_stage()) return run_follower(hooks);
  STRATA_CHECK(source, Internal, "a first-stage rank needs a request source");
  return run_scheduler(*source, hooks);
}

EngineStats Engine::run_follower(const EngineHooks& hooks) {
  const double start = monotonic_seconds();
  EngineStats stats;
  SendQueue sends(std::size_t(options_.micro_batches) + 1);
  const std::int64_t hidden = stage_.hidden_size();
  const int scheduler = layout_.rank_of(layout_.dp_rank(), 0, layout_.tp_rank());
  for (;;) {
    beat(waiting_for_activations_.c_str());
    const std::vector<char> message = world_.recv(layout_.prev_stage_rank(), Tag::Activations);
    beat(computing_.c_str());
    const double step_start = monotonic_seconds();
    const ParsedStep step = parse_step(message, hidden);
    if (step.header.kind == kStopMessage) {
      if (!layout_.is_last_stage()) sends.push(world_.isend(pack_stop(), layout_.next_stage_rank(), Tag::Activations));
      break;
    }
    copy_blocks(step.metas);
    const std::vector<SeqChunk> chunks = chunks_of(step.metas);
    const TensorView out = stage_.forward(chunks, step.block_table, {}, step.hidden);
    if (layout_.is_last_stage())
      sends.push(world_.isend(pack_tokens(finish_step(step.metas, out, stage_, tp_)), scheduler, Tag::Tokens));
    else
      sends.push(world_.isend(pack_step(step.metas, step.block_table, step.header.n_tokens, out.f32(), hidden),
                              layout_.next_stage_rank(), Tag::Activations));
    const double step_seconds = monotonic_seconds() - step_start;
    stats.compute_seconds += step_seconds;
    stats.longest_step_seconds = std::max(stats.longest_step_seconds, step_seconds);
    ++stats.steps;
    observe_step(step_seconds);
    if (hooks.on_round) hooks.on_round();
  }
  beat("waiting for the next stage to receive the last messages");
  sends.drain();
  stats.seconds = monotonic_seconds() - start;
  return stats;
}

EngineStats Engine::run_scheduler(RequestSource& source, const EngineHooks& hooks) {
  const double start = monotonic_seconds();
  const bool single_stage = layout_.sizes().pp == 1;
  const int last_stage =
      single_stage ? -1 : layout_.rank_of(layout_.dp_rank(), layout_.sizes().pp - 1, layout_.tp_rank());
  const StopMatcher stops(tokenizer_, options_.max_model_len);
  SchedulerLimits limits;
  limits.max_batch_size = options_.max_batch_size;
  limits.max_num_batched_tokens = options_.max_num_batched_tokens;
  limits.micro_batches = options_.micro_batches;
  limits.record_logits = options_.record_logits;
  limits.kv_blocks = std::int32_t(stage_.limits().cache_blocks());  // every stage's cache has this many
  limits.block_size = stage_.limits().block_size;
  limits.prefix_caching = options_.prefix_caching;
  limits.chunked_prefill = options_.chunked_prefill;
  limits.max_model_len = options_.max_model_len;
  Scheduler scheduler({}, limits, stops, stage_.plan().config().vocab_size);
  // A replica holds at most a batch of requests and a few more (asked for ahead of need, so a replica asking rank 0
  // over MPI rarely waits for the answer; it blocks only when it has nothing else to do): the rest stay with rank 0
  // for whichever replica has room first.
  const std::int64_t holds = std::int64_t(std::max(options_.max_batch_size, 1)) + 2;
  const int groups = scheduler.micro_batches();
  std::vector<bool> in_flight(static_cast<std::size_t>(groups), false);
  SendQueue sends(std::size_t(groups) + 1);
  EngineStats stats;
  const auto complete = [&](Completion&& c) {
    if (hooks.on_complete) hooks.on_complete(std::move(c));
  };

  std::vector<ChunkMeta> metas;
  std::vector<std::int32_t> block_table, ids;
  for (;;) {
    const std::int64_t held = scheduler.running() + std::int64_t(scheduler.waiting());
    if (!source.exhausted() && held < holds) {
      const bool busy = held > 0 || std::count(in_flight.begin(), in_flight.end(), true) > 0;
      std::vector<Request> more = source.take(int(holds - held), !busy);
      stats.requests += std::int64_t(more.size());
      scheduler.add(std::move(more));
    }
    bool anything = false;
    for (int g = 0; g < groups; ++g) {
      if (in_flight[std::size_t(g)]) {
        beat(waiting_for_tokens_.c_str());
        const std::vector<char> tokens = world_.recv(last_stage, Tag::Tokens);
        beat("scheduling");
        scheduler.apply(g, parse_tokens(tokens), complete, monotonic_seconds() - start);
        in_flight[std::size_t(g)] = false;
      }
      scheduler.admit(g, complete);
      if (scheduler.idle(g)) continue;
      anything = true;

      scheduler.build_step(g, metas, block_table, ids);
      if (metas.empty()) {  // its sequences were all preempted (they wait for blocks), or nothing could run
        STRATA_CHECK(scheduler.idle(g), Internal, "micro-batch ", g,
                     " holds sequences but none can run: ", scheduler.describe_waiting());
        continue;
      }
      copy_blocks(metas);
      const std::vector<SeqChunk> chunks = chunks_of(metas);
      beat(computing_.c_str());
      const double step_start = monotonic_seconds();
      const TensorView out = stage_.forward(chunks, block_table, ids, nullptr);
      ++stats.steps;
      if (single_stage) scheduler.apply(g, finish_step(metas, out, stage_, tp_), complete, monotonic_seconds() - start);
      const double step_seconds = monotonic_seconds() - step_start;  // with sampling when this stage is also the last
      stats.compute_seconds += step_seconds;
      stats.longest_step_seconds = std::max(stats.longest_step_seconds, step_seconds);
      observe_step(step_seconds);
      if (!single_stage) {
        sends.push(
            world_.isend(pack_step(metas, block_table, std::int32_t(ids.size()), out.f32(), stage_.hidden_size()),
                         layout_.next_stage_rank(), Tag::Activations));
        in_flight[std::size_t(g)] = true;
        stats.max_in_flight =
            std::max<std::int64_t>(stats.max_in_flight, std::count(in_flight.begin(), in_flight.end(), true));
      }
      if (hooks.on_round) hooks.on_round();
    }
    if (!anything && !source.exhausted()) continue;  // waits for more work at the top
    if (!anything) {  // nothing running and nothing in flight: done, unless a request could never be admitted
      STRATA_CHECK(scheduler.waiting() == 0, Internal, "scheduler stalled with ", scheduler.waiting(),
                   " requests not admitted: ", scheduler.describe_waiting());
      break;
    }
  }
  if (!single_stage) sends.push(world_.isend(pack_stop(), layout_.next_stage_rank(), Tag::Activations));
  beat("waiting for the next stage to receive the last messages");
  sends.drain();
  stats.prompt_tokens = scheduler.counts().prompt_tokens;
  stats.generated_tokens = scheduler.counts().generated_tokens;
  stats.completed = scheduler.counts().completed;
  stats.batching = scheduler.counts();
  stats.seconds = monotonic_seconds() - start;
  return stats;
}

}  // namespace strata
