// The CUDA backend against the CPU backend (the oracle), op by op on random inputs and as a whole stage on a tiny
// random model. Every test skips, saying why, when no GPU is visible (CI compiles and links them only).
//
// Inputs are rounded to bf16 first and the CPU gets the same rounded values, so what is measured is the CUDA
// backend's own error: fp32 accumulation in both (order differences ~1e-6 relative, negligible) plus the rounding
// of each bf16 output, at most 2^-8 relative (round to nearest, 8 significant bits). Tolerances are therefore
// |gpu - cpu| <= atol + rtol * |cpu| with rtol = 2^-7 (one output rounding, with a factor-2 margin) and a small
// atol for outputs that cancel to near zero; they are stated per test where they differ, with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "engine/sampler.h"
#include "runtime/backend/backend.h"
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/cuda/device_info.h"
#include "tests/unit/test_support.h"

using namespace strata;

namespace {

constexpr double kRtol = 1.0 / 128;  // 2^-7

#define SKIP_WITHOUT_GPU()                                                                                       \
  do {                                                                                                           \
    if (cuda_devices().empty())                                                                                  \
      GTEST_SKIP() << "no CUDA GPU visible (cudaGetDeviceCount reports none): CUDA backend tests run only on a " \
                      "machine with a GPU";                                                                      \
  } while (0)

float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

struct Pair {
  std::unique_ptr<Backend> cpu = make_cpu_backend(1);
  std::unique_ptr<Backend> gpu = make_cuda_backend(CudaBackendOptions{0, DType::BF16, 0});
  std::mt19937 rng{1234};

