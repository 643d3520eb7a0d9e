// Tensor parallelism on 2 ranks against the same computation on one rank: a transformer stage split over two
// ranks (column/row-parallel linears, vocab-parallel embedding and LM head, replicated KV heads) gives the
// unsplit logits, and sampling over a vocab shard chooses what sampling over the whole vocabulary chooses.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>

#include "../unit/test_support.h"
#include "engine/sampler.h"
#include "runtime/comm/mpi/mpi_communicator.h"

using namespace strata;

namespace {

std::vector<float> stage_logits(const ModelConfig& config, int tp, int tp_rank, Communicator& comm,
                                const std::vector<std::int32_t>& ids, const std::vector<SeqChunk>& chunks,
                                DType weights_dtype = DType::F32, std::int32_t sequence_parallel_tokens = 0) {
  auto backend = make_cpu_backend(1, weights_dtype);
  test::RandomWeights weights(5);
  ShardPlan plan(config, {tp, tp_rank, 1, 0});
  StageLimits limits{128, 4, 64};
  limits.sequence_parallel_tokens = sequence_parallel_tokens;
  TransformerStage stage(plan, weights, *backend, comm, limits);
  const TensorView local = stage.forward(chunks, test::SequenceBlocks(limits).table, ids, nullptr);
  // gather the vocab shards (contiguous in rank order) into whole rows
  const std::int64_t rows = local.rows(), shard = local.row_elems();
  std::vector<float> gathered(std::size_t(rows * shard * tp)), full(gathered.size());
  comm.all_gather(local.f32(), gathered.data(), std::size_t(rows * shard) * 4);
  for (int r = 0; r < tp; ++r)
    for (std::int64_t i = 0; i < rows; ++i)
      std::copy_n(gathered.data() + (r * rows + i) * shard, shard, full.data() + i * shard * tp + r * shard);
  return full;
}

}  // namespace

TEST(TensorParallel, StageLogitsMatchTheUnsplitModel) {
  auto tp = make_mpi_communicator(MPI_COMM_WORLD);
  ASSERT_EQ(tp->size(), 2);
  for (int kv_heads : {2, 1}) {  // 2: split kv heads; 1: the single kv head replicated on both ranks
    for (bool bias_and_tied : {false, true}) {
      ModelConfig config = test::tiny_config();
      config.num_key_value_heads = kv_heads;
      config.attention_bias = bias_and_tied;
      config.tie_word_embeddings = bias_and_tied;
      const std::vector<std::int32_t> ids = {256, 72, 105, 33, 256, 7, 250, 3, 9};
      const std::vector<SeqChunk> chunks = {{0, 0, 4, 0}, {2, 0, 5, 4}};  // sequences 0 and 1 (2 blocks each)
      test::LocalCommunicator alone;
      const auto reference = stage_logits(config, 1, 0, alone, ids, chunks);
      const auto split = stage_logits(config, 2, tp->rank(), *tp, ids, chunks);
      const double error = test::relative_error(test::as_double(split.data(), split.size()),
                                                test::as_double(reference.data(), reference.size()));
      EXPECT_LT(error, 1e-5) << "kv heads " << kv_heads << " bias/tied " << bias_and_tied;
    }
  }
}

// Sequence parallelism (each rank normalizing its share of the step's rows, the products gathering them) gives
// the bits of the plain tensor-parallel step, whose sums are the same two values added: f32, bf16 and quantized
// weights (the gathered rows f32, rounded to bf16 or quantized), 9 tokens (shares of 5 and 4 rows), 1 (a rank
// with none) and 120 (more than the CPU kernels' token pass: in shared memory each rank computes its own rows'
// products before the other's arrive, and the other's rows of a row-parallel output first), with and without a
// threshold the step reaches, summed in shared memory and through MPI. The plain
// steps' sums are made where they join the residual stream, from the group's shared memory
// (Collectives::all_reduce_with), or by MPI's all-reduce: the same bits.
TEST(TensorParallel, SequenceParallelStepsGiveTheBitsOfPlainTensorParallelSteps) {
  auto tp = make_mpi_communicator(MPI_COMM_WORLD);
  ASSERT_EQ(tp->size(), 2);
  ModelConfig config = test::tiny_config();
  config.intermediate_size = 128;  // each rank's down_proj rows whole quantized blocks (2 x 32 values)
  const std::vector<std::int32_t> ids = {256, 72, 105, 33, 256, 7, 250, 3, 9};
  const std::vector<SeqChunk> prefill = {{0, 0, 4, 0}, {2, 0, 5, 4}};
  const std::vector<SeqChunk> decode = {{0, 0, 1, 0}};
  const std::vector<SeqChunk> long_prefill = {{0, 0, 60, 0}, {4, 0, 60, 60}};
  std::vector<std::int32_t> long_ids;
  for (std::int32_t i = 0; i < 120; ++i) long_ids.push_back(3 + (i * 37) % 250);
  std::map<std::pair<DType, std::size_t>, std::vector<float>> plain_in_shared_memory;
  for (const bool shared_memory : {true, false}) {  // the reduce-scatter in the shared workspace, or by MPI's sends
    if (!shared_memory) setenv("STRATA_MPI_SHM_ALLREDUCE", "0", 1);
    for (DType dtype : {DType::F32, DType::BF16, DType::Q8_0, DType::Q4_0})
      for (const auto* chunks : {&prefill, &decode, &long_prefill}) {
        const std::vector<std::int32_t> step =
            chunks == &long_prefill
                ? long_ids
                : std::vector<std::int32_t>(ids.begin(), ids.begin() + (chunks == &prefill ? 9 : 1));
        const auto plain = stage_logits(config, 2, tp->rank(), *tp, step, *chunks, dtype, 0);
        auto& fused = plain_in_shared_memory[{dtype, step.size()}];
        if (shared_memory)
          fused = plain;
        else
          EXPECT_EQ(0, std::memcmp(fused.data(), plain.data(), plain.size() * 4))
              << dtype_name(dtype) << " " << step.size() << " tokens: fused sums against MPI's all-reduce";
        for (const std::int32_t threshold : {1, 9, 120}) {
          const auto split = stage_logits(config, 2, tp->rank(), *tp, step, *chunks, dtype, threshold);
          ASSERT_EQ(split.size(), plain.size());
          EXPECT_EQ(0, std::memcmp(split.data(), plain.data(), plain.size() * 4))
              << dtype_name(dtype) << " " << step.size() << " tokens, threshold " << threshold
              << (shared_memory ? "" : ", no shared memory");
        }
      }
    unsetenv("STRATA_MPI_SHM_ALLREDUCE");
  }
}

