// When a sequence ends, and the text it ends with: an end-of-sequence id (unless the request ignores it), a stop
// string in the decoded text, max_tokens, or no position left in the context.
//
// Stop strings are matched incrementally: checked after every token, a stop string first appears ending in the
// newest token's text, so only the decoded text of the last tokens is searched (a window a few tokens longer than
// the longest stop string), not the whole generation again: the cost per token does not grow with the text. The
// window's first bytes may decode differently from the whole text (a leading space a SentencePiece decoder strips,
// a character cut in two), so they are not searched; a window whose text is too short for that margin is decoded
// from the start of the generation instead.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "io/tokenizer.h"

namespace strata {

struct Request;
enum class FinishReason : std::uint8_t;

class StopMatcher {
 public:
  StopMatcher(const Tokenizer& tokenizer, std::int32_t max_model_len)
      : tokenizer_(tokenizer), max_model_len_(max_model_len) {}
  // After a token was appended to `generated`; `cached`: positions now in the KV cache.
  std::optional<FinishReason> finished(const Request& request, std::span<const std::int32_t> generated,
                                       std::int32_t cached) const;
  // The completion's text: decoded without a final end-of-sequence id, cut before the first stop string.
  std::string text(const Request& request, std::span<const std::int32_t> generated, FinishReason reason) const;

 private:
  bool stop_string_completed(const Request& request, std::span<const std::int32_t> generated) const;
  const Tokenizer& tokenizer_;
  std::int32_t max_model_len_;
};

}  // namespace strata
