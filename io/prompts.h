// Prompt files: plain text (one prompt per line; blank lines skipped), JSONL ({"id", "prompt" or "messages" (a chat),
// optional sampling fields, logprobs, top_logprobs, n}), or OpenAI Batch API input ({"custom_id", "method": "POST",
// "url", "body"}). Chat messages are kept as written (key order too); generate renders them with the chat template.
// Errors name the file and line. Per-prompt fields override the command line. In an OpenAI batch file a request
// whose body cannot be served becomes an error for that custom_id (Prompt::error) and the job goes on; a line
// that is not JSON, has no custom_id or repeats one stops the job, naming the line.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata {

struct SamplingOverrides {
  std::optional<std::int64_t> max_tokens;
  std::optional<double> temperature, top_p;
  std::optional<std::int64_t> top_k;
  std::optional<std::uint64_t> seed;
  std::optional<std::vector<std::string>> stop;
  std::optional<bool> logprobs;              // log-probability of each generated token
  std::optional<std::int64_t> top_logprobs;  // and of this many most likely alternatives (implies logprobs)
  std::optional<std::int64_t> n;             // completions of the prompt (sharing its computation)
};

enum class PromptFormat { Auto, Text, Jsonl, OpenAiBatch };
PromptFormat parse_prompt_format(const std::string& name);  // "auto" | "text" | "jsonl" | "openai"

struct Prompt {
  nlohmann::json id;  // as given in JSONL (string or number); for text files the 0-based prompt index
  std::string text;   // the prompt; for a chat, the rendered messages (filled in by generate)
  std::optional<nlohmann::ordered_json> messages;  // a chat request: OpenAI's messages list, to render
  SamplingOverrides overrides;
  std::string origin;  // "prompts.jsonl:7", for messages
  PromptFormat format = PromptFormat::Text;
  std::string endpoint;  // OpenAI batch: "/v1/completions" or "/v1/chat/completions"
  std::string error;     // OpenAI batch: why this request cannot be served ("" when it can)
};

// Parses `content` read from `filename`. Auto: an OpenAI batch file when its first line has "custom_id" and "body";
// JSONL when the name ends in .jsonl or .json; text otherwise.
std::vector<Prompt> parse_prompts(const std::string& content, const std::string& filename, PromptFormat format);
std::string read_file(const std::string& path);  // whole file; throws naming the path

// Prompts [first, last) of part "K/N" of `total`: N contiguous parts as equal as possible (the first ones one
// longer); "" is the whole range. Error(Usage) for anything but K/N with 0 <= K < N.
std::pair<std::size_t, std::size_t> part_range(const std::string& part, std::size_t total);

}  // namespace strata
