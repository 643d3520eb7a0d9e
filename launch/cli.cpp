// Command-line parsing (CLI11) and dispatch. Unknown flags and out-of-range values are refused by CLI11 with the
// flag named, before MPI starts.
#include <CLI/CLI.hpp>

#include "launch/commands.h"
#include "layers/presets.h"
#include "runtime/backend/cpu/kernels.h"
#include "runtime/backend/cpu/quant.h"
#include "runtime/base/error.h"

namespace strata {
namespace {

// A size: a positive number, or `auto` (0) for placement to choose.
std::string size_or_auto(std::string value) {
  if (value == "auto") return "0";
  int n = 0;
  try {
    std::size_t used = 0;
    n = std::stoi(value, &used);
    if (used != value.size()) n = 0;
  } catch (const std::exception&) {
    n = 0;
  }
  if (n < 1) throw CLI::ValidationError("'" + value + "' is neither a positive number nor auto");
  return value;
}

// A number of at least `minimum`. CLI11's PositiveNumber says "Value 0 not in range 0.000000 to 1.79769e+308" for 0,
// which claims 0 is in range: this says what is wanted and what was given.
CLI::Validator at_least(double minimum) {
  const std::string wanted = minimum == 0 ? "a number >= 0" : "a number >= " + CLI::detail::to_string(minimum);
  return CLI::Validator(
      [minimum, wanted](std::string& value) -> std::string {
        double number = 0;
        try {
          std::size_t used = 0;
          number = std::stod(value, &used);
          if (used != value.size()) return "must be " + wanted + " (got '" + value + "')";
        } catch (const std::exception&) {
          return "must be " + wanted + " (got '" + value + "')";
        }
        if (!(number >= minimum)) return "must be " + wanted + " (got " + value + ")";
        return "";
      },
      wanted);
}
const CLI::Validator kPositive = at_least(1), kNonNegative = at_least(0);

// --step-timeout: auto, or seconds >= 0.
std::string seconds_or_auto(std::string value) {
  if (value == "auto") return value;
  std::string copy = value;
  const std::string problem = kNonNegative(copy);
  if (!problem.empty()) throw CLI::ValidationError("'" + value + "' is neither auto nor a number of seconds >= 0");
  return value;
}

void add_sequence_parallel_flags(CLI::App& cmd, int& tokens, bool& even) {
  cmd.add_option("--sequence-parallel-tokens", tokens,
                 "CPU tensor parallelism: steps of at least this many tokens split the norms and the activations' "
                 "quantization over the tp ranks, which exchange the quantized rows (sequence parallelism; 0: never)")
      ->check(kNonNegative);
  cmd.add_flag("--even-row-shares", even,
               "Sequence parallelism: split the rows evenly over the tp ranks (by default a rank that waits for the "
               "others takes over rows from them, step by step: cores that run at different speeds)");
}

void add_limit_flags(CLI::App& cmd, RunLimits& l) {
  cmd.add_option("--max-batch-size", l.max_batch_size, "Sequences in flight per replica")->check(kPositive);
  cmd.add_option("--max-num-batched-tokens", l.max_num_batched_tokens, "Tokens per forward step")->check(kPositive);
  cmd.add_option("--max-model-len", l.max_model_len, "Context length (default: the model's)")->check(kNonNegative);
  cmd.add_option("--micro-batches", l.micro_batches, "Pipeline micro-batches (default: one per stage)")
      ->check(kNonNegative);
  cmd.add_option("--kv-block-size", l.block_size, "Positions per KV-cache block")->check(kPositive);
  cmd.add_option("--kv-cache-memory", l.kv_cache_gib,
                 "GiB of KV cache per rank (default: on GPUs what 90% of the GPU leaves after weights and workspace; "
                 "on CPUs --max-batch-size whole contexts, within the rank's share of the node's memory)")
      ->check(CLI::PositiveNumber);
  cmd.add_option(
         "--kv-cache-dtype", l.kv_cache_dtype,
         "KV-cache element type: auto (GPUs: the activations', bf16 or f16; CPUs: f16 for 16-bit and quantized "
         "weights, as llama.cpp's default cache, f32 for f32 weights), f16 or f32 (CPU: f16 is half the memory and "
         "half the bytes attention reads, the values rounded to f16; f32 keeps them exact)")
      ->check(CLI::IsMember({"auto", "f16", "f32"}));
  cmd.add_flag("!--no-prefix-caching", l.prefix_caching,
               "Compute every prompt in full instead of reusing the KV-cache blocks of prefixes seen before");
  cmd.add_flag("!--no-chunked-prefill", l.chunked_prefill,
               "Prefill each prompt in one step (steps may exceed --max-num-batched-tokens) instead of in chunks");
  add_sequence_parallel_flags(cmd, l.sequence_parallel_tokens, l.even_row_shares);
}

void add_parallel_flags(CLI::App& cmd, ParallelOptions& p) {
  cmd.add_option("--tensor-parallel-size", p.tp, "Tensor-parallel ranks per stage (-tp), or auto")
      ->transform(size_or_auto, "SIZE|auto");
  cmd.add_option("--pipeline-parallel-size", p.pp, "Pipeline stages (-pp), or auto")
      ->transform(size_or_auto, "SIZE|auto");
  cmd.add_option("--data-parallel-size", p.dp, "Data-parallel replicas (-dp), or auto (default: what tp x pp leave)")
      ->transform(size_or_auto, "SIZE|auto");
  cmd.add_option("--expert-parallel-size", p.ep,
                 "Mixture-of-experts models: split the experts over this many groups of each tensor-parallel group "
                 "(-ep; it divides -tp); outputs are combined by all-to-all")
      ->check(kPositive);
  cmd.add_option("--quantize", p.quantize,
                 "CPU: quantize the matrix weights on load to llama.cpp's q8_0 or q4_0 blocks (a half or a quarter of "
                 "bf16's bytes per decode step; products on the blocks as llama.cpp computes them)")
      ->check(CLI::IsMember({"q8_0", "q4_0"}));
  cmd.add_option("--device", p.device, "Compute device")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd.add_option("--topology", p.topology, "Cluster description (JSON, see strata topo --json) instead of detection");
  cmd.add_option("--nccl-timeout", p.nccl_timeout,
                 "With --device cuda and tensor parallelism: seconds an NCCL initialisation or wait on the GPU may "
                 "take (a dead or stuck peer) before the job is aborted with that rank's message; 0 = never")
      ->check(kNonNegative);
  cmd.add_option("--gpu-reserve-mib", p.gpu_reserve_mib,
                 "With --device cuda: MiB of GPU memory the memory check keeps free for what is allocated after it "
                 "(NCCL buffers, CUDA graphs); default 512 with tensor parallelism plus 64")
      ->check(kNonNegative);
  cmd.add_flag("--force", p.force, "Run a layout the placement refuses (a TP group across nodes or NVLink islands)");
  auto* in_place = cmd.add_flag("--mmap", p.mmap,
                                "Use the weights in place from the page cache (CPU backend; the default where a "
                                "kernel copies weights into its own layout anyway: bf16 with the avx512bf16 kernel, "
                                "quantized with the VNNI one; with --quantize, or without transparent huge pages): "
                                "loads faster, replicas on a node share one copy of the weights used in place");
  cmd.add_flag("--no-mmap", p.no_mmap,
               "Read shards with pread into the rank's own memory, in transparent huge pages (the CPU backend's "
               "default for weights used as stored: decode streams them faster); reports the system's error for a "
               "failing file")
      ->excludes(in_place);
}

// vLLM's short flags -tp/-pp/-dp (and -ep) are multi-letter single-dash names, which CLI11 does not accept: spell them
// out before parsing ("-tp 2" and "-tp=2").
std::vector<std::string> expand_short_flags(int argc, char** argv) {
  static const std::pair<const char*, const char*> aliases[] = {{"-tp", "--tensor-parallel-size"},
                                                                {"-pp", "--pipeline-parallel-size"},
                                                                {"-dp", "--data-parallel-size"},
                                                                {"-ep", "--expert-parallel-size"}};
  std::vector<std::string> args(argv, argv + argc);
  for (auto& arg : args)
    for (const auto& [short_name, long_name] : aliases)
      if (arg == short_name || arg.rfind(std::string(short_name) + "=", 0) == 0)
        arg = long_name + arg.substr(std::string(short_name).size());
  return args;
}

// The CPU backend's product kernels on this machine (chosen at run time from the CPU's instruction sets, or forced
// by STRATA_ROW_KERNEL / STRATA_QUANT_KERNEL): avx512bf16 rounds the activations of bf16 weights to bf16, which
// tests comparing logits with a reference need to know.
std::string cpu_kernels() {
  try {
    return "CPU kernels here: products " + cpu::row_kernel_name() + ", quantized products " + quant::kernel_name();
  } catch (const Error& e) {
    return std::string("CPU kernels here: ") + e.what();
  }
}

// What this binary can run: users (and tests) tell a CUDA build from a CPU-only one with `strata --version`.
std::string build_description() {
#ifdef STRATA_WITH_CUDA
  return "strata " STRATA_VERSION " (CUDA " STRATA_CUDA_VERSION ", architectures " STRATA_CUDA_ARCHITECTURES
         "; CPU backend)\n" +
         cpu_kernels();
#else
  return "strata " STRATA_VERSION " (CPU only: built without CUDA)\n" + cpu_kernels();
#endif
}

}  // namespace

int cli_main(int argc, char** argv) {
  CLI::App app{"strata: LLM inference across many GPUs and nodes. Launch with mpirun or srun, one rank per device."};
  app.require_subcommand(1);
  app.set_version_flag("--version", build_description());

  GenerateOptions gen;
  auto* generate = app.add_subcommand("generate", "Generate completions for every prompt in a file");
  generate->add_option("--model", gen.model, "Checkpoint directory (strata init / strata convert)")->required();
  generate->add_option("--prompts", gen.prompts, "Prompt file: text (one per line) or JSONL")->required();
  generate->add_option("--output", gen.output, "Results JSONL file ('-' for stdout)");
  generate
      ->add_option("--chat-template", gen.chat_template,
                   "Jinja file rendering chat requests (JSONL 'messages', OpenAI /v1/chat/completions) instead of "
                   "the checkpoint's chat template")
      ->check(CLI::ExistingFile);
  generate
      ->add_option("--prompt-format", gen.prompt_format,
                   "auto (an OpenAI batch file by its first line, else JSONL by extension, else text), text, jsonl "
                   "or openai")
      ->check(CLI::IsMember({"auto", "text", "jsonl", "openai"}));
  add_parallel_flags(*generate, gen.parallel);
  generate->add_option("--max-tokens", gen.max_tokens, "Tokens to generate per prompt")->check(kPositive);
  generate->add_option("--temperature", gen.temperature, "Sampling temperature; 0 = greedy")
      ->check(CLI::Range(0.0, 100.0));
  generate->add_option("--top-p", gen.top_p, "Nucleus sampling probability")->check(CLI::Range(1e-6, 1.0));
  generate->add_option("--top-k", gen.top_k, "Sample among the k most likely tokens; 0 = all")->check(kNonNegative);
  generate->add_option("--seed", gen.seed, "Sampling seed (the same text under every layout)");
  generate->add_option("--stop", gen.stop, "Stop string (repeatable)");
  generate
      ->add_option("--n", gen.n,
                   "Completions per prompt (each with its own seed derived from the prompt's); "
                   "they share the prompt's computation")
      ->check(kPositive);
  generate->add_flag("--logprobs", gen.logprobs,
                     "Add each generated token's log-probability to the results (OpenAI's layout), under "
                     "softmax(logits / temperature) over the whole vocabulary (temperature 1 for greedy)");
  generate
      ->add_option("--top-logprobs", gen.top_logprobs,
                   "With each token, the log-probabilities of the N most "
                   "likely tokens (0-20; implies --logprobs)")
      ->check(CLI::Range(0, 20));
  add_limit_flags(*generate, gen.limits);
  generate->add_option("--metrics", gen.metrics,
                       "Write a JSON summary of the run here at the end: tokens, wall time, throughput, time to first "
                       "token and per output token percentiles, each rank's compute / communication / waiting, "
                       "KV-cache use (scripts/plot-metrics.py plots one or several)");
  generate
      ->add_option("--step-timeout", gen.step_timeout,
                   "Seconds a rank may wait without progress (a stopped, frozen or dead peer) before the job is "
                   "aborted naming what it waited for; auto (default): 600 s until the first step, then 25 x the "
                   "slowest step seen, at least 60 s; 0 = never")
      ->transform(seconds_or_auto, "SECONDS|auto");
  generate->add_option("--part", gen.part,
                       "K/N: only part K (0-based) of N contiguous parts of the prompts, with the ids and seeds they "
                       "have in the whole file (Slurm job arrays; concatenating parts 0..N-1 gives the whole run)");
  auto* overwrite = generate->add_flag("--overwrite", gen.overwrite, "Replace an existing non-empty output file");
  generate
      ->add_flag("--resume", gen.resume,
                 "Continue an interrupted run into the same output: checks it was made from the same checkpoint, "
                 "prompts and options (OUTPUT.meta.json), drops a final line cut off mid-write, skips the prompts "
                 "already complete and appends the rest; a fresh start when there is no output yet")
      ->excludes(overwrite);
  generate->add_flag("--record-logits", gen.record_logits,
                     "Add the full-vocabulary logits of every generated position to each result (debugging, tests)");
  generate
      ->add_option("--progress", gen.progress,
                   "Progress on rank 0: live (one updating line), log (a line every 5 s), none; auto: live when "
                   "stderr is a terminal (under mpirun it is a pipe: ask for live)")
      ->check(CLI::IsMember({"auto", "live", "log", "none"}));
  generate->add_flag("-q,--quiet", gen.quiet, "No progress or summary output");
  generate->add_flag("--static-dp", gen.static_dp,
                     "Give replica r the prompts i with i % dp == r, fixed in advance, instead of handing prompts out "
                     "as replicas have room (benchmarks)");

  InitOptionsCli init;
  auto* init_cmd = app.add_subcommand("init", "Write a random-weight checkpoint for a preset, pre-sharded");
  std::string presets;
  for (const auto& n : model_preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  init_cmd->add_option("--preset", init.preset, "Model shape: " + presets)->check(CLI::IsMember(model_preset_names()));
  init_cmd->add_option("--output", init.output, "Checkpoint directory to write")->required();
  init_cmd->add_option("--tensor-parallel-size", init.tp, "Shard for this many TP ranks")->check(kPositive);
  init_cmd->add_option("--pipeline-parallel-size", init.pp, "Shard for this many stages")->check(kPositive);
  init_cmd->add_option("--dtype", init.dtype, "Storage dtype (q8_0 / q4_0: matrices in llama.cpp's blocks)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0"}));
  init_cmd->add_option("--seed", init.seed, "Weights seed: the same model whatever the sharding");
  init_cmd->add_option("--hidden-size", init.hidden_size)->check(kPositive);
  init_cmd->add_option("--intermediate-size", init.intermediate_size)->check(kPositive);
  init_cmd->add_option("--num-hidden-layers", init.num_hidden_layers)->check(kPositive);
  init_cmd->add_option("--num-attention-heads", init.num_attention_heads)->check(kPositive);
  init_cmd->add_option("--num-key-value-heads", init.num_key_value_heads)->check(kPositive);
  init_cmd->add_option("--vocab-size", init.vocab_size)->check(kPositive);
  init_cmd->add_option("--max-position-embeddings", init.max_position_embeddings)->check(kPositive);
  init_cmd->add_option("--tie-word-embeddings", init.tie_word_embeddings, "0 or 1")->check(CLI::Range(0, 1));
  init_cmd->add_option("--attention-bias", init.attention_bias, "q/k/v bias (Qwen2): 0 or 1")->check(CLI::Range(0, 1));
  init_cmd->add_option("--qk-norm", init.qk_norm, "RMSNorm over each q and k head before RoPE (Qwen3): 0 or 1")
      ->check(CLI::Range(0, 1));

