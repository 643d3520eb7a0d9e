// GGUF parsing; see gguf.h. Layout (little-endian): "GGUF", version (u32, 2 or 3), tensor count (u64), metadata
// count (u64); each metadata pair: key (u64 length + bytes), value type (u32), value; each tensor: name, dims
// count (u32), dims (u64 each), type (u32), offset (u64); then the data section, aligned to general.alignment
// (default 32), each tensor at its offset.
#include "io/gguf.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "runtime/base/error.h"

namespace strata {

std::string ggml_type_name(std::uint32_t type) {
  if (const DType* dtype = readable_type(type)) return dtype_name(*dtype);
  static const char* const names[] = {"f32",  "f16",  "q4_0", "q4_1", "q4_2", "q4_3", "q5_0", "q5_1",
                                      "q8_0", "q8_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k"};
  return cat(type < 16 ? names[type] : "type", " (", type, ")");
}

const DType* readable_type(std::uint32_t type) {
  static const std::pair<std::uint32_t, DType> readable[] = {
      {0, DType::F32}, {1, DType::F16}, {2, DType::Q4_0}, {8, DType::Q8_0}, {30, DType::BF16}};
  for (const auto& [number, dtype] : readable)
    if (number == type) return &dtype;
  return nullptr;
}

namespace {

// Reads values at increasing offsets of the mapped file, naming the offset when the file ends first.
class Cursor {
 public:
  Cursor(const char* data, std::size_t size, const std::string& path) : data_(data), size_(size), path_(path) {}
  std::size_t offset() const { return at_; }
  const char* take(std::size_t bytes, const char* what) {
    STRATA_CHECK(bytes <= size_ && at_ <= size_ - bytes, Checkpoint, "GGUF file ", path_, " is truncated at offset ",
                 at_, ": ", what, " needs ", bytes, " bytes, the file has ", size_ - std::min(at_, size_), " left");
    const char* p = data_ + at_;
    at_ += bytes;
    return p;
  }
  template <typename T>
  T get(const char* what) {
    T value;
    std::memcpy(&value, take(sizeof(T), what), sizeof(T));
    return value;
  }
  std::string string(const char* what) {
    const auto length = get<std::uint64_t>(what);
    STRATA_CHECK(length < (std::uint64_t(1) << 32), Checkpoint, "GGUF file ", path_, ": ", what, " at offset ", at_ - 8,
                 " claims ", length, " bytes");
    return std::string(take(std::size_t(length), what), std::size_t(length));
  }

