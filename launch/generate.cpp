// `strata generate`: every prompt of a file through the model, results in input order.
// Data-parallel replicas take prompts i with i % dp == replica; each replica's scheduler (stage 0, tp 0) sends
// finished records to world rank 0, which writes them in input order as they complete.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>

#include "io/prompts.h"
#include "io/results.h"
#include "launch/job.h"
#include "runtime/base/log.h"
#include "runtime/engine/engine.h"

namespace strata {
namespace {

constexpr std::int64_t kDoneMarker = -1;

std::string fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", digits, value);
  return text;
}

// Rank 0 reads the prompt file once and broadcasts its bytes; every rank parses the same bytes identically.
std::vector<Prompt> load_prompts(const GenerateOptions& options, Communicator& world) {
  std::string content;
  std::int64_t size = 0;
  if (world.rank() == 0) {
    content = read_file(options.prompts);
    size = std::int64_t(content.size());
  }
  world.broadcast(&size, sizeof size, 0);
  content.resize(std::size_t(size));
  world.broadcast(content.data(), content.size(), 0);
  return parse_prompts(content, options.prompts, parse_prompt_format(options.prompt_format));
}

std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Command-line sampling settings overridden per prompt; every value range-checked with the prompt's file:line.
Request make_request(const Prompt& p, std::int64_t index, const GenerateOptions& o, const Tokenizer& tokenizer,
                     std::int64_t max_model_len, std::int64_t vocab_size) {
  Request r;
  r.index = index;
  r.prompt = tokenizer.encode(p.text, true);
  r.max_tokens = p.overrides.max_tokens.value_or(o.max_tokens);
  r.stop = p.overrides.stop.value_or(o.stop);
  const double temperature = p.overrides.temperature.value_or(o.temperature);
  const double top_p = p.overrides.top_p.value_or(o.top_p);
  const std::int64_t top_k = p.overrides.top_k.value_or(o.top_k);
  STRATA_CHECK(r.max_tokens >= 1, Usage, p.origin, ": max_tokens must be >= 1 (got ", r.max_tokens, ")");
  STRATA_CHECK(temperature >= 0 && std::isfinite(temperature), Usage, p.origin, ": temperature must be >= 0 (got ",
               temperature, ")");
  STRATA_CHECK(top_p > 0 && top_p <= 1, Usage, p.origin, ": top_p must be in (0, 1] (got ", top_p, ")");
  STRATA_CHECK(top_k >= 0, Usage, p.origin, ": top_k must be >= 0 (got ", top_k, ")");
  STRATA_CHECK(std::int64_t(r.prompt.size()) <= max_model_len, Usage, p.origin, ": prompt is ", r.prompt.size(),
               " tokens but the context (--max-model-len) is ", max_model_len, " tokens");
  r.sampling = SamplingParams{float(temperature), std::int32_t(std::min(top_k, vocab_size)), float(top_p),
                              p.overrides.seed ? *p.overrides.seed : mix_seed(o.seed, std::uint64_t(index))};
  return r;
}

nlohmann::json make_record(const Prompt& p, const Completion& c) {
  nlohmann::json record = {{"id", p.id},
                           {"prompt", p.text},
                           {"text", c.text},
                           {"token_ids", c.token_ids},
                           {"finish_reason", finish_reason_name(c.finish_reason)},
                           {"prompt_tokens", c.prompt_tokens},
                           {"completion_tokens", c.token_ids.size()}};
  if (!c.logits.empty()) {  // one row per generated token
    nlohmann::json rows = nlohmann::json::array();
    for (std::size_t at = 0; at < c.logits.size(); at += std::size_t(c.vocab))
      rows.push_back(
          std::vector<float>(c.logits.begin() + std::int64_t(at), c.logits.begin() + std::int64_t(at) + c.vocab));
    record["logits"] = std::move(rows);
  }
  return record;
}

std::vector<char> pack_record(std::int64_t index, const std::string& json) {
  std::vector<char> message(sizeof index + json.size());
  std::memcpy(message.data(), &index, sizeof index);
  std::memcpy(message.data() + sizeof index, json.data(), json.size());
  return message;
}

// Rank 0's view of the job's progress: a live line on a terminal, a log line every few seconds otherwise.
class Progress {
 public:
  // mode: "live" (one line rewritten in place), "log" (a line every 5 s), "none"; "auto" picks live on a terminal.
  Progress(std::size_t total, const std::string& mode)
      : total_(total), quiet_(mode == "none"), terminal_(mode == "live" || (mode == "auto" && isatty(STDERR_FILENO))) {}
  void record(std::int64_t tokens) {
    ++done_;
    tokens_ += tokens;
    show(false);
  }
  void show(bool final) {
    if (quiet_) return;
    const double now = seconds();
    if (!final && now - last_ < (terminal_ ? 0.2 : 5.0)) return;
    last_ = now;
    const std::string line = summary(now);
    if (terminal_) {
      std::fprintf(stderr, "\r[strata] %s%s", line.c_str(), final ? "\n" : "");
      std::fflush(stderr);
    } else if (!final) {
      log_info(line);
    }
  }
  std::string summary(double now = seconds()) const {
    const double elapsed = std::max(now - start_, 1e-9);
    return cat(done_, "/", total_, " prompts, ", tokens_, " tokens generated in ", fixed(elapsed, 1), " s (",
               fixed(double(tokens_) / elapsed, 1), " tokens/s)");
  }

