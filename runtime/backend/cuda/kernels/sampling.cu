// Sampling candidates on the vocab shard: one block per row scans the row's logits and keeps the best
// (score, id) by the total order of sampling.h; top-k repeats the scan k times, each round taking the best
// candidate strictly below the previous one (k * vocab / threads work per thread: fine for k <= kMaxDeviceTopK,
// and rows with larger k are served on the host). Scores are computed exactly as host_candidates does.
#include "runtime/backend/cuda/kernels/common.cuh"

namespace strata::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float score_of(const DeviceCandidateRequest& r, float logit, std::int64_t id) {
  switch (CandidateMode(r.mode)) {
    case CandidateMode::Greedy:
      return finite_or_lowest(logit);
    case CandidateMode::Gumbel:
      return finite_or_lowest(float(double(logit) / r.temperature + gumbel_from_hash(r.seed, r.step, id)));
    case CandidateMode::TopK:
    default:
      return finite_or_lowest(logit / r.temperature);
  }
}

__global__ void candidates_kernel(const float* logits, std::int64_t vocab, std::int64_t vocab_offset,
                                  const DeviceCandidateRequest* requests, SampleCandidate* out) {
  __shared__ float best_v[kThreads];
  __shared__ std::int32_t best_id[kThreads];
  const DeviceCandidateRequest r = requests[blockIdx.x];
  const float* row = logits + std::int64_t(blockIdx.x) * vocab;
  // The previous round's pick: this round looks only at candidates it beats. Round 0 has no bound.
  float prev_v = INFINITY;
  std::int32_t prev_id = -1;
  for (std::int32_t round = 0; round < r.count; ++round) {
    float v = -INFINITY;
    std::int32_t id = 0x7fffffff;
    for (std::int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      const std::int32_t gid = std::int32_t(vocab_offset + i);
      const float s = score_of(r, row[i], gid);
      if (round > 0 && !candidate_better(prev_v, prev_id, s, gid)) continue;
      if (candidate_better(s, gid, v, id)) {
        v = s;
        id = gid;
      }
    }
    best_v[threadIdx.x] = v;
    best_id[threadIdx.x] = id;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
      if (threadIdx.x < stride && candidate_better(best_v[threadIdx.x + stride], best_id[threadIdx.x + stride],
                                                   best_v[threadIdx.x], best_id[threadIdx.x])) {
        best_v[threadIdx.x] = best_v[threadIdx.x + stride];
        best_id[threadIdx.x] = best_id[threadIdx.x + stride];
      }
      __syncthreads();
    }
    prev_v = best_v[0];
    prev_id = best_id[0];
    if (threadIdx.x == 0) out[r.out_offset + round] = SampleCandidate{prev_v, prev_id};
    __syncthreads();  // best_v is rewritten by the next round
  }
}

}  // namespace

void sample_candidates(const float* logits, std::int64_t rows, std::int64_t vocab, std::int64_t vocab_offset,
                       const DeviceCandidateRequest* requests, SampleCandidate* out, cudaStream_t stream) {
  if (rows == 0) return;
  candidates_kernel<<<unsigned(rows), kThreads, 0, stream>>>(logits, vocab, vocab_offset, requests, out);
  check_launch("sample_candidates");
}

}  // namespace strata::cuda
