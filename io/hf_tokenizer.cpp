// HfTokenizer: tokenizer.json as the Hugging Face `tokenizers` library runs it. The pipeline per input text:
// repair UTF-8 -> split out added tokens -> normalize each remaining section -> pre-tokenize into pieces -> BPE
// each piece (cached) -> template (BOS). Decoding maps ids to token strings and runs the decoder chain.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "io/hf_tokenizer.h"

#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uniset.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <optional>
#include <queue>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "runtime/base/error.h"

namespace strata {
namespace {

using json = nlohmann::json;
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// ---- UTF-8 ------------------------------------------------------------------------------------------------------

// Length of the valid UTF-8 sequence starting at s[i], or 0 when it is not one (overlongs, surrogates and code
// points above U+10FFFF are invalid). `maximal` receives how many bytes form the maximal invalid subpart.
std::size_t utf8_sequence(std::string_view s, std::size_t i, std::size_t& maximal) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  maximal = 1;
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF)
    n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (std::size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return 0;
    const unsigned char t = b(i + k);
    if (t < (k == 1 ? lo : 0x80) || t > (k == 1 ? hi : 0xBF)) return 0;
    maximal = k + 1;
  }
  return n;
}

std::size_t utf8_length(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

char32_t decode_utf8(std::string_view s) {  // one valid sequence
  const auto b = [&](std::size_t k) { return char32_t(static_cast<unsigned char>(s[k])); };
  switch (s.size()) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

// ---- the GPT-2 byte <-> printable character table ------------------------------------------------------------

struct ByteLevelTable {
  std::array<std::string, 256> to_char;  // byte -> UTF-8 of its stand-in character
  std::unordered_map<char32_t, unsigned char> to_byte;
  ByteLevelTable() {
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? char32_t(b) : char32_t(next++);
      append_utf8(to_char[std::size_t(b)], cp);
      to_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};
const ByteLevelTable& byte_level() {
  static const ByteLevelTable table;
  return table;
}

// ---- PCRE2 ------------------------------------------------------------------------------------------------------

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
struct MatchContextDeleter {
  void operator()(pcre2_match_context* m) const { pcre2_match_context_free(m); }
};
struct JitStackDeleter {
  void operator()(pcre2_jit_stack* s) const { pcre2_jit_stack_free(s); }
};

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

// A compiled Unicode pattern (UTF + UCP: \p{L}, \s and friends are Unicode classes), JIT-compiled when the
// platform has the JIT. Not thread-safe (its match data is reused); HfTokenizer serializes calls.
// PCRE2 in Debian 12 (10.42) has Unicode 14 tables and counts U+180E as white space; Hugging Face's tokenizers (Rust's
// regex) know later Unicode and read \s as the White_Space property. So a tokenizer's pattern has its Unicode classes
// (\p{..}, \P{..}) and \s, \S spelled out as code point ranges from ICU (Unicode 15 in Debian 12's ICU 72): emoji added
// in Unicode 15 are symbols, and U+180E (a format character since Unicode 6.3) is not white space.
std::string ranges_of(const icu::UnicodeSet& set) {
  std::string out;
  char buffer[32];
  for (std::int32_t i = 0; i < set.getRangeCount(); ++i) {
    const auto a = std::uint32_t(set.getRangeStart(i)), b = std::uint32_t(set.getRangeEnd(i));
    std::snprintf(buffer, sizeof buffer, a == b ? "\\x{%x}" : "\\x{%x}-\\x{%x}", a, b);
    out += buffer;
  }
  return out;
}

icu::UnicodeSet unicode_class(const std::string& property, bool negated, const std::string& where) {
  UErrorCode status = U_ZERO_ERROR;
  icu::UnicodeSet set(icu::UnicodeString::fromUTF8("[" + property + "]"), status);
  STRATA_CHECK(U_SUCCESS(status), Config, where, ": the Unicode class ", property, " is not known (",
               u_errorName(status), ")");
  if (negated) set.complement();
  set.remove(0xD800, 0xDFFF);  // surrogates are not characters (and PCRE2 refuses them in UTF mode)
  return set;
}

std::string with_current_unicode(const std::string& pattern, const std::string& where) {
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '[' && !in_class) {  // a class starts; a ']' right after '[' or '[^' is a literal
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == '[' && in_class && i + 1 < pattern.size() && pattern[i + 1] == ':') {  // [:alpha:] inside a class
      const std::size_t end = pattern.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(pattern, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (c == ']' && in_class) in_class = false;
    if (c != '\\' || i + 1 >= pattern.size()) {
      out += c;
      continue;
    }
    const char e = pattern[i + 1];
    std::string property;
    std::size_t next = i + 2;
    if (e == 'p' || e == 'P') {
      if (next < pattern.size() && pattern[next] == '{') {
        const std::size_t close = pattern.find('}', next);
        STRATA_CHECK(close != std::string::npos, Config, where, ": regex '", pattern, "': \\", e, "{ is not closed");
        property = "\\p" + pattern.substr(next, close + 1 - next);
        next = close + 1;
      } else if (next < pattern.size()) {
        property = cat("\\p{", pattern[next], "}");
        ++next;
      }
    } else if (e == 's' || e == 'S') {
      property = "[:White_Space:]";
    }
    if (property.empty()) {  // any other escape, as written
      out.append(pattern, i, 2);
      ++i;
      continue;
    }
    const std::string ranges = ranges_of(unicode_class(property, e == 'P' || e == 'S', where));
    out += in_class ? ranges : "[" + ranges + "]";
    i = next - 1;
  }
  return out;
}

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) : where_(where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    const std::uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
    const std::string compiled = literal ? pattern : with_current_unicode(pattern, where);
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(), options, &error, &offset,
                              nullptr));
    STRATA_CHECK(code_, Config, where, ": regex '", pattern, "' does not compile at offset ", offset, ": ",
                 pcre2_message(error));
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);  // falls back to the interpreter where there is no JIT
    data_.reset(pcre2_match_data_create_from_pattern(code_.get(), nullptr));
    context_.reset(pcre2_match_context_create(nullptr));
    stack_.reset(pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr));
    STRATA_CHECK(data_ && context_ && stack_, Memory, where, ": out of memory for regex '", pattern, "'");
    pcre2_jit_stack_assign(context_.get(), nullptr, stack_.get());
  }
  // The next non-empty match in `text` at or after `from`, as [begin, end); nullopt when none.
  std::optional<std::pair<std::size_t, std::size_t>> find(std::string_view text, std::size_t from) const {
    while (from <= text.size()) {
      const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), from,
                                 PCRE2_NO_UTF_CHECK, data_.get(), context_.get());
      if (rc == PCRE2_ERROR_NOMATCH) return std::nullopt;
      STRATA_CHECK(rc >= 0, Internal, where_, ": regex match failed: ", pcre2_message(rc));
      const PCRE2_SIZE* v = pcre2_get_ovector_pointer(data_.get());
      if (v[1] > v[0]) return std::make_pair(std::size_t(v[0]), std::size_t(v[1]));
      if (v[0] >= text.size()) return std::nullopt;  // an empty match: skipped, like the reference library
      from = v[0] + utf8_length(static_cast<unsigned char>(text[v[0]]));
    }
    return std::nullopt;
  }

 private:
  std::string where_;
  std::unique_ptr<pcre2_code, CodeDeleter> code_;
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> data_;
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> context_;
  std::unique_ptr<pcre2_jit_stack, JitStackDeleter> stack_;
};

