// See metrics.h.
#include "engine/metrics.h"

#include <algorithm>
#include <cmath>

namespace strata {

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto rank = std::size_t(std::ceil(p / 100.0 * double(values.size())));
  return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

void MetricsRecorder::add_request(const RequestTiming& timing, std::int64_t prompt_tokens,
                                  std::int64_t completion_tokens) {
  ++prompts_;
  prompt_tokens_ += prompt_tokens;
  completion_tokens_ += completion_tokens;
  ttft_.push_back(timing.first_token);
  // The first token comes with the prompt's prefill; the rest one step each.
  if (completion_tokens > 1) tpot_.push_back((timing.finished - timing.first_token) / double(completion_tokens - 1));
}

void MetricsRecorder::add_rank(int rank, const RankTimes& times) { ranks_.emplace_back(rank, times); }

namespace {
nlohmann::json distribution(const std::vector<double>& values) {
  double sum = 0;
  for (double v : values) sum += v;
  return {{"count", values.size()},        {"mean", values.empty() ? 0.0 : sum / double(values.size())},
          {"p50", percentile(values, 50)}, {"p90", percentile(values, 90)},
          {"p99", percentile(values, 99)}, {"max", percentile(values, 100)}};
}
}  // namespace

nlohmann::json MetricsRecorder::summary(const nlohmann::json& run, const std::vector<nlohmann::json>& rank_info) const {
  nlohmann::json out = run;
  const double wall = run.value("wall_seconds", 0.0);
  out["prompts"] = prompts_;
  out["prompt_tokens"] = prompt_tokens_;
  out["completion_tokens"] = completion_tokens_;
  out["throughput"] = {{"completion_tokens_per_second", wall > 0 ? double(completion_tokens_) / wall : 0.0},
                       {"total_tokens_per_second", wall > 0 ? double(prompt_tokens_ + completion_tokens_) / wall : 0.0},
                       {"prompts_per_second", wall > 0 ? double(prompts_) / wall : 0.0}};
  out["time_to_first_token_seconds"] = distribution(ttft_);
  out["time_per_output_token_seconds"] = distribution(tpot_);
  std::vector<std::pair<int, RankTimes>> ranks = ranks_;
  std::sort(ranks.begin(), ranks.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  nlohmann::json per_rank = nlohmann::json::array();
  std::int64_t peak_sequences = 0, peak_tokens = 0, computed = 0, peak_blocks = 0;
  SchedulerCounts sum;  // the replica schedulers' counts, added up (the longest gap: the longest)
  double longest_step = 0;
  for (const auto& [rank, t] : ranks) {
    const SchedulerCounts& b = t.batching;
    computed += b.computed_prompt_tokens;
    peak_blocks = std::max(peak_blocks, b.peak_kv_blocks);
    sum.cached_prompt_tokens += b.cached_prompt_tokens;
    sum.prefix_block_queries += b.prefix_block_queries;
    sum.prefix_block_hits += b.prefix_block_hits;
    sum.prefix_evictions += b.prefix_evictions;
    sum.preemptions += b.preemptions;
    sum.recomputed_tokens += b.recomputed_tokens;
    sum.longest_token_gap = std::max(sum.longest_token_gap, b.longest_token_gap);
    const double compute = std::max(0.0, t.compute - t.communication), waiting = std::max(0.0, t.wall - t.compute);
    nlohmann::json entry = rank < int(rank_info.size()) ? rank_info[std::size_t(rank)] : nlohmann::json::object();
    entry["rank"] = rank;
    entry["wall_seconds"] = t.wall;
    entry["compute_seconds"] = compute;
    entry["communication_seconds"] = t.communication;
    entry["waiting_seconds"] = waiting;
    entry["compute_share"] = t.wall > 0 ? compute / t.wall : 0.0;
    entry["longest_step_seconds"] = t.longest_step;
    entry["prompts_run"] = t.requests;
    entry["peak_rss_mib"] = double(t.peak_rss_bytes) / double(1 << 20);
    if (t.experts > 0) entry["expert_rows"] = t.expert_rows;
    longest_step = std::max(longest_step, t.longest_step);
    entry["communication_share"] = t.wall > 0 ? t.communication / t.wall : 0.0;
    entry["waiting_share"] = t.wall > 0 ? waiting / t.wall : 0.0;
    per_rank.push_back(std::move(entry));
    peak_sequences = std::max(peak_sequences, b.peak_sequences);
    peak_tokens = std::max(peak_tokens, b.peak_tokens);
  }
  out["ranks"] = std::move(per_rank);
  // Fewer than prompt_tokens x n when samples share their prompt (each extra sample reruns only its last token).
  out["prompt_tokens_computed"] = computed;
  nlohmann::json kv = run.value("kv_cache", nlohmann::json::object());
  kv["peak_sequences_per_replica"] = peak_sequences;
  kv["peak_tokens_per_replica"] = peak_tokens;
  kv["peak_blocks_per_replica"] = peak_blocks;
  const double capacity = double(kv.value("blocks", 0));
  kv["peak_use"] = capacity > 0 ? double(peak_blocks) / capacity : 0.0;
  kv["preemptions"] = sum.preemptions;
  kv["recomputed_tokens"] = sum.recomputed_tokens;
  out["kv_cache"] = std::move(kv);
  out["prefix_cache"] = {
      {"enabled", run.value("prefix_caching", false)},
      {"cached_prompt_tokens", sum.cached_prompt_tokens},
      {"hit_rate", prompt_tokens_ > 0 ? double(sum.cached_prompt_tokens) / double(prompt_tokens_) : 0.0},
      {"block_queries", sum.prefix_block_queries},
      {"block_hits", sum.prefix_block_hits},
      {"evictions", sum.prefix_evictions}};
  out["preemptions"] = sum.preemptions;
  out["longest_step_seconds"] = longest_step;
  out["longest_token_gap_seconds"] = sum.longest_token_gap;
  out["errors"] = errors_;
  if (!ranks.empty() && ranks.front().second.experts > 0) out["moe"] = expert_load(ranks);
  return out;
}

// Tokens routed to each expert (summed over layers and replicas), rows computed per rank, and how uneven both are:
// the busiest expert (rank) over the mean, 1.0 when even. A rank's rows bound its MoE compute time, so the rank
// imbalance is what the slowest rank pays.
nlohmann::json MetricsRecorder::expert_load(const std::vector<std::pair<int, RankTimes>>& ranks) {
  const int experts = ranks.front().second.experts;
  std::vector<std::int64_t> per_expert(std::size_t(experts), 0);
  nlohmann::json per_rank = nlohmann::json::object();
  std::int64_t busiest_rank = 0, all_rows = 0;
  for (const auto& [rank, t] : ranks) {
    for (int e = 0; e < std::min(experts, t.experts); ++e) per_expert[std::size_t(e)] += t.expert_tokens[e];
    per_rank[std::to_string(rank)] = t.expert_rows;
    busiest_rank = std::max(busiest_rank, t.expert_rows);
    all_rows += t.expert_rows;
  }
  std::int64_t total = 0, busiest = 0;
  for (const auto n : per_expert) {
    total += n;
    busiest = std::max(busiest, n);
  }
  const auto ratio = [](double most, double sum, double count) { return sum > 0 ? most * count / sum : 0.0; };
  return {{"experts", experts},
          {"tokens_per_expert", per_expert},
          {"expert_imbalance", ratio(double(busiest), double(total), double(experts))},
          {"rows_per_rank", per_rank},
          {"rank_imbalance", ratio(double(busiest_rank), double(all_rows), double(ranks.size()))}};
}

}  // namespace strata
