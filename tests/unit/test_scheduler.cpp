// The scheduler's bookkeeping without a model: KV-cache slots (lowest free first, a double release refused),
// admission (slots, the step's token budget, sequences spread over micro-batches), the chunks of each step
// (whole-prompt prefill, then one token at the right position) and how sequences end (max_tokens, a stop string,
// end-of-sequence, the context), each with its text and its slot handed to the next waiting request.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/block_pool.h"
#include "engine/engine.h"
#include "engine/scheduler.h"
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

  std::vector<std::int32_t> table;  // the latest step's block table

  Bench(std::vector<Request> requests, SchedulerLimits limits, std::int32_t max_model_len = 128)
      : stops(tokenizer, max_model_len),
        scheduler(std::move(requests), with_len(limits, max_model_len), stops, ByteTokenizer::kVocab) {}
  static SchedulerLimits with_len(SchedulerLimits limits, std::int32_t max_model_len) {
    if (limits.max_model_len == 0) limits.max_model_len = max_model_len;
    return limits;
  }

  std::vector<ChunkMeta> step(int group, std::vector<std::int32_t>* ids = nullptr) {
    std::vector<ChunkMeta> metas;
    std::vector<std::int32_t> local;
    scheduler.build_step(group, metas, table, ids ? *ids : local);
    return metas;
  }
  void admit(int group) {
    scheduler.admit(group, [this](Completion&& c) { done.push_back(std::move(c)); });
  }
  // The blocks of a chunk of the latest step.
  std::vector<std::int32_t> blocks(const ChunkMeta& m) const {
    const auto n =
        (m.chunk.start_pos + m.chunk.n_tokens + scheduler.pool().block_size() - 1) / scheduler.pool().block_size();
    return std::vector<std::int32_t>(table.begin() + m.chunk.table_offset, table.begin() + m.chunk.table_offset + n);
  }
  void apply(int group, std::vector<std::int32_t> tokens) {
    StepResult result;
    result.tokens = std::move(tokens);
    result.vocab = ByteTokenizer::kVocab;
    scheduler.apply(group, result, [this](Completion&& c) { done.push_back(std::move(c)); });
  }
};

}  // namespace

TEST(BlockPool, ReferenceCountsFreeListAndRefusals) {
  BlockPool pool(3, 4, false);
  EXPECT_EQ(pool.available(), 3);
  EXPECT_EQ(pool.allocate(), 0) << "a first block where the free run starts the pool";
  EXPECT_EQ(pool.allocate(), 2) << "another sequence's first block: the middle of the free run [1, 3)";
  EXPECT_EQ(pool.allocate(), 1);
  EXPECT_EQ(pool.allocate(), -1) << "all blocks held";
  EXPECT_EQ(pool.used(), 3);
  pool.retain(1);  // shared by a second holder
  pool.release(1);
  EXPECT_EQ(pool.available(), 0) << "still held once";
  pool.release(1);
  EXPECT_EQ(pool.available(), 1);
  EXPECT_THROW(pool.release(1), Error) << "released more often than held";
  EXPECT_THROW(pool.release(7), Error) << "never existed";
  EXPECT_THROW(pool.retain(1), Error) << "a free, unregistered block cannot be taken back";
  EXPECT_EQ(pool.allocate(), 1);
  EXPECT_EQ(pool.counts().peak_used, 3);
  EXPECT_THROW(BlockPool(0, 4, false), Error);
  EXPECT_EQ(pool.blocks_for(0), 0);
  EXPECT_EQ(pool.blocks_for(4), 1);
  EXPECT_EQ(pool.blocks_for(5), 2);
}