  ConvertOptions convert;
  auto* convert_cmd = app.add_subcommand("convert", "Convert a Hugging Face model folder to a sharded checkpoint");
  auto* hf_option = convert_cmd->add_option("--hf", convert.hf, "Folder with config.json and *.safetensors");
  auto* gguf_option = convert_cmd->add_option(
      "--gguf", convert.gguf,
      "A GGUF file of a Llama-family model (f32/f16/bf16/q8_0/q4_0 tensors, byte-level BPE vocabulary) instead; "
      "stored as its matrices are unless --dtype or --quantize says otherwise");
  hf_option->excludes(gguf_option);
  convert_cmd->callback([hf_option, gguf_option] {
    if (hf_option->count() + gguf_option->count() != 1) throw CLI::ValidationError("convert needs --hf or --gguf");
  });
  convert_cmd->add_option("--output", convert.output, "Checkpoint directory to write")->required();
  convert_cmd->add_option("--tensor-parallel-size", convert.tp, "Shard for this many TP ranks (-tp)")->check(kPositive);
  convert_cmd->add_option("--pipeline-parallel-size", convert.pp, "Shard for this many stages (-pp)")->check(kPositive);
  auto* convert_dtype = convert_cmd->add_option("--dtype", convert.dtype, "Storage dtype (q8_0 / q4_0: as --quantize)")
                            ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0"}));
  auto* convert_quantize =
      convert_cmd
          ->add_option("--quantize", convert.dtype,
                       "Store the matrices as llama.cpp's q8_0 or q4_0 blocks of 32 weights with f16 scales (norms and "
                       "biases stay f32); the CPU backend computes on them in place")
          ->check(CLI::IsMember({"q8_0", "q4_0"}));
  convert_cmd
      ->add_option("--tokenizer", convert.tokenizer, "auto: carry tokenizer.json along; byte: the byte-level tokenizer")
      ->check(CLI::IsMember({"auto", "byte"}));