// ---- the pipeline's steps ---------------------------------------------------------------------------------------

// A piece of text on its way to the model; `at_start`: it begins at offset 0 of the input (Metaspace "first").
struct Piece {
  std::string text;
  bool at_start = false;
};

enum class SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext };

struct Normalizer {
  enum class Kind { Prepend, Replace, Nfc } kind;
  std::string text;                // Prepend: what; Replace: the content
  std::shared_ptr<Regex> pattern;  // Replace
};

struct PreTokenizer {
  enum class Kind { Split, ByteLevel, Metaspace } kind = Kind::Split;
  std::shared_ptr<Regex> pattern;  // Split; ByteLevel with use_regex (the GPT-2 pattern)
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;             // Split: the pattern's matches are kept, the text between them is the delimiter
  bool add_prefix_space = false;   // ByteLevel
  std::string replacement;         // Metaspace
  std::string prepend = "always";  // Metaspace: always | first | never
  bool split = true;               // Metaspace
};

struct Decoder {
  enum class Kind { ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip } kind = Kind::ByteLevel;
  std::shared_ptr<Regex> pattern;  // Replace
  std::string text;                // Replace: content; Metaspace: replacement; Strip: content
  bool prepend = true;             // Metaspace: strip the first token's leading space
  int start = 0, stop = 0;         // Strip
};

struct AddedToken {
  std::string content;
  std::int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The text cut into the pattern's matches and the spans between them, in order, each flagged as a delimiter: a
// match is one, unless invert (Hugging Face's Invert pattern: the matches are kept and the text between is cut).
struct Segment {
  std::size_t begin, end;
  bool delimiter;
};
std::vector<Segment> segments(std::string_view text, const Regex& regex, bool invert) {
  std::vector<Segment> out;
  std::size_t at = 0;
  while (auto m = regex.find(text, at)) {
    if (m->first > at) out.push_back({at, m->first, invert});
    out.push_back({m->first, m->second, !invert});
    at = m->second;
  }
  if (at < text.size()) out.push_back({at, text.size(), invert});
  return out;
}

// Hugging Face's SplitDelimiterBehavior over the segments: Isolated keeps every segment as a piece, Removed drops the
// delimiters, MergedWithPrevious / MergedWithNext join a delimiter to the segment before / after it unless that one
// is a delimiter too.
std::vector<Piece> split_piece(const Piece& piece, const Regex& regex, SplitBehavior behavior, bool invert = false) {
  std::vector<Segment> parts = segments(piece.text, regex, invert);
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const auto& p : parts) spans.emplace_back(p.begin, p.end);
      break;
    case SplitBehavior::Removed:
      for (const auto& p : parts)
        if (!p.delimiter) spans.emplace_back(p.begin, p.end);
      break;
    case SplitBehavior::MergedWithPrevious:
      for (std::size_t i = 0; i < parts.size(); ++i) {
        if (parts[i].delimiter && i > 0 && !parts[i - 1].delimiter)
          spans.back().second = parts[i].end;
        else
          spans.emplace_back(parts[i].begin, parts[i].end);
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (std::size_t i = parts.size(); i-- > 0;) {
        if (parts[i].delimiter && i + 1 < parts.size() && !parts[i + 1].delimiter)
          spans.back().first = parts[i].begin;
        else
          spans.emplace_back(parts[i].begin, parts[i].end);
      }
      std::reverse(spans.begin(), spans.end());
      break;
  }
  std::vector<Piece> out;
  out.reserve(spans.size());
  for (const auto& [begin, end] : spans)
    if (end > begin) out.push_back({piece.text.substr(begin, end - begin), piece.at_start && begin == 0});
  return out;
}

std::string replace_all(std::string_view text, const Regex& pattern, std::string_view content) {
  std::string out;
  std::size_t at = 0;
  while (auto m = pattern.find(text, at)) {
    out.append(text.substr(at, m->first - at));
    out.append(content);
    at = m->second;
  }
  out.append(text.substr(at));
  return out;
}

// ---- reading tokenizer.json -------------------------------------------------------------------------------------

std::string type_of(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
}