// A sequence's blocks lie one after another where they can (attention then reads them as one stream): a growing
// sequence takes the block after its last one when that is free, and a new one starts in the middle of the longest
// free run, leaving the sequence before it room to grow; freed blocks join their neighbours' runs again.
TEST(BlockPool, SequencesGrowIntoTheBlocksAfterTheirOwn) {
  BlockPool pool(64, 16, false);
  std::vector<std::int32_t> a{pool.allocate()}, b{pool.allocate()}, c{pool.allocate()};
  EXPECT_EQ(a[0], 0) << "the only run starts the pool: nobody before it to grow";
  EXPECT_EQ(b[0], 1 + 63 / 2) << "the middle of the free run [1, 64)";
  EXPECT_EQ(c[0], 1 + 31 / 2) << "the middle of the longest run: [1, 32) and [33, 64), 31 blocks each: the lower";
  for (int step = 0; step < 10; ++step)  // growing side by side, as a batch decodes
    for (auto* s : {&a, &b, &c}) s->push_back(pool.allocate(s->back()));
  for (auto* s : {&a, &b, &c})
    for (std::size_t i = 1; i < s->size(); ++i) EXPECT_EQ((*s)[i], (*s)[0] + std::int32_t(i)) << "block " << i;
  // a reaches c's first block: its next block is elsewhere, the middle of the longest run left ([43, 64) after b's
  // blocks [32, 43); [27, 32) after c's is shorter).
  while (a.back() + 1 < c[0]) a.push_back(pool.allocate(a.back()));
  const std::int32_t moved = pool.allocate(a.back());
  EXPECT_EQ(moved, 43 + 21 / 2);
  // Every block is handed out once, then the refusal; all released, the pool is one run again.
  std::set<std::int32_t> held(a.begin(), a.end());
  for (auto* s : {&b, &c}) held.insert(s->begin(), s->end());
  held.insert(moved);
  std::int32_t last = moved;
  for (std::int32_t blk; (blk = pool.allocate(last)) >= 0; last = blk) EXPECT_TRUE(held.insert(blk).second) << blk;
  EXPECT_EQ(std::int32_t(held.size()), 64);
  EXPECT_EQ(pool.available(), 0);
  std::vector<std::int32_t> order(held.begin(), held.end());
  for (std::size_t i = 0; i < order.size(); ++i) pool.release(order[(i * 37) % order.size()]);  // scattered
  EXPECT_EQ(pool.available(), 64);
  EXPECT_EQ(pool.allocate(), 0);
  EXPECT_EQ(pool.allocate(), 1 + 63 / 2) << "the freed blocks joined into one run [1, 64)";
}

// Prefix caching: a block is found by the hash of its tokens chained to the blocks before it (the same tokens
// after another prefix are another block), a released registered block stays findable until it is the least
// recently released one when a block is needed, and a block in use is never evicted.
TEST(BlockPool, PrefixCacheChainsHashesAndEvictsLeastRecentlyUsed) {
  BlockPool pool(4, 2, true);
  const std::vector<std::int32_t> a = {1, 2, 3, 4, 5}, b = {9, 9, 3, 4};
  const std::int32_t a0 = pool.allocate(), a1 = pool.allocate(a0);
  std::uint64_t chain = pool.register_full(a0, 0, std::span(a).subspan(0, 2));
  chain = pool.register_full(a1, chain, std::span(a).subspan(2, 2));
  EXPECT_EQ(chain,
            BlockPool::chain_hash(BlockPool::chain_hash(0, std::span(a).subspan(0, 2)), std::span(a).subspan(2, 2)));
  // Same first two blocks, third token different: both cached blocks found, in order.
  const std::vector<std::int32_t> again = {1, 2, 3, 4, 6, 7};
  auto hit = pool.acquire_prefix(again, 3);
  EXPECT_EQ(hit.blocks, (std::vector<std::int32_t>{a0, a1}));
  EXPECT_EQ(hit.chain, chain);
  // {3, 4} after {9, 9} is not the cached {3, 4} after {1, 2}.
  auto other = pool.acquire_prefix(b, 2);
  EXPECT_TRUE(other.blocks.empty());
  auto capped = pool.acquire_prefix(again, 1);  // at most one block asked for
  EXPECT_EQ(capped.blocks, std::vector<std::int32_t>{a0});
  EXPECT_EQ(pool.counts().prefix_hits, 3);
  // Release everything: the two registered blocks become evictable (a0 last), the others free.
  for (auto* p : {&hit.blocks, &capped.blocks})
    for (std::int32_t blk : *p) pool.release(blk);
  pool.release(a1);
  pool.release(a0);
  EXPECT_EQ(pool.available(), 4);
  const std::int32_t n0 = pool.allocate(), n1 = pool.allocate();
  EXPECT_EQ(std::set<std::int32_t>({n0, n1}), std::set<std::int32_t>({2, 3})) << "never-used blocks before cached ones";
  EXPECT_EQ(pool.allocate(), a1) << "the least recently released cached block is evicted first";
  EXPECT_EQ(pool.counts().evictions, 1);
  auto after = pool.acquire_prefix(again, 3);
  EXPECT_EQ(after.blocks, std::vector<std::int32_t>{a0}) << "a1 was evicted, a0 still cached";
  EXPECT_EQ(pool.allocate(), -1) << "a0 is in use again: not evictable";
  // Without prefix caching nothing is ever found.
  BlockPool plain(2, 2, false);
  const std::int32_t p0 = plain.allocate();
  plain.register_full(p0, 0, std::span(a).subspan(0, 2));
  plain.release(p0);
  EXPECT_TRUE(plain.acquire_prefix(a, 2).blocks.empty());
}

