// HfTokenizer's pieces on small hand-written tokenizer.json files whose right answers are worked out by hand:
// merges applied by rank (and leftmost first on ties), byte fallback and its decoding, unknown tokens, added tokens
// (longest match, lstrip/rstrip, special ones skipped when decoding), NFC, EOS ids, UTF-8 repair, refused files.
// The real files are compared with the reference library in tests/tokenizer/.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "io/hf_tokenizer.h"
#include "runtime/base/error.h"
#include "tests/unit/hf_fixtures.h"

using namespace strata;
using strata::test::load;
using strata::test::sentencepiece;
using json = nlohmann::json;
using Ids = std::vector<std::int32_t>;
namespace fs = std::filesystem;

namespace {

std::string error_of(const std::string& name, const json& j) {
  try {
    load(name, j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A byte-free BPE over letters, no pre-tokenizer: the whole text is one word.
json letters(json merges) {
  return {{"model",
           {{"type", "BPE"},
            {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"aa", 6}, {"</s>", 7}}},
            {"merges", merges}}},
          {"added_tokens", json::array({{{"id", 7}, {"content", "</s>"}, {"special", true}}})}};
}

}  // namespace

TEST(HfBpe, MergesApplyInRankOrder) {
  // "abc": with "a b" ranked first the word becomes ab + c; with "b c" first, a + bc. Same merges, other order.
  EXPECT_EQ(load("r1.json", letters({"a b", "b c"}))->encode("abc", false), (Ids{3, 2}));
  EXPECT_EQ(load("r2.json", letters({"b c", "a b"}))->encode("abc", false), (Ids{0, 4}));
  EXPECT_EQ(load("r3.json", letters({"b c", "a bc"}))->encode("abc", false), (Ids{5}));
}

TEST(HfBpe, EqualRanksMergeLeftmostFirst) {
  EXPECT_EQ(load("tie.json", letters({"a a"}))->encode("aaa", false), (Ids{6, 0}));
  EXPECT_EQ(load("tie.json", letters({"a a"}))->encode("aaaa", false), (Ids{6, 6}));
}

TEST(HfBpe, MergesAsPairsAndNegativeControl) {
  json pairs = letters(json::array({json::array({"a", "b"}), json::array({"b", "c"})}));
  EXPECT_EQ(load("pairs.json", pairs)->encode("abc", false), (Ids{3, 2}));
  // Negative control: dropping the merges must change the answer.
  EXPECT_NE(load("none.json", letters(json::array()))->encode("abc", false), (Ids{3, 2}));
}

TEST(HfBpe, UnknownCharactersFuseIntoOneUnk) {
  json j = letters({"a b"});
  j["model"]["vocab"]["<unk>"] = 8;
  j["model"]["unk_token"] = "<unk>";
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(load("unk.json", j)->encode("xyab\xC3\xA9z", false), (Ids{8, 3, 8}));
  j["model"]["fuse_unk"] = false;
  EXPECT_EQ(load("unk2.json", j)->encode("xyab", false), (Ids{8, 8, 3}));
  j["model"].erase("unk_token");  // no unknown token: such characters are dropped, as the reference does
  EXPECT_EQ(load("unk3.json", j)->encode("xab", false), (Ids{3}));
}

TEST(HfSentencePiece, PrependReplaceMergeAndTemplate) {
  auto t = load("sp.json", sentencepiece());
  EXPECT_EQ(t->encode("hi", false), (Ids{263}));          // ▁hi
  EXPECT_EQ(t->encode("hi", true), (Ids{1, 263}));        // <s> from the template
  EXPECT_EQ(t->encode("hi hi", false), (Ids{263, 263}));  // the space became ▁
  EXPECT_EQ(t->encode("", false), (Ids{}));
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  EXPECT_EQ(t->decode(Ids{1, 263, 263, 2}), "hi hi");  // specials skipped, leading space stripped
}

TEST(HfSentencePiece, ByteFallbackAndItsDecoding) {
  auto t = load("sp.json", sentencepiece());
  // "é" is not in the vocabulary: its two UTF-8 bytes C3 A9 become <0xC3> <0xA9> (ids 3 + byte).
  EXPECT_EQ(t->encode("h\xC3\xA9", false), (Ids{262, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t->decode(Ids{262, 3 + 0xC3, 3 + 0xA9}), "h\xC3\xA9");
  // A lone continuation byte token is invalid UTF-8: one U+FFFD per byte, never invalid output.
  EXPECT_EQ(t->decode(Ids{262, 3 + 0xA9}), "h\xEF\xBF\xBD");
  EXPECT_EQ(t->decode(Ids{262, 3 + 0xE2, 3 + 0x82}), "h\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t->decode(Ids{262, 999999, -5}), "h\xEF\xBF\xBD\xEF\xBF\xBD");  // ids outside the vocabulary
}

TEST(HfAddedTokens, MatchedBeforeNormalizationLongestFirst) {
  json j = sentencepiece();
  j["model"]["vocab"]["<s>x"] = 300;
  j["added_tokens"].push_back({{"id", 300}, {"content", "<s>x"}, {"special", false}, {"normalized", false}});
  auto t = load("added.json", j);
  // Sections around added tokens are normalized separately (each gets its ▁ prefix).
  EXPECT_EQ(t->encode("hi<s>hi", false), (Ids{263, 1, 263}));
  EXPECT_EQ(t->encode("<s>xhi", false), (Ids{300, 263}));  // the longer added token wins
  EXPECT_EQ(t->decode(Ids{300, 1, 263}), "<s>x hi");       // non-special kept, special skipped
}

TEST(HfAddedTokens, LstripRstripTakeTheSpaces) {
  json j = sentencepiece();
  j["added_tokens"][2]["lstrip"] = true;
  j["added_tokens"][2]["rstrip"] = true;
  auto t = load("strip.json", j);
  EXPECT_EQ(t->encode("hi  </s>  hi", false), (Ids{263, 2, 263}));
}

TEST(HfNormalizer, NfcComposes) {
  json j = letters(json::array());
  j["model"]["vocab"]["\xC3\xA9"] = 9;  // é precomposed
  j["normalizer"] = {{"type", "NFC"}};
  EXPECT_EQ(load("nfc.json", j)->encode("e\xCC\x81", false), (Ids{9}));  // e + combining acute
}

TEST(HfTokenizer, EosIdsFromGenerationConfig) {
  auto t = load("eos.json", sentencepiece(), json{{"eos_token_id", {2, 263}}, {"bos_token_id", 1}});
  EXPECT_TRUE(t->is_eos(2));
  EXPECT_TRUE(t->is_eos(263));
  EXPECT_FALSE(t->is_eos(1));
  EXPECT_EQ(t->eos_ids(), (Ids{2, 263}));
  // No template and no <s>-like token (Qwen2): no BOS, even when generation_config names one.
  auto qwen_like = load("nobos.json", letters({"a b"}), json{{"bos_token_id", 7}, {"eos_token_id", 7}});
  EXPECT_EQ(qwen_like->bos_id(), -1);
  EXPECT_EQ(qwen_like->encode("ab", true), (Ids{3}));
}

TEST(HfTokenizer, InvalidUtf8IsRepairedBeforeEncoding) {
  EXPECT_EQ(repair_utf8("ok"), "ok");
  EXPECT_EQ(repair_utf8("a\xFF"
                        "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(repair_utf8("\xE2\x82"), "\xEF\xBF\xBD");                              // truncated: one U+FFFD
  EXPECT_EQ(repair_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate: one per byte
  EXPECT_EQ(repair_utf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong
  auto t = load("sp.json", sentencepiece());
  EXPECT_EQ(t->encode("h\xFF", false), t->encode("h\xEF\xBF\xBD", false));
}

TEST(HfTokenizer, RefusedFilesNameTheFileAndTheComponent) {
  json wordpiece = {{"model", {{"type", "WordPiece"}, {"vocab", {{"a", 0}}}}}};
  EXPECT_NE(error_of("wp.json", wordpiece).find("strata_hf_"), std::string::npos);
  EXPECT_NE(error_of("wp.json", wordpiece).find("model type 'WordPiece' is not supported"), std::string::npos);
  json bert = letters({"a b"});
  bert["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  EXPECT_NE(error_of("bert.json", bert).find("pre_tokenizer 'BertPreTokenizer'"), std::string::npos);
  json decoder = letters({"a b"});
  decoder["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(error_of("dec.json", decoder).find("decoder 'WordPiece'"), std::string::npos);
  EXPECT_NE(error_of("merge.json", letters({"a q"})).find("merge 0 'a q'"), std::string::npos);
  json wrong_type = letters({"a b"});
  wrong_type["model"]["vocab"]["a"] = "zero";
  EXPECT_NE(error_of("type.json", wrong_type).find("not a valid id"), std::string::npos);
  json no_eos = letters({"a b"});
  no_eos["added_tokens"] = json::array();
  EXPECT_NE(error_of("noeos.json", no_eos).find("no end-of-sequence token"), std::string::npos);
  try {
    HfTokenizer::from_file("/nonexistent/tokenizer.json");
    ADD_FAILURE() << "no error for a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tokenizer.json"), std::string::npos);
  }
}
