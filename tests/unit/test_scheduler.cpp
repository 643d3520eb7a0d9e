// The scheduler's bookkeeping without a model: KV-cache slots (lowest free first, a double release refused),
// admission (slots, the step's token budget, sequences spread over micro-batches), the chunks of each step
// (whole-prompt prefill, then one token at the right position) and how sequences end (max_tokens, a stop string,
// end-of-sequence, the context), each with its text and its slot handed to the next waiting request.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/scheduler.h"
#include "engine/slot_allocator.h"
#include "engine/stop_matcher.h"
#include "io/tokenizer.h"
#include "runtime/base/error.h"
#include "tests/unit/hf_fixtures.h"

using namespace strata;

namespace {

Request request(const Tokenizer& t, std::int64_t index, const std::string& prompt, std::int64_t max_tokens = 64,
                std::vector<std::string> stop = {}) {
  Request r;
  r.index = index;
  r.prompt = t.encode(prompt, true);
  r.max_tokens = max_tokens;
  r.stop = std::move(stop);
  return r;
}

std::vector<std::int32_t> bytes(const std::string& text) { return std::vector<std::int32_t>(text.begin(), text.end()); }

// One scheduler over the byte tokenizer, with what it completed collected.
struct Bench {
  ByteTokenizer tokenizer;
  StopMatcher stops;
  Scheduler scheduler;
  std::vector<Completion> done;

  Bench(std::vector<Request> requests, SchedulerLimits limits, std::int32_t max_model_len = 128)
      : stops(tokenizer, max_model_len), scheduler(std::move(requests), limits, stops, ByteTokenizer::kVocab) {}

  std::vector<ChunkMeta> step(int group, std::vector<std::int32_t>* ids = nullptr) {
    std::vector<ChunkMeta> metas;
    std::vector<std::int32_t> local;
    scheduler.build_step(group, metas, ids ? *ids : local);
    return metas;
  }
  void apply(int group, std::vector<std::int32_t> tokens) {
    StepResult result;
    result.tokens = std::move(tokens);
    result.vocab = ByteTokenizer::kVocab;
    scheduler.apply(group, result, [this](Completion&& c) { done.push_back(std::move(c)); });
  }
};

}  // namespace

TEST(SlotAllocator, LowestFreeFirstAndDoubleReleaseRefused) {
  SlotAllocator slots(3);
  EXPECT_TRUE(slots.available());
  EXPECT_EQ(slots.in_use(), 0);
  EXPECT_EQ(slots.acquire(), 0);
  EXPECT_EQ(slots.acquire(), 1);
  EXPECT_EQ(slots.acquire(), 2);
  EXPECT_EQ(slots.in_use(), 3);
  EXPECT_FALSE(slots.available());
  EXPECT_THROW(slots.acquire(), Error) << "all slots held";
  slots.release(2);
  slots.release(0);
  EXPECT_EQ(slots.in_use(), 1);
  EXPECT_EQ(slots.acquire(), 0) << "the lowest free slot, not the last released";
  EXPECT_EQ(slots.acquire(), 2);
  slots.release(1);
  EXPECT_THROW(slots.release(1), Error) << "released twice";
  EXPECT_THROW(slots.release(7), Error) << "never existed";
  EXPECT_THROW(slots.release(-1), Error);
  EXPECT_EQ(slots.in_use(), 2) << "a refused release changes nothing";
  EXPECT_EQ(slots.acquire(), 1);
  EXPECT_THROW(SlotAllocator(0), Error);
}

TEST(Scheduler, AdmissionRespectsSlotsAndTheTokenBudget) {
  ByteTokenizer t;
  {  // 2 slots for 5 requests: 2 run, 3 wait.
    std::vector<Request> rs;
    for (int i = 0; i < 5; ++i) rs.push_back(request(t, i, "abc"));
    Bench b(std::move(rs), {2, 2048, 1, false});
    b.scheduler.admit(0);
    EXPECT_EQ(b.step(0).size(), 2u);
    EXPECT_EQ(b.scheduler.waiting(), 3u);
    b.scheduler.admit(0);
    EXPECT_EQ(b.step(0).size(), 2u) << "no slot free: admitting again takes nobody";
  }
  {  // Prompts of 5 tokens (bos + 4 bytes) and a budget of 12 tokens: two prompts fit a step, the third waits.
    std::vector<Request> rs;
    for (int i = 0; i < 3; ++i) rs.push_back(request(t, i, "abcd"));
    Bench b(std::move(rs), {8, 12, 1, false});
    b.scheduler.admit(0);
    std::vector<std::int32_t> ids;
    const auto metas = b.step(0, &ids);
    ASSERT_EQ(metas.size(), 2u);
    EXPECT_EQ(ids.size(), 10u);
    EXPECT_EQ(b.scheduler.waiting(), 1u);
    EXPECT_EQ(b.scheduler.counts().prompt_tokens, 10);
    // After the prefill both decode (1 token each): 12 - 2 leaves room for the third prompt.
    b.apply(0, {'x', 'y'});
    b.scheduler.admit(0);
    EXPECT_EQ(b.step(0).size(), 3u);
    EXPECT_EQ(b.scheduler.waiting(), 0u);
  }
  {  // A budget smaller than the first prompt admits nothing (arrival order is kept: no overtaking).
    std::vector<Request> rs = {request(t, 0, "a long prompt"), request(t, 1, "a")};
    Bench b(std::move(rs), {4, 8, 1, false});
    b.scheduler.admit(0);
    EXPECT_TRUE(b.scheduler.idle(0));
    EXPECT_EQ(b.scheduler.waiting(), 2u);
  }
}

