// Prompt files: plain text (one prompt per line; blank lines skipped) or JSONL ({"id", "prompt", optional sampling
// fields, logprobs, top_logprobs}). Errors name the file and line. Per-prompt fields override the command line.
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
  std::optional<bool> logprobs;             // log-probability of each generated token
  std::optional<std::int64_t> top_logprobs;  // and of this many most likely alternatives (implies logprobs)
  std::optional<std::int64_t> n;             // completions of the prompt (sharing its computation)
};

struct Prompt {
  nlohmann::json id;  // as given in JSONL (string or number); for text files the 0-based prompt index
  std::string text;
  SamplingOverrides overrides;
  std::string origin;  // "prompts.jsonl:7", for messages
};

enum class PromptFormat { Auto, Text, Jsonl };
PromptFormat parse_prompt_format(const std::string& name);  // "auto" | "text" | "jsonl"

// Parses `content` read from `filename`. Auto: JSONL when the name ends in .jsonl or .json, text otherwise.
std::vector<Prompt> parse_prompts(const std::string& content, const std::string& filename, PromptFormat format);
std::string read_file(const std::string& path);  // whole file; throws naming the path

// Prompts [first, last) of part "K/N" of `total`: N contiguous parts as equal as possible (the first ones one
// longer); "" is the whole range. Error(Usage) for anything but K/N with 0 <= K < N.
std::pair<std::size_t, std::size_t> part_range(const std::string& part, std::size_t total);

}  // namespace strata