// A pattern object {"String": "..."} (literal) or {"Regex": "..."}.
std::shared_ptr<Regex> read_pattern(const json& j, const std::string& where) {
  STRATA_CHECK(j.is_object(), Config, where, ": a pattern must be {\"String\": ...} or {\"Regex\": ...}");
  if (j.contains("String")) return std::make_shared<Regex>(j["String"].get<std::string>(), true, where);
  if (j.contains("Regex")) return std::make_shared<Regex>(j["Regex"].get<std::string>(), false, where);
  throw Error(ErrorKind::Config, cat(where, ": a pattern must be {\"String\": ...} or {\"Regex\": ...}"));
}

}  // namespace

// ---- the tokenizer ----------------------------------------------------------------------------------------------

struct HfTokenizer::Impl {
  std::string path;
  std::vector<AddedToken> added;
  std::array<std::vector<std::size_t>, 256> added_by_first_byte;  // indices into `added`, longest first
  bool any_normalized_added = false;
  std::vector<Normalizer> normalizers;
  std::vector<PreTokenizer> pre_tokenizers;
  std::vector<Decoder> decoders;

  // BPE model
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, std::int32_t, Hash, std::equal_to<>> vocab;
  std::vector<std::string> id_to_token;  // vocabulary and added tokens
  std::vector<bool> is_special;
  struct Merge {
    std::int32_t rank, id;
  };
  std::unordered_map<std::uint64_t, Merge> merges;
  std::array<std::int32_t, 256> byte_fallback_id{};
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  std::int32_t unk_id = -1;

  std::vector<std::int32_t> prefix_ids, suffix_ids;  // the template around the text
  std::int32_t bos = -1;
  std::vector<std::int32_t> eos;

  mutable std::mutex mutex;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>, Hash, std::equal_to<>> cache;

  void read(const json& j, const json& generation_config, const json& tokenizer_config);
  void read_model(const json& m);
  void read_added(const json& list);
  void read_normalizer(const json& n);
  void read_pre_tokenizer(const json& p);
  void read_decoder(const json& d);
  void read_post_processor(const json& p);
  void choose_bos_eos(const json& generation_config, const json& tokenizer_config);
  std::int32_t token_id(const std::string& token, const std::string& what) const;

  // Splits `text` at added tokens (those with normalized == `normalized`): calls on_text(text section, offset) and
  // on_added(id) in order.
  template <typename OnText, typename OnAdded>
  void split_added(std::string_view text, bool normalized, OnText on_text, OnAdded on_added) const;
  std::string normalize(std::string_view text) const;
  void encode_section(std::string_view text, bool at_start, std::vector<std::int32_t>& ids) const;
  void pre_tokenize_and_bpe(std::string_view normalized, bool at_start, std::vector<std::int32_t>& ids) const;
  void split_byte_level_bpe(std::string_view text, const Regex& regex, std::vector<std::int32_t>& ids) const;
  void bpe(std::string_view word, std::vector<std::int32_t>& ids) const;
  void bpe_uncached(std::string_view word, std::vector<std::int32_t>& ids) const;
};

std::int32_t HfTokenizer::Impl::token_id(const std::string& token, const std::string& what) const {
  for (const auto& a : added)
    if (a.content == token) return a.id;
  const auto it = vocab.find(token);
  STRATA_CHECK(it != vocab.end(), Config, path, ": ", what, " '", token, "' is not in the vocabulary");
  return it->second;
}

void HfTokenizer::Impl::read_model(const json& m) {
  const std::string type = type_of(m);
  STRATA_CHECK(type == "BPE" || (type.empty() && m.contains("merges")), Config, path, ": model type '", type,
               "' is not supported (only BPE: Llama, Mistral, Qwen2, TinyLlama)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    STRATA_CHECK(!m.contains(key) || m[key].is_null() || m[key] == "", Config, path, ": BPE ", key,
                 " is not supported");
  STRATA_CHECK(!m.contains("dropout") || m["dropout"].is_null() || m["dropout"] == 0, Config, path,
               ": BPE dropout is not supported (inference tokenizes deterministically)");
  STRATA_CHECK(m.contains("vocab") && m["vocab"].is_object(), Config, path, ": model.vocab is missing");
  for (const auto& [token, id] : m["vocab"].items()) {
    STRATA_CHECK(id.is_number_integer() && id.get<std::int64_t>() >= 0 && id.get<std::int64_t>() < (1 << 30), Config,
                 path, ": vocabulary id of '", token, "' is not a valid id");
    vocab.emplace(token, id.get<std::int32_t>());
  }
  std::int32_t max_id = -1;
  for (const auto& [token, id] : vocab) max_id = std::max(max_id, id);
  id_to_token.assign(std::size_t(max_id + 1), std::string());
  for (const auto& [token, id] : vocab) id_to_token[std::size_t(id)] = token;

  byte_fallback = m.value("byte_fallback", false);
  fuse_unk = m.value("fuse_unk", false);
  ignore_merges = m.value("ignore_merges", false);
  if (m.contains("unk_token") && m["unk_token"].is_string()) unk_id = token_id(m["unk_token"], "unk_token");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const auto it = vocab.find(std::string_view(name));
    byte_fallback_id[std::size_t(b)] = it == vocab.end() ? -1 : it->second;
  }

  const json& list = m.value("merges", json::array());
  std::int32_t rank = 0;
  for (const auto& merge : list) {
    std::string left, right;
    if (merge.is_string()) {  // "a b"
      const std::string s = merge.get<std::string>();
      const auto space = s.find(' ', 1);
      STRATA_CHECK(space != std::string::npos, Config, path, ": merge ", rank, " '", s, "' is not 'left right'");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else {  // ["a", "b"]
      STRATA_CHECK(merge.is_array() && merge.size() == 2, Config, path, ": merge ", rank, " is not a pair");
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    }
    const auto a = vocab.find(left), b = vocab.find(right), ab = vocab.find(left + right);
    STRATA_CHECK(a != vocab.end() && b != vocab.end() && ab != vocab.end(), Config, path, ": merge ", rank, " '", left,
                 " ", right, "' uses a token that is not in the vocabulary");
    const std::uint64_t key = (std::uint64_t(std::uint32_t(a->second)) << 32) | std::uint32_t(b->second);
    merges.emplace(key, Merge{rank, ab->second});
    ++rank;
  }
}