  std::vector<float> random(std::int64_t n, float scale = 1.0f) {
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = round_bf16(normal(rng));
    return v;
  }
  Tensor on_cpu(const std::vector<float>& v, Shape shape) {
    Tensor t = cpu->allocate(std::move(shape), DType::F32);
    std::copy(v.begin(), v.end(), t.f32());
    return t;
  }
  Tensor on_gpu(const std::vector<float>& v, Shape shape, DType dtype = DType::BF16) {
    Tensor t = gpu->allocate(std::move(shape), dtype);
    gpu->upload(v.data(), t.view());
    return t;
  }
  std::vector<float> fetch(const Tensor& t) {
    std::vector<float> v(static_cast<std::size_t>(t.numel()));
    gpu->download(t.view(), v.data());
    return v;
  }
};

// Counts elements outside atol + rtol * |ref|; reports the worst.
::testing::AssertionResult close(const std::vector<float>& got, const float* ref, double atol, double rtol) {
  std::size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double allowed = atol + rtol * std::abs(double(ref[i]));
    const double diff = std::abs(double(got[i]) - double(ref[i]));
    if (!(diff <= allowed)) ++bad;
    if (!(diff - allowed <= worst_excess)) {
      worst_excess = diff - allowed;
      worst = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements outside tolerance; worst at "
                                       << worst << ": got " << got[worst] << ", reference " << ref[worst];
}

}  // namespace

TEST(CudaBackend, LinearBf16AndF32LogitsMatchCpu) {
  SKIP_WITHOUT_GPU();
  Pair p;
  // 21000 tokens x 200 outputs exceed the backend's 4M-element f32 scratch: the biased GEMM runs in two row chunks.
  for (std::int64_t tokens : {1, 3, 37, 21000}) {
    const std::int64_t k = tokens > 1000 ? 32 : 320, n = 200;
    const auto x = p.random(tokens * k), w = p.random(n * k, 0.05f), b = p.random(n);
    Tensor cx = p.on_cpu(x, {tokens, k}), cw = p.on_cpu(w, {n, k}), cb = p.on_cpu(b, {n});
    Tensor cy = p.cpu->allocate({tokens, n}, DType::F32);
    p.cpu->linear(cx.view(), cw.view(), cb.view(), cy.view());
    Tensor gx = p.on_gpu(x, {tokens, k}), gw = p.on_gpu(w, {n, k}), gb = p.on_gpu(b, {n});
    Tensor gy = p.gpu->allocate({tokens, n}, DType::BF16);
    p.gpu->linear(gx.view(), gw.view(), gb.view(), gy.view());
    // bf16 y: x.w + b in fp32, rounded once (<= 2^-8 |y|, within kRtol) like the CPU; atol only for fp32
    // accumulation order. Rounding x.w to bf16 before adding the bias would err by up to 2^-8 |x.w|, which is not
    // relative to y where y cancels against the bias: this tolerance catches that double rounding.
    EXPECT_TRUE(close(p.fetch(gy), cy.f32(), 1e-4, kRtol)) << tokens << " tokens, bf16 out";
    Tensor gyf = p.gpu->allocate({tokens, n}, DType::F32);
    p.gpu->linear(gx.view(), gw.view(), gb.view(), gyf.view());
    EXPECT_TRUE(close(p.fetch(gyf), cy.f32(), 1e-4, 1e-5)) << tokens << " tokens, f32 out with bias";
    Tensor gl = p.gpu->allocate({tokens, n}, DType::F32);
    p.gpu->linear(gx.view(), gw.view(), TensorView{}, gl.view());
    p.cpu->linear(cx.view(), cw.view(), TensorView{}, cy.view());
    // f32 logits: only accumulation order differs (K = 320 terms of size ~0.05: 1e-4 absolute is ample).
    EXPECT_TRUE(close(p.fetch(gl), cy.f32(), 1e-4, 1e-5)) << tokens << " tokens, f32 out";
  }
}

TEST(CudaBackend, RmsNormAndFusedResidualMatchCpu) {
  SKIP_WITHOUT_GPU();
  Pair p;
  const std::int64_t rows = 5, width = 1000;  // width not a multiple of the block
  const auto r = p.random(rows * width), x = p.random(rows * width), w = p.random(width);
  Tensor cr = p.on_cpu(r, {rows, width}), cx = p.on_cpu(x, {rows, width}), cw = p.on_cpu(w, {width});
  Tensor cy = p.cpu->allocate({rows, width}, DType::F32);
  Tensor gr = p.on_gpu(r, {rows, width}), gx = p.on_gpu(x, {rows, width}), gw = p.on_gpu(w, {width});
  Tensor gy = p.gpu->allocate({rows, width}, DType::BF16);

  p.cpu->rms_norm(cx.view(), cw.view(), 1e-5f, cy.view());
  p.gpu->rms_norm(gx.view(), gw.view(), 1e-5f, gy.view());
  EXPECT_TRUE(close(p.fetch(gy), cy.f32(), 1e-3, kRtol)) << "rms_norm";

  p.cpu->rms_norm_residual(cr.view(), cx.view(), cw.view(), 1e-5f, cy.view());
  p.gpu->rms_norm_residual(gr.view(), gx.view(), gw.view(), 1e-5f, gy.view());
  // The residual is stored in bf16 (one rounding); y is normalised from that rounded residual and rounded again:
  // two roundings, rtol 2^-6.
  EXPECT_TRUE(close(p.fetch(gr), cr.f32(), 1e-3, kRtol)) << "residual";
  EXPECT_TRUE(close(p.fetch(gy), cy.f32(), 2e-3, 2 * kRtol)) << "normed";
}

TEST(CudaBackend, RopeSwigluEmbeddingGatherMatchCpu) {
  SKIP_WITHOUT_GPU();
  Pair p;
  const std::int64_t tokens = 7, heads = 3, dim = 64;
  RopeParams rope;
  rope.head_dim = std::int32_t(dim);
  for (std::int64_t i = 0; i < dim / 2; ++i) rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / dim)));
  const std::vector<std::int32_t> positions{0, 1, 2, 900, 901, 4095, 17};
  const auto x = p.random(tokens * heads * dim);
  Tensor cx = p.on_cpu(x, {tokens, heads, dim}), gx = p.on_gpu(x, {tokens, heads, dim});
  p.cpu->rope(cx.view(), positions, rope);
  p.gpu->rope(gx.view(), positions, rope);
  EXPECT_TRUE(close(p.fetch(gx), cx.f32(), 1e-3, kRtol)) << "rope";  // exact inputs, one output rounding

  const std::int64_t width = 77;
  const auto gu = p.random(tokens * 2 * width);
  Tensor cgu = p.on_cpu(gu, {tokens, 2 * width}), ggu = p.on_gpu(gu, {tokens, 2 * width});
  Tensor co = p.cpu->allocate({tokens, width}, DType::F32), go = p.gpu->allocate({tokens, width}, DType::BF16);
  p.cpu->swiglu(cgu.view(), co.view());
  p.gpu->swiglu(ggu.view(), go.view());
  EXPECT_TRUE(close(p.fetch(go), co.f32(), 1e-3, kRtol)) << "swiglu";

  // Embedding and gather copy bf16 values: exact.
  const std::int64_t vocab = 50, offset = 100, hidden = 24;
  const auto table = p.random(vocab * hidden);
  const std::vector<std::int32_t> ids{100, 149, 99, 150, 120, 0, 101};  // 99, 150, 0 are other shards' rows
  Tensor ct = p.on_cpu(table, {vocab, hidden}), gt = p.on_gpu(table, {vocab, hidden});
  Tensor ce = p.cpu->allocate({tokens, hidden}, DType::F32), ge = p.gpu->allocate({tokens, hidden}, DType::BF16);
  p.cpu->embedding(ids, ct.view(), offset, ce.view());
  p.gpu->embedding(ids, gt.view(), offset, ge.view());
  EXPECT_TRUE(close(p.fetch(ge), ce.f32(), 0, 0)) << "embedding";

  const std::vector<std::int32_t> rows{6, 0, 3};
  Tensor cg = p.cpu->allocate({3, hidden}, DType::F32), gg = p.gpu->allocate({3, hidden}, DType::BF16);
  p.cpu->gather_rows(ce.view(), rows, cg.view());
  p.gpu->gather_rows(ge.view(), rows, gg.view());
  EXPECT_TRUE(close(p.fetch(gg), cg.f32(), 0, 0)) << "gather_rows";
}

