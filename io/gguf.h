// GGUF files (llama.cpp's model format): the header, the metadata key/value pairs and the tensor directory, read
// from a read-only mapping of the file; tensor data is served from the mapping. Every read is bounds-checked: a
// truncated or damaged file is refused naming the file and the byte offset where it ends or goes wrong.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/file_mapping.h"
#include "runtime/base/dtype.h"

namespace strata {

// The dtype of a ggml tensor type strata reads (f32 0, f16 1, q4_0 2, q8_0 8, bf16 30), or null: others are
// refused naming the tensor and the type.
const DType* readable_type(std::uint32_t type);
std::string ggml_type_name(std::uint32_t type);  // "q4_k (12)" for the ones strata does not read

struct GgufTensor {
  std::string name;
  std::vector<std::int64_t> dims;  // GGUF order: dims[0] is the row length (innermost)
  std::uint32_t type = 0;
  std::uint64_t offset = 0;  // from the start of the data section
  const char* data = nullptr;
  std::size_t bytes = 0;
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);
  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  // Metadata as JSON: numbers, strings, booleans, arrays of them.
  const nlohmann::json& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
  // The tensor `name` (throws naming the file when absent).
  const GgufTensor& tensor(const std::string& name) const;
  const std::map<std::string, GgufTensor>& tensors() const { return tensors_; }

 private:
  std::string path_;
  std::shared_ptr<const FileMapping> mapping_;
  std::uint32_t version_ = 0;
  nlohmann::json metadata_ = nlohmann::json::object();
  std::map<std::string, GgufTensor> tensors_;
};

// A Hugging Face tokenizer.json equal to the GGUF's vocabulary: tokenizer.ggml.model "gpt2" (byte-level BPE: tokens,
// merges, token types; the pre-tokenizer regex of tokenizer.ggml.pre "llama-bpe" (Llama 3), "qwen2" or "gpt-2" /
// "default") or "llama" (SentencePiece BPE: tokens, scores, token types, add_space_prefix; merges derived from the
// scores, byte fallback). Other models and pre-tokenizers are refused naming the key and value.
nlohmann::json gguf_tokenizer_json(const GgufFile& file);
// {"bos_token_id", "eos_token_id"} from tokenizer.ggml.* (bos only when tokenizer.ggml.add_bos_token is not false).
nlohmann::json gguf_generation_config(const GgufFile& file);

}  // namespace strata
