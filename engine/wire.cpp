// Packing and parsing of the stage-to-stage messages; see wire.h.
#include "engine/wire.h"

#include <cstring>

#include "runtime/base/error.h"

namespace strata {
namespace {

struct TokensHeader {
  std::int32_t n_chunks = 0, n_logit_rows = 0;
  std::int64_t vocab = 0;
  std::int32_t n_logprob_rows = 0, reserved = 0;
};

template <typename T>
void append(std::vector<char>& out, const T* data, std::size_t count) {
  const std::size_t at = out.size(), bytes = count * sizeof(T);
  out.resize(at + bytes);
  if (bytes) std::memcpy(out.data() + at, data, bytes);
}

}  // namespace

std::vector<char> pack_step(const std::vector<ChunkMeta>& metas, const std::vector<std::int32_t>& block_table,
                            std::int32_t tokens, const float* hidden, std::int64_t hidden_size) {
  std::vector<char> message;
  const StepHeader header{kStepMessage, std::int32_t(metas.size()), tokens, std::int32_t(block_table.size())};
  message.reserve(sizeof header + metas.size() * sizeof(ChunkMeta) + block_table.size() * 4 +
                  std::size_t(tokens * hidden_size) * 4);
  append(message, &header, 1);
  append(message, metas.data(), metas.size());
  append(message, block_table.data(), block_table.size());
  append(message, hidden, std::size_t(tokens * hidden_size));
  return message;
}

std::vector<char> pack_stop() {
  std::vector<char> message;
  const StepHeader header{kStopMessage, 0, 0, 0};
  append(message, &header, 1);
  return message;
}

ParsedStep parse_step(const std::vector<char>& message, std::int64_t hidden_size) {
  ParsedStep step;
  STRATA_CHECK(message.size() >= sizeof(StepHeader), Communication, "truncated step message (", message.size(),
               " bytes)");
  std::memcpy(&step.header, message.data(), sizeof(StepHeader));
  STRATA_CHECK(step.header.n_chunks >= 0 && step.header.n_tokens >= 0 && step.header.n_table >= 0, Communication,
               "step message with negative counts (", step.header.n_chunks, " chunks, ", step.header.n_tokens,
               " tokens, ", step.header.n_table, " blocks)");
  const std::size_t metas_bytes = std::size_t(step.header.n_chunks) * sizeof(ChunkMeta);
  const std::size_t table_bytes = std::size_t(step.header.n_table) * sizeof(std::int32_t);
  const std::size_t expected =
      sizeof(StepHeader) + metas_bytes + table_bytes + std::size_t(step.header.n_tokens * hidden_size) * 4;
  STRATA_CHECK(step.header.kind == kStopMessage || message.size() == expected, Communication, "step message of ",
               message.size(), " bytes, expected ", expected, " (stages disagree about the model?)");
  step.metas.resize(std::size_t(step.header.n_chunks));
  std::memcpy(step.metas.data(), message.data() + sizeof(StepHeader), metas_bytes);
  step.block_table.resize(std::size_t(step.header.n_table));
  std::memcpy(step.block_table.data(), message.data() + sizeof(StepHeader) + metas_bytes, table_bytes);
  step.hidden = reinterpret_cast<const float*>(message.data() + sizeof(StepHeader) + metas_bytes + table_bytes);
  std::int64_t tokens = 0;
  for (const auto& m : step.metas) tokens += m.chunk.n_tokens;
  STRATA_CHECK(tokens == step.header.n_tokens, Communication, "step message lists ", tokens,
               " tokens in its chunks but carries ", step.header.n_tokens);
  return step;
}

std::vector<char> pack_tokens(const StepResult& result) {
  std::vector<char> message;
  const TokensHeader header{std::int32_t(result.tokens.size()),
                            std::int32_t(result.vocab ? result.logits.size() / std::size_t(result.vocab) : 0),
                            result.vocab, std::int32_t(result.logprobs.size()), 0};
  append(message, &header, 1);
  append(message, result.tokens.data(), result.tokens.size());
  append(message, result.logits.data(), result.logits.size());
  for (const RowLogprobs& row : result.logprobs) {
    const std::int32_t count = std::int32_t(row.top.size());
    append(message, &row.chosen, 1);
    append(message, &count, 1);
    append(message, row.top.data(), row.top.size());
  }
  return message;
}

StepResult parse_tokens(const std::vector<char>& message) {
  TokensHeader header;
  STRATA_CHECK(message.size() >= sizeof header, Communication, "truncated tokens message");
  std::memcpy(&header, message.data(), sizeof header);
  STRATA_CHECK(header.n_chunks >= 0 && header.n_logit_rows >= 0 && header.vocab >= 0, Communication,
               "tokens message with negative counts (", header.n_chunks, " chunks, ", header.n_logit_rows, " rows)");
  const std::size_t fixed = sizeof header + std::size_t(header.n_chunks) * 4 +
                            std::size_t(header.n_logit_rows) * std::size_t(header.vocab) * 4;
  STRATA_CHECK(message.size() >= fixed && header.n_logprob_rows >= 0, Communication, "tokens message of ",
               message.size(), " bytes, expected at least ", fixed);
  StepResult result;
  result.vocab = header.vocab;
  result.tokens.resize(std::size_t(header.n_chunks));
  std::memcpy(result.tokens.data(), message.data() + sizeof header, result.tokens.size() * 4);
  result.logits.resize(std::size_t(header.n_logit_rows) * std::size_t(header.vocab));
  std::memcpy(result.logits.data(), message.data() + sizeof header + result.tokens.size() * 4,
              result.logits.size() * 4);
  std::size_t at = fixed;
  for (std::int32_t r = 0; r < header.n_logprob_rows; ++r) {
    RowLogprobs row;
    std::int32_t count = 0;
    STRATA_CHECK(at + 8 <= message.size(), Communication, "tokens message cut inside log-probability row ", r);
    std::memcpy(&row.chosen, message.data() + at, 4);
    std::memcpy(&count, message.data() + at + 4, 4);
    at += 8;
    STRATA_CHECK(
        count >= 0 && count <= kMaxTopLogprobs && at + std::size_t(count) * sizeof(TokenLogprob) <= message.size(),
        Communication, "tokens message: log-probability row ", r, " claims ", count, " entries");
    row.top.resize(std::size_t(count));
    std::memcpy(row.top.data(), message.data() + at, std::size_t(count) * sizeof(TokenLogprob));
    at += std::size_t(count) * sizeof(TokenLogprob);
    result.logprobs.push_back(std::move(row));
  }
  STRATA_CHECK(at == message.size(), Communication, "tokens message of ", message.size(), " bytes, expected ", at);
  return result;
}

std::vector<SeqChunk> chunks_of(const std::vector<ChunkMeta>& metas) {
  std::vector<SeqChunk> chunks;
  chunks.reserve(metas.size());
  for (const auto& m : metas) chunks.push_back(m.chunk);
  return chunks;
}

}  // namespace strata