namespace {

// Fills both backends' caches through kv_store for `chunks` (one prefill-sized write per chunk), then runs
// attention for `step` and returns (gpu output, cpu output). Chunks name a sequence (0 .. seqs-1) in table_offset;
// sequence s holds max_len / block_size blocks of a paged cache, scattered over the pool (block i of the table is
// pool block i * 97 mod blocks), so both backends read through a block table that is not the identity.
struct AttentionCase {
  std::int64_t seqs = 3, max_len = 1100, block_size = 16, q_heads = 8, kv_heads = 2, dim = 64;
  std::int64_t per_seq() const { return (max_len + block_size - 1) / block_size; }
};

std::pair<std::vector<float>, std::vector<float>> run_attention(Pair& p, const AttentionCase& a,
                                                                std::vector<SeqChunk> fill, std::vector<SeqChunk> step,
                                                                bool swap_kv_heads_on_cpu = false) {
  const std::int64_t blocks = a.seqs * a.per_seq();
  std::vector<std::int32_t> table(static_cast<std::size_t>(blocks));
  for (std::int64_t i = 0; i < blocks; ++i) table[std::size_t(i)] = std::int32_t(i * 97 % blocks);
  for (auto* chunks : {&fill, &step})
    for (auto& c : *chunks) c.table_offset = std::int32_t(c.table_offset * a.per_seq());
  const Shape cache_shape{blocks, a.block_size, a.kv_heads, a.dim};
  Tensor ck = p.cpu->allocate(cache_shape, DType::F32), cv = p.cpu->allocate(cache_shape, DType::F32);
  Tensor gk = p.gpu->allocate(cache_shape, DType::BF16), gv = p.gpu->allocate(cache_shape, DType::BF16);
  auto store = [&](const std::vector<SeqChunk>& chunks, std::int64_t tokens) {
    const auto k = p.random(tokens * a.kv_heads * a.dim), v = p.random(tokens * a.kv_heads * a.dim);
    auto k_cpu = k;
    if (swap_kv_heads_on_cpu)  // negative control: kv heads 0 and 1 exchanged in what the CPU sees
      for (std::int64_t t = 0; t < tokens; ++t)
        for (std::int64_t e = 0; e < a.dim; ++e)
          std::swap(k_cpu[std::size_t((t * a.kv_heads + 0) * a.dim + e)],
                    k_cpu[std::size_t((t * a.kv_heads + 1) * a.dim + e)]);
    Tensor ckt = p.on_cpu(k_cpu, {tokens, a.kv_heads * a.dim}), cvt = p.on_cpu(v, {tokens, a.kv_heads * a.dim});
    Tensor gkt = p.on_gpu(k, {tokens, a.kv_heads * a.dim}), gvt = p.on_gpu(v, {tokens, a.kv_heads * a.dim});
    p.cpu->kv_store(chunks, table, ckt.view(), cvt.view(), ck.view(), cv.view());
    p.gpu->kv_store(chunks, table, gkt.view(), gvt.view(), gk.view(), gv.view());
  };
  std::int64_t fill_tokens = 0;
  for (const auto& c : fill) fill_tokens += c.n_tokens;
  store(fill, fill_tokens);
  std::int64_t tokens = 0;
  for (const auto& c : step) tokens += c.n_tokens;
  store(step, tokens);
  const auto q = p.random(tokens * a.q_heads * a.dim);
  Tensor cq = p.on_cpu(q, {tokens, a.q_heads, a.dim}), gq = p.on_gpu(q, {tokens, a.q_heads, a.dim});
  Tensor co = p.cpu->allocate({tokens, a.q_heads, a.dim}, DType::F32);
  Tensor go = p.gpu->allocate({tokens, a.q_heads, a.dim}, DType::BF16);
  const float scale = float(1.0 / std::sqrt(double(a.dim)));
  p.cpu->attention(step, table, cq.view(), ck.view(), cv.view(), AttentionParams{scale}, co.view());
  p.gpu->attention(step, table, gq.view(), gk.view(), gv.view(), AttentionParams{scale}, go.view());
  return {p.fetch(go), std::vector<float>(co.f32(), co.f32() + co.numel())};
}

}  // namespace

