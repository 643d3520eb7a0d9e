// libFuzzer target: real tokenizer.json files (Mistral: SentencePiece-style with byte fallback; Llama 3: byte-level
// with the Llama 3 regex) must encode any bytes and decode any ids without a crash, hang or out-of-bounds access
// (ASan + UBSan), and keep their promises: ids inside the vocabulary, decoded text always valid UTF-8, and for
// byte-level BPE decode(encode(text)) == text for valid UTF-8 text without special tokens.
// Input: byte 0 picks the tokenizer and the mode (encode the rest / decode the rest as 32-bit ids).
// The files' paths come from STRATA_FUZZ_TOKENIZERS ("MISTRAL_JSON LLAMA3_JSON"; scripts/fuzz.sh sets it).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "io/hf_tokenizer.h"
#include "runtime/base/error.h"

namespace {
std::vector<std::unique_ptr<strata::HfTokenizer>> tokenizers;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* paths = std::getenv("STRATA_FUZZ_TOKENIZERS");
  if (!paths) __builtin_trap();  // run through scripts/fuzz.sh
  std::istringstream in(paths);
  for (std::string path; in >> path;) tokenizers.push_back(strata::HfTokenizer::from_file(path));
  if (tokenizers.size() != 2) __builtin_trap();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const strata::HfTokenizer& t = *tokenizers[data[0] & 1];
  const bool byte_level = (data[0] & 1) == 1;
  if (data[0] & 2) {  // decode arbitrary ids, in range or not
    std::vector<std::int32_t> ids((size - 1) / 4);
    if (!ids.empty()) std::memcpy(ids.data(), data + 1, ids.size() * 4);
    for (auto& id : ids)
      if (data[0] & 4) id = std::int32_t(std::uint32_t(id) % std::uint32_t(t.vocab_size() + 8));
    const std::string text = t.decode(ids);
    if (strata::repair_utf8(text) != text) __builtin_trap();
    return 0;
  }
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::vector<std::int32_t> ids = t.encode(text, (data[0] & 4) != 0);
  for (auto id : ids)
    if (id < 0 || id >= t.vocab_size()) __builtin_trap();
  const std::string back = t.decode(ids);
  if (strata::repair_utf8(back) != back) __builtin_trap();
  if (byte_level && strata::repair_utf8(text) == text && text.find("<|") == std::string::npos && back != text)
    __builtin_trap();  // byte-level BPE loses nothing
  return 0;
}
