// Decode attention on the CPU backend alone, for docs/performance.md:
//   strata_attention_bench [--batch B] [--positions P] [--kv f32|f16] [--layers L] [--q-heads H] [--kv-heads K]
//                          [--head-dim D] [--block-size S] [--threads T] [--pool shuffled|ordered]
// One decode step of B sequences, each at position P, over L layers with a paged cache of their own (blocks handed
// out in a shuffled order, as in a pool that has served many requests; or, `--pool ordered`, each sequence's blocks
// one after another, as the engine's pool places them where it has room: engine/block_pool.h), and the same step
// with every sequence on the same blocks: its arithmetic without the memory traffic.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "runtime/backend/backend.h"
#include "runtime/base/dtype.h"
#include "runtime/tensor/tensor.h"

namespace {

struct Options {
  int batch = 16, positions = 160, layers = 12, q_heads = 12, kv_heads = 4, head_dim = 64, block_size = 16;
  int threads = 2;
  strata::DType kv = strata::DType::F32;
  bool shuffled = true;  // --pool shuffled|ordered
};

[[noreturn]] void usage(const char* program, const std::string& why) {
  std::fprintf(stderr,
               "%s: %s\nusage: %s [--batch B] [--positions P] [--kv f32|f16] [--layers L] [--q-heads H] "
               "[--kv-heads K] [--head-dim D] [--block-size S] [--threads T] [--pool shuffled|ordered]\n",
               program, why.c_str(), program);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value after " + a);
    const std::string v = argv[++i];
    int* field = a == "--batch"        ? &o.batch
                 : a == "--positions"  ? &o.positions
                 : a == "--layers"     ? &o.layers
                 : a == "--q-heads"    ? &o.q_heads
                 : a == "--kv-heads"   ? &o.kv_heads
                 : a == "--head-dim"   ? &o.head_dim
                 : a == "--block-size" ? &o.block_size
                 : a == "--threads"    ? &o.threads
                                       : nullptr;
    if (a == "--pool") {
      if (v != "shuffled" && v != "ordered") usage(argv[0], "--pool is shuffled or ordered");
      o.shuffled = v == "shuffled";
    } else if (a == "--kv") {
      if (v != "f32" && v != "f16") usage(argv[0], "--kv is f32 or f16");
      o.kv = v == "f16" ? strata::DType::F16 : strata::DType::F32;
    } else if (field) {
      *field = std::atoi(v.c_str());
      if (*field < 1) usage(argv[0], a + " must be a positive number");
    } else {
      usage(argv[0], "unknown option " + a);
    }
  }
  if (o.q_heads % o.kv_heads != 0) usage(argv[0], "--q-heads must be a multiple of --kv-heads");
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best time of one decode step (every layer's attention) over `repeats` tries. in_cache: every sequence reads the
// same blocks.
double step_seconds(strata::Backend& backend, const Options& o, bool in_cache, int repeats) {
  using namespace strata;
  const std::int64_t per_seq = (o.positions + o.block_size - 1) / o.block_size;
  const std::int64_t blocks = in_cache ? per_seq : per_seq * o.batch;
  std::vector<std::int32_t> table(static_cast<std::size_t>(blocks));
  std::iota(table.begin(), table.end(), 0);
  std::mt19937 rng(1);
  if (o.shuffled) std::shuffle(table.begin(), table.end(), rng);

  std::vector<Tensor> k_cache, v_cache;
  std::vector<float> host(static_cast<std::size_t>(blocks * o.block_size * o.kv_heads * o.head_dim));
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (float& x : host) x = uniform(rng);
  for (int l = 0; l < o.layers; ++l)
    for (auto* caches : {&k_cache, &v_cache}) {
      caches->push_back(backend.allocate({blocks, o.block_size, o.kv_heads, o.head_dim}, o.kv));
      backend.upload(host.data(), caches->back().view());
    }
  Tensor q = backend.allocate({o.batch, o.q_heads * o.head_dim}, DType::F32);
  Tensor out = backend.allocate({o.batch, o.q_heads * o.head_dim}, DType::F32);
  std::vector<float> q_host(static_cast<std::size_t>(o.batch * o.q_heads * o.head_dim));
  for (float& x : q_host) x = uniform(rng);
  backend.upload(q_host.data(), q.view());
  std::vector<SeqChunk> chunks;  // sequence s decodes position P - 1 through its blocks
  for (int s = 0; s < o.batch; ++s)
    chunks.push_back(SeqChunk{std::int32_t(in_cache ? 0 : s * per_seq), o.positions - 1, 1, s, s, 0});

  AttentionParams params;
  params.scale = 1.0f / float(o.head_dim);
  double best = 1e30;
  for (int repeat = 0; repeat < repeats; ++repeat) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int l = 0; l < o.layers; ++l)
      backend.attention(chunks, table, q.view(), k_cache[std::size_t(l)].view(), v_cache[std::size_t(l)].view(), params,
                        out.view());
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace strata;
  const Options o = parse(argc, argv);
  auto backend = make_cpu_backend(o.threads, DType::F32, o.kv);
  const double bytes = double(o.batch) * o.positions * o.kv_heads * o.head_dim * 2 * o.layers * dtype_size(o.kv);
  std::printf("batch %d, %d positions, %s KV cache (%.1f MB read per step), %d layers, %d threads, %s pool\n", o.batch,
              o.positions, o.kv == DType::F16 ? "f16" : "f32", bytes / 1e6, o.layers, o.threads,
              o.shuffled ? "shuffled" : "ordered");
  for (int round = 1; round <= 3; ++round) {  // alternating: this kind of machine drifts between runs
    const double memory = step_seconds(*backend, o, false, 10), cache = step_seconds(*backend, o, true, 10);
    std::printf(
        "round %d: %.3f ms per step (%.1f GB/s of keys and values); in cache (every sequence on the same "
        "blocks) %.3f ms\n",
        round, memory * 1e3, bytes / memory / 1e9, cache * 1e3);
  }
}