// Prefill: several chunks in one step, lengths not multiples of the 128-key tile, grouped-query heads (8 over 2).
// Outputs are convex combinations of bf16 values of size ~1: one output rounding, rtol 2^-7, atol 2e-3 for
// averages near zero (fp32 softmax differences are ~1e-6).
TEST(CudaBackend, PrefillAttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Pair p;
  const AttentionCase a;
  const std::vector<SeqChunk> step{{0, 0, 130, 0}, {2, 0, 5, 130}, {1, 0, 257, 135}};
  const auto [gpu, cpu] = run_attention(p, a, {}, step);
  EXPECT_TRUE(close(gpu, cpu.data(), 2e-3, kRtol));
}

// Decode: one token per sequence over long cached prefixes (split-KV: 700 and 1037 keys split in ranges of 256,
// the last range partial) and a short one (no split needed for it, same launch).
TEST(CudaBackend, SplitKvDecodeAttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Pair p;
  const AttentionCase a;
  const std::vector<SeqChunk> fill{{0, 0, 700, 0}, {1, 0, 3, 700}, {2, 0, 1037, 703}};
  const std::vector<SeqChunk> step{{0, 700, 1, 0}, {1, 3, 1, 1}, {2, 1037, 1, 2}};
  const auto [gpu, cpu] = run_attention(p, a, fill, step);
  EXPECT_TRUE(close(gpu, cpu.data(), 2e-3, kRtol));
}

