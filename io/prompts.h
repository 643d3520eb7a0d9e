// Prompt files: plain text (one prompt per line; blank lines skipped), JSONL ({"id", "prompt" or "messages" (a chat),
// optional sampling fields, logprobs, top_logprobs, n}), or OpenAI Batch API input ({"custom_id", "method": "POST",
// "url", "body"}). Chat messages are kept as written (key order too); generate renders them with the chat template.
// Errors name the file and line. Per-prompt fields override the command line. In an OpenAI batch file a request
// whose body cannot be served becomes an error for that custom_id (Prompt::error) and the job goes on; a line
// that is not JSON, has no custom_id or repeats one stops the job, naming the line.
#pragma once
#include <cstdint>
#include <fstream>
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

// The format Auto stands for, given the file's name and its first line.
PromptFormat resolve_prompt_format(PromptFormat format, const std::string& filename, const std::string& first_line);

// The prompt on line `line_number` of `filename` (a non-blank line; `index`: its position among the file's prompts,
// the id of a text prompt). Duplicate ids are not checked here (see DuplicateIds).
Prompt parse_prompt_line(const std::string& line, PromptFormat format, const std::string& filename,
                         std::size_t line_number, std::size_t index);

// Reads a prompt file one prompt at a time, in constant memory: the prompts parse_prompts would give, in order.
class PromptReader {
 public:
  PromptReader(const std::string& path, PromptFormat format);  // Auto is resolved from the name and first line
  PromptFormat format() const { return format_; }
  // The next prompt, its line and line number; false at the end of the file.
  bool next(Prompt& prompt, std::string& line, std::size_t& line_number);
  std::size_t prompts_read() const { return count_; }

 private:
  std::ifstream in_;
  std::string path_;
  PromptFormat format_;
  std::size_t line_number_ = 0, count_ = 0;
};

// Refuses a prompt file whose ids (JSONL "id", OpenAI "custom_id") repeat, naming both lines. Keeps 24 bytes per
// prompt (a 64-bit hash of the id, its line and index); equal hashes are confirmed by reading the two lines again.
class DuplicateIds {
 public:
  DuplicateIds(std::string path, PromptFormat format) : path_(std::move(path)), format_(format) {}
  void add(const Prompt& prompt, std::size_t line_number, std::size_t index);
  void check();  // after the last add: Error(Usage) naming the first repeated id

 private:
  std::string path_;
  PromptFormat format_;
  struct Seen {
    std::uint64_t hash, line, index;
    bool operator<(const Seen& o) const { return hash != o.hash ? hash < o.hash : line < o.line; }
  };
  std::vector<Seen> seen_;
};
std::string read_file(const std::string& path);  // whole file; throws naming the path

// Prompts [first, last) of part "K/N" of `total`: N contiguous parts as equal as possible (the first ones one
// longer); "" is the whole range. Error(Usage) for anything but K/N with 0 <= K < N.
std::pair<std::size_t, std::size_t> part_range(const std::string& part, std::size_t total);

}  // namespace strata
