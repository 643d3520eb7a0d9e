// Tokenizers: text <-> token ids. The byte-level tokenizer (ids 0-255 are the bytes of the UTF-8 text, then
// <s>, </s>, <pad>, <unk>) serves built-in models; HfTokenizer (hf_tokenizer.h) runs converted models'
// tokenizer.json. Encoding never fails on any bytes (invalid UTF-8 included).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<std::int32_t> encode(const std::string& text, bool add_bos) const = 0;
  // Special tokens are skipped; ids the tokenizer does not know decode to U+FFFD.
  virtual std::string decode(std::span<const std::int32_t> ids) const = 0;
  virtual std::int32_t bos_id() const = 0;
  virtual std::int32_t eos_id() const = 0;
  // Whether `id` ends a sequence: models may have several end ids (Llama 3 Instruct: <|end_of_text|>, <|eot_id|>).
  virtual bool is_eos(std::int32_t id) const { return id == eos_id(); }
  virtual std::int64_t vocab_size() const = 0;
  virtual nlohmann::json to_json() const = 0;  // what the checkpoint manifest stores
};

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr std::int32_t kBos = 256, kEos = 257, kPad = 258, kUnk = 259, kVocab = 260;
  std::vector<std::int32_t> encode(const std::string& text, bool add_bos) const override;
  std::string decode(std::span<const std::int32_t> ids) const override;
  std::int32_t bos_id() const override { return kBos; }
  std::int32_t eos_id() const override { return kEos; }
  std::int64_t vocab_size() const override { return kVocab; }
  nlohmann::json to_json() const override;
};

// From a manifest's "tokenizer" entry; `where` is the manifest's path (a "huggingface" entry's file lies beside
// it) and names the source in errors; `generation_config` (or null) gives a converted model's BOS/EOS ids, and
// `tokenizer_config` (or null) its eos_token, also an end.
std::unique_ptr<Tokenizer> make_tokenizer(const nlohmann::json& spec, const std::string& where,
                                          const nlohmann::json& generation_config = nullptr,
                                          const nlohmann::json& tokenizer_config = nullptr);
// The same from a checkpoint manifest's "tokenizer" and "source" fields, `where` being the manifest's path.
std::unique_ptr<Tokenizer> make_tokenizer_of(const nlohmann::json& tokenizer, const nlohmann::json& source,
                                             const std::string& where);

}  // namespace strata