// Negative control: the same comparison must fail when the reference uses the wrong kv head for half the query
// heads, so the tolerance is tight enough to catch a GQA mapping error.
TEST(CudaBackend, NegativeControlWrongKvHeadIsDetected) {
  SKIP_WITHOUT_GPU();
  Pair p;
  const AttentionCase a;
  const std::vector<SeqChunk> fill{{0, 0, 300, 0}};
  const std::vector<SeqChunk> step{{0, 300, 1, 0}};
  const auto [gpu, cpu] = run_attention(p, a, fill, step, /*swap_kv_heads_on_cpu=*/true);
  EXPECT_FALSE(close(gpu, cpu.data(), 2e-3, kRtol));
}

// Candidates from identical f32 logits: greedy and top-k are exact (the same IEEE float division on both sides);
// Gumbel ids agree and its value is within 1 float ulp: the noise hash is the same integer function, only
// -log(-log u) goes through each side's libm (CUDA's vs glibc's log, which may differ in the last double bit), and
// the sum is rounded to float, so at most one float ulp apart.
TEST(CudaBackend, SamplingCandidatesMatchCpu) {
  SKIP_WITHOUT_GPU();
  Pair p;
  const std::int64_t rows = 4, vocab = 3001, offset = 6002;
  std::vector<float> logits(static_cast<std::size_t>(rows * vocab));
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (auto& v : logits) v = normal(p.rng);
  logits[5] = NAN;  // NaN ranks lowest on both
  Tensor cl = p.on_cpu(logits, {rows, vocab}), gl = p.on_gpu(logits, {rows, vocab}, DType::F32);
  std::vector<CandidateRequest> requests(4);
  requests[0] = {CandidateMode::Greedy, 1.0f, 1, 0, 0};
  requests[1] = {CandidateMode::Gumbel, 0.7f, 1, 42, 3};
  requests[2] = {CandidateMode::TopK, 0.9f, 40, 0, 0};
  requests[3] = {CandidateMode::TopK, 1.3f, 300, 0, 0};  // more than the device serves: the host fallback
  const std::vector<std::int64_t> offsets{0, 1, 2, 42, 342};
  std::vector<SampleCandidate> cpu(342), gpu(342);
  p.cpu->sample_candidates(cl.view(), offset, requests, offsets, cpu.data());
  p.gpu->sample_candidates(gl.view(), offset, requests, offsets, gpu.data());
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_EQ(gpu[i].id, cpu[i].id) << "candidate " << i;
    if (i == std::size_t(offsets[1])) {  // the Gumbel row
      const bool within_ulp =
          gpu[i].value == cpu[i].value || std::nextafter(cpu[i].value, gpu[i].value) == gpu[i].value;
      EXPECT_TRUE(within_ulp) << "Gumbel candidate: gpu " << gpu[i].value << ", cpu " << cpu[i].value;
    } else {
      EXPECT_EQ(gpu[i].value, cpu[i].value) << "candidate " << i;
    }
  }
}

namespace {

// The random model rounded to bf16, so both stages start from the same weights.
class Bf16Weights final : public WeightSource {
 public:
  explicit Bf16Weights(std::uint64_t seed) : inner_(seed) {}
  void read(const TensorSpec& spec, float* out) override {
    inner_.read(spec, out);
    for (std::int64_t i = 0; i < shape_numel(spec.local_shape()); ++i) out[i] = round_bf16(out[i]);
  }

 private:
  test::RandomWeights inner_;
};

}  // namespace

