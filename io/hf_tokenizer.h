// Hugging Face tokenizer.json, exact to the token for the Llama 2 / Llama 3 / Mistral / Qwen2 / TinyLlama files:
// added tokens, normalizers, pre-tokenizers (PCRE2 Unicode regexes), BPE (byte-level or SentencePiece-style with
// byte fallback), the BOS template and the decoders. Any component those files do not use is refused by name.
// PCRE2 and ICU stay inside hf_tokenizer.cpp (pimpl).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace strata {

class HfTokenizer final : public Tokenizer {
 public:
  // `generation_config`: the model's generation_config.json (or null): its bos_token_id / eos_token_id (an id or a
  // list: Llama 3 Instruct ends on several) win over what the tokenizer file implies. `tokenizer_config` (what
  // convert keeps of tokenizer_config.json, or null): its eos_token ends sequences too.
  static std::unique_ptr<HfTokenizer> from_file(const std::string& path,
                                                const nlohmann::json& generation_config = nullptr,
                                                const nlohmann::json& tokenizer_config = nullptr);
  ~HfTokenizer() override;

  // Text that is not valid UTF-8 is first repaired: every maximal invalid subsequence becomes U+FFFD (the WHATWG /
  // Python errors="replace" rule), then encoded. Thread-safe (calls are serialized).
  std::vector<std::int32_t> encode(const std::string& text, bool add_bos) const override;
  std::string decode(std::span<const std::int32_t> ids) const override;
  std::int32_t bos_id() const override;  // -1 when the model has none (Qwen2)
  std::int32_t eos_id() const override;  // the first of eos_ids()
  bool is_eos(std::int32_t id) const override;
  std::int64_t vocab_size() const override;
  nlohmann::json to_json() const override;
  const std::vector<std::int32_t>& eos_ids() const;

 private:
  struct Impl;
  explicit HfTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Every maximal invalid UTF-8 subsequence replaced by U+FFFD (valid text is returned unchanged).
std::string repair_utf8(std::string_view text);

}  // namespace strata
