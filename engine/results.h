// The results of a generate job and the job's end, over the host Communicator (ranks named by world rank):
// - each replica's leader (stage 0, tp 0) sends every finished record to world rank 0 as it completes
//   (Tag::Result: the int64 prompt index, its RequestTiming, then the JSON), a heartbeat at least once per heartbeat
//   interval while it runs, and the index -1 when its replica has finished;
// - world rank 0 hands each record to a sink (the ResultWriter, which writes them in input order);
// - at the end every rank other than 0 sends Done (with its RankTimes, for --metrics) and waits for Exit; rank 0 waits
// for every replica's last record
//   and every rank's Done, then sends Exit to all.
// No wait is unbounded (the timeout is the rank's Watchdog's, see runtime/base/watchdog.h): rank 0 names the
// replica (its ranks) that sent nothing for that long, or the rank that never finished; a finished rank names rank 0
// if rank 0 stops sending heartbeats. Either way the Error ends the job (launch/ aborts MPI) instead of a hang.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "engine/metrics.h"
#include "io/prompts.h"
#include "io/tokenizer.h"
#include "runtime/base/parallel_layout.h"
#include "runtime/base/watchdog.h"
#include "runtime/comm/communicator.h"

namespace strata {

// The JSONL record of a finished prompt: id, prompt, text, token ids, finish reason, token counts (+ logits), and
// with log-probabilities OpenAI's chat layout: "logprobs": {"content": [{"token", "logprob", "bytes",
// "top_logprobs": [{"token", "logprob", "bytes"}...]}...]}, each entry also with its "token_id".
// OpenAI batch prompts get OpenAI's batch output line instead: {"id", "custom_id", "response": {"status_code",
// "request_id", "body": <text_completion, or for /v1/chat/completions chat.completion (choices[i].message, logprobs
// in the chat layout), with choices and usage>}, "error": null}.
struct RecordContext {
  std::string model;         // the model's name in OpenAI responses
  std::int64_t created = 0;  // their "created" (Unix seconds of the run's start)
};
nlohmann::json make_record(const Prompt& prompt, const Completion& completion, const Tokenizer& tokenizer,
                           const RecordContext& context = {});
// The record of a prompt that cannot be served (Prompt::error): OpenAI's error line for batch prompts.
nlohmann::json make_error_record(const Prompt& prompt, std::int64_t index);

using RecordSink = std::function<void(std::int64_t index, const nlohmann::json& record, const RequestTiming& timing)>;

// World rank 0.
class ResultCollector {
 public:
  // `watchdog` (may be null: no time limits) supplies the timeout and is told what rank 0 waits for.
  ResultCollector(Communicator& world, const ParallelLayout& layout, RecordSink sink, Watchdog* watchdog);
  // A record of a replica whose leader is rank 0 itself.
  void accept(std::int64_t index, const nlohmann::json& record, const RequestTiming& timing) {
    sink_(index, record, timing);
  }
  // Between rank 0's own steps: takes what has arrived, serves work requests (serve_work), and heartbeats the ranks
  // that have finished.
  void poll();
  // Called by every poll(), also while finish() waits: rank 0 hands out prompts (engine/dispatch.h).
  void serve_work(std::function<void()> serve) { serve_work_ = std::move(serve); }
  // After rank 0's own part: waits for the rest, then lets every rank end. Throws Error(Communication) naming the
  // replica or rank that stopped answering.
  void finish();
  // What each rank reported with its Done (after finish(); rank 0's own entry is left for the caller).
  const std::vector<RankTimes>& rank_times() const { return rank_times_; }

 private:
  void take(std::vector<char> message, int src, Tag tag);
  void heartbeat_finished_ranks(double now);
  void check_liveness(double now) const;
  Communicator& world_;
  const ParallelLayout& layout_;
  RecordSink sink_;
  Watchdog* watchdog_;
  std::vector<double> last_heard_;          // per world rank: the last message of any kind
  std::vector<double> replica_finished_;    // per replica: when its end marker came (< 0: not yet)
  std::vector<bool> rank_done_;             // per world rank
  std::vector<double> peer_timeout_;        // per world rank: the timeout its last heartbeat announced
  std::vector<RankTimes> rank_times_;       // per world rank, from its Done
  std::vector<std::int64_t> records_from_;  // per replica
  double last_heartbeat_ = 0;
  SendQueue heartbeats_{256};
  std::function<void()> serve_work_;
};

// Every world rank but 0.
class ResultSender {
 public:
  ResultSender(Communicator& world, const ParallelLayout& layout, Watchdog* watchdog);
  // Replica leaders: a finished record.
  void send(std::int64_t index, const nlohmann::json& record, const RequestTiming& timing);
  // Replica leaders, between steps: a heartbeat to rank 0, at most one per interval.
  void heartbeat();
  // Every rank, after its part: the replica's end marker (leaders), Done, then waits for rank 0's Exit, throwing
  // Error(Communication) if rank 0 stops answering.
  void finish(const RankTimes& times);

 private:
  Communicator& world_;
  const ParallelLayout& layout_;
  Watchdog* watchdog_;
  SendQueue sends_{64};  // records in flight to rank 0: bounds what a leader holds when rank 0 falls behind
  double last_heartbeat_ = 0;
};

// Seconds between heartbeats for a liveness timeout (<= 0: none).
double heartbeat_interval(double timeout_seconds);

}  // namespace strata
