// The run summary --metrics writes (JSON, on world rank 0): prompts, tokens in and out, wall time, throughput, time
// to first token and time per output token percentiles, each rank's share of compute, communication and waiting,
// KV-cache and prefix-cache use, preemptions and errors. scripts/plot-metrics.py turns one or several into plots.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/scheduler.h"

namespace strata {

// One request, in seconds since its replica started generating.
struct RequestTiming {
  double first_token = 0, finished = 0;
};

// One rank's time over the run (seconds): compute (forward steps and sampling, its TP collectives included),
// communication (TP collectives); for replica leaders also their scheduler's counts (KV-cache and prefix-cache use,
// preemptions, the longest gap between tokens) and the prompts the replica ran. Trivially copyable: it travels as
// bytes with each rank's Done message.
// Mixture-of-experts models: also the rank's expert load (layers/transformer.h ExpertLoad), for the first
// kMaxReportedExperts experts.
struct RankTimes {
  static constexpr int kMaxReportedExperts = 512;
  double wall = 0, compute = 0, communication = 0;
  double longest_step = 0;                               // seconds: this rank's slowest step
  std::int64_t peak_rss_bytes = 0;                       // the rank's peak resident memory
  SchedulerCounts batching;                              // replica leaders
  std::int64_t requests = 0;                             // replica leaders: prompts this replica ran
  std::int32_t experts = 0;                              // entries of expert_tokens used (0: a dense model)
  std::int64_t expert_rows = 0;                          // (token, expert) rows this rank's experts computed
  std::int64_t expert_tokens[kMaxReportedExperts] = {};  // routing choices per expert counted by this rank
};
static_assert(std::is_trivially_copyable_v<RankTimes>);

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
  static nlohmann::json expert_load(const std::vector<std::pair<int, RankTimes>>& ranks);

  std::vector<double> ttft_, tpot_;
  std::int64_t prompts_ = 0, prompt_tokens_ = 0, completion_tokens_ = 0, errors_ = 0;
  std::vector<std::pair<int, RankTimes>> ranks_;
};

}  // namespace strata
