// See results.h.
#include "engine/results.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "io/results.h"
#include "runtime/base/clock.h"
#include "runtime/base/error.h"

namespace strata {
namespace {

constexpr std::int64_t kReplicaFinished = -1;

constexpr std::size_t kRecordHeader = sizeof(std::int64_t) + sizeof(RequestTiming);

std::vector<char> pack_record(std::int64_t index, const RequestTiming& timing, const std::string& json) {
  std::vector<char> message(kRecordHeader + json.size());
  std::memcpy(message.data(), &index, sizeof index);
  std::memcpy(message.data() + sizeof index, &timing, sizeof timing);
  std::memcpy(message.data() + kRecordHeader, json.data(), json.size());
  return message;
}

std::string ranks_text(const std::vector<int>& ranks) {
  std::string text;
  for (int r : ranks) text += (text.empty() ? "" : ", ") + std::to_string(r);
  return (ranks.size() == 1 ? "rank " : "ranks ") + text;
}

double timeout_of(const Watchdog* watchdog) { return watchdog ? watchdog->timeout() : 0; }

// What a peer is assumed to allow itself before its first heartbeat says: with automatic timeouts, the warm-up's.
double initial_peer_timeout(const Watchdog* watchdog) {
  return watchdog && watchdog->automatic() ? StallTimeout::kAutoStartupSeconds : 0;
}

// How long a peer may be silent: heartbeats go out between steps, so one step (up to the timeout), the wait for
// the pipeline's tokens (up to another) and one heartbeat interval may pass between two of them.
double silence_allowed(double limit) { return 2 * limit + heartbeat_interval(limit); }

void pause_briefly() { std::this_thread::sleep_for(std::chrono::milliseconds(2)); }

// A heartbeat carries its sender's timeout: a peer whose steps are slower (a long prefill) is given as long as it
// gives itself, whatever the receiver's own steps take.
std::vector<char> pack_heartbeat(const Watchdog* watchdog) {
  const double timeout = timeout_of(watchdog);
  std::vector<char> message(sizeof timeout);
  std::memcpy(message.data(), &timeout, sizeof timeout);
  return message;
}

double heartbeat_timeout(const std::vector<char>& message) {
  double timeout = 0;
  if (message.size() == sizeof timeout) std::memcpy(&timeout, message.data(), sizeof timeout);
  return timeout;
}

std::string token_text(const Tokenizer& tokenizer, std::int32_t id) {
  return tokenizer.decode(std::span<const std::int32_t>(&id, 1));
}

// A request's samples in order: the completion itself (sample 0), then the others.
std::vector<const Completion*> samples_of(const Completion& c) {
  std::vector<const Completion*> samples{&c};
  for (const Completion& more : c.more) samples.push_back(&more);
  return samples;
}

// One entry of OpenAI's logprobs layout. A token's text may be part of a UTF-8 sequence: "bytes" has it exactly.
nlohmann::json logprob_entry(std::int32_t id, float logprob, const Tokenizer& tokenizer) {
  const std::string text = token_text(tokenizer, id);
  std::vector<int> bytes(text.begin(), text.end());
  for (int& b : bytes) b &= 0xff;
  return {{"token", text}, {"token_id", id}, {"logprob", logprob}, {"bytes", bytes}};
}

// One completion's fields: text, ids, finish reason, count, and the logits and logprobs asked for.
void add_completion(nlohmann::json& out, const Completion& c, const Tokenizer& tokenizer) {
  out["text"] = c.text;
  out["token_ids"] = c.token_ids;
  out["finish_reason"] = finish_reason_name(c.finish_reason);
  out["completion_tokens"] = c.token_ids.size();
  if (!c.logits.empty()) {  // one row per generated token
    nlohmann::json rows = nlohmann::json::array();
    for (std::size_t at = 0; at < c.logits.size(); at += std::size_t(c.vocab))
      rows.push_back(
          std::vector<float>(c.logits.begin() + std::int64_t(at), c.logits.begin() + std::int64_t(at) + c.vocab));
    out["logits"] = std::move(rows);
  }
  if (!c.logprobs.empty()) {
    nlohmann::json content = nlohmann::json::array();
    for (std::size_t t = 0; t < c.logprobs.size() && t < c.token_ids.size(); ++t) {
      nlohmann::json entry = logprob_entry(c.token_ids[t], c.logprobs[t].chosen, tokenizer);
      nlohmann::json top = nlohmann::json::array();
      for (const TokenLogprob& alt : c.logprobs[t].top) top.push_back(logprob_entry(alt.id, alt.logprob, tokenizer));
      entry["top_logprobs"] = std::move(top);
      content.push_back(std::move(entry));
    }
    out["logprobs"] = {{"content", std::move(content)}};
  }
}

// The completions API's logprobs: tokens, their logprobs, a {token: logprob} map of alternatives, text offsets.
nlohmann::json completions_logprobs(const Completion& c, const Tokenizer& tokenizer) {
  nlohmann::json tokens = nlohmann::json::array(), values = nlohmann::json::array(), tops = nlohmann::json::array(),
                 offsets = nlohmann::json::array();
  std::size_t offset = 0;
  for (std::size_t t = 0; t < c.logprobs.size() && t < c.token_ids.size(); ++t) {
    const std::string text = token_text(tokenizer, c.token_ids[t]);
    tokens.push_back(text);
    values.push_back(c.logprobs[t].chosen);
    nlohmann::json alternatives = nlohmann::json::object();
    for (const TokenLogprob& alt : c.logprobs[t].top) alternatives[token_text(tokenizer, alt.id)] = alt.logprob;
    tops.push_back(std::move(alternatives));
    offsets.push_back(offset);
    offset += text.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

// The chat API's logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}.
nlohmann::json chat_logprobs(const Completion& c, const Tokenizer& tokenizer) {
  const auto entry = [&](std::int32_t id, float logprob) {
    nlohmann::json e = logprob_entry(id, logprob, tokenizer);
    e.erase("token_id");  // strata's JSONL records carry it; OpenAI's layout has none
    return e;
  };
  nlohmann::json content = nlohmann::json::array();
  for (std::size_t t = 0; t < c.logprobs.size() && t < c.token_ids.size(); ++t) {
    nlohmann::json e = entry(c.token_ids[t], c.logprobs[t].chosen), top = nlohmann::json::array();
    for (const TokenLogprob& alt : c.logprobs[t].top) top.push_back(entry(alt.id, alt.logprob));
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  return {{"content", std::move(content)}};
}

// A choice of a completions body ("text") or of a chat body ("message" from the assistant).
nlohmann::json openai_choice(bool chat, std::size_t index, const Completion& c, const Tokenizer& tokenizer) {
  nlohmann::json logprobs;
  if (!c.logprobs.empty()) logprobs = chat ? chat_logprobs(c, tokenizer) : completions_logprobs(c, tokenizer);
  nlohmann::json choice = {{"index", index}};
  if (chat)
    choice["message"] = {{"role", "assistant"}, {"content", c.text}};
  else
    choice["text"] = c.text;
  choice["finish_reason"] = finish_reason_name(c.finish_reason);
  choice["logprobs"] = std::move(logprobs);
  return choice;
}

nlohmann::json openai_record(const Prompt& p, const Completion& c, const Tokenizer& tokenizer,
                             const RecordContext& context) {
  const bool chat = p.endpoint == "/v1/chat/completions";
  nlohmann::json choices = nlohmann::json::array();
  std::size_t tokens = 0;
  for (const Completion* sample : samples_of(c)) {
    choices.push_back(openai_choice(chat, choices.size(), *sample, tokenizer));
    tokens += sample->token_ids.size();
  }
  const std::string index = std::to_string(c.index);
  const nlohmann::json body = {{"id", (chat ? "chatcmpl-" : "cmpl-") + index},
                               {"object", chat ? "chat.completion" : "text_completion"},
                               {"created", context.created},
                               {"model", context.model},
                               {"choices", std::move(choices)},
                               {"usage",
                                {{"prompt_tokens", c.prompt_tokens},
                                 {"completion_tokens", tokens},
                                 {"total_tokens", std::size_t(c.prompt_tokens) + tokens}}}};
  return {{"id", "batch_req_" + index},
          {"custom_id", p.id},
          {"response", {{"status_code", 200}, {"request_id", "req_" + index}, {"body", body}}},
          {"error", nullptr}};
}

}  // namespace

nlohmann::json make_error_record(const Prompt& p, std::int64_t index) {
  if (p.format != PromptFormat::OpenAiBatch) return {{"id", p.id}, {"error", p.error}};
  return {{"id", "batch_req_" + std::to_string(index)},
          {"custom_id", p.id},
          {"response", nullptr},
          {"error", {{"code", "invalid_request"}, {"message", cat(p.origin, ": ", p.error)}}}};
}

nlohmann::json make_record(const Prompt& p, const Completion& c, const Tokenizer& tokenizer,
                           const RecordContext& context) {
  if (p.format == PromptFormat::OpenAiBatch) return openai_record(p, c, tokenizer, context);
  nlohmann::json record = {{"id", p.id}, {"prompt", p.text}};
  if (c.more.empty()) {
    add_completion(record, c, tokenizer);
    record["prompt_tokens"] = c.prompt_tokens;
    return record;
  }
  // n samples: OpenAI's choices, each with its index and the seed that reproduces it alone.
  nlohmann::json choices = nlohmann::json::array();
  std::size_t tokens = 0;
  for (const Completion* sample : samples_of(c)) {
    nlohmann::json choice = {{"index", choices.size()}, {"seed", sample->seed}};
    add_completion(choice, *sample, tokenizer);
    tokens += sample->token_ids.size();
    choices.push_back(std::move(choice));
  }
  record["choices"] = std::move(choices);
  record["prompt_tokens"] = c.prompt_tokens;
  record["completion_tokens"] = tokens;
  return record;
}

double heartbeat_interval(double timeout_seconds) {
  return timeout_seconds > 0 ? std::clamp(timeout_seconds / 4, 0.2, 10.0) : 10.0;
}

// ------------------------------------------------------------------------------------------------ rank 0

ResultCollector::ResultCollector(Communicator& world, const ParallelLayout& layout, RecordSink sink, Watchdog* watchdog)
    : world_(world),
      layout_(layout),
      sink_(std::move(sink)),
      watchdog_(watchdog),
      last_heard_(std::size_t(layout.world_size()), monotonic_seconds()),
      replica_finished_(std::size_t(layout.sizes().dp), -1.0),
      rank_done_(std::size_t(layout.world_size()), false),
      peer_timeout_(std::size_t(layout.world_size()), initial_peer_timeout(watchdog)),
      rank_times_(std::size_t(layout.world_size())),
      records_from_(std::size_t(layout.sizes().dp), 0) {
  rank_done_[0] = true;
}

void ResultCollector::take(std::vector<char> message, int src, Tag tag) {
  last_heard_[std::size_t(src)] = monotonic_seconds();
  if (tag == Tag::Done) {
    rank_done_[std::size_t(src)] = true;
    if (message.size() == sizeof(RankTimes))
      std::memcpy(&rank_times_[std::size_t(src)], message.data(), sizeof(RankTimes));
  }
  if (tag == Tag::Heartbeat) peer_timeout_[std::size_t(src)] = heartbeat_timeout(message);
  if (tag != Tag::Result) return;
  STRATA_CHECK(message.size() >= kRecordHeader, Communication, "truncated result message from rank ", src);
  std::int64_t index = 0;
  RequestTiming timing;
  std::memcpy(&index, message.data(), sizeof index);
  std::memcpy(&timing, message.data() + sizeof index, sizeof timing);
  const int replica = layout_.replica_of(src);
  if (index == kReplicaFinished) {
    replica_finished_[std::size_t(replica)] = monotonic_seconds();
    return;
  }
  ++records_from_[std::size_t(replica)];
  sink_(index, nlohmann::json::parse(message.begin() + std::int64_t(kRecordHeader), message.end()), timing);
}

void ResultCollector::poll() {
  std::vector<char> message;
  int src = 0;
  for (Tag tag : {Tag::Result, Tag::Heartbeat, Tag::Done})
    while (world_.try_recv_any(tag, message, src)) take(std::move(message), src, tag);
  if (serve_work_) serve_work_();
  heartbeat_finished_ranks(monotonic_seconds());
}

void ResultCollector::heartbeat_finished_ranks(double now) {
  if (now - last_heartbeat_ < heartbeat_interval(timeout_of(watchdog_))) return;
  last_heartbeat_ = now;
  for (int r = 1; r < layout_.world_size(); ++r)
    if (rank_done_[std::size_t(r)]) heartbeats_.push(world_.isend(pack_heartbeat(watchdog_), r, Tag::Heartbeat));
}

void ResultCollector::check_liveness(double now) const {
  const double own = timeout_of(watchdog_);
  if (own <= 0) return;
  for (int d = 0; d < layout_.sizes().dp; ++d) {
    const int leader = layout_.rank_of(d, 0, 0);
    if (replica_finished_[std::size_t(d)] >= 0 || leader == 0) continue;
    const double limit = std::max(own, peer_timeout_[std::size_t(leader)]);
    const double silent = now - last_heard_[std::size_t(leader)];
    STRATA_CHECK(silent <= silence_allowed(limit), Communication, "no progress for ", int(silent),
                 " s while waiting for results from replica ", d, " (", ranks_text(layout_.replica_ranks(d)),
                 "; its results come from rank ", leader, ", ", records_from_[std::size_t(d)],
                 " received so far): a rank of it is stopped, frozen or gone; aborting the job (--step-timeout)");
  }
  for (int r = 1; r < layout_.world_size(); ++r) {
    const double finished = replica_finished_[std::size_t(layout_.replica_of(r))];
    if (rank_done_[std::size_t(r)] || finished < 0) continue;
    const double silent = now - std::max(finished, last_heard_[std::size_t(r)]);
    STRATA_CHECK(silent <= silence_allowed(own), Communication, "no progress for ", int(silent),
                 " s while waiting for rank ", r,
                 " to finish after its replica's last result: it is stopped, frozen or gone; aborting the job "
                 "(--step-timeout)");
  }
}

void ResultCollector::finish() {
  if (layout_.is_replica_leader()) replica_finished_[std::size_t(layout_.dp_rank())] = monotonic_seconds();
  for (;;) {
    poll();
    const bool replicas =
        std::all_of(replica_finished_.begin(), replica_finished_.end(), [](double t) { return t >= 0; });
    const bool ranks = std::all_of(rank_done_.begin(), rank_done_.end(), [](bool d) { return d; });
    if (replicas && ranks) break;
    check_liveness(monotonic_seconds());
    if (watchdog_) watchdog_->beat("gathering results from the other replicas");
    pause_briefly();
  }
  if (watchdog_) watchdog_->beat("telling every rank the job is complete");
  SendQueue exits(std::size_t(layout_.world_size()));
  for (int r = 1; r < layout_.world_size(); ++r) exits.push(world_.isend({}, r, Tag::Exit));
  exits.drain();
  heartbeats_.drain();
}

// ------------------------------------------------------------------------------------------------ other ranks

ResultSender::ResultSender(Communicator& world, const ParallelLayout& layout, Watchdog* watchdog)
    : world_(world), layout_(layout), watchdog_(watchdog), last_heartbeat_(monotonic_seconds()) {
  // A leader's first heartbeat goes out now, before its first (perhaps long) step, with the timeout it allows itself.
  if (layout_.is_replica_leader()) sends_.push(world_.isend(pack_heartbeat(watchdog_), 0, Tag::Heartbeat));
}

void ResultSender::send(std::int64_t index, const nlohmann::json& record, const RequestTiming& timing) {
  if (watchdog_) watchdog_->beat("sending a result to rank 0 (it may have stopped receiving)");
  sends_.push(world_.isend(pack_record(index, timing, record_line(record)), 0, Tag::Result));
}

void ResultSender::heartbeat() {
  const double now = monotonic_seconds();
  if (now - last_heartbeat_ < heartbeat_interval(timeout_of(watchdog_))) return;
  last_heartbeat_ = now;
  sends_.push(world_.isend(pack_heartbeat(watchdog_), 0, Tag::Heartbeat));
}

void ResultSender::finish(const RankTimes& times) {
  if (watchdog_) watchdog_->beat("sending the last results to rank 0 (it may have stopped receiving)");
  if (layout_.is_replica_leader()) sends_.push(world_.isend(pack_record(kReplicaFinished, {}, ""), 0, Tag::Result));
  std::vector<char> done(sizeof times);
  std::memcpy(done.data(), &times, sizeof times);
  sends_.push(world_.isend(std::move(done), 0, Tag::Done));
  double heard = monotonic_seconds(), rank0_timeout = initial_peer_timeout(watchdog_);
  std::vector<char> message;
  int src = 0;
  for (;;) {
    while (world_.try_recv_any(Tag::Heartbeat, message, src)) {
      heard = monotonic_seconds();
      rank0_timeout = heartbeat_timeout(message);
    }
    if (world_.try_recv_any(Tag::Exit, message, src)) break;
    const double own = timeout_of(watchdog_);
    const double limit = own > 0 ? std::max(own, rank0_timeout) : 0, silent = monotonic_seconds() - heard;
    STRATA_CHECK(limit <= 0 || silent <= silence_allowed(limit), Communication, "no progress for ", int(silent),
                 " s while waiting for rank 0 (which gathers and writes the results) to end the job: it is stopped, "
                 "frozen or gone; aborting the job (--step-timeout)");
    if (watchdog_) watchdog_->beat("waiting for rank 0 to finish writing the results");
    pause_briefly();
  }
  sends_.drain();
}

}  // namespace strata
