// Vocab-parallel sampling; see sampler.h for the method.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/backend/host_candidates.h"
#include "runtime/base/error.h"

namespace strata {
namespace {

using Candidate = SampleCandidate;

bool better(const Candidate& a, const Candidate& b) { return candidate_better(a.value, a.id, b.value, b.id); }

enum class Mode { Greedy, Gumbel, Filtered };

Mode mode_of(const SamplingParams& p) {
  if (p.temperature <= 0.0f) return Mode::Greedy;
  if (p.top_k <= 0 && p.top_p >= 1.0f) return Mode::Gumbel;
  return Mode::Filtered;
}

// What each rank contributes for one row: the same number on every rank (local_vocab is the same).
CandidateRequest request_of(const SampleRow& r, std::int64_t local_vocab) {
  CandidateRequest q;
  q.seed = r.params.seed;
  q.step = r.step;
  q.temperature = r.params.temperature;
  switch (mode_of(r.params)) {
    case Mode::Greedy:
      q.mode = CandidateMode::Greedy;
      break;
    case Mode::Gumbel:
      q.mode = CandidateMode::Gumbel;
      break;
    case Mode::Filtered:
      q.mode = CandidateMode::TopK;
      q.count = std::int32_t(r.params.top_k > 0 ? std::min<std::int64_t>(r.params.top_k, local_vocab) : local_vocab);
      break;
  }
  return q;
}

std::int32_t choose(std::vector<Candidate>& candidates, const SampleRow& r) {
  if (mode_of(r.params) != Mode::Filtered) return std::min_element(candidates.begin(), candidates.end(), better)->id;
  std::sort(candidates.begin(), candidates.end(), better);
  if (!std::isfinite(candidates[0].value)) return candidates[0].id;  // nothing finite to sample from
  std::size_t keep = candidates.size();
  if (r.params.top_k > 0) keep = std::min<std::size_t>(keep, std::size_t(r.params.top_k));
  // softmax over the kept candidates, then the smallest prefix whose probability reaches top_p (at least one)
  std::vector<double> prob(keep);
  double total = 0;
  for (std::size_t i = 0; i < keep; ++i) total += prob[i] = std::exp(double(candidates[i].value - candidates[0].value));
  if (r.params.top_p < 1.0f) {
    double cumulative = 0;
    std::size_t nucleus = 0;
    while (nucleus < keep) {
      cumulative += prob[nucleus++] / total;
      if (cumulative >= double(r.params.top_p)) break;
    }
    keep = nucleus;
  }
  Candidate best{-INFINITY, candidates[0].id};
  for (std::size_t i = 0; i < keep; ++i) {
    const Candidate c{float(double(candidates[i].value) + gumbel_noise(r.params.seed, r.step, candidates[i].id)),
                      candidates[i].id};
    if (better(c, best)) best = c;
  }
  return best.id;
}

// The cross-rank part shared by both entry points: `local` fills this rank's candidates given the per-row requests
// and offsets; one all-gather; every rank then chooses the same tokens.
template <typename Local>
std::vector<std::int32_t> sample_with(std::int64_t local_vocab, std::span<const SampleRow> rows, Collectives& tp,
                                      const Local& local) {
  std::vector<CandidateRequest> requests;
  requests.reserve(rows.size());
  std::vector<std::int64_t> offsets(rows.size() + 1, 0);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    requests.push_back(request_of(rows[i], local_vocab));
    offsets[i + 1] = offsets[i] + requests.back().count;
  }
  const std::int64_t per_rank = offsets.back();
  std::vector<Candidate> mine(static_cast<std::size_t>(per_rank));
  local(std::span<const CandidateRequest>(requests), std::span<const std::int64_t>(offsets), mine.data());
  std::vector<Candidate> everyone(static_cast<std::size_t>(per_rank) * std::size_t(tp.size()));
  tp.all_gather(mine.data(), everyone.data(), mine.size() * sizeof(Candidate));

  std::vector<std::int32_t> tokens(rows.size());
  std::vector<Candidate> row_candidates;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    row_candidates.clear();
    for (int r = 0; r < tp.size(); ++r) {
      const Candidate* base = everyone.data() + std::int64_t(r) * per_rank;
      row_candidates.insert(row_candidates.end(), base + offsets[i], base + offsets[i + 1]);
    }
    tokens[i] = choose(row_candidates, rows[i]);
  }
  return tokens;
}

}  // namespace

