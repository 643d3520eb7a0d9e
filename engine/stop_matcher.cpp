// See stop_matcher.h.
#include "engine/stop_matcher.h"

#include <algorithm>

#include "engine/engine.h"

namespace strata {

namespace {
constexpr std::size_t kUnreliableBytes = 16;  // of a window's decoded text, where it may differ from the whole text
constexpr std::size_t kExtraTokens = 16;      // tokens in the window beyond the longest stop string's bytes
}  // namespace

bool StopMatcher::stop_string_completed(const Request& request, std::span<const std::int32_t> generated) const {
  std::size_t longest = 0;
  for (const auto& stop : request.stop) longest = std::max(longest, stop.size());
  if (longest == 0) return false;
  const auto matches = [&](const std::string& text, std::size_t from) {
    for (const auto& stop : request.stop)
      if (!stop.empty() && text.find(stop, from) != std::string::npos) return true;
    return false;
  };
  // A stop string completing with the newest token starts at most `longest` - 1 bytes before the newest token's
  // text: when the window's older tokens give at least longest + kUnreliableBytes - 1 bytes (each token but special
  // ones gives one or more), every such match starts past the unreliable margin.
  const std::size_t window = longest + kExtraTokens;
  if (generated.size() > window) {
    const auto tokens = generated.last(window);
    const std::size_t before_newest = tokenizer_.decode(tokens.first(window - 1)).size();
    if (before_newest + 1 >= longest + kUnreliableBytes) return matches(tokenizer_.decode(tokens), kUnreliableBytes);
  }
  return matches(tokenizer_.decode(generated), 0);  // short so far (or many empty tokens): the whole text
}

std::optional<FinishReason> StopMatcher::finished(const Request& request, std::span<const std::int32_t> generated,
                                                  std::int32_t cached) const {
  if (tokenizer_.is_eos(generated.back()) && !request.ignore_eos) return FinishReason::Stop;
  if (!request.stop.empty() && stop_string_completed(request, generated)) return FinishReason::Stop;
  if (std::int64_t(generated.size()) >= request.max_tokens) return FinishReason::Length;
  if (cached >= max_model_len_) return FinishReason::Length;  // no position left for another token
  return std::nullopt;
}

std::string StopMatcher::text(const Request& request, std::span<const std::int32_t> generated,
                              FinishReason reason) const {
  if (reason == FinishReason::Stop && !generated.empty() && tokenizer_.is_eos(generated.back()))
    generated = generated.first(generated.size() - 1);
  std::string text = tokenizer_.decode(generated);
  std::size_t cut = std::string::npos;
  for (const auto& stop : request.stop)
    if (!stop.empty()) cut = std::min(cut, text.find(stop));
  if (cut != std::string::npos) text.resize(cut);
  return text;
}

}  // namespace strata
