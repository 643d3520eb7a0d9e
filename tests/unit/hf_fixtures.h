// Hand-written tokenizer.json files for unit tests: written to a per-process folder and loaded with HfTokenizer.
#pragma once
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "io/hf_tokenizer.h"

namespace strata::test {

using json = nlohmann::json;
namespace fs = std::filesystem;

// The files live in one directory per test process, removed when it exits.
struct TempDir {
  fs::path path = fs::temp_directory_path() / ("strata_hf_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

inline std::string write_json(const std::string& name, const json& j) {
  static const TempDir dir;
  const fs::path path = dir.path / name;
  std::ofstream(path) << j.dump();
  return path.string();
}

inline std::unique_ptr<HfTokenizer> load(const std::string& name, const json& j, const json& generation = nullptr) {
  return HfTokenizer::from_file(write_json(name, j), generation);
}

// SentencePiece-style: Prepend/Replace normalizers, byte fallback, the <s> template and the Llama 2 decoders.
inline json sentencepiece() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab["\xE2\x96\x81"] = 259;  // ▁
  vocab["h"] = 260;
  vocab["i"] = 261;
  vocab["\xE2\x96\x81h"] = 262;   // ▁h
  vocab["\xE2\x96\x81hi"] = 263;  // ▁hi
  json added = json::array();
  for (auto [id, text] : {std::pair{0, "<unk>"}, {1, "<s>"}, {2, "</s>"}})
    added.push_back({{"id", id}, {"content", text}, {"special", true}, {"normalized", false}});
  return {{"model",
           {{"type", "BPE"},
            {"vocab", vocab},
            {"merges", {"\xE2\x96\x81 h", "\xE2\x96\x81h i"}},
            {"byte_fallback", true},
            {"fuse_unk", true},
            {"unk_token", "<unk>"}}},
          {"added_tokens", added},
          {"normalizer",
           {{"type", "Sequence"},
            {"normalizers",
             {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
          {"decoder",
           {{"type", "Sequence"},
            {"decoders",
             {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
              {{"type", "ByteFallback"}},
              {{"type", "Fuse"}},
              {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}}};
}

}  // namespace strata::test