// A whole stage (embedding, 2 GQA layers, final norm, LM head) on a tiny random model, prefill of two sequences then
// decode steps, CPU vs CUDA. Tolerance: |gpu - cpu| <= 0.03 * max |cpu logit| for every logit. bf16 activations
// are rounded ~12 times per layer (2^-9 relative on average each, random signs); over 2 layers that accumulates to
// ~1% of the activations' scale, and the LM head keeps it proportional; 3% leaves a 3x margin. Greedy choices must
// agree wherever the CPU's top-two margin exceeds twice that tolerance.
// A second CUDA stage runs with step graphs: decode step 1 runs op by op (the warm-up), step 2 is captured, steps
// 3-6 replay (the stage sized every step buffer at construction, so nothing grows and restarts the warm-up);
// the kernels and their launch shapes are the same, so its logits must equal the graph-free ones (to 1e-3 of the
// logit scale: a replay with stale inputs would be off by the whole scale).
// The cache holds 600 positions, so decode attention splits the keys (3 ranges) in both.
TEST(CudaBackend, WholeStageLogitsAndGreedyTokensMatchCpuWithAndWithoutGraphs) {
  SKIP_WITHOUT_GPU();
  ModelConfig config = test::tiny_config();
  config.max_position_embeddings = 1024;
  const ShardPlan plan(config, StageCoordinates{1, 0, 1, 0});
  const StageLimits limits{64, 4, 600};
  test::LocalCommunicator tp_cpu, tp_gpu, tp_graph;
  auto cpu = make_cpu_backend(1);
  auto gpu = make_cuda_backend(CudaBackendOptions{0, DType::BF16, 0, /*graphs=*/false});
  auto graph = make_cuda_backend(CudaBackendOptions{0, DType::BF16, 0, /*graphs=*/true});
  Bf16Weights w1(7), w2(7), w3(7);
  TransformerStage cpu_stage(plan, w1, *cpu, tp_cpu, limits);
  TransformerStage gpu_stage(plan, w2, *gpu, tp_gpu, limits);
  TransformerStage graph_stage(plan, w3, *graph, tp_graph, limits);

  const test::SequenceBlocks blocks(limits);
  std::vector<SeqChunk> chunks{blocks.chunk(0, 0, 9, 0), blocks.chunk(1, 0, 4, 9)};
  std::vector<std::int32_t> ids{256, 72, 101, 108, 108, 111, 32, 119, 111, 256, 65, 66, 67};
  const std::int64_t vocab = plan.local_vocab();
  std::int64_t compared_tokens = 0;
  for (int step = 0; step < 7; ++step) {
    const TensorView cl = cpu_stage.forward(chunks, blocks.table, ids, nullptr);
    const TensorView gl = gpu_stage.forward(chunks, blocks.table, ids, nullptr);
    std::vector<float> got(static_cast<std::size_t>(gl.numel())), replayed(got.size());
    gpu->download(gl, got.data());
    graph->download(graph_stage.forward(chunks, blocks.table, ids, nullptr), replayed.data());
    float scale = 0;
    for (std::int64_t i = 0; i < cl.numel(); ++i) scale = std::max(scale, std::abs(cl.f32()[i]));
    const double tol = 0.03 * scale;
    // Same kernels and launch shapes; only cuBLAS could pick another algorithm under capture, so allow 1e-3.
    EXPECT_TRUE(close(replayed, got.data(), 1e-3 * scale, 0)) << "graphs vs none, step " << step;
    ASSERT_TRUE(close(got, cl.f32(), tol, 0)) << "step " << step;
    // Next tokens: the CPU's greedy choice, checked against the CUDA one where the margin is clear.
    std::vector<SeqChunk> next;
    std::vector<std::int32_t> next_ids;
    for (std::size_t r = 0; r < chunks.size(); ++r) {
      const float* row = cl.f32() + std::int64_t(r) * vocab;
      std::vector<std::int32_t> order(static_cast<std::size_t>(vocab));
      for (std::int64_t i = 0; i < vocab; ++i) order[std::size_t(i)] = std::int32_t(i);
      std::partial_sort(order.begin(), order.begin() + 2, order.end(),
                        [&](std::int32_t a, std::int32_t b) { return row[a] > row[b]; });
      const float* grow = got.data() + std::int64_t(r) * vocab;
      const auto gpu_best = std::int32_t(std::max_element(grow, grow + vocab) - grow);
      if (row[order[0]] - row[order[1]] > 2 * tol) {
        EXPECT_EQ(gpu_best, order[0]) << "step " << step << " row " << r;
        ++compared_tokens;
      }
      const SeqChunk& c = chunks[r];
      next.push_back(SeqChunk{c.table_offset, c.start_pos + c.n_tokens, 1, std::int32_t(r)});
      next_ids.push_back(order[0]);
    }
    chunks = next;
    ids = next_ids;
  }
  RecordProperty("greedy_tokens_compared", int(compared_tokens));
}

