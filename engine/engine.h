// The generation engine of one data-parallel replica: continuous batching over a paged KV cache with prefix caching
// and chunked prefill (engine/scheduler.h, engine/block_pool.h), and the pipeline schedule across stages (messages
// in engine/wire.h).
//
// Stage 0 of a replica is the scheduler: it owns the requests, builds each step, and decides when sequences finish.
// A step is a self-describing message (chunk metadata + hidden states) sent down the stages with MPI point-to-point;
// the last stage samples and sends the new tokens straight back to stage 0 (same tp rank). The active sequences
// are split into `micro_batches` groups (default: one per stage) that circulate so all stages work at once in
// steady state. Every tp rank of a stage runs the same schedule (same inputs, same decisions), so tensor-parallel
// collectives always match.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/stop_matcher.h"
#include "engine/wire.h"
#include "io/tokenizer.h"
#include "layers/transformer.h"
#include "runtime/base/parallel_layout.h"
#include "runtime/base/watchdog.h"
#include "runtime/comm/communicator.h"

namespace strata {

struct Request {
  std::int64_t index = 0;  // position in the whole prompt set (results are merged in this order)
  std::vector<std::int32_t> prompt;
  SamplingParams sampling;
  std::int64_t max_tokens = 64;
  std::vector<std::string> stop;
  bool ignore_eos = false;     // benchmarks: always generate max_tokens
  std::int32_t logprobs = -1;  // -1: none; else each token's log-probability and this many top alternatives
  // n samples of one prompt: sample 0 uses sampling.seed, sample j the seed sample_seeds[j - 1]. The prompt is
  // computed once: the other samples start from a copy of sample 0's KV cache.
  std::int32_t n = 1;
  std::vector<std::uint64_t> sample_seeds;
  std::string error;  // not empty: the request cannot run (e.g. longer than the context); completed with this error
};

enum class FinishReason : std::uint8_t { Stop, Length };
const char* finish_reason_name(FinishReason reason);

struct Completion {
  std::int64_t index = 0;
  std::int64_t prompt_tokens = 0;
  std::vector<std::int32_t> token_ids;  // generated ids (an end-of-sequence id included when it ended the text)
  std::string text;                     // decoded, cut before a stop string
  FinishReason finish_reason = FinishReason::Length;
  std::int64_t vocab = 0;
  std::vector<float> logits;  // record_logits: full-vocabulary logits of every generated position [tokens, vocab]
  std::vector<RowLogprobs> logprobs;                     // Request::logprobs >= 0: one per generated token
  double first_token_seconds = 0, finished_seconds = 0;  // since the replica's engine started
  std::uint64_t seed = 0;                                // the sample's seed
  std::vector<Completion> more;                          // n > 1: samples 1 .. n-1 (this one is sample 0)
  std::string error;  // not empty: the request could not run (e.g. its prompt needs more KV cache than there is)
};

struct EngineOptions {
  std::int32_t max_batch_size = 16;            // sequences in flight per replica
  std::int32_t max_num_batched_tokens = 2048;  // tokens in one step
  std::int32_t max_model_len = 0;              // positions per sequence (prompt + generated)
  std::int32_t micro_batches = 0;              // 0: one per pipeline stage
  bool record_logits = false;    // gather whole-vocabulary logits of every step (debugging and tests; costly)
  Watchdog* watchdog = nullptr;  // optional, not owned: told before every wait what the rank waits for
  bool prefix_caching = true;    // reuse the KV-cache blocks of prompt prefixes seen before (engine/block_pool.h)
  bool chunked_prefill = true;   // split prompts over steps of max_num_batched_tokens; false: one step each
};

struct EngineStats {
  std::int64_t prompt_tokens = 0, generated_tokens = 0, steps = 0, completed = 0;
  std::int64_t max_in_flight = 0;   // most micro-batches in the pipeline at once (= stages busy at once)
  double seconds = 0;               // wall time of run()
  double compute_seconds = 0;       // in forward steps and sampling (their TP collectives included)
  double longest_step_seconds = 0;  // the slowest step: the longest a decoding sequence waited for its next token
  SchedulerCounts batching;         // stage 0: the scheduler's counts (KV blocks, prefix cache, preemptions)
  std::int64_t requests = 0;        // stage 0: requests taken from the source
};

class RequestSource;

struct EngineHooks {
  std::function<void(Completion&&)> on_complete;  // stage 0 ranks, as each sequence finishes
  std::function<void()> on_round;                 // every rank, once per micro-batch step it computed
};

class Engine {
 public:
  // `world` carries the point-to-point traffic between stages (ranks named by world rank); `tp` is the stage's
  // tensor-parallel group. All references must outlive the engine.
  Engine(TransformerStage& stage, const ParallelLayout& layout, Communicator& world, Collectives& tp,
         const Tokenizer& tokenizer, EngineOptions options);

  // Generates for `requests` (given to stage-0 ranks; other stages pass none) until all finish, then stops the
  // replica's other stages. Collective over the replica.
  EngineStats run(std::vector<Request> requests, const EngineHooks& hooks);
  // The same with requests pulled from `source` as the batch has room (stage-0 ranks; others pass null), until it is
  // exhausted and everything taken has finished (engine/dispatch.h).
  EngineStats run(RequestSource* source, const EngineHooks& hooks);

 private:
  EngineStats run_scheduler(RequestSource& source, const EngineHooks& hooks);
  EngineStats run_follower(const EngineHooks& hooks);
  void copy_blocks(const std::vector<ChunkMeta>& metas);

  TransformerStage& stage_;
  const ParallelLayout& layout_;
  Communicator& world_;
  Collectives& tp_;
  void beat(const char* activity) const {
    if (options_.watchdog) options_.watchdog->beat(activity);
  }
  void observe_step(double seconds) const {
    if (options_.watchdog) options_.watchdog->observe_step(seconds);
  }

  const Tokenizer& tokenizer_;
  EngineOptions options_;
  std::string waiting_for_activations_, waiting_for_tokens_, computing_;  // watchdog activities naming peers
};

}  // namespace strata
