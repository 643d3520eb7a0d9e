// The byte-level tokenizer.
#include "io/tokenizer.h"

#include <filesystem>

#include "io/hf_tokenizer.h"

#include "runtime/base/error.h"

namespace strata {

std::vector<std::int32_t> ByteTokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() + 1);
  if (add_bos) ids.push_back(kBos);
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

std::string ByteTokenizer::decode(std::span<const std::int32_t> ids) const {
  std::string text;
  text.reserve(ids.size());
  for (auto id : ids) {
    if (id >= 0 && id < 256)
      text.push_back(char(id));
    else if (id < 0 || id >= kVocab)
      text += "\xEF\xBF\xBD";  // U+FFFD: an id outside this tokenizer (a model vocabulary larger than 260)
  }
  return text;
}

nlohmann::json ByteTokenizer::to_json() const {
  return {{"type", "byte"}, {"bos_token_id", kBos}, {"eos_token_id", kEos}, {"vocab_size", kVocab}};
}

std::unique_ptr<Tokenizer> make_tokenizer(const nlohmann::json& spec, const std::string& where,
                                          const nlohmann::json& generation_config,
                                          const nlohmann::json& tokenizer_config) {
  const std::string type =
      spec.is_object() && spec.contains("type") && spec["type"].is_string() ? spec["type"].get<std::string>() : "";
  if (type == "byte") return std::make_unique<ByteTokenizer>();
  if (type == "huggingface") {
    const std::string file = spec.contains("file") && spec["file"].is_string() ? spec["file"].get<std::string>() : "";
    STRATA_CHECK(!file.empty(), Checkpoint, where, ": tokenizer entry of type \"huggingface\" has no \"file\"");
    return HfTokenizer::from_file((std::filesystem::path(where).parent_path() / file).string(), generation_config,
                                  tokenizer_config);
  }
  throw Error(ErrorKind::Checkpoint, cat(where, ": unsupported tokenizer type '", type,
                                         "' (this build supports \"byte\" and \"huggingface\")"));
}

std::unique_ptr<Tokenizer> make_tokenizer_of(const nlohmann::json& tokenizer, const nlohmann::json& source,
                                             const std::string& where) {
  const auto field = [&](const char* key) {
    return source.is_object() ? source.value(key, nlohmann::json()) : nlohmann::json();
  };
  return make_tokenizer(tokenizer, where, field("generation_config"), field("tokenizer_config"));
}

}  // namespace strata