TEST(Scheduler, AdmissionRespectsTheBatchSizeAndChunksPrefillsToTheTokenBudget) {
  ByteTokenizer t;
  {  // max_batch_size 2 for 5 requests: 2 run, 3 wait.
    std::vector<Request> rs;
    for (int i = 0; i < 5; ++i) rs.push_back(request(t, i, "abc"));
    Bench b(std::move(rs), {2, 2048, 1, false});
    b.admit(0);
    EXPECT_EQ(b.step(0).size(), 2u);
    EXPECT_EQ(b.scheduler.waiting(), 3u);
    b.admit(0);
    EXPECT_EQ(b.step(0).size(), 2u) << "the batch is full: admitting again takes nobody";
  }
  {  // Prompts of 5 tokens (bos + 4 bytes) and a budget of 12 tokens: two whole prompts and 2 tokens of the third.
    std::vector<Request> rs;
    for (int i = 0; i < 3; ++i) rs.push_back(request(t, i, "abcd"));
    Bench b(std::move(rs), {8, 12, 1, false});
    b.admit(0);
    std::vector<std::int32_t> ids;
    auto metas = b.step(0, &ids);
    ASSERT_EQ(metas.size(), 3u);
    EXPECT_EQ(ids.size(), 12u);
    EXPECT_EQ(metas[2].chunk.n_tokens, 2);
    EXPECT_EQ(metas[2].sample, 0) << "a chunk short of the prompt's end is not sampled";
    EXPECT_EQ(metas[2].logprobs, -1);
    EXPECT_EQ(metas[0].sample, 1);
    EXPECT_EQ(b.scheduler.counts().prompt_tokens, 15);
    b.apply(0, {'x', 'y', '?'});  // the third row's token is ignored
    metas = b.step(0, &ids);
    ASSERT_EQ(metas.size(), 3u);
    EXPECT_EQ(metas[0].chunk.n_tokens, 1) << "decodes first";
    EXPECT_EQ(metas[2].chunk.start_pos, 2) << "the rest of the third prompt";
    EXPECT_EQ(metas[2].chunk.n_tokens, 3);
    EXPECT_EQ(ids, (std::vector<std::int32_t>{'x', 'y', 'b', 'c', 'd'}));
    b.apply(0, {'1', '2', 'z'});  // the third prompt is complete: its token counts
    EXPECT_EQ(b.scheduler.counts().generated_tokens, 5);
  }
  {  // A prompt longer than the budget is prefilled over several steps while the other one decodes every step.
    std::vector<Request> rs = {request(t, 0, "a", 8), request(t, 1, std::string(40, 'p'), 2)};
    Bench b(std::move(rs), {4, 8, 1, false});
    b.admit(0);
    std::vector<std::int32_t> chunk_sizes;
    for (int step = 0; step < 6; ++step) {
      const auto metas = b.step(0);
      ASSERT_EQ(metas.size(), 2u) << "step " << step;
      EXPECT_EQ(metas[0].chunk.n_tokens, step == 0 ? 2 : 1) << "the short one runs every step";
      chunk_sizes.push_back(metas[1].chunk.n_tokens);
      b.apply(0, {'k', 'q'});
    }
    EXPECT_EQ(chunk_sizes, (std::vector<std::int32_t>{6, 7, 7, 7, 7, 7})) << "41 prompt tokens in budget-sized chunks";
  }
  {  // Without chunked prefill a prompt runs whole, alone in a step when it exceeds the budget.
    SchedulerLimits whole{4, 8, 1, false};
    whole.chunked_prefill = false;
    Bench b({request(t, 0, "a long prompt"), request(t, 1, "a")}, whole);
    b.admit(0);
    const auto metas = b.step(0);
    ASSERT_EQ(metas.size(), 1u);
    EXPECT_EQ(metas[0].chunk.n_tokens, 14);
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
        b.admit(g);
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
  b.admit(0);
  std::vector<std::int32_t> ids;
  auto metas = b.step(0, &ids);
  ASSERT_EQ(metas.size(), 2u);
  // "hello": bos + 5 bytes; "ab": bos + 2 bytes, laid out back to back.
  EXPECT_EQ(b.blocks(metas[0]), std::vector<std::int32_t>{0}) << "6 positions: one block of 16";
  EXPECT_EQ(metas[0].chunk.start_pos, 0);
  EXPECT_EQ(metas[0].chunk.n_tokens, 6);
  EXPECT_EQ(metas[0].chunk.token_offset, 0);
  // The pool holds 4 x 128 / 16 = 32 blocks: the second sequence starts in the middle of [1, 32), room to grow.
  EXPECT_EQ(b.blocks(metas[1]), std::vector<std::int32_t>{16});
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
    EXPECT_EQ(b.blocks(metas[0]), std::vector<std::int32_t>{0});
    EXPECT_EQ(metas[1].chunk.start_pos, 3 + k);
    EXPECT_EQ(metas[1].chunk.n_tokens, 1);
    EXPECT_EQ(metas[1].chunk.token_offset, 1);
    EXPECT_EQ(b.blocks(metas[1]), std::vector<std::int32_t>{16});
    EXPECT_EQ(metas[0].step, 1 + k) << "index of the token this chunk generates";
    EXPECT_EQ(ids, (std::vector<std::int32_t>{'X' + k, 'Y' + k}));
    b.apply(0, {'X' + k + 1, 'Y' + k + 1});
  }
  EXPECT_EQ(b.scheduler.counts().generated_tokens, 8);
  EXPECT_TRUE(b.done.empty());
}

