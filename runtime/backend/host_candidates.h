// Sampling candidates computed on the host from f32 logits: the CPU backend's implementation of
// Backend::sample_candidates, and the CUDA backend's fallback for rows that need the whole shard.
#pragma once
#include <cstdint>

#include "runtime/backend/sampling.h"

namespace strata {

// row: local_vocab f32 logits whose first id is `offset`. Writes r.count candidates to out (best first for TopK).
void host_candidates(const float* row, std::int64_t local_vocab, std::int64_t offset, const CandidateRequest& r,
                     SampleCandidate* out);

}  // namespace strata
