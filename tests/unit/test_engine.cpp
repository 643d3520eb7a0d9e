// The engine on one rank: continuous batching gives the same tokens as running each prompt alone (KV-cache slots
// reused, ragged prefills mixed with decodes), and max_tokens, stop strings, end-of-sequence and the context
// limit end sequences with the right reason and text. And --metrics' split of a step's time into compute and
// communication around the fused sums.
#include <gtest/gtest.h>

#include <chrono>
#include <span>
#include <thread>

#include "engine/engine.h"
#include "io/tokenizer.h"
#include "runtime/comm/timed_collectives.h"
#include "test_support.h"

using namespace strata;

namespace {

class EngineFixture {
 public:
  explicit EngineFixture(std::int32_t max_batch, std::int32_t max_len = 96)
      : layout_({1, 1, 1}, 1, 0), plan_(test::tiny_config(), {1, 0, 1, 0}) {
    test::RandomWeights weights(11);
    stage_ = std::make_unique<TransformerStage>(plan_, weights, *backend_, tp_,
                                                StageLimits{std::max(max_len, 256), max_batch, max_len});
    options_ = EngineOptions{max_batch, std::max(max_len, 256), max_len, 0, true};
  }

  std::vector<Completion> run(std::vector<Request> requests, const Tokenizer& tokenizer) {
    Engine engine(*stage_, layout_, world_, tp_, tokenizer, options_);
    std::vector<Completion> done(requests.size());
    EngineHooks hooks;
    hooks.on_complete = [&](Completion&& c) { done[std::size_t(c.index)] = std::move(c); };
    engine.run(std::move(requests), hooks);
    return done;
  }

 private:
  ParallelLayout layout_;
  ShardPlan plan_;
  std::unique_ptr<Backend> backend_ = make_cpu_backend(1);
  test::LocalCommunicator tp_, world_;
  std::unique_ptr<TransformerStage> stage_;
  EngineOptions options_;
};

std::vector<Request> ragged_requests(const Tokenizer& t, std::int64_t max_tokens) {
  const std::vector<std::string> prompts = {"a", "hello there", "The quick brown fox jumps", "x y z", "0123456789"};
  std::vector<Request> requests;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    Request r;
    r.index = std::int64_t(i);
    r.prompt = t.encode(prompts[i], true);
    r.max_tokens = max_tokens;
    requests.push_back(r);
  }
  return requests;
}

// A byte tokenizer whose end-of-sequence id is chosen by the test.
class EosTokenizer final : public Tokenizer {
 public:
  explicit EosTokenizer(std::int32_t eos) : eos_(eos) {}
  std::vector<std::int32_t> encode(const std::string& s, bool bos) const override { return bytes_.encode(s, bos); }
  std::string decode(std::span<const std::int32_t> ids) const override { return bytes_.decode(ids); }
  std::int32_t bos_id() const override { return bytes_.bos_id(); }
  std::int32_t eos_id() const override { return eos_; }
  std::int64_t vocab_size() const override { return bytes_.vocab_size(); }
  nlohmann::json to_json() const override { return {}; }

 private:
  ByteTokenizer bytes_;
  std::int32_t eos_;
};

}  // namespace

TEST(Engine, ContinuousBatchingMatchesOnePromptAtATime) {
  ByteTokenizer t;
  const auto alone = EngineFixture(1).run(ragged_requests(t, 12), t);
  for (std::int32_t batch : {2, 5}) {
    const auto batched = EngineFixture(batch).run(ragged_requests(t, 12), t);
    for (std::size_t i = 0; i < alone.size(); ++i) {
      EXPECT_EQ(batched[i].token_ids, alone[i].token_ids) << "prompt " << i << " batch " << batch;
      ASSERT_EQ(batched[i].logits.size(), alone[i].logits.size());
      const double error = test::relative_error(test::as_double(batched[i].logits.data(), batched[i].logits.size()),
                                                test::as_double(alone[i].logits.data(), alone[i].logits.size()));
      EXPECT_LT(error, 1e-5) << "prompt " << i << " batch " << batch;
    }
  }
  for (const auto& c : alone) {
    EXPECT_EQ(c.token_ids.size(), 12u);
    EXPECT_EQ(c.finish_reason, FinishReason::Length);
  }
}

TEST(Engine, StopStringEndsTheTextBeforeIt) {
  ByteTokenizer t;
  auto requests = ragged_requests(t, 12);
  const auto free_run = EngineFixture(4).run(ragged_requests(t, 12), t);
  // Use bytes 4-5 of prompt 2's free-running output as its stop string.
  const std::string stop = t.decode(std::span<const std::int32_t>(free_run[2].token_ids).subspan(4, 2));
  requests[2].stop = {stop};
  const auto stopped = EngineFixture(4).run(requests, t);
  EXPECT_EQ(stopped[2].finish_reason, FinishReason::Stop);
  const std::string full = t.decode(free_run[2].token_ids);
  EXPECT_EQ(stopped[2].text, full.substr(0, full.find(stop)));
  EXPECT_LE(stopped[2].token_ids.size(), 6u);
  EXPECT_EQ(stopped[0].token_ids, free_run[0].token_ids) << "other prompts are unaffected";
}

