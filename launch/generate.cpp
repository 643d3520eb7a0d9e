// `strata generate`: every prompt of a file through the model, results in input order.
// One RunPlan (computed identically on every rank) says which rank is which replica, stage and TP index. Replicas
// take prompts i with i % dp == replica; each replica's leader sends finished records to world rank 0, which writes
// them in input order as they complete (engine/results.h has the protocol, and how it ends without a hang).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include <sys/resource.h>

#include "engine/dispatch.h"
#include "engine/engine.h"
#include "engine/metrics.h"
#include "engine/progress.h"
#include "engine/results.h"
#include "io/prompts.h"
#include "io/results.h"
#include "launch/chat_template.h"
#include "launch/mpi_job.h"
#include "launch/session.h"
#include "runtime/base/log.h"
#include "runtime/comm/mpi/mpi_communicator.h"
#include "runtime/comm/timed_collectives.h"

namespace strata {
namespace {

// Rank 0's first read of the prompt file, as a stream: its format, how many prompts it has, every line parsed (a
// malformed line stops the job naming it), the ids checked for repeats, and its hash (the run's identity).
struct PromptScan {
  PromptFormat format = PromptFormat::Text;
  std::size_t count = 0;
  std::string hash;
};

PromptScan scan_prompt_file(const GenerateOptions& o) {
  PromptReader reader(o.prompts, parse_prompt_format(o.prompt_format));
  DuplicateIds ids(o.prompts, reader.format());
  Prompt p;
  std::string line;
  std::size_t number = 0;
  while (reader.next(p, line, number)) ids.add(p, number, reader.prompts_read() - 1);
  ids.check();
  STRATA_CHECK(reader.prompts_read() > 0, Usage, o.prompts, ": no prompts found");
  return {reader.format(), reader.prompts_read(), content_hash(o.prompts)};
}

std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Command-line sampling settings overridden per prompt; every value range-checked with the prompt's file:line.
// The request of prompt `p` with its options checked (Error naming the line otherwise); tokenize = false checks the
// options only (every rank does that for every prompt before loading; the replica that runs it tokenizes it).
Request make_request(const Prompt& p, std::int64_t index, const GenerateOptions& o, const Tokenizer& tokenizer,
                     std::int64_t vocab_size, std::int64_t max_batch_size, bool tokenize) {
  Request r;
  r.index = index;
  if (tokenize) r.prompt = tokenizer.encode(p.text, !p.messages);  // a rendered chat holds its BOS already
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
  const bool logprobs = p.overrides.logprobs.value_or(o.logprobs) || p.overrides.top_logprobs || o.top_logprobs >= 0;
  const std::int64_t top = p.overrides.top_logprobs.value_or(std::max(o.top_logprobs, 0));
  STRATA_CHECK(top >= 0 && top <= kMaxTopLogprobs, Usage, p.origin, ": top_logprobs must be in [0, ", kMaxTopLogprobs,
               "] (got ", top, ")");
  r.logprobs = logprobs ? std::int32_t(top) : -1;
  const std::int64_t n = p.overrides.n.value_or(o.n);
  STRATA_CHECK(n >= 1 && n <= max_batch_size, Usage, p.origin, ": n must be in [1, --max-batch-size ", max_batch_size,
               "] (got ", n, "): the samples of a prompt run at once");
  r.n = std::int32_t(n);
  r.sampling = SamplingParams{float(temperature), std::int32_t(std::min(top_k, vocab_size)), float(top_p),
                              p.overrides.seed ? *p.overrides.seed : mix_seed(o.seed, std::uint64_t(index))};
  for (std::int64_t j = 1; j < n; ++j) r.sample_seeds.push_back(mix_seed(r.sampling.seed, std::uint64_t(j)));
  return r;
}

// A prompt that cannot run, for its error record: the job goes on with the others.
std::string prompt_problem(const Request& r, std::int64_t max_model_len) {
  if (r.prompt.empty())  // an empty line of a tokenizer without BOS: no token to continue from
    return "the prompt is empty (0 tokens, and this tokenizer adds no BOS): there is nothing to continue from";
  if (std::int64_t(r.prompt.size()) > max_model_len)
    return cat("prompt is ", r.prompt.size(), " tokens but the context (--max-model-len) is ", max_model_len,
               " tokens");
  return {};
}

Prompt with_error(const Prompt& p, const std::string& error) {
  Prompt copy = p;
  copy.error = error;
  return copy;
}

bool is_error_record(const nlohmann::json& record) { return record.contains("error") && !record["error"].is_null(); }

// Chat requests become text with the checkpoint's chat template (or --chat-template), loaded at the first chat.
// Every rank renders the same text: strftime_now gives `local_time`, the run's start in rank 0's time zone (kept by
// --resume). A request that cannot be rendered (no template, a template that raises) stops the job naming its line,
// or in an OpenAI batch becomes that request's error.
class ChatRenderer {
 public:
  ChatRenderer(const GenerateOptions& o, std::int64_t local_time) : o_(o) {
    const std::time_t seconds = std::time_t(local_time);
    gmtime_r(&seconds, &now_);
  }
  void render(Prompt& p) {
    if (!p.messages || !p.error.empty()) return;
    if (!loaded_) {
      loaded_ = true;
      try {
        chat_ = load_chat_template(o_.model, "", o_.chat_template);
      } catch (const Error& e) {  // no template, or one this strata refuses: each chat request says so
        why_none_ = e.what();
      }
    }
    try {
      STRATA_CHECK(chat_, Usage, why_none_);
      p.text = chat_->render(*p.messages, now_);
    } catch (const Error& e) {
      const std::string why = cat("cannot render the chat: ", e.what());
      if (p.format != PromptFormat::OpenAiBatch) throw Error(e.kind(), cat(p.origin, ": ", why));
      p.error = why;
    }
  }