 private:
  const char* data_;
  std::size_t size_;
  std::string path_;
  std::size_t at_ = 0;
};

nlohmann::json read_value(Cursor& in, std::uint32_t type, const std::string& key, const std::string& path,
                          int depth = 0) {
  switch (type) {
    case 0:
      return in.get<std::uint8_t>(key.c_str());
    case 1:
      return in.get<std::int8_t>(key.c_str());
    case 2:
      return in.get<std::uint16_t>(key.c_str());
    case 3:
      return in.get<std::int16_t>(key.c_str());
    case 4:
      return in.get<std::uint32_t>(key.c_str());
    case 5:
      return in.get<std::int32_t>(key.c_str());
    case 6:
      return in.get<float>(key.c_str());
    case 7:
      return in.get<std::uint8_t>(key.c_str()) != 0;
    case 8:
      return in.string(key.c_str());
    case 9: {
      STRATA_CHECK(depth == 0, Checkpoint, "GGUF file ", path, ": metadata ", key, " nests arrays");
      const auto element = in.get<std::uint32_t>(key.c_str());
      const auto count = in.get<std::uint64_t>(key.c_str());
      STRATA_CHECK(count < (std::uint64_t(1) << 28), Checkpoint, "GGUF file ", path, ": metadata ", key, " claims ",
                   count, " elements");
      nlohmann::json values = nlohmann::json::array();
      for (std::uint64_t i = 0; i < count; ++i) values.push_back(read_value(in, element, key, path, depth + 1));
      return values;
    }
    case 10:
      return in.get<std::uint64_t>(key.c_str());
    case 11:
      return in.get<std::int64_t>(key.c_str());
    case 12:
      return in.get<double>(key.c_str());
    default:
      throw Error(ErrorKind::Checkpoint, cat("GGUF file ", path, ": metadata ", key, " has unknown value type ", type,
                                             " (at offset ", in.offset() - 4, ")"));
  }
}

std::size_t tensor_bytes(const GgufTensor& t, const std::string& path) {
  std::int64_t count = 1;
  for (const auto d : t.dims) {
    STRATA_CHECK(d > 0 && d < (std::int64_t(1) << 40), Checkpoint, "GGUF file ", path, ": tensor ", t.name,
                 " has dimension ", d);
    count *= d;
  }
  const DType* dtype = readable_type(t.type);
  if (!dtype) return 0;  // not read: refused when a tensor of this type is asked for
  STRATA_CHECK(!is_quantized(*dtype) || t.dims[0] % 32 == 0, Checkpoint, "GGUF file ", path, ": tensor ", t.name,
               " of type ", ggml_type_name(t.type), " has rows of ", t.dims[0], " weights, not whole blocks of 32");
  return dtype_bytes(*dtype, count);
}

}  // namespace

GgufFile::GgufFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STRATA_CHECK(fd >= 0, Checkpoint, "cannot open GGUF file ", path, ": ", std::strerror(errno));
  try {
    mapping_ = FileMapping::map(fd, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  Cursor in(mapping_->data(), mapping_->size(), path);
  STRATA_CHECK(std::memcmp(in.take(4, "the magic number"), "GGUF", 4) == 0, Checkpoint, path,
               " is not a GGUF file (it does not start with \"GGUF\")");
  version_ = in.get<std::uint32_t>("the version");
  STRATA_CHECK(version_ == 2 || version_ == 3, Checkpoint, "GGUF file ", path, " has version ", version_,
               " (2 and 3 are read)");
  const auto n_tensors = in.get<std::uint64_t>("the tensor count");
  const auto n_metadata = in.get<std::uint64_t>("the metadata count");
  STRATA_CHECK(n_tensors < 1000000 && n_metadata < 1000000, Checkpoint, "GGUF file ", path, " claims ", n_tensors,
               " tensors and ", n_metadata, " metadata pairs");
  for (std::uint64_t i = 0; i < n_metadata; ++i) {
    const std::string key = in.string("a metadata key");
    const auto type = in.get<std::uint32_t>("a metadata value type");
    metadata_[key] = read_value(in, type, key, path);
  }
  std::vector<GgufTensor> order;
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = in.string("a tensor name");
    const auto dims = in.get<std::uint32_t>("a tensor's dimension count");
    STRATA_CHECK(dims >= 1 && dims <= 4, Checkpoint, "GGUF file ", path, ": tensor ", t.name, " has ", dims,
                 " dimensions");
    for (std::uint32_t d = 0; d < dims; ++d) t.dims.push_back(std::int64_t(in.get<std::uint64_t>("a dimension")));
    t.type = in.get<std::uint32_t>("a tensor type");
    t.offset = in.get<std::uint64_t>("a tensor offset");
    order.push_back(std::move(t));
  }
  const std::uint64_t alignment =
      metadata_.contains("general.alignment") ? metadata_["general.alignment"].get<std::uint64_t>() : 32;
  STRATA_CHECK(alignment > 0 && alignment % 8 == 0, Checkpoint, "GGUF file ", path, ": general.alignment ", alignment);
  const std::uint64_t data_start = (in.offset() + alignment - 1) / alignment * alignment;
  for (auto& t : order) {
    t.bytes = tensor_bytes(t, path);
    const std::uint64_t begin = data_start + t.offset;
    STRATA_CHECK(begin <= mapping_->size() && t.bytes <= mapping_->size() - begin, Checkpoint, "GGUF file ", path,
                 " is truncated: tensor ", t.name, " is stored at bytes ", begin, "-", begin + t.bytes - 1, " of a ",
                 mapping_->size(), "-byte file");
    t.data = mapping_->data() + begin;
    tensors_.emplace(t.name, std::move(t));
  }
}

const GgufTensor& GgufFile::tensor(const std::string& name) const {
  const auto it = tensors_.find(name);
  STRATA_CHECK(it != tensors_.end(), Checkpoint, "GGUF file ", path_, " has no tensor ", name);
  return it->second;
}

namespace {

const nlohmann::json& key_of(const GgufFile& file, const char* key) {
  STRATA_CHECK(file.metadata().contains(key), Checkpoint, "GGUF file ", file.path(), " has no metadata ", key);
  return file.metadata()[key];
}

// The pre-tokenizer regexes of the vocabularies strata reads, as their tokenizer.json files spell them.
const char* pre_tokenizer_regex(const std::string& pre) {
  if (pre == "llama-bpe" || pre == "llama3")
    return "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
           "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  if (pre == "qwen2")
    return "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
           "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  if (pre == "gpt-2" || pre == "default")
    return "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
  return nullptr;
}

}  // namespace

namespace {

nlohmann::json added_token(std::size_t id, const nlohmann::json& content, bool special) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

int token_type(const nlohmann::json& types, std::size_t id) { return id < types.size() ? types[id].get<int>() : 1; }

nlohmann::json bpe_model(nlohmann::json vocab, nlohmann::json merges, nlohmann::json unk, bool byte_fallback,
                         bool ignore_merges) {
  return {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", std::move(unk)},
          {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr},
          {"fuse_unk", byte_fallback},
          {"byte_fallback", byte_fallback},
          {"ignore_merges", ignore_merges},
          {"vocab", std::move(vocab)},
          {"merges", std::move(merges)}};
}

// tokenizer.ggml.model "gpt2": byte-level BPE with the merges the file lists.
nlohmann::json byte_level_bpe(const GgufFile& file) {
  const std::string pre = file.metadata().contains("tokenizer.ggml.pre")
                              ? file.metadata()["tokenizer.ggml.pre"].get<std::string>()
                              : "default";
  const char* regex = pre_tokenizer_regex(pre);
  STRATA_CHECK(regex != nullptr, Checkpoint, "GGUF file ", file.path(), ": tokenizer.ggml.pre '", pre,
               "' is not supported (llama-bpe, qwen2, gpt-2 and default are)");
  const auto& tokens = key_of(file, "tokenizer.ggml.tokens");
  const nlohmann::json types = file.metadata().value("tokenizer.ggml.token_type", nlohmann::json::array());
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    vocab[tokens[id].get<std::string>()] = id;
    const int type = token_type(types, id);
    if (type == 3 || type == 4) added.push_back(added_token(id, tokens[id], type == 3));  // matched whole
  }
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model", bpe_model(vocab, file.metadata().value("tokenizer.ggml.merges", nlohmann::json::array()), nullptr,
                              false, pre == "llama-bpe" || pre == "llama3")}};  // llama.cpp's Llama 3 vocabulary
}

