// When a sequence ends, and the text it ends with: an end-of-sequence id (unless the request ignores it), a stop
// string in the decoded text, max_tokens, or no position left in the context.
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
  const Tokenizer& tokenizer_;
  std::int32_t max_model_len_;
};

}  // namespace strata