  TokenizeOptions tokenize;
  auto* tokenize_cmd = app.add_subcommand("tokenize", "Print the token ids of each input line (or JSONL prompt)");
  tokenize_cmd->add_option("--tokenizer", tokenize.tokenizer, "A tokenizer.json file or a checkpoint directory")
      ->required();
  tokenize_cmd->add_option("--input", tokenize.input,
                           "Text file, one input per line, or JSONL with --jsonl; - = stdin");
  tokenize_cmd->add_flag("--jsonl", tokenize.jsonl, "Input is JSONL prompts ({\"prompt\": ...} per line)");
  tokenize_cmd->add_flag("--add-bos", tokenize.add_bos, "Add the model's BOS (as generate does)");
  tokenize_cmd->add_flag("--decode", tokenize.decode, "Also decode the ids again (\"text\"; special tokens skipped)");
  tokenize_cmd
      ->add_option("--bench", tokenize.bench_seconds,
                   "Instead: encode all inputs repeatedly for this many seconds and print MB/s")
      ->check(kNonNegative);

  ChatTemplateOptions chat;
  auto* chat_cmd = app.add_subcommand(
      "chat-template", "Print the prompt each chat request ({\"messages\": [...]} per JSONL line) becomes");
  auto* chat_model = chat_cmd->add_option("--model", chat.model, "Checkpoint directory (its chat template)");
  chat_cmd->add_option("--hf", chat.hf, "Or a Hugging Face folder (its tokenizer_config.json)")->excludes(chat_model);
  chat_cmd->add_option("--chat-template", chat.chat_template, "A Jinja template file instead of the model's");
  chat_cmd->add_option("--input", chat.input, "JSONL requests; - = stdin");
  chat_cmd->add_option("--now", chat.now, "strftime_now's date, YYYY-MM-DD[THH:MM:SS] (default: now)");

