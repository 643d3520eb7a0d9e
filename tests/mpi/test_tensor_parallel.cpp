// Tensor parallelism on 2 ranks against the same computation on one rank: a transformer stage split over two
// ranks (column/row-parallel linears, vocab-parallel embedding and LM head, replicated KV heads) gives the
// unsplit logits, and sampling over a vocab shard chooses what sampling over the whole vocabulary chooses.
#include <gtest/gtest.h>

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>

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
  StageLimits limits{64, 4, 32};
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
// weights (the gathered rows f32, rounded to bf16 or quantized), 9 tokens (shares of 5 and 4 rows) and 1 (a rank
// with none), with and without a threshold the step reaches, summed in shared memory and through MPI. The plain
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
  std::map<std::pair<DType, std::size_t>, std::vector<float>> plain_in_shared_memory;
  for (const bool shared_memory : {true, false}) {  // the reduce-scatter in the shared workspace, or by MPI's sends
    if (!shared_memory) setenv("STRATA_MPI_SHM_ALLREDUCE", "0", 1);
    for (DType dtype : {DType::F32, DType::BF16, DType::Q8_0, DType::Q4_0})
      for (const auto* chunks : {&prefill, &decode}) {
        const std::vector<std::int32_t> step(ids.begin(), ids.begin() + (chunks == &prefill ? 9 : 1));
        const auto plain = stage_logits(config, 2, tp->rank(), *tp, step, *chunks, dtype, 0);
        auto& fused = plain_in_shared_memory[{dtype, step.size()}];
        if (shared_memory)
          fused = plain;
        else
          EXPECT_EQ(0, std::memcmp(fused.data(), plain.data(), plain.size() * 4))
              << dtype_name(dtype) << " " << step.size() << " tokens: fused sums against MPI's all-reduce";
        for (const std::int32_t threshold : {1, 9}) {
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

namespace {
// A slower core for one rank: each rank of the test on a core of its own (mpiexec's binding, or one of those it may
// use), and on rank `slow`'s a second thread spinning beside it (which takes about half that core's time), until
// destroyed.
class SlowCore {
 public:
  SlowCore(int rank, int slow) {
    sched_getaffinity(0, sizeof before_, &before_);
    std::vector<int> cores;
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &before_)) cores.push_back(c);
    core_ = cores[std::size_t(rank) % cores.size()];
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(core_, &one);
    sched_setaffinity(0, sizeof one, &one);
    if (rank == slow)
      hog_ = std::thread([this, one] {
        sched_setaffinity(0, sizeof one, &one);
        // Bursts of 100 us between sleeps of as long: woken, it takes the core from the rank at once (the
        // scheduler favours a thread that slept), so the rank runs at about half speed in whatever it does,
        // not in whole slices of milliseconds that would land mostly in its waits.
        while (!stop_.load(std::memory_order_relaxed)) {
          const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
          while (std::chrono::steady_clock::now() < until) {
          }
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
      });
  }
  ~SlowCore() {
    stop_ = true;
    if (hog_.joinable()) hog_.join();
    sched_setaffinity(0, sizeof before_, &before_);
  }
  int core() const { return core_; }

 private:
  cpu_set_t before_;
  int core_ = -1;
  std::atomic<bool> stop_ = false;
  std::thread hog_;
};
}  // namespace

// Sequence parallelism's shares follow the ranks' speeds: where rank 1's core is slower (shared with a spinning
// thread), rank 0 (which then waits for it at every layer's sums) takes rows over from it step by step, on both
// ranks alike; and every step, shared evenly or not, gives the bits of the evenly shared one (quantized weights:
// the rows gathered as blocks).
TEST(TensorParallel, SequenceParallelRowsMoveToTheRankThatWaits) {
  auto tp = make_mpi_communicator(MPI_COMM_WORLD);
  ASSERT_EQ(tp->size(), 2);
  // Steps of ~20 ms a rank: long against the scheduler's slices of the shared core, so that the spinning thread
  // takes its time from the slow rank's work in proportion, not only from its waits.
  ModelConfig config = test::tiny_config();
  config.hidden_size = 512;
  config.intermediate_size = 1024;
  config.num_hidden_layers = 4;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 4;
  config.head_dim = 64;
  std::vector<std::int32_t> ids;
  for (int t = 0; t < 64; ++t) ids.push_back((t * 37) % 256);
  const std::vector<SeqChunk> prefill = {{0, 0, 32, 0}, {2, 0, 32, 32}};
  const SlowCore slow(tp->rank(), 1);
  int cores[2] = {};
  const int mine = slow.core();
  tp->all_gather(&mine, cores, sizeof mine);
  ASSERT_NE(cores[0], cores[1]) << "the test needs the two ranks on two cores";
  std::vector<std::vector<float>> logits[2];  // by even shares or not, step by step
  std::vector<double> fractions[2];
  for (const bool even : {true, false}) {
    auto backend = make_cpu_backend(1, DType::Q8_0);
    test::RandomWeights weights(5);
    ShardPlan plan(config, {2, tp->rank(), 1, 0});
    StageLimits limits{64, 4, 32};
    limits.sequence_parallel_tokens = 1;
    limits.even_row_shares = even;
    limits.row_share_window = 0;  // moved after every step (steps of this model hold ~0.1 ms of own-rows work)
    TransformerStage stage(plan, weights, *backend, *tp, limits);
    const test::SequenceBlocks blocks(limits);
    for (int step = 0; step < 8; ++step) {
      const TensorView local = stage.forward(prefill, blocks.table, ids, nullptr);
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
  for (int step = 0; step < 8; ++step)
    EXPECT_EQ(logits[false][std::size_t(step)], logits[true][std::size_t(step)]) << "step " << step;
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