// Negative control for the graph comparison: a replayed step whose inputs were not refreshed would repeat the
// captured step's logits; here the inputs change between steps, so consecutive logits must differ.
TEST(CudaBackend, GraphReplayUsesEachStepsInputs) {
  SKIP_WITHOUT_GPU();
  const ModelConfig config = test::tiny_config();
  const ShardPlan plan(config, StageCoordinates{1, 0, 1, 0});
  test::LocalCommunicator tp;
  auto graph = make_cuda_backend(CudaBackendOptions{0, DType::BF16, 0, /*graphs=*/true});
  Bf16Weights w(3);
  const StageLimits limits{16, 2, 32};
  const test::SequenceBlocks blocks(limits);
  TransformerStage stage(plan, w, *graph, tp, limits);
  std::vector<float> previous, now(static_cast<std::size_t>(plan.local_vocab()));
  for (int step = 0; step < 5; ++step) {  // step 0 warms up, 1 is captured, 2.. replay
    const std::vector<SeqChunk> chunks{blocks.chunk(0, step, 1, 0)};
    const std::vector<std::int32_t> ids{std::int32_t(65 + step)};
    graph->download(stage.forward(chunks, blocks.table, ids, nullptr), now.data());
    if (!previous.empty()) {
      EXPECT_NE(0, std::memcmp(previous.data(), now.data(), now.size() * 4)) << "step " << step;
    }
    previous = now;
  }
}

namespace {

// One graphable step holding one rope on x (reset to x0 first, outside the step): the step's only changing input
// is the positions mirror, so a replay that reads stale or overwritten positions shows in the rotated values.
struct RopeSteps {
  Pair p;
  std::unique_ptr<Backend> graph = make_cuda_backend(CudaBackendOptions{0, DType::BF16, 0, /*graphs=*/true});
  RopeParams rope;
  std::vector<float> x0;
  Tensor gx;
  static constexpr std::int64_t kTokens = 2, kHeads = 2, kDim = 64;

  RopeSteps() {
    rope.head_dim = std::int32_t(kDim);
    for (std::int64_t i = 0; i < kDim / 2; ++i) rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / kDim)));
    x0 = p.random(kTokens * kHeads * kDim);
    gx = graph->allocate({kTokens, kHeads, kDim}, DType::BF16);
    // As the engine does at setup: step buffers sized up front. Without it the warm-up step grows the positions
    // buffer, which drops every recording and warm-up count, and the capture comes one step later.
    graph->reserve_step_buffers(kTokens, kTokens, 1024, 16, kHeads, kDim);
  }
  // The CPU's rope of x0 at `positions`.
  std::vector<float> expected(const std::vector<std::int32_t>& positions) {
    Tensor cx = p.on_cpu(x0, {kTokens, kHeads, kDim});
    p.cpu->rope(cx.view(), positions, rope);
    return std::vector<float>(cx.f32(), cx.f32() + cx.numel());
  }
  // Starts a step of `key` on x0 at `positions`; the caller ends or aborts it.
  StepMode begin(std::int64_t key, const std::vector<std::int32_t>& positions) {
    graph->upload(x0.data(), gx.view());
    const StepMode mode = graph->begin_step(key);
    graph->rope(gx.view(), positions, rope);
    return mode;
  }
  std::vector<float> fetch() {
    std::vector<float> v(static_cast<std::size_t>(gx.numel()));
    graph->download(gx.view(), v.data());
    return v;
  }
};

}  // namespace

// Positions change every step while the step replays: each replay must copy its own positions (the previous
// launch may still be reading the pinned buffer when the next step rewrites it; the backend waits for it).
TEST(CudaBackend, ReplayedStepsUseEachStepsPositions) {
  SKIP_WITHOUT_GPU();
  RopeSteps s;
  std::vector<StepMode> modes;
  for (int step = 0; step < 8; ++step) {  // 0 warms up, 1 is captured, 2.. replay
    const std::vector<std::int32_t> positions{7 * step + 1, 300 + 13 * step};
    modes.push_back(s.begin(0, positions));
    s.graph->end_step();
    const auto want = s.expected(positions);
    EXPECT_TRUE(close(s.fetch(), want.data(), 1e-3, kRtol)) << "step " << step;
  }
  EXPECT_EQ(modes[1], StepMode::Capture);
  EXPECT_EQ(modes.back(), StepMode::Replay);
}

