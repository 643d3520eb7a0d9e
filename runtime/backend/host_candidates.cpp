// Host sampling candidates; see host_candidates.h. Moved from the engine's sampler so every backend shares it.
#include "runtime/backend/host_candidates.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "runtime/base/error.h"

namespace strata {
namespace {

bool better(const SampleCandidate& a, const SampleCandidate& b) {
  return candidate_better(a.value, a.id, b.value, b.id);
}

}  // namespace

void host_candidates(const float* row, std::int64_t local_vocab, std::int64_t offset, const CandidateRequest& r,
                     SampleCandidate* out) {
  if (r.mode == CandidateMode::Greedy || r.mode == CandidateMode::Gumbel) {
    SampleCandidate best{-INFINITY, std::int32_t(offset)};
    for (std::int64_t i = 0; i < local_vocab; ++i) {
      const std::int64_t id = offset + i;
      const float score =
          r.mode == CandidateMode::Greedy
              ? finite_or_lowest(row[i])
              : finite_or_lowest(float(double(row[i]) / r.temperature + gumbel_from_hash(r.seed, r.step, id)));
      const SampleCandidate c{score, std::int32_t(id)};
      if (better(c, best)) best = c;
    }
    out[0] = best;
    return;
  }
  STRATA_CHECK(r.count >= 1 && r.count <= local_vocab, Internal, "top-k candidates: ", r.count, " of ", local_vocab);
  std::vector<SampleCandidate> all(static_cast<std::size_t>(local_vocab));
  for (std::int64_t i = 0; i < local_vocab; ++i)
    all[std::size_t(i)] = SampleCandidate{finite_or_lowest(row[i] / r.temperature), std::int32_t(offset + i)};
  std::partial_sort(all.begin(), all.begin() + r.count, all.end(), better);
  std::copy(all.begin(), all.begin() + r.count, out);
}

}  // namespace strata
