// See stop_matcher.h.
#include "engine/stop_matcher.h"

#include "engine/engine.h"

namespace strata {

std::optional<FinishReason> StopMatcher::finished(const Request& request, std::span<const std::int32_t> generated,
                                                  std::int32_t cached) const {
  if (tokenizer_.is_eos(generated.back()) && !request.ignore_eos) return FinishReason::Stop;
  if (!request.stop.empty()) {
    const std::string text = tokenizer_.decode(generated);
    for (const auto& stop : request.stop)
      if (!stop.empty() && text.find(stop) != std::string::npos) return FinishReason::Stop;
  }
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
