// A small llama.cpp driver, as llama-bench does it, for side-by-side figures with `strata bench`: loads a GGUF file
// with the prebuilt CPU libllama of npm's @node-llama-cpp/linux-x64 (scripts/llamacpp/bench.sh builds it against
// that release's headers), then times a prefill of PROMPT tokens and GEN greedy decode steps at batch 1, best of
// REPEATS. With --parallel B, B sequences at once (llama.cpp's batched decoding, as its `batched-bench` and
// `llama-parallel` run it: the B prompts in one batch, then one token of every sequence per decode call), timed the
// way `strata bench --batch-sizes B` is. With --logits IDS (comma-separated token ids), prints the logits of those
// ids' last position as JSON instead: a reference for strata's own logits on the same file.
//   driver MODEL.gguf PROMPT GEN THREADS REPEATS [--parallel B | --logits IDS]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s MODEL.gguf PROMPT GEN THREADS REPEATS [--logits]\n", argv[0]);
    return 2;
  }
  const int prompt = std::atoi(argv[2]), gen = std::atoi(argv[3]), threads = std::atoi(argv[4]),
            repeats = std::atoi(argv[5]);
  const bool logits = argc > 7 && std::strcmp(argv[6], "--logits") == 0;
  const int parallel = argc > 7 && std::strcmp(argv[6], "--parallel") == 0 ? std::atoi(argv[7]) : 1;
  if (const char* dir = std::getenv("LLAMACPP_BACKENDS")) ggml_backend_load_all_from_path(dir);
  llama_backend_init();
  llama_log_set(
      [](ggml_log_level level, const char* text, void*) {
        if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
      },
      nullptr);
  llama_model_params mparams = llama_model_default_params();
  llama_model* model = llama_model_load_from_file(argv[1], mparams);
  if (!model) {
    std::fprintf(stderr, "llama.cpp could not load %s\n", argv[1]);
    return 1;
  }
  llama_context_params cparams = llama_context_default_params();
  cparams.n_ctx = std::uint32_t(parallel * (prompt + gen + 16) + 512);
  cparams.n_batch = std::uint32_t(std::max(parallel * prompt, 512));
  cparams.n_ubatch = std::uint32_t(std::max(prompt, 512));
  cparams.n_seq_max = std::uint32_t(parallel);
  // A cache per sequence: llama.cpp's faster setting for sequences that share no prefix (a unified cache makes every
  // token's attention span all sequences' positions, masked, and halved its decode rate at 64 sequences here).
  cparams.kv_unified = false;
  cparams.n_threads = cparams.n_threads_batch = threads;
  if (logits) {  // an exact reference: no f16 KV cache, no flash attention (f16 inside)
    cparams.type_k = cparams.type_v = GGML_TYPE_F32;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  }
  llama_context* ctx = llama_init_from_model(model, cparams);
  const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  std::vector<llama_token> tokens(static_cast<std::size_t>(prompt));
  for (int i = 0; i < prompt; ++i) tokens[std::size_t(i)] = llama_token((i * 37 + 11) % (vocab - 300) + 300);
  if (logits) {
    tokens.clear();
    for (const char* p = argv[7]; *p;) {
      char* end = nullptr;
      tokens.push_back(llama_token(std::strtol(p, &end, 10)));
      p = *end == ',' ? end + 1 : end;
    }
  }
  double best_prefill = 1e30, best_decode = 1e30;
  if (parallel > 1) {
    llama_batch batch = llama_batch_init(parallel * prompt, 0, 1);
    std::vector<llama_token> next(static_cast<std::size_t>(parallel));
    auto add = [&](llama_token token, int pos, int seq, bool want_logits) {
      batch.token[batch.n_tokens] = token;
      batch.pos[batch.n_tokens] = pos;
      batch.n_seq_id[batch.n_tokens] = 1;
      batch.seq_id[batch.n_tokens][0] = seq;
      batch.logits[batch.n_tokens] = want_logits;
      ++batch.n_tokens;
    };
    auto sample_all = [&]() {
      for (int s = 0; s < parallel; ++s) {
        const float* row = llama_get_logits_ith(ctx, batch.n_tokens - parallel + s);
        next[std::size_t(s)] = llama_token(std::max_element(row, row + vocab) - row);
      }
    };
    for (int r = 0; r < repeats; ++r) {
      llama_memory_clear(llama_get_memory(ctx), true);
      const double t0 = now();
      batch.n_tokens = 0;
      // Sequence s's prompt (rotated, so the sequences differ), with logits at its last position only.
      for (int s = 0; s < parallel; ++s)
        for (int i = 0; i < prompt; ++i) add(tokens[std::size_t((i + s) % prompt)], i, s, false);
      for (int s = 0; s < parallel; ++s) batch.logits[(s + 1) * prompt - 1] = true;
      if (llama_decode(ctx, batch) != 0) return 1;
      for (int s = 0; s < parallel; ++s) {
        const float* row = llama_get_logits_ith(ctx, (s + 1) * prompt - 1);
        next[std::size_t(s)] = llama_token(std::max_element(row, row + vocab) - row);
      }
      const double t1 = now();
      for (int g = 0; g < gen - 1; ++g) {
        batch.n_tokens = 0;
        for (int s = 0; s < parallel; ++s) add(next[std::size_t(s)], prompt + g, s, true);
        if (llama_decode(ctx, batch) != 0) return 1;
        sample_all();
      }
      const double t2 = now();
      best_prefill = std::min(best_prefill, t1 - t0);
      best_decode = std::min(best_decode, t2 - t1);
    }
    llama_batch_free(batch);
    std::printf(
        "llama.cpp: prefill %d x %d tokens %.1f tok/s, decode %.2f tok/s (%d parallel sequences, %d threads, "
        "best of %d)\n",
        parallel, prompt, parallel * prompt / best_prefill, parallel * (gen - 1) / best_decode, parallel, threads,
        repeats);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
  }
  for (int r = 0; r < repeats; ++r) {
    llama_memory_clear(llama_get_memory(ctx), true);
    const double t0 = now();
    if (llama_decode(ctx, llama_batch_get_one(tokens.data(), std::int32_t(tokens.size()))) != 0) return 1;
    const float* out = llama_get_logits_ith(ctx, -1);
    const double t1 = now();
    if (logits) {
      std::printf("[");
      for (int v = 0; v < vocab; ++v) std::printf(v ? ",%.9g" : "%.9g", double(out[v]));
      std::printf("]\n");
      return 0;
    }
    llama_token next = llama_token(std::max_element(out, out + vocab) - out);
    for (int g = 0; g < gen - 1; ++g) {
      if (llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) return 1;
      const float* step = llama_get_logits_ith(ctx, -1);
      next = llama_token(std::max_element(step, step + vocab) - step);
    }
    const double t2 = now();
    best_prefill = std::min(best_prefill, t1 - t0);
    best_decode = std::min(best_decode, t2 - t1);
  }
  std::printf("llama.cpp: prefill %d tokens %.1f tok/s, decode %.2f tok/s (batch 1, %d threads, best of %d)\n", prompt,
              prompt / best_prefill, (gen - 1) / best_decode, threads, repeats);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
