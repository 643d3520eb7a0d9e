// The messages between a replica's pipeline stages, as bytes for the host Communicator:
//   step (stage s -> s+1, Tag::Activations): StepHeader, ChunkMeta[n_chunks], int32 block_table[n_table],
//     float hidden[n_tokens * hidden_size];
//   tokens (last stage -> stage 0, Tag::Tokens): TokensHeader, int32 tokens[n_chunks], float logits[rows * vocab],
//   then per log-probability row: float chosen, int32 count, TokenLogprob top[count].
// Every parse checks the sizes against the header and names what disagrees.
#pragma once
#include <cstdint>
#include <type_traits>
#include <vector>

#include "engine/sampler.h"
#include "layers/transformer.h"

namespace strata {

enum : std::int32_t { kStepMessage = 1, kStopMessage = 2 };

struct StepHeader {
  std::int32_t kind = kStepMessage, n_chunks = 0, n_tokens = 0, n_table = 0;
};

// One sequence's part of a step, with what the last stage needs to sample its next token.
struct ChunkMeta {
  SeqChunk chunk;
  std::int32_t record_logits = 0, top_k = 0;
  float temperature = 0, top_p = 1;
  std::uint64_t seed = 0;
  std::int64_t step = 0;       // index of the token this chunk generates
  std::int32_t logprobs = -1;  // -1: none; else the log-probability of the token and of this many top ids
  // >= 0: before the step, copy KV-cache block copy_src into block copy_dst (a sample of n starting from the
  // first sample's prompt gets its own copy of the partly filled last block; full blocks are shared)
  std::int32_t copy_src = -1, copy_dst = -1;
  // 0: a prefill chunk that does not reach the end of the known tokens (chunked prefill): its logits are not
  // sampled; the scheduler ignores the token sampled for it
  std::int32_t sample = 1;
  // >= 0: before the step, copy the sliding-window caches of slot copy_slot_src into this chunk's slot (a forked
  // sample takes over its first sample's window)
  std::int32_t copy_slot_src = -1;
};
static_assert(std::is_trivially_copyable_v<ChunkMeta> && std::is_trivially_copyable_v<StepHeader>);

struct ParsedStep {
  StepHeader header;
  std::vector<ChunkMeta> metas;
  std::vector<std::int32_t> block_table;
  const float* hidden = nullptr;  // points into the message
};

struct StepResult {
  std::vector<std::int32_t> tokens;
  std::vector<float> logits;  // n_rows * vocab, rows of the chunks with record_logits, in chunk order
  std::int64_t vocab = 0;
  std::vector<RowLogprobs> logprobs;  // one per chunk with logprobs >= 0, in chunk order
};

std::vector<char> pack_step(const std::vector<ChunkMeta>& metas, const std::vector<std::int32_t>& block_table,
                            std::int32_t tokens, const float* hidden, std::int64_t hidden_size);
std::vector<char> pack_stop();
ParsedStep parse_step(const std::vector<char>& message, std::int64_t hidden_size);
std::vector<char> pack_tokens(const StepResult& result);
StepResult parse_tokens(const std::vector<char>& message);
std::vector<SeqChunk> chunks_of(const std::vector<ChunkMeta>& metas);

}  // namespace strata