  TopoOptions topo;
  auto* topo_cmd = app.add_subcommand("topo", "Show the nodes, ranks, CPU domains and network links strata sees");
  topo_cmd->add_option("--topology", topo.topology, "Read a cluster description (JSON) instead of detecting");
  topo_cmd->add_flag("--json", topo.json, "Print the description format (what --topology reads)");

  PlanOptions plan;
  auto* plan_cmd = app.add_subcommand("plan", "Show where every rank goes, its layers, memory and traffic per token");
  plan_cmd->add_option("--model", plan.model, "Checkpoint directory (for the model's shape)")->required();
  add_parallel_flags(*plan_cmd, plan.parallel);
  add_limit_flags(*plan_cmd, plan.limits);

  InspectOptions inspect;
  auto* inspect_cmd = app.add_subcommand("inspect", "Print a checkpoint's config, shards and tensors");
  inspect_cmd->add_option("model", inspect.model, "Checkpoint directory")->required();
  inspect_cmd->add_flag("--verify", inspect.verify, "Read every tensor, verifying its checksum");
  inspect_cmd->add_flag("--json", inspect.json, "Machine-readable output");

  BenchOptions bench;
  auto* bench_cmd = app.add_subcommand("bench", "Prefill and decode throughput next to the machine's roofline");
  bench_cmd->add_option("--model", bench.model, "Checkpoint directory")->required();
  add_parallel_flags(*bench_cmd, bench.parallel);
  bench_cmd->add_option("--batch-sizes", bench.batch_sizes, "Batch sizes to measure")
      ->delimiter(',')
      ->expected(1, 64)
      ->check(CLI::Range(1, 4096));
  bench_cmd->add_option("--prompt-len", bench.prompt_len, "Prompt tokens")->check(kPositive);
  bench_cmd->add_option("--gen-len", bench.gen_len, "Generated tokens")->check(CLI::Range(2, 100000));
  bench_cmd->add_option("--micro-batches", bench.micro_batches, "Pipeline micro-batches (default: one per stage)")
      ->check(kNonNegative);
  bench_cmd
      ->add_option("--max-num-batched-tokens", bench.max_num_batched_tokens,
                   "Tokens per forward step, as for generate (larger batches prefill in chunks of it)")
      ->check(kPositive);
  bench_cmd->add_option("--kv-cache-dtype", bench.kv_cache_dtype, "KV-cache element type, as for generate")
      ->check(CLI::IsMember({"auto", "f16", "f32"}));
  add_sequence_parallel_flags(*bench_cmd, bench.sequence_parallel_tokens, bench.even_row_shares);
  bench_cmd->add_option("--repeats", bench.repeats, "Timed repetitions (best is reported)")->check(kPositive);
  bench_cmd->add_option("--memory-gib", bench.memory_gib, "Buffer size of the memory-bandwidth probe, GiB")
      ->check(CLI::Range(0.01, 64.0));

  std::vector<std::string> args = expand_short_flags(argc, argv);
  std::vector<char*> expanded;
  for (auto& a : args) expanded.push_back(a.data());
  CLI11_PARSE(app, int(expanded.size()), expanded.data());
  if (*generate) return run_generate(gen, argc, argv);
  if (*init_cmd) return run_init(init);
  if (*convert_cmd) {
    convert.dtype_given = convert_dtype->count() + convert_quantize->count() > 0;
    return run_convert(convert, argc, argv);
  }
  if (*tokenize_cmd) return run_tokenize(tokenize);
  if (*chat_cmd) return run_chat_template(chat);
  if (*topo_cmd) return run_topo(topo, argc, argv);
  if (*plan_cmd) return run_plan(plan, argc, argv);
  if (*inspect_cmd) return run_inspect(inspect);
  if (*bench_cmd) return run_bench(bench, argc, argv);
  return 2;
}

}  // namespace strata
