// The run summary --metrics writes (JSON, on world rank 0): prompts, tokens in and out, wall time, throughput, time
// to first token and time per output token percentiles, each rank's share of compute, communication and waiting,
// KV-cache and prefix-cache use, preemptions and errors. scripts/plot-metrics.py turns one or several into plots.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata {

// One request, in seconds since its replica started generating.
struct RequestTiming {
  double first_token = 0, finished = 0;
};

// One rank's time over the run (seconds): compute (forward steps and sampling, its TP collectives included),
// communication (TP collectives), and the peak KV-cache use of its replica's scheduler (stage 0 ranks).
struct RankTimes {
  double wall = 0, compute = 0, communication = 0;
  std::int64_t peak_sequences = 0, peak_tokens = 0;
  std::int64_t computed_prompt_tokens = 0;  // replica schedulers: prompt tokens the model ran
  // Replica schedulers: the KV pool and prefix cache (engine/block_pool.h), preemptions, refused requests.
  std::int64_t peak_kv_blocks = 0, cached_prompt_tokens = 0, prefix_block_queries = 0, prefix_block_hits = 0;
  std::int64_t prefix_evictions = 0, preemptions = 0, recomputed_tokens = 0, errors = 0;
  double longest_step = 0;          // seconds: this rank's slowest step
  double longest_token_gap = 0;     // replica schedulers: the longest a sequence waited between two of its tokens
  std::int64_t requests = 0;        // replica leaders: prompts this replica ran
  std::int64_t peak_rss_bytes = 0;  // the rank's peak resident memory
};

// Nearest-rank percentiles of `values` (p in (0, 100]); 0 for an empty list.
double percentile(std::vector<double> values, double p);

class MetricsRecorder {
 public:
  void add_request(const RequestTiming& timing, std::int64_t prompt_tokens, std::int64_t completion_tokens);
  void add_error() { ++errors_; }  // a request answered with an error record
  void add_rank(int rank, const RankTimes& times);
  // `run`: what the caller knows of the run (layout, model, output, wall time, KV capacity); merged in.
  nlohmann::json summary(const nlohmann::json& run, const std::vector<nlohmann::json>& rank_info) const;

 private:
  std::vector<double> ttft_, tpot_;
  std::int64_t prompts_ = 0, prompt_tokens_ = 0, completion_tokens_ = 0, errors_ = 0;
  std::vector<std::pair<int, RankTimes>> ranks_;
};

}  // namespace strata
