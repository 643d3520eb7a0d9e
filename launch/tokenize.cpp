// `strata tokenize`: text (plain lines or JSONL prompts) to token ids, one JSON line per input, for checking prompt
// lengths and for tests; --bench measures encoding throughput instead. No MPI: it runs as a plain process.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>

#include "io/chat_template.h"
#include "io/checkpoint.h"
#include "io/hf_tokenizer.h"
#include "io/prompts.h"
#include "launch/commands.h"
#include "launch/mpi_job.h"
#include "runtime/base/error.h"
#include "runtime/base/log.h"

namespace strata {
namespace {

// A checkpoint directory (its manifest's tokenizer) or a tokenizer.json file, with the generation_config.json and
// tokenizer_config.json beside it when the folder has them (as Hugging Face reads a model folder: the EOS of a file
// whose generation_config names none is tokenizer_config's eos_token).
std::unique_ptr<Tokenizer> open_tokenizer(const std::string& path) {
  if (std::filesystem::is_directory(path)) {
    const Manifest manifest = Manifest::read(path);
    return make_tokenizer_of(manifest.tokenizer, manifest.source, manifest_path(path));
  }
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string folder = parent.empty() ? "." : parent.string();
  return HfTokenizer::from_file(path, generation_config_from_hf(folder), tokenizer_config_from_hf(folder));
}

std::string read_input(const std::string& input) {
  if (input != "-") return read_file(input);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

// Encodes every input text in turn: once from a fresh tokenizer ("cold": every word goes through BPE), then
// repeatedly for about `seconds` ("warm": words come from the cache, as in long serving); prints MB/s and tokens/s.
int bench(const Tokenizer& tokenizer, const std::vector<std::string>& texts, double seconds) {
  using clock = std::chrono::steady_clock;
  std::size_t bytes = 0, tokens = 0;
  const auto cold_start = clock::now();
  for (const auto& text : texts) {
    bytes += text.size();
    tokens += tokenizer.encode(text, false).size();
  }
  const double cold = std::chrono::duration<double>(clock::now() - cold_start).count();
  std::int64_t rounds = 0;
  const auto start = clock::now();
  double elapsed = 0;
  while (elapsed < seconds || rounds == 0) {
    for (const auto& text : texts) tokenizer.encode(text, false);
    ++rounds;
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
  }
  std::printf(
      "{\"texts\": %zu, \"bytes\": %zu, \"tokens\": %zu, \"cold_MB_per_s\": %.2f, \"rounds\": %lld, "
      "\"seconds\": %.3f, \"MB_per_s\": %.2f, \"tokens_per_s\": %.0f}\n",
      texts.size(), bytes, tokens, double(bytes) / cold / 1e6, static_cast<long long>(rounds), elapsed,
      double(bytes) * double(rounds) / elapsed / 1e6, double(tokens) * double(rounds) / elapsed);
  return 0;
}

int tokenize(const TokenizeOptions& o) {
  const std::unique_ptr<Tokenizer> tokenizer = open_tokenizer(o.tokenizer);
  const std::string content = read_input(o.input);
  const std::string origin = o.input == "-" ? "<stdin>" : o.input;
  std::vector<std::string> texts;
  if (o.jsonl) {
    for (const auto& p : parse_prompts(content, origin, PromptFormat::Jsonl)) {
      STRATA_CHECK(!p.messages, Usage, p.origin,
                   ": a chat ('messages'): render it with strata chat-template first, then tokenize its text");
      texts.push_back(p.text);
    }
  } else {  // every line is an input, empty lines included (an empty text has zero ids)
    std::size_t at = 0;
    while (at < content.size()) {
      std::size_t end = content.find('\n', at);
      if (end == std::string::npos) end = content.size();
      std::string line = content.substr(at, end - at);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      texts.push_back(std::move(line));
      at = end + 1;
    }
  }
  if (o.bench_seconds > 0) return bench(*tokenizer, texts, o.bench_seconds);
  std::int64_t total = 0;
  for (const auto& text : texts) {
    const std::vector<std::int32_t> ids = tokenizer->encode(text, o.add_bos);
    total += std::int64_t(ids.size());
    nlohmann::json line = {{"ids", ids}, {"count", ids.size()}};
    if (o.decode) line["text"] = tokenizer->decode(ids);
    std::printf("%s\n", line.dump().c_str());
  }
  std::fflush(stdout);  // the summary after the ids, also when both go to one pipe
  std::fprintf(stderr, "[strata] %zu inputs, %lld tokens\n", texts.size(), static_cast<long long>(total));
  return 0;
}

}  // namespace

int run_tokenize(const TokenizeOptions& o) {
  try {
    return tokenize(o);
  } catch (const std::exception& e) {
    log_line(LogLevel::Error, describe_error(e));
    return 1;
  }
}

}  // namespace strata