namespace {
// One rank's summary of a row for log-probabilities: enough to rebuild the log partition function and the best ids
// of the whole vocabulary. Trivially copyable, one all-gather.
struct ShardLogprobs {
  double max = -INFINITY, sum = 0;  // sum of exp(x - max) over the shard's finite values
  float chosen = -INFINITY;         // the sampled token's scaled logit, if it is in this shard
  std::int32_t has_chosen = 0;
  Candidate top[kMaxTopLogprobs];
};
}  // namespace

RowLogprobs token_logprobs(const float* shard, std::int64_t local_vocab, std::int64_t vocab_offset, float temperature,
                           std::int32_t token, int top, Collectives& tp) {
  STRATA_CHECK(top >= 0 && top <= kMaxTopLogprobs, Usage, "top_logprobs must be in [0, ", kMaxTopLogprobs, "] (got ",
               top, ")");
  const double scale = temperature > 0 ? 1.0 / double(temperature) : 1.0;
  ShardLogprobs mine;
  std::vector<Candidate> ranked;
  ranked.reserve(std::size_t(local_vocab));
  for (std::int64_t i = 0; i < local_vocab; ++i) {
    const float x = float(double(shard[i]) * scale);
    if (std::isnan(x)) continue;  // ranks lowest, as in sampling
    mine.max = std::max(mine.max, double(x));
    ranked.push_back(Candidate{x, std::int32_t(vocab_offset + i)});
  }
  for (const Candidate& c : ranked)
    if (std::isfinite(c.value)) mine.sum += std::exp(double(c.value) - mine.max);
  if (token >= vocab_offset && token < vocab_offset + local_vocab) {
    mine.chosen = float(double(shard[token - vocab_offset]) * scale);
    mine.has_chosen = 1;
  }
  const std::size_t keep = std::min<std::size_t>(std::size_t(top), ranked.size());
  std::partial_sort(ranked.begin(), ranked.begin() + std::int64_t(keep), ranked.end(), better);
  for (int k = 0; k < kMaxTopLogprobs; ++k)
    mine.top[k] = std::size_t(k) < keep ? ranked[std::size_t(k)] : Candidate{-INFINITY, -1};

  std::vector<ShardLogprobs> all(static_cast<std::size_t>(tp.size()));
  tp.all_gather(&mine, all.data(), sizeof mine);
  double max = -INFINITY;
  for (const auto& r : all) max = std::max(max, r.max);
  double sum = 0;
  for (const auto& r : all)
    if (r.sum > 0) sum += r.sum * std::exp(r.max - max);
  const double log_z = max + std::log(sum);
  RowLogprobs out;
  std::vector<Candidate> best;
  for (const auto& r : all) {
    if (r.has_chosen) out.chosen = float(double(r.chosen) - log_z);
    for (int k = 0; k < top; ++k)
      if (r.top[k].id >= 0) best.push_back(r.top[k]);
  }
  std::sort(best.begin(), best.end(), better);
  for (std::size_t k = 0; k < std::min<std::size_t>(std::size_t(top), best.size()); ++k)
    out.top.push_back(TokenLogprob{best[k].id, float(double(best[k].value) - log_z)});
  return out;
}

double gumbel_noise(std::uint64_t seed, std::int64_t step, std::int64_t token) {
  return gumbel_from_hash(seed, step, token);
}

std::vector<std::int32_t> sample_tokens(const float* logits, std::int64_t local_vocab, std::int64_t vocab_offset,
                                        std::span<const SampleRow> rows, Collectives& tp) {
  return sample_with(
      local_vocab, rows, tp,
      [&](std::span<const CandidateRequest> requests, std::span<const std::int64_t> offsets, Candidate* out) {
        for (std::size_t i = 0; i < requests.size(); ++i)
          host_candidates(logits + std::int64_t(i) * local_vocab, local_vocab, vocab_offset, requests[i],
                          out + offsets[i]);
      });
}

std::vector<std::int32_t> sample_tokens(Backend& backend, TensorView logits, std::int64_t vocab_offset,
                                        std::span<const SampleRow> rows, Collectives& tp) {
  return sample_with(logits.row_elems(), rows, tp,
                     [&](std::span<const CandidateRequest> requests, std::span<const std::int64_t> offsets,
                         Candidate* out) { backend.sample_candidates(logits, vocab_offset, requests, offsets, out); });
}

}  // namespace strata