 private:
  const GenerateOptions& o_;
  std::tm now_{};
  bool loaded_ = false;
  std::optional<ChatTemplate> chat_;
  std::string why_none_;
};

// The watchdog of a generating rank: a stall names what the rank waited for (the peer ranks) and ends the job.
std::unique_ptr<Watchdog> make_watchdog(const GenerateOptions& o) {
  const StallTimeout timeout =
      o.step_timeout == "auto" ? StallTimeout::derived() : StallTimeout::fixed(std::stod(o.step_timeout));
  return std::make_unique<Watchdog>(
      timeout,
      [](const std::string& activity, double seconds) {
        log_line(LogLevel::Error, cat("no progress for ", int(seconds), " s while ", activity,
                                      ": that rank is stopped, frozen or gone; aborting the job (--step-timeout)"));
        MpiEnvironment::abort_job(3);
      },
      [](double seconds) {
        log_warn("this rank itself did not run for ", int(seconds),
                 " s (its process was stopped or its node froze); if that exceeded --step-timeout its peers have "
                 "ended the job");
      });
}

// The weights by their bytes, cheaply: each shard's size and a hash of its first and last 4 MiB (the HDF5 metadata
// with the checksums, the first and last tensors' data): another conversion to the same path differs there.
nlohmann::json shard_identity(const std::string& model_dir) {
  nlohmann::json shards = nlohmann::json::object();
  for (const auto& entry : std::filesystem::directory_iterator(model_dir))
    if (entry.path().extension() == ".h5")
      shards[entry.path().filename().string()] = {{"bytes", entry.file_size()},
                                                  {"ends", content_hash(entry.path().string(), 4 << 20)}};
  return shards;
}

// What identifies a run's output (written beside it; --resume continues only the same run): the checkpoint, the
// prompts and every option that changes a record. Not the layout, batch sizes or micro-batches: records do not
// depend on them (sampling noise follows the prompt's seed and the global token id, see engine/sampler.h).
nlohmann::json run_identity(const GenerateOptions& o, const Session& session, const std::string& prompts_hash) {
  const std::string tokenizer = (std::filesystem::path(o.model) / "tokenizer.json").string();
  nlohmann::json checkpoint = {{"manifest", content_hash(manifest_path(o.model))}, {"shards", shard_identity(o.model)}};
  if (std::ifstream(tokenizer).good()) checkpoint["tokenizer"] = content_hash(tokenizer);
  const RankPlan& rank0 = session.plan().rank(0);
  nlohmann::json prompts = {{"content", prompts_hash}, {"format", o.prompt_format}, {"part", o.part}};
  if (!o.chat_template.empty()) prompts["chat_template"] = content_hash(o.chat_template);
  return {{"format", "strata results 1"},
          {"checkpoint", checkpoint},
          {"prompts", prompts},
          {"generation",
           {{"max_tokens", o.max_tokens},
            {"temperature", o.temperature},
            {"top_p", o.top_p},
            {"top_k", o.top_k},
            {"seed", o.seed},
            {"stop", o.stop},
            {"max_model_len", session.plan().stage.max_seq_len},
            {"logprobs", o.logprobs},
            {"top_logprobs", o.top_logprobs},
            {"n", o.n},
            {"record_logits", o.record_logits}}},
          // The arithmetic: CPU f32 and CUDA bf16 give different tokens.
          {"compute",
           {{"device", device_name(session.plan().device)},
            {"weights", dtype_name(rank0.memory.weights_dtype)},
            {"activations", dtype_name(rank0.memory.activations_dtype)}}}};
}

// The model's name in OpenAI responses: its folder's name, however the path was written ("dir/", "./dir").
std::string model_name(const std::string& model_dir) {
  std::filesystem::path path = std::filesystem::absolute(model_dir).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  return path.filename().string();
}

struct ResumePoint {
  ExistingResults existing;             // the records already in the output
  std::optional<std::int64_t> created;  // when the run that wrote them began (OpenAI's "created"), if it said
};

// --resume on rank 0: the records already in the output (none for a fresh start), after checking that the output
// was written by this same run and that its records are the first prompts of [first, last) in order.
ResumePoint resume_point(const GenerateOptions& o, const nlohmann::json& identity, std::size_t first,
                         std::size_t last) {
  const bool has_output = std::ifstream(o.output).good(), has_metadata = std::ifstream(metadata_path(o.output)).good();
  // Nothing yet, or an empty output left by a run stopped before it wrote its identity: a fresh start.
  if (!has_metadata && (!has_output || std::filesystem::file_size(o.output) == 0)) return {};
  nlohmann::json before = read_metadata(o.output);
  ResumePoint point;
  if (before.contains("created")) point.created = before["created"].get<std::int64_t>();
  before.erase("created");  // when the run began: not part of what it is
  const std::vector<std::string> differences = identity_differences(before, identity);
  std::string listed;
  for (const auto& d : differences) listed += (listed.empty() ? "" : "; ") + d;
  STRATA_CHECK(differences.empty(), Usage, "--resume: ", o.output, " was written by a different run (", listed,
               "); resume with the same checkpoint, prompts and options, or start again without --resume");
  ExistingResults& existing = point.existing = scan_results(o.output);
  STRATA_CHECK(existing.records <= last - first, Usage, "--resume: ", o.output, " holds ", existing.records,
               " records but this run has ", last - first, " prompts");
  return point;  // the records' ids are checked against the prompts by check_prompts
}

// --metrics on rank 0: the recorder's requests, every rank's times (its own and those sent with Done), and the run.
void write_metrics(const GenerateOptions& o, const Session& session, MetricsRecorder& metrics,
                   const ResultCollector& collector, const RankTimes& mine, std::size_t resumed) {
  const RunPlan& plan = session.plan();
  std::vector<nlohmann::json> rank_info;
  for (const RankPlan& r : plan.ranks) {
    rank_info.push_back({{"host", r.host}, {"dp", r.dp}, {"pp", r.pp}, {"tp", r.tp}});
    metrics.add_rank(r.world_rank, r.world_rank == 0 ? mine : collector.rank_times()[std::size_t(r.world_rank)]);
  }
  const nlohmann::json run = {{"format", "strata metrics 1"},
                              {"model", o.model},
                              {"prompts_file", o.prompts},
                              {"output", o.output},
                              {"resumed_records", resumed},
                              {"wall_seconds", mine.wall},
                              {"layout",
                               {{"dp", plan.sizes.dp},
                                {"pp", plan.sizes.pp},
                                {"tp", plan.sizes.tp},
                                {"world", plan.world_size()},
                                {"nodes", plan.topology.nodes.size()},
                                {"device", device_name(plan.device)}}},
                              {"prefix_caching", plan.prefix_caching},
                              {"kv_cache",
                               {{"blocks", plan.stage.kv_blocks},
                                {"block_size", plan.stage.block_size},
                                {"tokens_per_replica", std::int64_t(plan.stage.kv_blocks) * plan.stage.block_size},
                                {"bytes_per_rank", plan.rank(0).memory.kv_cache},
                                {"sized_by", plan.kv_basis}}}};
  write_file_atomically(o.metrics, metrics.summary(run, rank_info).dump(2) + "\n");
  if (!o.quiet) log_info("metrics in ", o.metrics);
}

int generate(const NodeInfo& node, const GenerateOptions& o) {
  Session session(node, o.model, o.parallel, o.limits);
  const ParallelLayout& layout = session.layout();
  Communicator& world = session.world();
  const bool writer_rank = layout.world_rank() == 0;
  // Checked now, opened only after the model has loaded and the prompts are valid: a run that fails before it has
  // results never truncates an existing output, and never writes over its own prompts.
  // --resume appends to an existing output of the same run.
  if (writer_rank) check_output_target(o.output, o.overwrite || o.resume, {o.prompts});
  if (writer_rank && !o.metrics.empty()) check_output_target(o.metrics, true, {o.prompts, o.output});

  // Only rank 0 reads the prompt file: once now to check it, again as it hands prompts out (a stream each time).
  PromptScan scan;
  if (writer_rank) scan = scan_prompt_file(o);
  // --part K/N: contiguous slice K of N; indices (ids, seeds) stay those of the whole file.
  const auto [first, last] = part_range(o.part, scan.count);
  nlohmann::json identity;
  ExistingResults existing;
  // When the run began (OpenAI's "created"): chosen once by rank 0, and kept by a resume, so every record of one
  // output carries the same value wherever and whenever it was written.
  std::int64_t created = std::int64_t(std::time(nullptr));
  if (writer_rank) {
    identity = run_identity(o, session, scan.hash);
    if (o.resume) {
      ResumePoint point = resume_point(o, identity, first, last);
      existing = std::move(point.existing);
      created = point.created.value_or(created);
    }
  }
  std::int64_t done = std::int64_t(existing.records);  // prompts [first, first + done) are already written
  std::int64_t format = std::int64_t(scan.format);
  world.broadcast(&done, sizeof done, 0);
  world.broadcast(&created, sizeof created, 0);
  world.broadcast(&format, sizeof format, 0);
  std::int64_t utc_offset = 0;  // rank 0's, so that every rank's strftime_now gives the same local date
  if (writer_rank) {
    std::tm local{};
    const std::time_t start = std::time_t(created);
    localtime_r(&start, &local);
    utc_offset = local.tm_gmtoff;
  }
  world.broadcast(&utc_offset, sizeof utc_offset, 0);
  if (writer_rank && o.resume && done > 0)
    log_info("resuming ", o.output, ": ", done, " of ", last - first, " records already complete",
             existing.partial_bytes
                 ? cat(", a final line cut off mid-write (", existing.partial_bytes, " bytes) dropped")
                 : std::string());
  std::int64_t nothing_left = done == std::int64_t(last - first) && done > 0 && o.resume ? 1 : 0;
  world.broadcast(&nothing_left, sizeof nothing_left, 0);
  if (nothing_left) {
    if (writer_rank) log_info("nothing left to do: all ", done, " records are in ", o.output);
    return 0;
  }
  const std::int64_t model_len = session.plan().stage.max_seq_len;
  ChatRenderer chats(o, created + utc_offset);
  // A prompt ready to hand out: its chat rendered and its options checked; false (with p.error set) for an OpenAI
  // batch request that cannot be served (an error line, the job goes on); other problems throw naming the line.
  const auto prepare = [&](Prompt& p, std::size_t i) {
    try {
      chats.render(p);
      STRATA_CHECK(p.error.empty(), Usage, p.error);
      make_request(p, std::int64_t(i), o, session.tokenizer(), session.config().vocab_size,
                   session.plan().max_batch_size, false);
      return true;
    } catch (const Error& e) {
      if (p.format != PromptFormat::OpenAiBatch) throw;
      std::string why = p.error.empty() ? e.what() : p.error;
      if (why.rfind(p.origin + ": ", 0) == 0) why = why.substr(p.origin.size() + 2);  // the error line names it
      p.error = why;
      return false;
    }
  };
  // Before loading, rank 0 checks the prompts of this run (a bad line stops a plain job before any work) and, on
  // --resume, that the records already written are the first prompts in order.
  if (writer_rank) {
    PromptReader reader(o.prompts, scan.format);
    Prompt p;
    std::string line;
    std::size_t number = 0;
    for (std::size_t i = 0; i < last && reader.next(p, line, number); ++i) {
      if (i < first) continue;
      if (i < first + std::size_t(done)) {
        STRATA_CHECK(existing.ids[i - first] == p.id, Usage, o.output, ":", i - first + 1, ": record of ",
                     existing.ids[i - first].dump(), " is not prompt ", i, "'s id ", p.id.dump(),
                     " (records must be the prompts in input order)");
        continue;
      }
      prepare(p, i);
    }
  }
  // Where a prompt runs: parsed from its line and tokenized there (a prompt longer than the context gets an error
  // record). Replica leaders keep each prompt until its record is made.
  const bool leader = layout.is_replica_leader();
  std::map<std::int64_t, Prompt> live;
  const RequestFactory make = [&](const WorkItem& item) {
    Prompt p = parse_prompt_line(item.line, PromptFormat(format), o.prompts, item.line_number, std::size_t(item.index));
    chats.render(p);
    Request r = make_request(p, item.index, o, session.tokenizer(), session.config().vocab_size,
                             session.plan().max_batch_size, true);
    r.error = prompt_problem(r, model_len);
    if (leader) live.emplace(item.index, std::move(p));
    return r;
  };

  if (writer_rank && !o.quiet) std::fprintf(stderr, "%s", session.plan().table().c_str());  // before loading
  session.check_memory();
  session.load();
  std::unique_ptr<ResultWriter> writer;
  if (writer_rank) {
    writer = o.resume ? std::make_unique<ResultWriter>(o.output, existing, last - first)
                      : std::make_unique<ResultWriter>(o.output, o.overwrite, last - first);
    if (o.output != "-") {
      nlohmann::json metadata = identity;
      metadata["created"] = created;
      write_metadata(o.output, metadata);
    }
  }
  const RecordContext record_context{model_name(o.model), created};
  if (writer_rank && !o.quiet)
    log_info("model ", o.model, " (", double(session.config().parameter_count()) / 1e6, "M parameters) on ",
             layout.world_size(), " ranks: dp ", layout.sizes().dp, " x pp ", layout.sizes().pp, " x tp ",
             layout.sizes().tp, ", ", node.node_count, " node(s); ", last - first, " prompts",
             o.part.empty() ? "" : cat(" (part ", o.part, " of ", scan.count, ")"));

  // Armed from the first step to the last message: every wait of the run, result gathering and the end included.
  std::unique_ptr<Watchdog> watchdog = make_watchdog(o);
  const RunPlan& plan = session.plan();
  EngineOptions engine_options{plan.max_batch_size, plan.stage.max_tokens, plan.stage.max_seq_len,
                               plan.micro_batches,  o.record_logits,       watchdog.get(),
                               plan.prefix_caching, plan.chunked_prefill};
  TimedCollectives sampling_tp(session.tp());  // the last stage's sampling all-gathers, timed for --metrics
  Engine engine(session.stage(), layout, world, sampling_tp, session.tokenizer(), engine_options);

  Progress progress(last - first - std::size_t(done), o.quiet || !writer_rank ? "none" : o.progress);
  MetricsRecorder metrics;
  // Rank 0 hands out prompts [first + done, last) read from the file as they are needed; a request that cannot be
  // served gets its error line here.
  std::unique_ptr<PromptReader> feed_reader;
  std::size_t next_index = 0;
  std::unique_ptr<WorkDispatcher> dispatcher;
  if (writer_rank) {
    feed_reader = std::make_unique<PromptReader>(o.prompts, scan.format);
    const WorkFeed feed = [&](WorkItem& item) {
      Prompt p;
      for (std::size_t number = 0; next_index < last && feed_reader->next(p, item.line, number);) {
        const std::size_t i = next_index++;
        if (i < first + std::size_t(done)) continue;
        if (!prepare(p, i)) {
          writer->submit(i - first, make_error_record(p, std::int64_t(i)));
          progress.record(0);
          metrics.add_error();
          continue;
        }
        item.index = std::int64_t(i);
        item.line_number = number;
        item.key = prefix_key(p.text);
        return true;
      }
      return false;
    };
    dispatcher = std::make_unique<WorkDispatcher>(feed, layout.sizes().dp, o.static_dp);
  }
  std::unique_ptr<RequestSource> source;
  if (layout.is_first_stage()) source = make_request_source(world, layout, dispatcher.get(), make, watchdog.get());
  std::unique_ptr<ResultCollector> collector;
  std::unique_ptr<ResultSender> sender;
  if (writer_rank)
    collector = std::make_unique<ResultCollector>(
        world, layout,
        [&](std::int64_t index, const nlohmann::json& record, const RequestTiming& timing) {
          writer->submit(std::size_t(index) - first, record);
          if (is_error_record(record)) {
            progress.record(0);
            metrics.add_error();
            return;
          }
          const nlohmann::json& usage =
              record.contains("response") ? record["response"]["body"]["usage"] : record;  // OpenAI or plain
          const auto completion_tokens = usage.at("completion_tokens").get<std::int64_t>();
          progress.record(completion_tokens);
          metrics.add_request(timing, usage.at("prompt_tokens").get<std::int64_t>(), completion_tokens);
        },
        watchdog.get());
  else
    sender = std::make_unique<ResultSender>(world, layout, watchdog.get());

  EngineHooks hooks;
  if (leader)
    hooks.on_complete = [&](Completion&& c) {
      const auto found = live.find(c.index);
      STRATA_CHECK(found != live.end(), Internal, "a completion of prompt ", c.index, " that this replica never took");
      const Prompt p = std::move(found->second);
      live.erase(found);
      const nlohmann::json record = c.error.empty() ? make_record(p, c, session.tokenizer(), record_context)
                                                    : make_error_record(with_error(p, c.error), c.index);
      const RequestTiming timing{c.first_token_seconds, c.finished_seconds};
      if (collector)
        collector->accept(c.index, record, timing);
      else
        sender->send(c.index, record, timing);
    };
  if (collector) collector->serve_work([&] { dispatcher->serve(world, layout); });
  hooks.on_round = [&] {
    if (collector)
      collector->poll();
    else if (leader)
      sender->heartbeat();
  };
  const auto generation_start = std::chrono::steady_clock::now();
  const auto since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - generation_start).count();
  };
  const EngineStats stats = engine.run(source.get(), hooks);
  RankTimes times;
  times.compute = stats.compute_seconds;
  times.communication = session.stage_communication_seconds() + sampling_tp.seconds();
  times.longest_step = stats.longest_step_seconds;
  if (leader) {  // the replica's counts, once (its other first-stage ranks keep the same ones)
    times.batching = stats.batching;
    times.requests = stats.requests;
  }