void HfTokenizer::Impl::read_added(const json& list) {
  if (list.is_null()) return;
  STRATA_CHECK(list.is_array(), Config, path, ": added_tokens must be a list");
  for (const auto& t : list) {
    AddedToken a;
    a.content = t.at("content").get<std::string>();
    a.id = t.at("id").get<std::int32_t>();
    STRATA_CHECK(a.id >= 0 && a.id < (1 << 30) && !a.content.empty(), Config, path, ": added token '", a.content,
                 "' has an invalid id or is empty");
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    a.normalized = t.value("normalized", !a.special);
    any_normalized_added = any_normalized_added || a.normalized;
    added.push_back(a);
  }
  for (std::size_t i = 0; i < added.size(); ++i)
    added_by_first_byte[static_cast<unsigned char>(added[i].content[0])].push_back(i);
  for (auto& list_for_byte : added_by_first_byte)
    std::stable_sort(list_for_byte.begin(), list_for_byte.end(),
                     [&](std::size_t x, std::size_t y) { return added[x].content.size() > added[y].content.size(); });
  for (const auto& a : added) {
    if (std::size_t(a.id) >= id_to_token.size()) id_to_token.resize(std::size_t(a.id) + 1);
    id_to_token[std::size_t(a.id)] = a.content;
  }
  is_special.assign(id_to_token.size(), false);
  for (const auto& a : added) is_special[std::size_t(a.id)] = a.special;
}

void HfTokenizer::Impl::read_normalizer(const json& n) {
  const std::string type = type_of(n);
  if (n.is_null()) return;
  if (type == "Sequence") {
    for (const auto& child : n.at("normalizers")) read_normalizer(child);
  } else if (type == "Prepend") {
    normalizers.push_back({Normalizer::Kind::Prepend, n.at("prepend").get<std::string>(), nullptr});
  } else if (type == "Replace") {
    normalizers.push_back(
        {Normalizer::Kind::Replace, n.at("content").get<std::string>(), read_pattern(n.at("pattern"), path)});
  } else if (type == "NFC") {
    normalizers.push_back({Normalizer::Kind::Nfc, "", nullptr});
  } else {
    throw Error(ErrorKind::Config,
                cat(path, ": normalizer '", type, "' is not supported (supported: Sequence, Prepend, Replace, NFC)"));
  }
}

void HfTokenizer::Impl::read_pre_tokenizer(const json& p) {
  const std::string type = type_of(p);
  if (p.is_null()) return;
  if (type == "Sequence") {
    for (const auto& child : p.at("pretokenizers")) read_pre_tokenizer(child);
  } else if (type == "Split") {
    PreTokenizer t;
    t.kind = PreTokenizer::Kind::Split;
    t.pattern = read_pattern(p.at("pattern"), path);
    const std::string behavior = p.value("behavior", "Isolated");
    if (behavior == "Isolated")
      t.behavior = SplitBehavior::Isolated;
    else if (behavior == "Removed")
      t.behavior = SplitBehavior::Removed;
    else if (behavior == "MergedWithPrevious")
      t.behavior = SplitBehavior::MergedWithPrevious;
    else if (behavior == "MergedWithNext")
      t.behavior = SplitBehavior::MergedWithNext;
    else
      throw Error(ErrorKind::Config, cat(path, ": Split behavior '", behavior, "' is not supported"));
    t.invert = p.value("invert", false);
    pre_tokenizers.push_back(t);
  } else if (type == "ByteLevel") {
    PreTokenizer t;
    t.kind = PreTokenizer::Kind::ByteLevel;
    t.add_prefix_space = p.value("add_prefix_space", true);
    if (p.value("use_regex", true)) t.pattern = std::make_shared<Regex>(kGpt2Pattern, false, path);
    pre_tokenizers.push_back(t);
  } else if (type == "Metaspace") {
    PreTokenizer t;
    t.kind = PreTokenizer::Kind::Metaspace;
    t.replacement = p.value("replacement", "\xE2\x96\x81");
    if (p.contains("prepend_scheme") && p["prepend_scheme"].is_string())
      t.prepend = p["prepend_scheme"].get<std::string>();
    else
      t.prepend = p.value("add_prefix_space", true) ? "always" : "never";
    STRATA_CHECK(t.prepend == "always" || t.prepend == "first" || t.prepend == "never", Config, path,
                 ": Metaspace prepend_scheme '", t.prepend, "' is not always, first or never");
    t.split = p.value("split", true);
    t.pattern = std::make_shared<Regex>(t.replacement, true, path);  // where split cuts (before each replacement)
    pre_tokenizers.push_back(t);
  } else if (type == "Digits") {
    PreTokenizer t;
    t.kind = PreTokenizer::Kind::Split;
    t.pattern = std::make_shared<Regex>(p.value("individual_digits", false) ? "[0-9]" : "[0-9]+", false, path);
    pre_tokenizers.push_back(t);
  } else {
    throw Error(ErrorKind::Config,
                cat(path, ": pre_tokenizer '", type,
                    "' is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits)"));
  }
}

