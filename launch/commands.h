// The strata subcommands and their options (parsed in cli.cpp with CLI11, vLLM-style flag names).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "plan/run_plan.h"

namespace strata {

struct ParallelOptions {
  int tp = 1, pp = 1, dp = 0;  // 0: auto (placement chooses; dp: world size / (tp * pp))
  int ep = 1;                  // expert-parallel size inside each tensor-parallel group
  std::string quantize;        // "q8_0" / "q4_0": matrix weights quantized on load (CPU); empty: as stored
  std::string device = "cpu";
  std::string topology;       // a cluster description instead of detection
  bool force = false;         // run a layout the placement refuses
  double nccl_timeout = 300;  // --device cuda, tp > 1: seconds an NCCL wait may take before the job is aborted
  int gpu_reserve_mib =
      -1;  // --device cuda: MiB kept free for NCCL and CUDA graphs; -1: the defaults (plan/memory_plan.cpp)
  // How a CPU rank holds its weights (Session::load): --mmap in place from the page cache, --no-mmap copied into the
  // rank's own memory; neither: Session::weights_mapped decides (copied where that gives huge pages).
  bool mmap = false, no_mmap = false;
};

struct GenerateOptions {
  std::string model, prompts, output = "-", prompt_format = "auto", progress = "auto";
  std::string part;           // "K/N": only contiguous part K of N of the prompts (job arrays); "": all
  std::string metrics;        // a JSON summary of the run written here at the end; "": none
  std::string chat_template;  // a Jinja file rendering chat requests instead of the checkpoint's template
  ParallelOptions parallel;
  std::int64_t max_tokens = 64;
  double temperature = 0.0, top_p = 1.0;
  std::int64_t top_k = 0;
  std::uint64_t seed = 0;
  std::vector<std::string> stop;
  bool logprobs = false;  // each generated token's log-probability
  int top_logprobs = -1;  // and of this many alternatives (0-20; implies logprobs); -1: not given
  int n = 1;              // completions per prompt, sharing the prompt's computation
  RunLimits limits;
  // Seconds a rank may wait without progress before the job is aborted; "auto" (derived from the step times, see
  // runtime/base/watchdog.h), or a number of seconds, 0 = never.
  std::string step_timeout = "auto";
  bool overwrite = false, resume = false, record_logits = false, quiet = false;
  bool static_dp = false;  // prompt i to replica i % dp, fixed in advance (for comparison with the dynamic queue)
};

struct InitOptionsCli {
  std::string preset = "tiny", output, dtype = "f32";
  int tp = 1, pp = 1;
  std::uint64_t seed = 0;
  // Overrides of the preset's shape (0 / -1: keep the preset's).
  std::int64_t hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0, num_attention_heads = 0,
               num_key_value_heads = 0, vocab_size = 0, max_position_embeddings = 0;
  int tie_word_embeddings = -1, attention_bias = -1, qk_norm = -1;
};

struct InspectOptions {
  std::string model;
  bool verify = false, json = false;
};

struct BenchOptions {
  std::string model;
  ParallelOptions parallel;
  std::vector<int> batch_sizes{1, 16};
  int prompt_len = 128, gen_len = 32, repeats = 2, micro_batches = 0;
  int max_num_batched_tokens = 2048;    // tokens per step, as generate's default: prompts prefill in chunks of it
  std::string kv_cache_dtype = "auto";  // --kv-cache-dtype, as for generate
  int sequence_parallel_tokens = RunLimits{}.sequence_parallel_tokens;  // --sequence-parallel-tokens, as for generate
  bool even_row_shares = false;                                         // --even-row-shares, as for generate
  double memory_gib = 1.0;                                              // buffer size of the bandwidth probe
};

struct ConvertOptions {
  std::string hf, gguf, output, dtype = "bf16", tokenizer = "auto";
  bool dtype_given = false;  // --dtype or --quantize named (a GGUF is otherwise stored as its matrices are)
  int tp = 1, pp = 1;
};

struct TopoOptions {
  std::string topology;  // a description file instead of detection
  bool json = false;
};

int run_topo(const TopoOptions& options, int argc, char** argv);

struct PlanOptions {
  std::string model;
  ParallelOptions parallel;
  RunLimits limits;
};
int run_plan(const PlanOptions& options, int argc, char** argv);
int run_convert(const ConvertOptions& options, int argc, char** argv);

struct TokenizeOptions {
  std::string tokenizer, input = "-";
  bool jsonl = false, add_bos = false, decode = false;
  double bench_seconds = 0;  // > 0: measure encoding throughput of the whole input instead
};
int run_tokenize(const TokenizeOptions& options);

struct ChatTemplateOptions {
  std::string model, hf, chat_template, input = "-", now;
};
int run_chat_template(const ChatTemplateOptions& options);
int run_generate(const GenerateOptions& options, int argc, char** argv);
int run_init(const InitOptionsCli& options);
int run_inspect(const InspectOptions& options);
int run_bench(const BenchOptions& options, int argc, char** argv);

}  // namespace strata