TEST(Scheduler, SequencesSpreadEvenlyOverMicroBatches) {
  ByteTokenizer t;
  // 6 slots: n requests admitted micro-batch by micro-batch, as the engine does from an empty start. Even means the
  // sizes differ by at most one, so no micro-batch idles while another holds two (a pipeline bubble).
  for (int n : {1, 2, 3, 4, 5, 7, 8, 20}) {
    for (int groups : {2, 3, 4}) {
      std::vector<Request> rs;
      for (int i = 0; i < n; ++i) rs.push_back(request(t, i, std::string(std::size_t(i + 1), 'p')));
      Bench b(std::move(rs), {6, 2048, groups, false});
      EXPECT_EQ(b.scheduler.micro_batches(), groups);
      std::vector<std::size_t> sizes;
      std::size_t total = 0;
      for (int g = 0; g < groups; ++g) {
        b.scheduler.admit(g);
        sizes.push_back(b.step(g).size());
        total += sizes.back();
      }
      const auto [low, high] = std::minmax_element(sizes.begin(), sizes.end());
      std::string spread;
      for (std::size_t size : sizes) spread += std::to_string(size) + " ";
      EXPECT_LE(*high - *low, 1u) << n << " requests over " << groups << " micro-batches (6 slots): " << spread;
      EXPECT_EQ(total, std::size_t(std::min(n, 6))) << "every slot used while requests wait";
      EXPECT_EQ(b.scheduler.waiting(), std::size_t(n - int(total)));
    }
  }
}

TEST(Scheduler, PrefillTheWholePromptThenOneTokenAtItsPosition) {
  ByteTokenizer t;
  Bench b({request(t, 0, "hello"), request(t, 1, "ab")}, {4, 2048, 1, false});
  b.scheduler.admit(0);
  std::vector<std::int32_t> ids;
  auto metas = b.step(0, &ids);
  ASSERT_EQ(metas.size(), 2u);
  // "hello": bos + 5 bytes; "ab": bos + 2 bytes, laid out back to back.
  EXPECT_EQ(metas[0].chunk.slot, 0);
  EXPECT_EQ(metas[0].chunk.start_pos, 0);
  EXPECT_EQ(metas[0].chunk.n_tokens, 6);
  EXPECT_EQ(metas[0].chunk.token_offset, 0);
  EXPECT_EQ(metas[1].chunk.slot, 1);
  EXPECT_EQ(metas[1].chunk.start_pos, 0);
  EXPECT_EQ(metas[1].chunk.n_tokens, 3);
  EXPECT_EQ(metas[1].chunk.token_offset, 6);
  std::vector<std::int32_t> expected = t.encode("hello", true);
  for (std::int32_t id : t.encode("ab", true)) expected.push_back(id);
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(metas[0].step, 0);

  b.apply(0, {'X', 'Y'});
  for (std::int32_t k = 0; k < 3; ++k) {
    metas = b.step(0, &ids);
    ASSERT_EQ(metas.size(), 2u);
    EXPECT_EQ(metas[0].chunk.start_pos, 6 + k) << "the last generated token goes at the next position";
    EXPECT_EQ(metas[0].chunk.n_tokens, 1);
    EXPECT_EQ(metas[0].chunk.token_offset, 0);
    EXPECT_EQ(metas[0].chunk.slot, 0);
    EXPECT_EQ(metas[1].chunk.start_pos, 3 + k);
    EXPECT_EQ(metas[1].chunk.n_tokens, 1);
    EXPECT_EQ(metas[1].chunk.token_offset, 1);
    EXPECT_EQ(metas[1].chunk.slot, 1);
    EXPECT_EQ(metas[0].step, 1 + k) << "index of the token this chunk generates";
    EXPECT_EQ(ids, (std::vector<std::int32_t>{'X' + k, 'Y' + k}));
    b.apply(0, {'X' + k + 1, 'Y' + k + 1});
  }
  EXPECT_EQ(b.scheduler.counts().generated_tokens, 8);
  EXPECT_TRUE(b.done.empty());
}

