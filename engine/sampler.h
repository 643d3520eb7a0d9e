// Token choice on vocab-parallel logits without gathering the full vocabulary where that is possible:
// - greedy (temperature 0): each rank's best (logit, id), one all-gather, the global best (ties: lowest id);
// - temperature only: the Gumbel-max trick, argmax(logit/T + g) with g ~ Gumbel(0,1) drawn from a counter-based
//   hash of (seed, step, token id): an exact sample of softmax(logit/T), one candidate per rank;
// - top-k: each rank's k best, all-gathered, then top-k / top-p / Gumbel-max over those candidates;
// - top-p without top-k: every logit is a candidate (the nucleus needs the whole distribution).
// The noise depends on the global token id, never on the layout, so one seed gives the same text under every
// TP/PP/DP layout and batch composition.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "runtime/backend/backend.h"
#include "runtime/comm/communicator.h"

namespace strata {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  std::int32_t top_k = 0;    // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  std::uint64_t seed = 0;
};

// One row to sample: its parameters and the index of the token being generated (0 for the first).
struct SampleRow {
  SamplingParams params;
  std::int64_t step = 0;
};

// logits: [rows.size(), local_vocab] host f32, this rank's shard starting at vocab_offset. Collective over tp
// (every tp rank passes the same rows) and returns the same tokens on every rank.
std::vector<std::int32_t> sample_tokens(const float* logits, std::int64_t local_vocab, std::int64_t vocab_offset,
                                        std::span<const SampleRow> rows, Collectives& tp);

// The same from logits[R >= rows.size(), local_vocab] (f32) in the backend's memory: the backend reduces each row
// to its candidates (runtime/backend/sampling.h), so only a few bytes per row reach the host.
std::vector<std::int32_t> sample_tokens(Backend& backend, TensorView logits, std::int64_t vocab_offset,
                                        std::span<const SampleRow> rows, Collectives& tp);

// Log-probabilities from vocab-parallel logits, under the full-vocabulary distribution after temperature:
// softmax(logits / T) with T the row's temperature when it is > 0 and 1 for greedy rows (top-k and top-p are not
// applied: these are the model's probabilities, as OpenAI reports them). Each rank reduces its shard to a maximum,
// a sum of exponentials and its `top` best; one all-gather; every rank returns the same values.
constexpr int kMaxTopLogprobs = 20;
struct TokenLogprob {
  std::int32_t id = 0;
  float logprob = 0;
};
struct RowLogprobs {
  float chosen = 0;               // of the sampled token
  std::vector<TokenLogprob> top;  // the `top` most likely ids, most likely first (ties: lower id)
};
// shard: this rank's host f32 logits [local_vocab] of the row, starting at vocab_offset; `top` in [0, 20].
// Collective over tp.
RowLogprobs token_logprobs(const float* shard, std::int64_t local_vocab, std::int64_t vocab_offset, float temperature,
                           std::int32_t token, int top, Collectives& tp);

// Gumbel(0,1) noise as a pure function of (seed, step, token id).
double gumbel_noise(std::uint64_t seed, std::int64_t step, std::int64_t token);

}  // namespace strata