TEST(Scheduler, MaxTokensEndsWithLengthAndTheBlocksGoToTheNextRequest) {
  ByteTokenizer t;
  Bench b({request(t, 0, "hi", 3), request(t, 1, "there", 2)}, {1, 2048, 1, false});
  b.admit(0);
  EXPECT_EQ(b.scheduler.waiting(), 1u);
  b.step(0);
  b.apply(0, {'a'});
  b.step(0);
  b.apply(0, {'b'});
  EXPECT_TRUE(b.done.empty()) << "2 of 3 tokens";
  b.admit(0);
  EXPECT_EQ(b.scheduler.waiting(), 1u) << "the batch (1) is full";
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

  b.admit(0);
  EXPECT_EQ(b.scheduler.waiting(), 0u);
  std::vector<std::int32_t> ids;
  const auto metas = b.step(0, &ids);
  ASSERT_EQ(metas.size(), 1u);
  EXPECT_EQ(b.blocks(metas[0]), std::vector<std::int32_t>{0}) << "the freed block";
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
  b.admit(0);
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

// Sequences decoding side by side each take the blocks after their own (block_pool.h): a batch's decode blocks do
// not interleave.
TEST(Scheduler, SequencesDecodingSideBySideKeepTheirBlocksConsecutive) {
  ByteTokenizer t;
  Bench b({request(t, 0, "a", 40), request(t, 1, "b", 40)}, {2, 2048, 1, false});  // 2 x 128 / 16 = 16 blocks
  b.admit(0);
  auto metas = b.step(0);
  for (int k = 0; k < 38; ++k) {
    b.apply(0, {'x', 'y'});
    metas = b.step(0);
  }
  ASSERT_EQ(metas.size(), 2u);
  EXPECT_EQ(metas[0].chunk.start_pos, 2 + 37);
  EXPECT_EQ(b.blocks(metas[0]), (std::vector<std::int32_t>{0, 1, 2}));
  EXPECT_EQ(b.blocks(metas[1]), (std::vector<std::int32_t>{8, 9, 10})) << "from the middle of [1, 16) on";
}

TEST(Scheduler, EndOfSequenceEndsWithStopAndIsNotInTheText) {
  ByteTokenizer t;
  Bench b({request(t, 0, "q"), request(t, 1, "r")}, {2, 2048, 1, false});
  b.admit(0);
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
  EXPECT_EQ(b.blocks(metas[0]), std::vector<std::int32_t>{8}) << "the middle of [1, 16)";
  EXPECT_EQ(metas[0].chunk.start_pos, 4);
  EXPECT_EQ(ids, std::vector<std::int32_t>{'z'});
  // ignore_eos: the end-of-sequence id is just a token.
  Request bench = request(t, 0, "q", 2);
  bench.ignore_eos = true;
  Bench ignoring({bench}, {1, 2048, 1, false});
  ignoring.admit(0);
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
  b.admit(0);
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
  b.admit(0);
  b.step(0);
  EXPECT_THROW(b.apply(0, {'x'}), Error);
  EXPECT_THROW(b.apply(0, {'x', 'y', 'z'}), Error);
  EXPECT_THROW(b.apply(0, {}), Error);
  EXPECT_EQ(b.scheduler.counts().generated_tokens, 0) << "a refused step changes nothing";
  b.apply(0, {'x', 'y'});
  EXPECT_EQ(b.scheduler.counts().generated_tokens, 2);
}

namespace {
SchedulerLimits paged(std::int32_t batch, std::int32_t blocks, std::int32_t block_size, bool prefix_caching = true) {
  SchedulerLimits l{batch, 2048, 1, false};
  l.kv_blocks = blocks;
  l.block_size = block_size;
  l.prefix_caching = prefix_caching;
  return l;
}
// Runs a single micro-batch to the end; each sampled token is a function of the index of the token only ('A' +
// step), as a seeded sampler's is of (seed, position): a recomputed sequence gets the same tokens again.
void run_to_end(Bench& b, int max_steps = 200) {
  for (int i = 0; i < max_steps && (!b.scheduler.idle(0) || b.scheduler.waiting() > 0); ++i) {
    b.admit(0);
    const auto metas = b.step(0);
    std::vector<std::int32_t> tokens;
    for (const auto& m : metas) tokens.push_back(std::int32_t('A' + m.step));
    b.apply(0, tokens);
  }
}
}  // namespace

// A prompt seen before (its full blocks registered) is not computed again: the next sequence with it starts after
// the cached blocks, on the same blocks; without prefix caching it computes everything.
TEST(Scheduler, RepeatedPromptStartsAfterItsCachedBlocks) {
  ByteTokenizer t;
  for (bool caching : {true, false}) {
    Bench b({request(t, 0, "123456789", 1), request(t, 1, "123456789", 1)}, paged(1, 8, 4, caching));
    b.admit(0);
    const auto first = b.step(0);
    ASSERT_EQ(first.size(), 1u);
    const std::vector<std::int32_t> first_blocks = b.blocks(first[0]);
    b.apply(0, {'x'});
    ASSERT_EQ(b.done.size(), 1u);
    b.admit(0);
    std::vector<std::int32_t> ids;
    const auto second = b.step(0, &ids);
    ASSERT_EQ(second.size(), 1u);
    if (caching) {
      EXPECT_EQ(second[0].chunk.start_pos, 8) << "10 tokens: 2 full blocks of 4 cached";
      EXPECT_EQ(ids, (std::vector<std::int32_t>{'8', '9'}));
      const auto blocks = b.blocks(second[0]);
      EXPECT_EQ(std::vector<std::int32_t>(blocks.begin(), blocks.begin() + 2),
                std::vector<std::int32_t>(first_blocks.begin(), first_blocks.begin() + 2));
      EXPECT_EQ(b.scheduler.counts().cached_prompt_tokens, 8);
      EXPECT_EQ(b.scheduler.counts().computed_prompt_tokens, 12);
    } else {
      EXPECT_EQ(second[0].chunk.start_pos, 0);
      EXPECT_EQ(ids.size(), 10u);
      EXPECT_EQ(b.scheduler.counts().cached_prompt_tokens, 0);
    }
  }
}

// A pool of 4 blocks of 4 for two sequences of 4 prompt tokens and 10 generated: when the older one needs a third
// block and none is free, the younger is preempted (its blocks freed), computed again from its prompt and the tokens
// it had when the older one is done, and ends with the same text an unpreempted run gives.
TEST(Scheduler, PoolRunningOutPreemptsTheYoungestWhichEndsTheSame) {
  ByteTokenizer t;
  Bench b({request(t, 0, "abc", 10), request(t, 1, "xyz", 10)}, paged(2, 4, 4, false));
  b.admit(0);
  std::size_t most_at_once = 0;
  for (int i = 0; i < 60 && b.done.size() < 2; ++i) {
    b.admit(0);
    const auto metas = b.step(0);
    most_at_once = std::max(most_at_once, metas.size());
    for (const auto& m : metas) EXPECT_LE(b.blocks(m).size(), 4u);
    std::vector<std::int32_t> tokens;
    for (const auto& m : metas) tokens.push_back(std::int32_t('A' + m.step));
    b.apply(0, tokens);
  }
  ASSERT_EQ(b.done.size(), 2u);
  EXPECT_EQ(most_at_once, 2u);
  EXPECT_GE(b.scheduler.counts().preemptions, 1);
  EXPECT_GT(b.scheduler.counts().recomputed_tokens, 4) << "the prompt and the tokens it had generated";
  for (const auto& c : b.done) {
    EXPECT_EQ(c.text, "ABCDEFGHIJ") << "request " << c.index;
    EXPECT_EQ(c.finish_reason, FinishReason::Length);
  }
  EXPECT_EQ(b.done[0].index, 0) << "the older sequence was never preempted and finished first";
  EXPECT_LE(b.scheduler.counts().peak_kv_blocks, 4);
}

// A prompt needing more blocks than the whole pool is an error completion naming the numbers; the others run.
// A sequence that alone fills the whole pool while generating ends with "length".
TEST(Scheduler, PromptLargerThanThePoolIsAnErrorAndTheJobGoesOn) {
  ByteTokenizer t;
  Bench b({request(t, 0, "0123456789a", 4), request(t, 1, "hi", 20)}, paged(2, 2, 4));
  run_to_end(b);
  ASSERT_EQ(b.done.size(), 2u);
  EXPECT_EQ(b.done[0].index, 0);
  EXPECT_NE(b.done[0].error.find("needs 3 KV-cache blocks of 4 positions (12 tokens) but the whole pool has 2"),
            std::string::npos)
      << b.done[0].error;
  EXPECT_EQ(b.done[1].index, 1);
  EXPECT_TRUE(b.done[1].error.empty());
  EXPECT_EQ(b.done[1].finish_reason, FinishReason::Length);
  EXPECT_EQ(b.done[1].text, "ABCDEF") << "3 prompt + 5 generated positions fill the 8 the pool has";
  EXPECT_EQ(b.scheduler.counts().refused, 1);
}

// n samples: sample 0 computes the prompt; the others share its full blocks and each copies the partly filled last
// one (the copy named in their first step), then run the prompt's last token themselves.
TEST(Scheduler, SamplesShareFullBlocksAndCopyThePartlyFilledOne) {
  ByteTokenizer t;
  Request r = request(t, 0, "123456789", 2);  // bos + 9 = 10 tokens: blocks of 4, 4 and 2
  r.n = 3;
  r.sample_seeds = {11, 12};
  Bench b({r}, paged(4, 16, 4));
  b.admit(0);
  auto metas = b.step(0);
  ASSERT_EQ(metas.size(), 1u);
  const std::vector<std::int32_t> prompt_blocks = b.blocks(metas[0]);
  ASSERT_EQ(prompt_blocks.size(), 3u);
  b.apply(0, {'a'});
  metas = b.step(0);
  ASSERT_EQ(metas.size(), 3u);
  EXPECT_EQ(metas[0].chunk.start_pos, 10);
  std::vector<std::int32_t> copies;
  for (int j = 1; j <= 2; ++j) {
    const ChunkMeta& m = metas[std::size_t(j)];
    EXPECT_EQ(m.chunk.start_pos, 9);
    EXPECT_EQ(m.chunk.n_tokens, 1);
    EXPECT_EQ(m.seed, std::uint64_t(10 + j));
    const auto blocks = b.blocks(m);
    EXPECT_EQ(blocks[0], prompt_blocks[0]);
    EXPECT_EQ(blocks[1], prompt_blocks[1]);
    EXPECT_EQ(m.copy_src, prompt_blocks[2]);
    EXPECT_EQ(m.copy_dst, blocks[2]);
    EXPECT_NE(blocks[2], prompt_blocks[2]);
    copies.push_back(m.copy_dst);
  }
  EXPECT_NE(copies[0], copies[1]);
  // Each sample has its own sequence slot and takes over sample 0's sliding windows from its slot.
  EXPECT_EQ(metas[0].copy_slot_src, -1);
  std::vector<std::int32_t> slots = {metas[0].chunk.slot, metas[1].chunk.slot, metas[2].chunk.slot};
  std::sort(slots.begin(), slots.end());
  EXPECT_EQ(slots, (std::vector<std::int32_t>{0, 1, 2}));
  for (int j = 1; j <= 2; ++j) EXPECT_EQ(metas[std::size_t(j)].copy_slot_src, metas[0].chunk.slot);
  EXPECT_EQ(b.scheduler.counts().computed_prompt_tokens, 12);
  b.apply(0, {'b', 'c', 'd'});
  metas = b.step(0);
  for (const auto& m : metas) EXPECT_EQ(m.copy_src, -1) << "copied once";
  for (const auto& m : metas) EXPECT_EQ(m.copy_slot_src, -1) << "windows copied once";
  b.apply(0, std::vector<std::int32_t>(metas.size(), 'e'));
  ASSERT_EQ(b.done.size(), 1u);
  EXPECT_EQ(b.done[0].more.size(), 2u);
  EXPECT_EQ(b.scheduler.pool().used(), 0) << "every block released";
}

// Sequence slots (the rows of sliding-window caches): every admitted sequence has one of max_batch_size, no two
// running sequences share one, and a finished sequence's slot goes to the next; preemption gives its slot back.
TEST(Scheduler, EverySequenceHasItsOwnSlotWhileAdmitted) {
  ByteTokenizer t;
  std::vector<Request> requests;
  for (int i = 0; i < 7; ++i) requests.push_back(request(t, i, std::string(std::size_t(3 + i), 'x'), 1 + i % 3));
  SchedulerLimits limits;
  limits.max_batch_size = 3;
  Bench b(requests, limits);
  std::set<std::int32_t> seen;
  for (int round = 0; round < 40 && b.done.size() < 7; ++round) {
    b.admit(0);
    const auto metas = b.step(0);
    std::set<std::int32_t> slots;
    for (const auto& m : metas) {
      EXPECT_GE(m.chunk.slot, 0);
      EXPECT_LT(m.chunk.slot, 3);
      EXPECT_TRUE(slots.insert(m.chunk.slot).second) << "slot " << m.chunk.slot << " given twice in round " << round;
      seen.insert(m.chunk.slot);
    }
    if (!metas.empty()) b.apply(0, std::vector<std::int32_t>(metas.size(), 'y'));
  }
  EXPECT_EQ(b.done.size(), 7u);
  EXPECT_EQ(seen, (std::set<std::int32_t>{0, 1, 2})) << "slots are reused";
}

// More prompts that can never fit than the batch holds, then n samples whose prompt fills the whole pool: the refused
// ones take no room (counting them once stalled the job), the samples cannot get a block for their copy and wait,
// sample 0 alone fills the pool and ends with "length", the samples then run one at a time. Everything completes.
TEST(Scheduler, SamplesOfAPromptThatFillsThePoolStillComplete) {
  ByteTokenizer t;
  Request r = request(t, 0, std::string(71, 'a'), 7);  // 72 tokens: all 9 blocks of 8
  r.n = 3;
  r.sample_seeds = {1, 2};
  const std::string system = "You are a helpful assistant. Answer briefly and well. ";
  std::vector<Request> rs;
  for (int i = 0; i < 8; ++i)  // 78 tokens: 10 blocks each, more than the pool
    rs.push_back(request(t, 2 + i, system + "Question " + std::to_string(i) + ": what is it?", 6));
  rs.push_back(r);
  rs.push_back(request(t, 1, "Hi", 12));
  Bench b(rs, paged(8, 9, 8));
  for (int i = 0; i < 200 && b.done.size() < rs.size(); ++i) {
    b.admit(0);
    ASSERT_FALSE(b.scheduler.idle(0) && b.done.size() < rs.size())
        << "stalled at step " << i << " with " << b.scheduler.waiting() << " waiting, " << b.scheduler.pool().used()
        << " blocks held";
    const auto metas = b.step(0);
    std::vector<std::int32_t> tokens;
    for (const auto& m : metas) tokens.push_back(std::int32_t('A' + m.step));
    b.apply(0, tokens);
  }
  ASSERT_EQ(b.done.size(), rs.size());
  EXPECT_EQ(b.scheduler.counts().refused, 8) << "more refusals than the batch size: each takes no room";
  EXPECT_EQ(b.scheduler.pool().used(), 0);
}

// A prompt of no tokens (an empty line, a tokenizer without BOS) cannot run: an error completion, not a sequence
// that never gets a step (which stalled the engine), and the others run.
TEST(Scheduler, EmptyPromptIsAnErrorNotAStall) {
  ByteTokenizer t;
  Request empty = request(t, 0, "", 4);
  empty.prompt.clear();
  Bench b({empty, request(t, 1, "ok", 3)}, paged(4, 8, 4));
  run_to_end(b);
  ASSERT_EQ(b.done.size(), 2u);
  EXPECT_EQ(b.done[0].index, 0);
  EXPECT_NE(b.done[0].error.find("the prompt is empty"), std::string::npos) << b.done[0].error;
  EXPECT_EQ(b.done[1].text, "ABC");
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