TEST(Scheduler, MaxTokensEndsWithLengthAndTheSlotGoesToTheNextRequest) {
  ByteTokenizer t;
  Bench b({request(t, 0, "hi", 3), request(t, 1, "there", 2)}, {1, 2048, 1, false});
  b.scheduler.admit(0);
  EXPECT_EQ(b.scheduler.waiting(), 1u);
  b.step(0);
  b.apply(0, {'a'});
  b.step(0);
  b.apply(0, {'b'});
  EXPECT_TRUE(b.done.empty()) << "2 of 3 tokens";
  b.scheduler.admit(0);
  EXPECT_EQ(b.scheduler.waiting(), 1u) << "the only slot is still held";
  b.step(0);
  b.apply(0, {'c'});
  ASSERT_EQ(b.done.size(), 1u);
  EXPECT_EQ(b.done[0].index, 0);
  EXPECT_EQ(b.done[0].finish_reason, FinishReason::Length);
  EXPECT_EQ(b.done[0].token_ids, bytes("abc"));
  EXPECT_EQ(b.done[0].text, "abc");
  EXPECT_EQ(b.done[0].prompt_tokens, 3);
  EXPECT_TRUE(b.scheduler.idle(0));
  EXPECT_EQ(b.scheduler.counts().completed, 1);

  b.scheduler.admit(0);
  EXPECT_EQ(b.scheduler.waiting(), 0u);
  std::vector<std::int32_t> ids;
  const auto metas = b.step(0, &ids);
  ASSERT_EQ(metas.size(), 1u);
  EXPECT_EQ(metas[0].chunk.slot, 0) << "the freed slot";
  EXPECT_EQ(metas[0].chunk.start_pos, 0);
  EXPECT_EQ(metas[0].chunk.n_tokens, 6);
  EXPECT_EQ(ids, t.encode("there", true));
  b.apply(0, {'1'});
  b.step(0);
  b.apply(0, {'2'});
  ASSERT_EQ(b.done.size(), 2u);
  EXPECT_EQ(b.done[1].index, 1);
  EXPECT_EQ(b.done[1].text, "12");
  EXPECT_EQ(b.done[1].finish_reason, FinishReason::Length);
  EXPECT_EQ(b.scheduler.counts().prompt_tokens, 9);
  EXPECT_EQ(b.scheduler.counts().generated_tokens, 5);
}

TEST(Scheduler, StopStringCutsTheTextAndEndsWithStop) {
  ByteTokenizer t;
  Bench b({request(t, 0, "q", 64, {"zz", "lo"})}, {2, 2048, 1, false});
  b.scheduler.admit(0);
  for (char c : std::string("hell")) {
    b.step(0);
    b.apply(0, {c});
    EXPECT_TRUE(b.done.empty()) << "no stop string yet after '" << c << "'";
  }
  b.step(0);
  b.apply(0, {'o'});
  ASSERT_EQ(b.done.size(), 1u);
  EXPECT_EQ(b.done[0].finish_reason, FinishReason::Stop);
  EXPECT_EQ(b.done[0].text, "hel") << "cut before the stop string";
  EXPECT_EQ(b.done[0].token_ids, bytes("hello")) << "the ids keep every generated token";
  EXPECT_TRUE(b.scheduler.idle(0));
}

TEST(Scheduler, EndOfSequenceEndsWithStopAndIsNotInTheText) {
  ByteTokenizer t;
  Bench b({request(t, 0, "q"), request(t, 1, "r")}, {2, 2048, 1, false});
  b.scheduler.admit(0);
  b.step(0);
  b.apply(0, {'a', 'x'});
  b.step(0);
  b.apply(0, {'b', 'y'});
  b.step(0);
  b.apply(0, {ByteTokenizer::kEos, 'z'});
  ASSERT_EQ(b.done.size(), 1u);
  EXPECT_EQ(b.done[0].index, 0);
  EXPECT_EQ(b.done[0].finish_reason, FinishReason::Stop);
  EXPECT_EQ(b.done[0].text, "ab");
  EXPECT_EQ(b.done[0].token_ids, (std::vector<std::int32_t>{'a', 'b', ByteTokenizer::kEos}));
  // The other sequence keeps going, now alone in the step (at its own position).
  std::vector<std::int32_t> ids;
  const auto metas = b.step(0, &ids);
  ASSERT_EQ(metas.size(), 1u);
  EXPECT_EQ(metas[0].chunk.slot, 1);
  EXPECT_EQ(metas[0].chunk.start_pos, 4);
  EXPECT_EQ(ids, std::vector<std::int32_t>{'z'});
  // ignore_eos: the end-of-sequence id is just a token.
  Request bench = request(t, 0, "q", 2);
  bench.ignore_eos = true;
  Bench ignoring({bench}, {1, 2048, 1, false});
  ignoring.scheduler.admit(0);
  ignoring.step(0);
  ignoring.apply(0, {ByteTokenizer::kEos});
  EXPECT_TRUE(ignoring.done.empty());
  ignoring.step(0);
  ignoring.apply(0, {'k'});
  ASSERT_EQ(ignoring.done.size(), 1u);
  EXPECT_EQ(ignoring.done[0].finish_reason, FinishReason::Length);
}