// SentencePiece BPE merges any two adjacent pieces whose concatenation is a token, the token of the highest score
// first (llama.cpp's llm_tokenizer_spm). As ranked merges: every split of every token into two tokens (at character
// boundaries, the symbols it starts from), ordered by the whole token's score, highest first. Equal scores are
// ordered by token id, where llama.cpp takes the leftmost pair; SentencePiece BPE vocabularies give every
// mergeable piece its own score, so this does not arise in them.
nlohmann::json sentencepiece_merges(const GgufFile& file, const nlohmann::json& tokens, const nlohmann::json& vocab) {
  const auto& scores = key_of(file, "tokenizer.ggml.scores");
  STRATA_CHECK(scores.is_array() && scores.size() == tokens.size(), Checkpoint, "GGUF file ", file.path(),
               ": tokenizer.ggml.scores has ", scores.size(), " entries for ", tokens.size(), " tokens");
  struct Split {
    float score;
    std::size_t id, at;
  };
  std::vector<Split> splits;
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    const std::string& text = tokens[id].get_ref<const std::string&>();
    for (std::size_t at = 1; at < text.size(); ++at) {
      if ((static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) continue;  // inside a UTF-8 character
      if (vocab.contains(text.substr(0, at)) && vocab.contains(text.substr(at)))
        splits.push_back({scores[id].get<float>(), id, at});
    }
  }
  std::stable_sort(splits.begin(), splits.end(), [](const Split& a, const Split& b) { return a.score > b.score; });
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& s : splits) {
    const std::string& text = tokens[s.id].get_ref<const std::string&>();
    merges.push_back({text.substr(0, s.at), text.substr(s.at)});
  }
  return merges;
}

