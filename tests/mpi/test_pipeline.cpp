// The pipeline schedule on 2 stages: with one micro-batch per stage both stages hold work at once (steady state
// overlap), the tokens equal those of a single micro-batch and of the unsplit model on one rank.
#include <gtest/gtest.h>

#include "../unit/test_support.h"
#include "engine/engine.h"
#include "io/tokenizer.h"
#include "runtime/comm/mpi/mpi_communicator.h"

using namespace strata;

namespace {

struct Outcome {
  std::vector<std::vector<std::int32_t>> tokens;
  EngineStats stats;
};

Outcome generate(const ParallelLayout& layout, Communicator& world, Communicator& tp, int micro_batches, int prompts) {
  ModelConfig config = test::tiny_config();
  config.num_hidden_layers = 3;  // uneven: stage 0 holds 2 layers, stage 1 holds 1
  auto backend = make_cpu_backend(1);
  test::RandomWeights weights(21);
  ShardPlan plan(config, {1, 0, layout.sizes().pp, layout.pp_rank()});
  TransformerStage stage(plan, weights, *backend, tp, StageLimits{256, 8, 64});
  ByteTokenizer tokenizer;
  Engine engine(stage, layout, world, tp, tokenizer, EngineOptions{8, 256, 64, micro_batches, false});
  std::vector<Request> requests;
  if (layout.is_first_stage()) {
    for (int i = 0; i < prompts; ++i) {
      Request r;
      r.index = i;
      r.prompt = tokenizer.encode(std::string(std::size_t(3 + 5 * i), char('a' + i)), true);
      r.max_tokens = 9;
      r.ignore_eos = true;
      requests.push_back(r);
    }
  }
  Outcome outcome;
  outcome.tokens.resize(std::size_t(prompts));
  EngineHooks hooks;
  hooks.on_complete = [&](Completion&& c) { outcome.tokens[std::size_t(c.index)] = c.token_ids; };
  outcome.stats = engine.run(std::move(requests), hooks);
  return outcome;
}

}  // namespace

TEST(Pipeline, MicroBatchesKeepBothStagesBusyAndChangeNoToken) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  ASSERT_EQ(world->size(), 2);
  const ParallelLayout layout({1, 2, 1}, 2, world->rank());
  test::LocalCommunicator tp;
  const Outcome overlapped = generate(layout, *world, tp, 2, 4);
  const Outcome serial = generate(layout, *world, tp, 1, 4);
  if (layout.is_first_stage()) {
    EXPECT_EQ(overlapped.stats.max_in_flight, 2) << "two micro-batches in the pipeline at once";
    EXPECT_EQ(serial.stats.max_in_flight, 1);
    EXPECT_EQ(overlapped.tokens, serial.tokens);
    // and both equal the whole model on one rank
    const ParallelLayout alone({1, 1, 1}, 1, 0);
    test::LocalCommunicator self;
    const Outcome reference = generate(alone, self, tp, 1, 4);
    EXPECT_EQ(overlapped.tokens, reference.tokens);
    for (const auto& t : overlapped.tokens) EXPECT_EQ(t.size(), 9u);
  }
}

TEST(Pipeline, ASinglePromptStillCompletes) {
  auto world = make_mpi_communicator(MPI_COMM_WORLD);
  const ParallelLayout layout({1, 2, 1}, 2, world->rank());
  test::LocalCommunicator tp;
  const Outcome one = generate(layout, *world, tp, 2, 1);
  if (layout.is_first_stage()) {
    EXPECT_EQ(one.stats.max_in_flight, 1) << "one sequence cannot fill two micro-batches";
    EXPECT_EQ(one.tokens[0].size(), 9u);
  }
}