// Sequence parallelism's shares follow the ranks' speeds: where rank 1 is slower (its products on the scalar row
// kernel, STRATA_ROW_KERNEL, several times slower than rank 0's: a slower core as the group sees it), rank 0, which
// then waits for it at every layer's sums, takes rows over from it step by step, on both ranks alike; and every
// step, shared evenly or not, gives the bits of the evenly shared one (each rank's products the same in both runs;
// the row kernels add in one order anyway).
TEST(TensorParallel, SequenceParallelRowsMoveToTheRankThatWaits) {
  auto tp = make_mpi_communicator(MPI_COMM_WORLD);
  ASSERT_EQ(tp->size(), 2);
  ModelConfig config = test::tiny_config();
  config.hidden_size = 256;
  config.intermediate_size = 512;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 4;
  config.head_dim = 32;
  const std::vector<std::int32_t> ids = {256, 72, 105, 33};
  const std::vector<SeqChunk> step = {{0, 0, 2, 0}, {2, 0, 2, 2}};  // 4 tokens: the row kernels' products
  std::vector<std::vector<float>> logits[2];                        // by even shares or not, step by step
  std::vector<double> fractions[2];
  for (const bool even : {true, false}) {
    if (tp->rank() == 1) setenv("STRATA_ROW_KERNEL", "scalar", 1);
    auto backend = make_cpu_backend(1, DType::F32);
    unsetenv("STRATA_ROW_KERNEL");
    test::RandomWeights weights(5);
    ShardPlan plan(config, {2, tp->rank(), 1, 0});
    StageLimits limits{64, 4, 32};
    limits.sequence_parallel_tokens = 1;
    limits.even_row_shares = even;
    limits.row_share_window = 0;  // moved after every step (steps this small hold microseconds of own-rows work)
    TransformerStage stage(plan, weights, *backend, *tp, limits);
    const test::SequenceBlocks blocks(limits);
    for (int s = 0; s < 8; ++s) {
      const TensorView local = stage.forward(step, blocks.table, ids, nullptr);
      logits[even].emplace_back(local.f32(), local.f32() + local.numel());
    }
    fractions[even].assign(stage.row_fractions().begin(), stage.row_fractions().end());
  }
  EXPECT_EQ(fractions[true], (std::vector<double>{0.5, 0.5}));
  ASSERT_EQ(fractions[false].size(), 2u);
  EXPECT_GT(fractions[false][0], 0.6) << "rank 0 waited for rank 1 at every layer: it takes over rows";
  double theirs[2] = {};
  tp->all_gather(fractions[false].data(), theirs, sizeof(double));
  EXPECT_EQ(theirs[0], theirs[1]) << "both ranks share the rows alike";
  for (int s = 0; s < 8; ++s) EXPECT_EQ(logits[false][std::size_t(s)], logits[true][std::size_t(s)]) << "step " << s;
}

TEST(TensorParallel, ShardedSamplingChoosesWhatWholeVocabularySamplingChooses) {
  auto tp = make_mpi_communicator(MPI_COMM_WORLD);
  const std::int64_t vocab = 40, shard = vocab / 2;
  std::vector<float> logits(std::size_t(3 * vocab));
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i) * 1.7) * 3);
  std::vector<float> mine;
  for (int row = 0; row < 3; ++row)
    mine.insert(mine.end(), logits.begin() + row * vocab + tp->rank() * shard,
                logits.begin() + row * vocab + (tp->rank() + 1) * shard);
  test::LocalCommunicator alone;
  int compared = 0;
  for (const SamplingParams& p :
       {SamplingParams{0.0f, 0, 1.0f, 0}, SamplingParams{1.0f, 0, 1.0f, 3}, SamplingParams{0.7f, 5, 1.0f, 4},
        SamplingParams{1.3f, 0, 0.8f, 5}, SamplingParams{0.9f, 30, 0.9f, 6}}) {
    for (std::int64_t step = 0; step < 50; ++step) {
      const std::vector<SampleRow> rows(3, SampleRow{p, step});
      const auto whole = sample_tokens(logits.data(), vocab, 0, rows, alone);
      const auto sharded = sample_tokens(mine.data(), shard, tp->rank() * shard, rows, *tp);
      ASSERT_EQ(sharded, whole) << "temperature " << p.temperature << " top_k " << p.top_k << " step " << step;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 250);
}