  const ExpertLoad& load = session.stage().expert_load();
  times.experts = std::int32_t(std::min<std::size_t>(load.per_expert.size(), RankTimes::kMaxReportedExperts));
  std::copy_n(load.per_expert.begin(), times.experts, times.expert_tokens);
  times.expert_rows = load.rows_computed;
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) times.peak_rss_bytes = std::int64_t(usage.ru_maxrss) * 1024;  // KiB
  if (!collector) {
    times.wall = since_start();
    sender->finish(times);
    return 0;
  }
  collector->finish();
  // Every rank has been told to end: nobody waits on a peer any more. Closing a large output (fsync on a network
  // file system) and the metrics may take as long as they take.
  watchdog.reset();
  times.wall = since_start();
  progress.show(true);
  writer->finish();
  if (!o.metrics.empty()) write_metrics(o, session, metrics, *collector, times, std::size_t(done));
  if (!o.quiet) {
    std::int64_t preemptions = times.batching.preemptions, cached = times.batching.cached_prompt_tokens;
    for (int r = 1; r < layout.world_size(); ++r) {
      preemptions += collector->rank_times()[std::size_t(r)].batching.preemptions;
      cached += collector->rank_times()[std::size_t(r)].batching.cached_prompt_tokens;
    }
    log_info("done: ", progress.summary(), "; ", cached, " prompt tokens from the prefix cache, ", preemptions,
             " preemption", preemptions == 1 ? "" : "s", o.output == "-" ? "" : cat("; results in ", o.output));
  }
  return 0;
}

}  // namespace

int run_generate(const GenerateOptions& options, int argc, char** argv) {
  return run_as_mpi_job(argc, argv, [&](const NodeInfo& node) { return generate(node, options); });
}

}  // namespace strata