void HfTokenizer::Impl::read_decoder(const json& d) {
  const std::string type = type_of(d);
  if (d.is_null()) return;
  if (type == "Sequence") {
    for (const auto& child : d.at("decoders")) read_decoder(child);
  } else if (type == "ByteLevel") {
    decoders.emplace_back().kind = Decoder::Kind::ByteLevel;
  } else if (type == "Metaspace") {
    Decoder x;
    x.kind = Decoder::Kind::Metaspace;
    x.text = d.value("replacement", "\xE2\x96\x81");
    const std::string scheme = d.contains("prepend_scheme") && d["prepend_scheme"].is_string()
                                   ? d["prepend_scheme"].get<std::string>()
                                   : (d.value("add_prefix_space", true) ? "always" : "never");
    x.prepend = scheme != "never";
    decoders.push_back(x);
  } else if (type == "Replace") {
    Decoder x;
    x.kind = Decoder::Kind::Replace;
    x.pattern = read_pattern(d.at("pattern"), path);
    x.text = d.at("content").get<std::string>();
    decoders.push_back(x);
  } else if (type == "ByteFallback") {
    decoders.emplace_back().kind = Decoder::Kind::ByteFallback;
  } else if (type == "Fuse") {
    decoders.emplace_back().kind = Decoder::Kind::Fuse;
  } else if (type == "Strip") {
    Decoder x;
    x.kind = Decoder::Kind::Strip;
    x.text = d.at("content").get<std::string>();
    x.start = d.value("start", 0);
    x.stop = d.value("stop", 0);
    decoders.push_back(x);
  } else {
    throw Error(ErrorKind::Config,
                cat(path, ": decoder '", type,
                    "' is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, "
                    "Strip)"));
  }
}

// Only the single-sequence template matters for generation: the special tokens before and after $A.
void HfTokenizer::Impl::read_post_processor(const json& p) {
  const std::string type = type_of(p);
  if (p.is_null() || type == "ByteLevel") return;  // ByteLevel only adjusts offsets
  if (type == "Sequence") {
    for (const auto& child : p.at("processors")) read_post_processor(child);
  } else if (type == "TemplateProcessing") {
    bool seen_text = false;
    for (const auto& item : p.at("single")) {
      if (item.contains("Sequence")) {
        seen_text = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id").get<std::string>();
        std::vector<std::int32_t> ids;
        const json& table = p.value("special_tokens", json::object());
        if (table.contains(name) && table[name].contains("ids"))
          ids = table[name]["ids"].get<std::vector<std::int32_t>>();
        else
          ids = {token_id(name, "template token")};
        auto& into = seen_text ? suffix_ids : prefix_ids;
        into.insert(into.end(), ids.begin(), ids.end());
      }
    }
  } else {
    throw Error(ErrorKind::Config, cat(path, ": post_processor '", type,
                                       "' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)"));
  }
}

// BOS: the template's tokens before the text, else a special token of a family that starts text with one (<s>,
// <|begin_of_text|>: Llama 3 files without a template). generation_config's bos_token_id is not used: Qwen2 lists
// one but adds none. EOS: the generation_config's id(s), else the special tokens that end text in these families;
// and tokenizer_config.json's eos_token too (a chat model's end of turn, e.g. <|im_end|>, may be only there).
void HfTokenizer::Impl::choose_bos_eos(const json& generation_config, const json& tokenizer_config) {
  const auto special_named = [&](std::initializer_list<const char*> names) {
    std::vector<std::int32_t> ids;
    for (const char* name : names)
      for (const auto& a : added)
        if (a.special && a.content == name) ids.push_back(a.id);
    return ids;
  };
  const json& g = generation_config.is_object() ? generation_config : json::object();
  if (!prefix_ids.empty())
    bos = prefix_ids.front();
  else if (auto ids = special_named({"<s>", "<|begin_of_text|>"}); !ids.empty())
    bos = ids.front();
  if (g.contains("eos_token_id") && g["eos_token_id"].is_number_integer())
    eos = {g["eos_token_id"].get<std::int32_t>()};
  else if (g.contains("eos_token_id") && g["eos_token_id"].is_array())
    eos = g["eos_token_id"].get<std::vector<std::int32_t>>();
  else
    eos = special_named({"</s>", "<|end_of_text|>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>"});
  if (tokenizer_config.is_object() && tokenizer_config.value("eos_token", json()).is_string()) {
    const std::int32_t id =
        token_id(tokenizer_config["eos_token"].get<std::string>(), "tokenizer_config.json's eos_token");
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  }
  STRATA_CHECK(!eos.empty(), Config, path,
               ": no end-of-sequence token: none in generation_config.json and no special token "
               "</s>, <|end_of_text|>, <|eot_id|>, <|endoftext|> or <|im_end|>");
}

void HfTokenizer::Impl::read(const json& j, const json& generation_config, const json& tokenizer_config) {
  STRATA_CHECK(j.is_object() && j.contains("model"), Config, path, ": not a tokenizer.json (no \"model\")");
  read_model(j["model"]);
  read_added(j.value("added_tokens", json::array()));
  read_normalizer(j.value("normalizer", json()));
  read_pre_tokenizer(j.value("pre_tokenizer", json()));
  read_post_processor(j.value("post_processor", json()));
  read_decoder(j.value("decoder", json()));
  if (is_special.size() < id_to_token.size()) is_special.resize(id_to_token.size(), false);
  choose_bos_eos(generation_config, tokenizer_config);
}

// ---- encoding ---------------------------------------------------------------------------------------------------

