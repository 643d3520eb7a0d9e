// The CPU backend's per-token ops between the products of a decode step, for docs/performance.md:
//   strata_step_ops_bench [--batch B] [--threads T]
// SwiGLU on [B, 2 x 2048], two residual adds + RMSNorms on [B, 768] and RoPE on q [B, 12 x 64] and k [B, 4 x 64],
// each 12 times (the 100M model's layers); best of 200 steps, positions advancing by one per step as in decode.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "runtime/backend/backend.h"
#include "runtime/tensor/tensor.h"

namespace {

[[noreturn]] void usage(const char* program, const std::string& why) {
  std::fprintf(stderr, "%s: %s\nusage: %s [--batch B] [--threads T]\n", program, why.c_str(), program);
  std::exit(2);
}

double seconds(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace strata;
  int batch = 16, threads = 2;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value after " + a);
    int* field = a == "--batch" ? &batch : a == "--threads" ? &threads : nullptr;
    if (!field) usage(argv[0], "unknown option " + a);
    *field = std::atoi(argv[++i]);
    if (*field < 1) usage(argv[0], a + " must be a positive number");
  }
  constexpr int kLayers = 12, kHidden = 768, kInter = 2048, kHeadDim = 64;
  auto backend = make_cpu_backend(threads, DType::F32, DType::F32);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](Shape shape) {
    Tensor t = backend->allocate(std::move(shape), DType::F32);
    for (std::int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = normal(rng);
    return t;
  };
  Tensor gate_up = random({batch, 2 * kInter}), act = random({batch, kInter});
  Tensor residual = random({batch, kHidden}), x = random({batch, kHidden}), norm = random({kHidden});
  Tensor normed = random({batch, kHidden}), q = random({batch, 12 * kHeadDim}), k = random({batch, 4 * kHeadDim});
  RopeParams rope{{}, kHeadDim};
  for (int i = 0; i < kHeadDim / 2; ++i) rope.inv_freq.push_back(float(std::pow(10000.0, -2.0 * i / kHeadDim)));
  std::vector<std::int32_t> positions(static_cast<std::size_t>(batch));
  double swiglu = 1e30, norms = 1e30, rotations = 1e30;
  for (int step = 0; step < 200; ++step) {
    std::fill(positions.begin(), positions.end(), 100 + step);
    std::copy(x.f32(), x.f32() + x.numel(), residual.f32());  // the residual stream stays of one size
    const auto t0 = std::chrono::steady_clock::now();
    for (int l = 0; l < kLayers; ++l) backend->swiglu(gate_up.view(), act.view());
    const auto t1 = std::chrono::steady_clock::now();
    for (int l = 0; l < 2 * kLayers; ++l)
      backend->rms_norm_residual(residual.view(), x.view(), norm.view(), 1e-5f, normed.view());
    const auto t2 = std::chrono::steady_clock::now();
    for (int l = 0; l < kLayers; ++l) {
      backend->rope(q.view(), positions, rope);
      backend->rope(k.view(), positions, rope);
    }
    const auto t3 = std::chrono::steady_clock::now();
    swiglu = std::min(swiglu, seconds(t0, t1));
    norms = std::min(norms, seconds(t1, t2));
    rotations = std::min(rotations, seconds(t2, t3));
  }
  std::printf(
      "batch %d, %d thread(s), per decode step of 12 layers: SwiGLU %.3f ms, residual adds + RMSNorms %.3f "
      "ms, RoPE of q and k %.3f ms\n",
      batch, threads, swiglu * 1e3, norms * 1e3, rotations * 1e3);
}