// tokenizer.ggml.model "llama": SentencePiece BPE (Llama 2, Mistral, TinyLlama) as Hugging Face's Llama tokenizer
// spells it: spaces as U+2581, one prepended to each run of text (tokenizer.ggml.add_space_prefix, default true),
// unknown characters as <0xXX> byte tokens, control tokens matched whole.
nlohmann::json sentencepiece_bpe(const GgufFile& file) {
  const auto& tokens = key_of(file, "tokenizer.ggml.tokens");
  const nlohmann::json types = file.metadata().value("tokenizer.ggml.token_type", nlohmann::json::array());
  const bool prefix = file.metadata().value("tokenizer.ggml.add_space_prefix", true);
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array(), unk = nullptr;
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    vocab[tokens[id].get<std::string>()] = id;
    const int type = token_type(types, id);
    if (type == 2 && unk.is_null()) unk = tokens[id];
    if (type == 3 || type == 4) added.push_back(added_token(id, tokens[id], type == 3));
  }
  const char* space = "\u2581";  // SentencePiece's visible space
  nlohmann::json normalizer = {{"type", "Sequence"}, {"normalizers", nlohmann::json::array()}};
  if (prefix) normalizer["normalizers"].push_back({{"type", "Prepend"}, {"prepend", space}});
  normalizer["normalizers"].push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}});
  nlohmann::json decoders = {{{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}},
                             {{"type", "ByteFallback"}},
                             {{"type", "Fuse"}}};
  if (prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", normalizer},
          {"pre_tokenizer", nullptr},
          {"post_processor", nullptr},
          {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}},
          {"model", bpe_model(vocab, sentencepiece_merges(file, tokens, vocab), unk, true, false)}};
}

}  // namespace

nlohmann::json gguf_tokenizer_json(const GgufFile& file) {
  const std::string model = key_of(file, "tokenizer.ggml.model").get<std::string>();
  if (model == "gpt2") return byte_level_bpe(file);
  if (model == "llama") return sentencepiece_bpe(file);
  throw Error(ErrorKind::Checkpoint,
              cat("GGUF file ", file.path(), ": tokenizer.ggml.model '", model,
                  "' is not supported (gpt2, a byte-level BPE, and llama, SentencePiece BPE, are)"));
}

nlohmann::json gguf_generation_config(const GgufFile& file) {
  const auto& m = file.metadata();
  nlohmann::json config = nlohmann::json::object();
  if (m.contains("tokenizer.ggml.bos_token_id") && m.value("tokenizer.ggml.add_bos_token", true))
    config["bos_token_id"] = m["tokenizer.ggml.bos_token_id"];
  if (m.contains("tokenizer.ggml.eos_token_id")) config["eos_token_id"] = m["tokenizer.ggml.eos_token_id"];
  return config;
}

}  // namespace strata