TEST(Engine, EndOfSequenceStopsAndIsNotInTheText) {
  ByteTokenizer bytes;
  const auto free_run = EngineFixture(4).run(ragged_requests(bytes, 12), bytes);
  const std::int32_t eos = free_run[1].token_ids[3];
  std::size_t first = 0;
  while (free_run[1].token_ids[first] != eos) ++first;
  EosTokenizer t(eos);
  const auto ended = EngineFixture(4).run(ragged_requests(t, 12), t);
  EXPECT_EQ(ended[1].finish_reason, FinishReason::Stop);
  EXPECT_EQ(ended[1].token_ids.size(), first + 1);
  EXPECT_EQ(ended[1].token_ids.back(), eos);
  EXPECT_EQ(ended[1].text, bytes.decode(std::span<const std::int32_t>(free_run[1].token_ids).first(first)));
}

TEST(Engine, ContextLimitEndsWithLength) {
  ByteTokenizer t;
  std::vector<Request> requests(1);
  requests[0].prompt = t.encode("0123456789", true);  // 11 tokens
  requests[0].max_tokens = 100;
  const auto done = EngineFixture(1, 14).run(requests, t);
  // positions 0..13: the prompt fills 11, three more tokens fit (the last one needs no cache entry)
  EXPECT_EQ(done[0].token_ids.size(), 4u);
  EXPECT_EQ(done[0].finish_reason, FinishReason::Length);
}

TEST(Engine, SeededSamplingDoesNotDependOnBatching) {
  ByteTokenizer t;
  auto sampled = [&](std::int32_t batch) {
    auto requests = ragged_requests(t, 10);
    for (auto& r : requests) r.sampling = SamplingParams{0.9f, 20, 0.95f, std::uint64_t(100 + r.index)};
    return EngineFixture(batch).run(requests, t);
  };
  const auto a = sampled(1), b = sampled(5);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].token_ids, b[i].token_ids) << i;
}

namespace {
// A group that hands use() the operands of its fused calls straight away (as a shared-memory group does once every
// rank has arrived), doing nothing else.
class HandsOverParts final : public Collectives {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(TensorView) override {}
  bool all_reduce_with(TensorView data, const PartsUser& use) override { return hand_over(data, use); }
  void all_gather(const void*, void*, std::size_t) override {}
  void all_to_all(const void*, const std::size_t*, const std::size_t*, void*, const std::size_t*,
                  const std::size_t*) override {}
  void broadcast(void*, std::size_t, int) override {}
  void barrier() override {}

 private:
  static bool hand_over(TensorView data, const PartsUser& use) {
    const float* parts[] = {data.f32()};
    use(parts);
    return true;
  }
};
}  // namespace

// --metrics' communication: a fused call's time less the caller's own work inside it (the residual add and norm the
// sums go into, which is compute), so that the breakdown does not move a tp group's norms into communication.
TEST(Engine, FusedSumsWorkCountsAsComputeNotCommunication) {
  HandsOverParts group;
  TimedCollectives timed(group);
  Tensor data = Tensor::host({4, 8}, DType::F32);
  const auto work = [](std::span<const float* const>) { std::this_thread::sleep_for(std::chrono::milliseconds(60)); };
  EXPECT_TRUE(timed.all_reduce_with(data.view(), work));
  EXPECT_GE(timed.seconds(), 0.0);
  EXPECT_LT(timed.seconds(), 0.05) << "the 60 ms inside use() were counted as communication";
}

namespace {
// Rounds whose waits take known times: begin_round 20 ms (readers still reading), rows_from 30 ms (a writer late).
class SlowRounds final : public SharedRows {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::size_t bytes() const override { return sizeof(memory_); }
  void await_readers() override { std::this_thread::sleep_for(std::chrono::milliseconds(20)); }
  void* begin_round() override {
    await_readers();
    return memory_;
  }
  void publish(int, std::int64_t, std::int64_t) override { ++published; }
  const void* rows_from(int, std::int64_t, std::int64_t) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    return memory_;
  }
  void end_reading() override { ++ended; }
  int published = 0, ended = 0;

 private:
  float memory_[16] = {};
};

class GivesRounds final : public Collectives {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void all_reduce_sum(TensorView) override {}
  SharedRows* shared_rows(const void* workspace) override { return workspace == &rounds ? &rounds : nullptr; }
  void all_gather(const void*, void*, std::size_t) override {}
  void all_to_all(const void*, const std::size_t*, const std::size_t*, void*, const std::size_t*,
                  const std::size_t*) override {}
  void broadcast(void*, std::size_t, int) override {}
  void barrier() override {}
  SlowRounds rounds;
};
}  // namespace

// --metrics' communication takes in a round's waits (for the readers of the last round, for a writer's rows), not
// the caller's work between its calls; the timed rounds pass every call on.
TEST(Engine, RoundsWaitsCountAsCommunication) {
  GivesRounds group;
  TimedCollectives timed(group);
  EXPECT_EQ(timed.shared_rows(&timed), nullptr);
  SharedRows* rounds = timed.shared_rows(&group.rounds);
  ASSERT_NE(rounds, nullptr);
  EXPECT_EQ(timed.shared_rows(&group.rounds), rounds) << "one wrapper a workspace";
  EXPECT_EQ(rounds->size(), 2);
  rounds->begin_round();
  rounds->publish(1, 0, 4);
  std::this_thread::sleep_for(std::chrono::milliseconds(60));  // the caller's own work
  rounds->rows_from(1, 0, 4);
  rounds->end_reading();
  EXPECT_EQ(group.rounds.published, 1);
  EXPECT_EQ(group.rounds.ended, 1);
  EXPECT_GE(timed.seconds(), 0.05) << "the round's 50 ms of waits";
  EXPECT_LT(timed.seconds(), 0.1) << "the 60 ms between the calls were counted as communication";
}
