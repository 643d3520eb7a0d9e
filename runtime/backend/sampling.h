// What a backend hands the host sampler for one row of vocab-shard logits: a few (score, global id) candidates
// instead of the whole shard, and the Gumbel noise hash both the host and the device compute bit-for-bit alike
// (integer mixing; only the final -log(-log u) goes through each side's libm).
// Free of CUDA headers; the STRATA_HOST_DEVICE marker lets nvcc compile the same functions for the GPU.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define STRATA_HOST_DEVICE __host__ __device__
#else
#define STRATA_HOST_DEVICE
#endif

namespace strata {

// One candidate: the score it is ranked by (logit/T, plus noise in Gumbel mode) and its global token id.
// Layout is part of the cross-rank protocol (all-gathered as bytes): 8 bytes, no padding.
struct SampleCandidate {
  float value;
  std::int32_t id;
};
static_assert(sizeof(SampleCandidate) == 8);

enum class CandidateMode : std::uint8_t {
  Greedy,  // 1 candidate: the best logit
  Gumbel,  // 1 candidate: the best logit / T + gumbel(seed, step, id)
  TopK,    // `count` candidates: the best logit / T, best first
};

// What one row asks for.
struct CandidateRequest {
  CandidateMode mode = CandidateMode::Greedy;
  float temperature = 1.0f;  // used by Gumbel and TopK
  std::int32_t count = 1;    // TopK: how many (<= local vocab); otherwise 1
  std::uint64_t seed = 0;
  std::int64_t step = 0;
};

// A score as candidates are ranked: a NaN logit (a broken model or overflow) must not break the ordering, so it ranks
// below every number.
STRATA_HOST_DEVICE inline float finite_or_lowest(float value) { return std::isnan(value) ? -INFINITY : value; }

// A strict total order on candidates: higher score first, ties to the lower id (NaN scores become -inf first).
STRATA_HOST_DEVICE inline bool candidate_better(float av, std::int32_t aid, float bv, std::int32_t bid) {
  return av > bv || (av == bv && aid < bid);
}

STRATA_HOST_DEVICE inline std::uint64_t gumbel_mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Gumbel(0,1) noise as a pure function of (seed, step, token id): the same on every rank, layout and device.
STRATA_HOST_DEVICE inline double gumbel_from_hash(std::uint64_t seed, std::int64_t step, std::int64_t token) {
  const std::uint64_t h =
      gumbel_mix(gumbel_mix(gumbel_mix(seed + 0x9e3779b97f4a7c15ull) ^ std::uint64_t(step)) ^ std::uint64_t(token));
  const double u = (double(h >> 11) + 0.5) * 0x1.0p-53;  // in (0, 1)
  return -log(-log(u));
}

}  // namespace strata
