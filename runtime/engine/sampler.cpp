// Vocab-parallel sampling; see sampler.h for the method.
#include "runtime/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/base/error.h"

namespace strata {
namespace {

struct Candidate {
  float value;  // the score candidates are ranked by (logit/T, plus noise in Gumbel mode)
  std::int32_t id;
};

// A strict total order on candidates (NaN scores are turned into -inf before they get here).
bool better(const Candidate& a, const Candidate& b) { return a.value > b.value || (a.value == b.value && a.id < b.id); }

// A NaN logit (a broken model or overflow) must not break the ordering: it ranks below every number.
float finite_or_lowest(float value) { return std::isnan(value) ? -INFINITY : value; }

enum class Mode { Greedy, Gumbel, Filtered };

Mode mode_of(const SamplingParams& p) {
  if (p.temperature <= 0.0f) return Mode::Greedy;
  if (p.top_k <= 0 && p.top_p >= 1.0f) return Mode::Gumbel;
  return Mode::Filtered;
}

// Candidates each rank contributes for one row: the same number on every rank (local_vocab is the same).
std::int64_t candidates_per_rank(const SamplingParams& p, std::int64_t local_vocab) {
  if (mode_of(p) != Mode::Filtered) return 1;
  return p.top_k > 0 ? std::min<std::int64_t>(p.top_k, local_vocab) : local_vocab;
}

void local_candidates(const float* row, std::int64_t local_vocab, std::int64_t offset, const SampleRow& r,
                      std::int64_t count, Candidate* out) {
  const Mode mode = mode_of(r.params);
  if (mode == Mode::Greedy || mode == Mode::Gumbel) {
    Candidate best{-INFINITY, std::int32_t(offset)};
    for (std::int64_t i = 0; i < local_vocab; ++i) {
      const std::int64_t id = offset + i;
      const float score = mode == Mode::Greedy ? finite_or_lowest(row[i])
                                               : finite_or_lowest(float(double(row[i]) / r.params.temperature +
                                                                        gumbel_noise(r.params.seed, r.step, id)));
      const Candidate c{score, std::int32_t(id)};
      if (better(c, best)) best = c;
    }
    out[0] = best;
    return;
  }
  std::vector<Candidate> all(static_cast<std::size_t>(local_vocab));
  for (std::int64_t i = 0; i < local_vocab; ++i)
    all[std::size_t(i)] = Candidate{finite_or_lowest(row[i] / r.params.temperature), std::int32_t(offset + i)};
  std::partial_sort(all.begin(), all.begin() + count, all.end(), better);
  std::copy(all.begin(), all.begin() + count, out);
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

std::uint64_t mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

double gumbel_noise(std::uint64_t seed, std::int64_t step, std::int64_t token) {
  const std::uint64_t h = mix(mix(mix(seed + 0x9e3779b97f4a7c15ull) ^ std::uint64_t(step)) ^ std::uint64_t(token));
  const double u = (double(h >> 11) + 0.5) * 0x1.0p-53;  // in (0, 1)
  return -std::log(-std::log(u));
}

std::vector<std::int32_t> sample_tokens(const float* logits, std::int64_t local_vocab, std::int64_t vocab_offset,
                                        std::span<const SampleRow> rows, Communicator& tp) {
  std::vector<std::int64_t> offsets(rows.size() + 1, 0);
  for (std::size_t i = 0; i < rows.size(); ++i)
    offsets[i + 1] = offsets[i] + candidates_per_rank(rows[i].params, local_vocab);
  const std::int64_t per_rank = offsets.back();
  std::vector<Candidate> mine(static_cast<std::size_t>(per_rank));
  for (std::size_t i = 0; i < rows.size(); ++i)
    local_candidates(logits + std::int64_t(i) * local_vocab, local_vocab, vocab_offset, rows[i],
                     offsets[i + 1] - offsets[i], mine.data() + offsets[i]);
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

}  // namespace strata