namespace {
bool is_word_byte(unsigned char c) { return c >= 0x80 || std::isalnum(c) || c == '_'; }
bool is_space_byte(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
}  // namespace

// Leftmost-longest matching, as the reference library's Aho-Corasick (LeftmostLongest) does.
template <typename OnText, typename OnAdded>
void HfTokenizer::Impl::split_added(std::string_view text, bool normalized, OnText on_text, OnAdded on_added) const {
  std::size_t done = 0, i = 0;
  while (i < text.size()) {
    const auto& candidates = added_by_first_byte[static_cast<unsigned char>(text[i])];
    const AddedToken* hit = nullptr;
    for (std::size_t k : candidates) {
      const AddedToken& a = added[k];
      if (a.normalized != normalized || text.compare(i, a.content.size(), a.content) != 0) continue;
      const std::size_t end = i + a.content.size();
      if (a.single_word && ((i > 0 && is_word_byte(static_cast<unsigned char>(text[i - 1]))) ||
                            (end < text.size() && is_word_byte(static_cast<unsigned char>(text[end])))))
        continue;
      hit = &a;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    std::size_t begin = i, end = i + hit->content.size();
    if (hit->lstrip)
      while (begin > done && is_space_byte(static_cast<unsigned char>(text[begin - 1]))) --begin;
    if (hit->rstrip)
      while (end < text.size() && is_space_byte(static_cast<unsigned char>(text[end]))) ++end;
    if (begin > done) on_text(text.substr(done, begin - done), done);
    on_added(hit->id);
    done = i = end;
  }
  if (done < text.size()) on_text(text.substr(done), done);
}

std::string HfTokenizer::Impl::normalize(std::string_view text) const {
  std::string s(text);
  for (const auto& n : normalizers) {
    switch (n.kind) {
      case Normalizer::Kind::Prepend:
        if (!s.empty()) s.insert(0, n.text);
        break;
      case Normalizer::Kind::Replace:
        s = replace_all(s, *n.pattern, n.text);
        break;
      case Normalizer::Kind::Nfc: {
        if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) break;
        UErrorCode status = U_ZERO_ERROR;
        const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
        STRATA_CHECK(U_SUCCESS(status), Internal, path, ": ICU NFC normalizer unavailable: ", u_errorName(status));
        if (nfc->isNormalizedUTF8(icu::StringPiece(s.data(), std::int32_t(s.size())), status) && U_SUCCESS(status))
          break;
        status = U_ZERO_ERROR;
        std::string out;
        icu::StringByteSink<std::string> sink(&out);
        nfc->normalizeUTF8(0, icu::StringPiece(s.data(), std::int32_t(s.size())), sink, nullptr, status);
        STRATA_CHECK(U_SUCCESS(status), Internal, path, ": NFC normalization failed: ", u_errorName(status));
        s = std::move(out);
        break;
      }
    }
  }
  return s;
}

void HfTokenizer::Impl::encode_section(std::string_view text, bool at_start, std::vector<std::int32_t>& ids) const {
  if (normalizers.empty()) return pre_tokenize_and_bpe(text, at_start, ids);
  pre_tokenize_and_bpe(normalize(text), at_start, ids);
}

// The byte-level families' pipeline (Split Isolated, then ByteLevel without its own regex or prefix: Llama 3,
// Qwen2) without intermediate piece lists: each regex match and gap is mapped into one reused buffer and looked up.
void HfTokenizer::Impl::split_byte_level_bpe(std::string_view text, const Regex& regex,
                                             std::vector<std::int32_t>& ids) const {
  const auto& table = byte_level().to_char;
  std::string mapped;
  const auto emit = [&](std::string_view part) {
    if (part.empty()) return;
    mapped.clear();
    for (unsigned char c : part) mapped += table[c];
    bpe(mapped, ids);
  };
  std::size_t at = 0;
  while (auto m = regex.find(text, at)) {
    emit(text.substr(at, m->first - at));
    emit(text.substr(m->first, m->second - m->first));
    at = m->second;
  }
  emit(text.substr(at));
}

void HfTokenizer::Impl::pre_tokenize_and_bpe(std::string_view normalized, bool at_start,
                                             std::vector<std::int32_t>& ids) const {
  if (pre_tokenizers.size() == 2 && pre_tokenizers[0].kind == PreTokenizer::Kind::Split &&
      pre_tokenizers[0].behavior == SplitBehavior::Isolated && !pre_tokenizers[0].invert &&
      pre_tokenizers[1].kind == PreTokenizer::Kind::ByteLevel && !pre_tokenizers[1].pattern &&
      !pre_tokenizers[1].add_prefix_space)
    return split_byte_level_bpe(normalized, *pre_tokenizers[0].pattern, ids);
  std::vector<Piece> pieces{{std::string(normalized), at_start}};
  for (const auto& p : pre_tokenizers) {
    std::vector<Piece> next;
    for (auto& piece : pieces) {
      switch (p.kind) {
        case PreTokenizer::Kind::Split:
          for (auto& part : split_piece(piece, *p.pattern, p.behavior, p.invert)) next.push_back(std::move(part));
          break;
        case PreTokenizer::Kind::ByteLevel: {
          if (p.add_prefix_space && (piece.text.empty() || piece.text[0] != ' ')) piece.text.insert(0, " ");
          std::vector<Piece> parts;
          if (p.pattern)
            parts = split_piece(piece, *p.pattern, SplitBehavior::Isolated);
          else
            parts.push_back(std::move(piece));
          const auto& table = byte_level().to_char;
          for (auto& part : parts) {
            std::string mapped;
            mapped.reserve(part.text.size() * 2);
            for (unsigned char c : part.text) mapped += table[c];
            next.push_back({std::move(mapped), part.at_start});
          }
          break;
        }
        case PreTokenizer::Kind::Metaspace: {
          std::string s;
          s.reserve(piece.text.size() + p.replacement.size());
          for (char c : piece.text) {
            if (c == ' ')
              s.append(p.replacement);
            else
              s.push_back(c);
          }
          const bool prepend = p.prepend == "always" || (p.prepend == "first" && piece.at_start);
          if (prepend && s.compare(0, p.replacement.size(), p.replacement) != 0) s.insert(0, p.replacement);
          Piece whole{std::move(s), piece.at_start};
          if (!p.split) {
            next.push_back(std::move(whole));
          } else {
            for (auto& part : split_piece(whole, *p.pattern, SplitBehavior::MergedWithNext))
              next.push_back(std::move(part));
          }
          break;
        }
      }
    }
    pieces = std::move(next);
  }
  for (const auto& piece : pieces)
    if (!piece.text.empty()) bpe(piece.text, ids);
}

void HfTokenizer::Impl::bpe(std::string_view word, std::vector<std::int32_t>& ids) const {
  constexpr std::size_t kCachedWordBytes = 256, kCacheEntries = 1 << 18;
  if (word.size() > kCachedWordBytes) return bpe_uncached(word, ids);
  if (const auto it = cache.find(word); it != cache.end()) {
    ids.insert(ids.end(), it->second.begin(), it->second.end());
    return;
  }
  const std::size_t from = ids.size();
  bpe_uncached(word, ids);
  if (cache.size() >= kCacheEntries) cache.clear();  // bounded memory on endless distinct words
  cache.emplace(std::string(word), std::vector<std::int32_t>(ids.begin() + std::ptrdiff_t(from), ids.end()));
}

// Rank-ordered merging over a linked list of symbols with a priority queue of candidate pairs (lowest rank, then
// leftmost, first); stale candidates are recognised and dropped when popped.
void HfTokenizer::Impl::bpe_uncached(std::string_view word, std::vector<std::int32_t>& ids) const {
  if (ignore_merges)
    if (const auto it = vocab.find(word); it != vocab.end()) {
      ids.push_back(it->second);
      return;
    }
  struct Symbol {
    std::int32_t id;
    std::int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (std::size_t i = 0; i < word.size();) {
    const std::size_t n = std::min(utf8_length(static_cast<unsigned char>(word[i])), word.size() - i);
    const std::string_view ch = word.substr(i, n);
    i += n;
    if (const auto it = vocab.find(ch); it != vocab.end()) {
      symbols.push_back({it->second, 0, 0, true});
      continue;
    }
    if (byte_fallback && std::all_of(ch.begin(), ch.end(),
                                     [&](char c) { return byte_fallback_id[static_cast<unsigned char>(c)] >= 0; })) {
      for (char c : ch) symbols.push_back({byte_fallback_id[static_cast<unsigned char>(c)], 0, 0, true});
      continue;
    }
    if (unk_id < 0) continue;  // no unknown token: the character is dropped, as the reference library does
    if (fuse_unk && !symbols.empty() && symbols.back().id == unk_id) continue;
    symbols.push_back({unk_id, 0, 0, true});
  }
  const std::int32_t n = std::int32_t(symbols.size());
  for (std::int32_t k = 0; k < n; ++k) {
    symbols[std::size_t(k)].prev = k - 1;
    symbols[std::size_t(k)].next = k + 1 < n ? k + 1 : -1;
  }
  struct Candidate {
    std::int32_t rank, pos, id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const auto lookup = [&](std::int32_t left) -> const Merge* {
    const std::int32_t right = symbols[std::size_t(left)].next;
    if (right < 0) return nullptr;
    const std::uint64_t key = (std::uint64_t(std::uint32_t(symbols[std::size_t(left)].id)) << 32) |
                              std::uint32_t(symbols[std::size_t(right)].id);
    const auto it = merges.find(key);
    return it == merges.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  for (std::int32_t k = 0; k + 1 < n; ++k)
    if (const Merge* m = lookup(k)) queue.push({m->rank, k, m->id});
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[std::size_t(c.pos)];
    if (!left.alive || left.next < 0) continue;
    const Merge* m = lookup(c.pos);
    if (!m || m->id != c.id || m->rank != c.rank) continue;  // stale: a neighbour changed since it was queued
    Symbol& right = symbols[std::size_t(left.next)];
    left.id = c.id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[std::size_t(right.next)].prev = c.pos;
    if (left.prev >= 0)
      if (const Merge* p = lookup(left.prev)) queue.push({p->rank, left.prev, p->id});
    if (const Merge* q = lookup(c.pos)) queue.push({q->rank, c.pos, q->id});
  }
  for (std::int32_t k = n > 0 ? 0 : -1; k >= 0; k = symbols[std::size_t(k)].next)
    ids.push_back(symbols[std::size_t(k)].id);
}

// ---- HfTokenizer ------------------------------------------------------------------------------------------------

namespace {
// One decoder of the chain over the token strings (the reference library's decode_chain semantics).
void run_decoder(const Decoder& d, std::vector<std::string>& tokens) {
  const auto& to_byte = byte_level().to_byte;
  switch (d.kind) {
    case Decoder::Kind::ByteLevel: {
      std::string bytes;
      for (const auto& t : tokens) {
        std::string mapped;
        bool all = true;
        for (std::size_t i = 0; i < t.size() && all;) {
          const std::size_t n = std::min(utf8_length(static_cast<unsigned char>(t[i])), t.size() - i);
          const auto it = to_byte.find(decode_utf8(std::string_view(t).substr(i, n)));
          if (it == to_byte.end())
            all = false;
          else
            mapped += char(it->second);
          i += n;
        }
        bytes += all ? mapped : t;
      }
      tokens = {bytes};
      break;
    }
    case Decoder::Kind::Metaspace:
      // Replacement characters become spaces, except in the first token, where they are dropped (the prefix
      // the pre-tokenizer added), as the reference library does.
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        std::string s;
        for (std::size_t at = 0; at < tokens[i].size();) {
          if (tokens[i].compare(at, d.text.size(), d.text) == 0) {
            if (i > 0 || !d.prepend) s += ' ';
            at += d.text.size();
          } else {
            s += tokens[i][at++];
          }
        }
        tokens[i] = std::move(s);
      }
      break;
    case Decoder::Kind::Replace:
      for (auto& t : tokens) t = replace_all(t, *d.pattern, d.text);
      break;
    case Decoder::Kind::ByteFallback: {
      std::vector<std::string> out;
      std::string pending;
      std::size_t pending_count = 0;
      const auto flush = [&] {
        if (pending_count == 0) return;
        if (repair_utf8(pending) == pending)
          out.push_back(pending);
        else
          for (std::size_t k = 0; k < pending_count; ++k) out.emplace_back(kReplacementChar);
        pending.clear();
        pending_count = 0;
      };
      for (auto& t : tokens) {
        unsigned value = 0;
        if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
            std::sscanf(t.c_str() + 3, "%2X", &value) == 1 && std::isxdigit(static_cast<unsigned char>(t[3])) &&
            std::isxdigit(static_cast<unsigned char>(t[4]))) {
          pending += char(value);
          ++pending_count;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      tokens = std::move(out);
      break;
    }
    case Decoder::Kind::Fuse: {
      std::string all;
      for (const auto& t : tokens) all += t;
      tokens = {all};
      break;
    }
    case Decoder::Kind::Strip:
      for (auto& t : tokens) {
        std::size_t begin = 0, end = t.size();
        for (int k = 0; k < d.start && t.compare(begin, d.text.size(), d.text) == 0 && begin + d.text.size() <= end;
             ++k)
          begin += d.text.size();
        for (int k = 0;
             k < d.stop && end >= begin + d.text.size() && t.compare(end - d.text.size(), d.text.size(), d.text) == 0;
             ++k)
          end -= d.text.size();
        t = t.substr(begin, end - begin);
      }
      break;
  }
}

}  // namespace

std::string repair_utf8(std::string_view text) {
  std::size_t i = 0, maximal = 0;
  while (i < text.size()) {  // fast path: find the first invalid byte
    const std::size_t n = utf8_sequence(text, i, maximal);
    if (n == 0) break;
    i += n;
  }
  if (i == text.size()) return std::string(text);
  std::string out(text.substr(0, i));
  while (i < text.size()) {
    const std::size_t n = utf8_sequence(text, i, maximal);
    if (n == 0) {
      out += kReplacementChar;
      i += maximal;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

HfTokenizer::HfTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfTokenizer::~HfTokenizer() = default;

std::unique_ptr<HfTokenizer> HfTokenizer::from_file(const std::string& path, const nlohmann::json& generation_config,
                                                    const nlohmann::json& tokenizer_config) {
  std::ifstream in(path, std::ios::binary);
  STRATA_CHECK(in, Io, path, ": cannot open the tokenizer file");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Config, cat(path, ": not valid JSON: ", e.what()));
  }
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  try {
    impl->read(j, generation_config, tokenizer_config);
  } catch (const json::exception& e) {  // a field of the wrong type or missing
    throw Error(ErrorKind::Config, cat(path, ": unexpected tokenizer.json content: ", e.what()));
  }
  return std::unique_ptr<HfTokenizer>(new HfTokenizer(std::move(impl)));
}

std::vector<std::int32_t> HfTokenizer::encode(const std::string& text, bool add_bos) const {
  const Impl& m = *impl_;
  const std::string repaired = repair_utf8(text);
  std::vector<std::int32_t> ids;
  ids.reserve(repaired.size() / 3 + 4);
  std::lock_guard<std::mutex> lock(m.mutex);
  if (add_bos) {
    if (!m.prefix_ids.empty())
      ids = m.prefix_ids;
    else if (m.bos >= 0)
      ids.push_back(m.bos);
  }
  m.split_added(
      repaired, false,
      [&](std::string_view section, std::size_t offset) {
        if (!m.any_normalized_added) return m.encode_section(section, offset == 0, ids);
        // Added tokens marked "normalized" are matched in the normalized text; what remains is not normalized again.
        const std::string normalized = m.normalize(section);
        m.split_added(
            normalized, true,
            [&](std::string_view rest, std::size_t at) { m.pre_tokenize_and_bpe(rest, offset == 0 && at == 0, ids); },
            [&](std::int32_t id) { ids.push_back(id); });
      },
      [&](std::int32_t id) { ids.push_back(id); });
  if (add_bos) ids.insert(ids.end(), m.suffix_ids.begin(), m.suffix_ids.end());
  return ids;
}

std::string HfTokenizer::decode(std::span<const std::int32_t> ids) const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);  // Replace decoders share their regex match data
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (auto id : ids) {
    if (id < 0 || std::size_t(id) >= m.id_to_token.size())
      tokens.emplace_back(kReplacementChar);
    else if (!m.is_special[std::size_t(id)])
      tokens.push_back(m.id_to_token[std::size_t(id)]);
  }
  for (const auto& d : m.decoders) run_decoder(d, tokens);
  std::string text;
  for (const auto& t : tokens) text += t;
  return repair_utf8(text);  // byte-level tokens cut inside a character decode to U+FFFD, never to invalid UTF-8
}

std::int32_t HfTokenizer::bos_id() const { return impl_->bos; }
std::int32_t HfTokenizer::eos_id() const { return impl_->eos.front(); }
bool HfTokenizer::is_eos(std::int32_t id) const {
  return std::find(impl_->eos.begin(), impl_->eos.end(), id) != impl_->eos.end();
}
const std::vector<std::int32_t>& HfTokenizer::eos_ids() const { return impl_->eos; }
std::int64_t HfTokenizer::vocab_size() const { return std::int64_t(impl_->id_to_token.size()); }

nlohmann::json HfTokenizer::to_json() const {
  return {{"type", "huggingface"},
          {"file", impl_->path},
          {"bos_token_id", impl_->bos},
          {"eos_token_ids", impl_->eos},
          {"vocab_size", vocab_size()}};
}

}  // namespace strata