 private:
  static double seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  std::size_t total_, done_ = 0;
  std::int64_t tokens_ = 0;
  bool quiet_, terminal_;
  double start_ = seconds(), last_ = 0;
};

// Prompts [first, last) of part "K/N": N contiguous parts as equal as possible (the first ones one longer).
std::pair<std::size_t, std::size_t> part_range(const std::string& part, std::size_t total) {
  if (part.empty()) return {0, total};
  std::size_t k = 0, n = 0;
  char slash = 0, extra = 0;
  std::istringstream in(part);
  const bool parsed = bool(in >> k >> slash >> n) && slash == '/' && !(in >> extra);
  STRATA_CHECK(parsed && n >= 1 && k < n, Usage, "--part ", part, ": expected K/N with 0 <= K < N (e.g. 2/8)");
  const std::size_t base = total / n, longer = total % n;
  const std::size_t first = k * base + std::min(k, longer);
  return {first, first + base + (k < longer ? 1 : 0)};
}

// The stage limits generation runs with (and placement sizes `auto` layouts by).
int generate(Job& job, const GenerateOptions& o) {
  prepare_job(job, o.model, o.parallel, [&](const ModelConfig& config) { return stage_limits(o.limits, config); });
  const ParallelLayout& layout = *job.layout;
  Communicator* world = job.groups.world.get();
  const StageLimits limits = stage_limits(o.limits, job.config);
  const std::int64_t model_len = limits.max_seq_len;
  STRATA_CHECK(model_len <= job.config.max_position_embeddings, Usage, "--max-model-len ", model_len,
               " exceeds the model's max_position_embeddings ", job.config.max_position_embeddings);

  const std::vector<Prompt> prompts = load_prompts(o, *world);
  // --part K/N: contiguous slice K of N; indices (ids, seeds) stay those of the whole file.
  const auto [first, last] = part_range(o.part, prompts.size());
  std::vector<Request> mine;  // this replica's share, built (and validated) on every rank
  for (std::size_t i = first; i < last; ++i) {
    Request r = make_request(prompts[i], std::int64_t(i), o, *job.tokenizer, model_len, job.config.vocab_size);
    if (std::int64_t(i) % layout.sizes().dp == layout.dp_rank() && layout.is_first_stage())
      mine.push_back(std::move(r));
  }

  std::unique_ptr<ResultWriter> writer;
  if (layout.world_rank() == 0) writer = std::make_unique<ResultWriter>(o.output, o.overwrite, last - first);

  if (layout.world_rank() == 0 && !o.quiet)  // the plan, before anything loads
    std::fprintf(
        stderr, "%s",
        plan_table(job.topology, layout, job.config, limits, job.device == "cuda", job.manifest.dtype).c_str());
  check_memory(job, limits);
  load_stage(job, o.model, limits);
  if (layout.world_rank() == 0 && !o.quiet)
    log_info("model ", o.model, " (", fixed(double(job.config.parameter_count()) / 1e6, 1), "M parameters) on ",
             layout.world_size(), " ranks: dp ", layout.sizes().dp, " x pp ", layout.sizes().pp, " x tp ",
             layout.sizes().tp, ", ", job.node.node_count, " node(s); ", last - first, " prompts",
             o.part.empty() ? "" : cat(" (part ", o.part, " of ", prompts.size(), ")"));

  // Armed for generation only: before it, loading has no peers to wait for; after it, ranks legitimately wait
  // (rank 0 for slower replicas, everyone at the final barrier) and a dead rank ends the job through the launcher.
  auto watchdog = std::make_unique<Watchdog>(o.step_timeout, [](const std::string& activity, double seconds) {
    log_line(LogLevel::Error, cat("no progress for ", int(seconds), " s while ", activity,
                                  ": a peer rank is stuck or gone; aborting the job (--step-timeout)"));
    MpiEnvironment::abort_job(3);
  });
  EngineOptions engine_options{o.limits.max_batch_size, limits.max_tokens, std::int32_t(model_len),
                               o.micro_batches,         o.record_logits,   watchdog.get()};
  Engine engine(*job.stage, layout, *world, *job.groups.tp, *job.tokenizer, engine_options);

  Progress progress(last - first, o.quiet || layout.world_rank() != 0 ? "none" : o.progress);
  const bool leader = layout.is_first_stage() && layout.tp_rank() == 0;
  SendQueue sends(64);  // records in flight to rank 0
  auto accept = [&](std::int64_t index, const nlohmann::json& record) {
    writer->submit(std::size_t(index) - first, record);
    progress.record(record.at("completion_tokens").get<std::int64_t>());
  };
  // Rank 0: records from other replicas, and which replicas have sent their last one.
  std::vector<bool> replica_done(static_cast<std::size_t>(layout.sizes().dp), false);
  auto take = [&](const std::vector<char>& message, int src) {
    STRATA_CHECK(message.size() >= sizeof(std::int64_t), Communication, "truncated result message from rank ", src);
    std::int64_t index;
    std::memcpy(&index, message.data(), sizeof index);
    if (index == kDoneMarker)
      replica_done[std::size_t(src / (layout.sizes().pp * layout.sizes().tp))] = true;
    else
      accept(index, nlohmann::json::parse(message.begin() + sizeof index, message.end()));
  };
  auto drain = [&] {
    std::vector<char> message;
    int src = 0;
    while (world->try_recv_any(Tag::Result, message, src)) take(message, src);
  };
  EngineHooks hooks;
  if (leader) {
    hooks.on_complete = [&](Completion&& c) {
      const nlohmann::json record = make_record(prompts[std::size_t(c.index)], c);
      if (layout.world_rank() == 0)
        accept(c.index, record);
      else
        sends.push(
            world->isend(pack_record(c.index, record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)), 0,
                         Tag::Result));
    };
  }
  if (layout.world_rank() == 0 && layout.sizes().dp > 1) hooks.on_round = [&] { drain(); };

  engine.run(std::move(mine), hooks);
  watchdog.reset();

  if (leader && layout.world_rank() != 0) {
    sends.push(world->isend(pack_record(kDoneMarker, ""), 0, Tag::Result));
    sends.drain();
  }
  if (layout.world_rank() == 0) {
    // The other replicas' remaining records: messages from one sender arrive in order, its done marker last.
    for (int d = 1; d < layout.sizes().dp; ++d) {
      const int replica_leader = layout.rank_of(d, 0, 0);
      while (!replica_done[std::size_t(d)]) take(world->recv(replica_leader, Tag::Result), replica_leader);
    }
    progress.show(true);
    writer->finish();
    if (!o.quiet) log_info("done: ", progress.summary(), o.output == "-" ? "" : cat("; results in ", o.output));
  }
  return 0;
}

}  // namespace

int run_generate(const GenerateOptions& options, int argc, char** argv) {
  return run_as_mpi_job(argc, argv, [&](Job& job) { return generate(job, options); });
}

}  // namespace strata