// A replayed step that aborts has rewritten the pinned positions but never launched the graph that copies them:
// the next step with the same positions must still copy them (it ran with the previous step's positions before).
TEST(CudaBackend, AbortedReplayLeavesNoStaleStepInputs) {
  SKIP_WITHOUT_GPU();
  RopeSteps s;
  for (int step = 0; step < 3; ++step) {  // warm-up, capture, one replay at positions {1, 2}
    s.begin(0, {1, 2});
    s.graph->end_step();
  }
  const std::vector<std::int32_t> positions{900, 901};
  ASSERT_EQ(s.begin(0, positions), StepMode::Replay);
  s.graph->abort_step();
  ASSERT_EQ(s.begin(-1, positions), StepMode::Run);  // not graphable: runs op by op
  s.graph->end_step();
  const auto want = s.expected(positions);
  EXPECT_TRUE(close(s.fetch(), want.data(), 1e-3, kRtol)) << "op-by-op step after an aborted replay";
}

// The pipeline path on the GPU: stage 0 downloads its hidden state as f32 and stage 1 uploads it again. bf16 -> f32
// -> bf16 is exact, and both halves run the same kernels on the same values as one whole stage, so the logits must
// agree with the single stage's (to 1e-6 of their scale: only a different cuBLAS algorithm choice could differ).
TEST(CudaBackend, TwoPipelineStagesEqualOneStage) {
  SKIP_WITHOUT_GPU();
  const ModelConfig config = test::tiny_config();
  const StageLimits limits{32, 2, 32};
  test::LocalCommunicator tp;
  auto gpu = make_cuda_backend(CudaBackendOptions{0, DType::BF16, 0, /*graphs=*/false});
  Bf16Weights w0(5), w1(5), w2(5);
  TransformerStage whole(ShardPlan(config, StageCoordinates{1, 0, 1, 0}), w0, *gpu, tp, limits);
  TransformerStage first(ShardPlan(config, StageCoordinates{1, 0, 2, 0}), w1, *gpu, tp, limits);
  TransformerStage last(ShardPlan(config, StageCoordinates{1, 0, 2, 1}), w2, *gpu, tp, limits);
  const test::SequenceBlocks blocks(limits);
  const std::vector<SeqChunk> prefill{blocks.chunk(0, 0, 6, 0), blocks.chunk(1, 0, 3, 6)};
  const std::vector<std::int32_t> ids{256, 80, 105, 112, 101, 33, 256, 72, 105};
  const std::vector<SeqChunk> decode{blocks.chunk(0, 6, 1, 0), blocks.chunk(1, 3, 1, 1)};
  const std::vector<std::int32_t> next{10, 11};
  for (const auto& [chunks, tokens] : {std::pair{prefill, ids}, std::pair{decode, next}}) {
    const TensorView hidden = first.forward(chunks, blocks.table, tokens, nullptr);
    ASSERT_EQ(hidden.kind, MemoryKind::Host);
    ASSERT_EQ(hidden.dtype, DType::F32);
    std::vector<float> split(static_cast<std::size_t>(config.vocab_size * std::int64_t(chunks.size()))),
        single(split.size());
    gpu->download(last.forward(chunks, blocks.table, {}, hidden.f32()), split.data());
    gpu->download(whole.forward(chunks, blocks.table, tokens, nullptr), single.data());
    float scale = 0;
    for (float v : single) scale = std::max(scale, std::abs(v));
    EXPECT_TRUE(close(split, single.data(), 1e-6 * scale, 0))
        << chunks.size() << " chunks, first at " << chunks[0].start_pos;
  }
}