TEST(Scheduler, ContextLimitEndsWithLength) {
  // max_model_len 8, a prompt of 6: positions 6 and 7 take two generated tokens, the third is sampled from
  // position 7's logits and needs no position, so the sequence ends after 3 tokens.
  ByteTokenizer t;
  Bench b({request(t, 0, "abcde", 100)}, {1, 2048, 1, false}, 8);
  b.scheduler.admit(0);
  for (std::int32_t k = 0; k < 3; ++k) {
    EXPECT_TRUE(b.done.empty()) << k;
    b.step(0);
    b.apply(0, {'0' + k});
  }
  ASSERT_EQ(b.done.size(), 1u);
  EXPECT_EQ(b.done[0].finish_reason, FinishReason::Length);
  EXPECT_EQ(b.done[0].text, "012");
}

TEST(Scheduler, ApplyWithTheWrongNumberOfTokensThrows) {
  ByteTokenizer t;
  Bench b({request(t, 0, "a"), request(t, 1, "b")}, {2, 2048, 1, false});
  b.scheduler.admit(0);
  b.step(0);
  EXPECT_THROW(b.apply(0, {'x'}), Error);
  EXPECT_THROW(b.apply(0, {'x', 'y', 'z'}), Error);
  EXPECT_THROW(b.apply(0, {}), Error);
  EXPECT_EQ(b.scheduler.counts().generated_tokens, 0) << "a refused step changes nothing";
  b.apply(0, {'x', 'y'});
  EXPECT_EQ(b.scheduler.counts().generated_tokens, 2);
}

// The windowed stop-string check stops at the same token as searching the whole decoded text, on a byte tokenizer
// and on a SentencePiece-style one whose decoder strips the first space and rebuilds UTF-8 from byte tokens (the
// window's start decodes differently from the whole text there), for random generations and stop strings.
TEST(StopMatcher, WindowedCheckAgreesWithTheWholeText) {
  const ByteTokenizer bytes;
  const auto sp = test::load("stop_sp.json", test::sentencepiece());
  std::mt19937 rng(7);
  // SentencePiece ids: ▁ (259), h, i, ▁h, ▁hi, and byte tokens of "é" (C3 A9) and "→" (E2 86 92).
  const std::vector<std::int32_t> sp_ids = {259, 260, 261, 262, 263, 3 + 0xC3, 3 + 0xA9, 3 + 0xE2, 3 + 0x86, 3 + 0x92};
  const std::vector<std::vector<std::string>> stops = {{" hi"}, {"hh"}, {"\xC3\xA9 h"}, {"i\xE2\x86\x92"}, {"ab", "c"}};
  int stopped = 0;
  for (const Tokenizer* tokenizer : {static_cast<const Tokenizer*>(&bytes), static_cast<const Tokenizer*>(sp.get())}) {
    const StopMatcher matcher(*tokenizer, 1 << 20);
    for (int trial = 0; trial < 300; ++trial) {
      Request r;
      r.max_tokens = 1 << 20;
      r.stop = stops[std::size_t(trial) % stops.size()];
      std::vector<std::int32_t> generated;
      for (int t = 0; t < 120; ++t) {
        generated.push_back(tokenizer == &bytes ? std::int32_t("abchi "[rng() % 6]) : sp_ids[rng() % sp_ids.size()]);
        const std::string whole = tokenizer->decode(generated);
        bool expected = false;
        for (const auto& s : r.stop) expected = expected || whole.find(s) != std::string::npos;
        const bool got = matcher.finished(r, generated, std::int32_t(generated.size())).has_value();
        ASSERT_EQ(got, expected) << "trial " << trial << " token " << t << ": " << whole;
        if (got) {
          ++stopped;
          break;
        }
      }
    }
  }
  EXPECT_GT(stopped, 200) << "the stop strings were found often enough for the comparison to mean something";
}
