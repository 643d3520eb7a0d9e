// Prompt file parsing with file:line errors; unknown JSONL fields are refused (a typo must not be ignored).
#include "io/prompts.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <type_traits>

#include "runtime/base/error.h"

namespace strata {

PromptFormat parse_prompt_format(const std::string& name) {
  if (name == "auto") return PromptFormat::Auto;
  if (name == "text") return PromptFormat::Text;
  if (name == "jsonl") return PromptFormat::Jsonl;
  if (name == "openai") return PromptFormat::OpenAiBatch;
  throw Error(ErrorKind::Usage, cat("unknown prompt format '", name, "' (expected auto, text, jsonl or openai)"));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  STRATA_CHECK(in, Io, "cannot open ", path, ": ", std::strerror(errno));
  std::ostringstream content;
  content << in.rdbuf();
  STRATA_CHECK(!in.bad(), Io, "error reading ", path);
  return content.str();
}

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

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

template <typename T>
T field_as(const nlohmann::json& value, const char* key, const std::string& where, const char* expected) {
  // nlohmann converts 2.9 to 2 and -5 to 2^64 - 5: integers must be written as integers, seeds as non-negative ones.
  bool ok = true;
  if constexpr (std::is_same_v<T, bool>)
    ok = value.is_boolean();
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    ok = value.is_number_unsigned();
  else if constexpr (std::is_integral_v<T>)
    ok = value.is_number_integer();
  else if constexpr (std::is_floating_point_v<T>)
    ok = value.is_number();
  if (!ok)
    throw Error(ErrorKind::Usage, cat(where, ": field '", key, "' must be ", expected, " (got ", value.dump(), ")"));
  try {
    return value.get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorKind::Usage, cat(where, ": field '", key, "' must be ", expected, " (got ", value.dump(), ")"));
  }
}

// "stop": one string or a list of them.
std::vector<std::string> stop_strings(const nlohmann::json& value, const std::string& where) {
  if (value.is_string()) return {value.get<std::string>()};
  return field_as<std::vector<std::string>>(value, "stop", where, "a string or a list of strings");
}

// A chat's messages as written: parsed again keeping key order (the template may print a message or its keys).
nlohmann::ordered_json ordered_field(const std::string& line, std::initializer_list<const char*> path) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(line);
  for (const char* key : path) j = j.at(key);
  return j;
}

Prompt parse_jsonl_line(const std::string& line, const std::string& where, std::size_t index) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(ErrorKind::Usage, cat(where, ": not valid JSON (", e.what(), ")"));
  }
  STRATA_CHECK(j.is_object(), Usage, where, ": expected a JSON object like {\"prompt\": \"...\"}");
  Prompt p;
  p.origin = where;
  p.id = std::int64_t(index);
  bool has_prompt = false;
  for (const auto& [key, value] : j.items()) {
    if (key == "id") {
      STRATA_CHECK(value.is_string() || value.is_number_integer(), Usage, where, ": 'id' must be a string or integer");
      p.id = value;
    } else if (key == "prompt") {
      STRATA_CHECK(!has_prompt, Usage, where, ": give 'prompt' or 'messages', not both");
      p.text = field_as<std::string>(value, "prompt", where, "a string");
      has_prompt = true;
    } else if (key == "messages") {
      STRATA_CHECK(!has_prompt, Usage, where, ": give 'prompt' or 'messages', not both");
      STRATA_CHECK(value.is_array(), Usage, where, ": field 'messages' must be a list of {\"role\", \"content\"}");
      p.messages = ordered_field(line, {"messages"});
      has_prompt = true;
    } else if (key == "max_tokens") {
      p.overrides.max_tokens = field_as<std::int64_t>(value, "max_tokens", where, "an integer");
    } else if (key == "temperature") {
      p.overrides.temperature = field_as<double>(value, "temperature", where, "a number");
    } else if (key == "top_p") {
      p.overrides.top_p = field_as<double>(value, "top_p", where, "a number");
    } else if (key == "top_k") {
      p.overrides.top_k = field_as<std::int64_t>(value, "top_k", where, "an integer");
    } else if (key == "seed") {
      p.overrides.seed = field_as<std::uint64_t>(value, "seed", where, "a non-negative integer");
    } else if (key == "stop") {
      p.overrides.stop = stop_strings(value, where);
    } else if (key == "logprobs") {
      p.overrides.logprobs = field_as<bool>(value, "logprobs", where, "true or false");
    } else if (key == "n") {
      p.overrides.n = field_as<std::int64_t>(value, "n", where, "an integer");
    } else if (key == "top_logprobs") {
      p.overrides.top_logprobs = field_as<std::int64_t>(value, "top_logprobs", where, "an integer");
    } else {
      throw Error(ErrorKind::Usage, cat(where, ": unknown field '", key,
                                        "' (known: id, prompt, messages, max_tokens, temperature, top_p, top_k, "
                                        "seed, stop, logprobs, top_logprobs, n)"));
    }
  }
  STRATA_CHECK(has_prompt, Usage, where, ": missing field 'prompt' (or 'messages' for a chat)");
  return p;
}

// The body of one OpenAI batch request: the prompt and the options strata serves; anything else is an error for this
// request (Prompt::error), never a silently ignored option.
void read_openai_body(const nlohmann::json& body, Prompt& p, const std::string& line) {
  static const char* const kIgnored[] = {"model", "user", "stream"};  // one model per run; no streaming to a file
  for (const auto& [key, value] : body.items()) {
    if (std::find(std::begin(kIgnored), std::end(kIgnored), key) != std::end(kIgnored)) {
      if (key == "stream") STRATA_CHECK(value == false, Usage, "stream must be false in a batch");
      continue;
    }
    if (key == "prompt" && p.endpoint == "/v1/completions") {
      p.text = field_as<std::string>(value, "prompt", "body", "a string (lists of prompts: one request each)");
    } else if (key == "messages" && p.endpoint == "/v1/chat/completions") {
      STRATA_CHECK(value.is_array(), Usage, "'messages' must be a list of {\"role\", \"content\"}");
      p.messages = ordered_field(line, {"body", "messages"});
    } else if (key == "max_tokens" || key == "max_completion_tokens") {
      p.overrides.max_tokens = field_as<std::int64_t>(value, key.c_str(), "body", "an integer");
    } else if (key == "temperature") {
      p.overrides.temperature = field_as<double>(value, "temperature", "body", "a number");
    } else if (key == "top_p") {
      p.overrides.top_p = field_as<double>(value, "top_p", "body", "a number");
    } else if (key == "top_k") {
      p.overrides.top_k = field_as<std::int64_t>(value, "top_k", "body", "an integer");
    } else if (key == "seed") {
      p.overrides.seed = field_as<std::uint64_t>(value, "seed", "body", "a non-negative integer");
    } else if (key == "n") {
      p.overrides.n = field_as<std::int64_t>(value, "n", "body", "an integer");
    } else if (key == "stop") {
      if (!value.is_null()) p.overrides.stop = stop_strings(value, "body");
    } else if (key == "logprobs" && p.endpoint == "/v1/completions") {
      // The completions API: logprobs is the number of alternatives (0-5), null for none.
      if (!value.is_null()) {
        p.overrides.logprobs = true;
        p.overrides.top_logprobs = field_as<std::int64_t>(value, "logprobs", "body", "an integer or null");
      }
    } else if (key == "logprobs") {
      p.overrides.logprobs = field_as<bool>(value, "logprobs", "body", "true or false");
    } else if (key == "top_logprobs") {
      p.overrides.top_logprobs = field_as<std::int64_t>(value, "top_logprobs", "body", "an integer");
    } else {
      throw Error(ErrorKind::Usage, cat("body field '", key, "' is not supported for ", p.endpoint));
    }
  }
  STRATA_CHECK(p.endpoint != "/v1/completions" || body.contains("prompt"), Usage, "body has no 'prompt'");
  STRATA_CHECK(p.endpoint != "/v1/chat/completions" || body.contains("messages"), Usage, "body has no 'messages'");
}

Prompt parse_openai_line(const std::string& line, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(ErrorKind::Usage, cat(where, ": not valid JSON (", e.what(), ")"));
  }
  STRATA_CHECK(j.is_object() && j.contains("custom_id") && j["custom_id"].is_string(), Usage, where,
               ": an OpenAI batch request needs a string 'custom_id'");
  Prompt p;
  p.origin = where;
  p.format = PromptFormat::OpenAiBatch;
  p.id = j["custom_id"];
  p.endpoint = j.value("url", "");
  try {
    STRATA_CHECK(j.value("method", "") == "POST", Usage, "method must be POST");
    STRATA_CHECK(p.endpoint == "/v1/completions" || p.endpoint == "/v1/chat/completions", Usage, "url '", p.endpoint,
                 "' is not served (/v1/completions, /v1/chat/completions)");
    for (const auto& [key, value] : j.items())
      STRATA_CHECK(key == "custom_id" || key == "method" || key == "url" || key == "body", Usage, "unknown field '",
                   key, "'");
    STRATA_CHECK(j.contains("body") && j["body"].is_object(), Usage, "'body' must be an object");
    read_openai_body(j["body"], p, line);
  } catch (const Error& e) {
    p.error = e.what();
  }
  return p;
}

}  // namespace

PromptFormat resolve_prompt_format(PromptFormat format, const std::string& filename, const std::string& first_line) {
  if (format != PromptFormat::Auto) return format;
  format = ends_with(filename, ".jsonl") || ends_with(filename, ".json") ? PromptFormat::Jsonl : PromptFormat::Text;
  try {
    const nlohmann::json j = nlohmann::json::parse(first_line);
    if (j.is_object() && j.contains("custom_id") && j.contains("body")) format = PromptFormat::OpenAiBatch;
  } catch (const nlohmann::json::exception&) {
  }
  return format;
}

Prompt parse_prompt_line(const std::string& line, PromptFormat format, const std::string& filename,
                         std::size_t line_number, std::size_t index) {
  const std::string where = cat(filename, ":", line_number);
  if (format == PromptFormat::Text) {
    Prompt p;
    p.id = std::int64_t(index);
    p.text = line;
    p.origin = where;
    return p;
  }
  Prompt p =
      format == PromptFormat::OpenAiBatch ? parse_openai_line(line, where) : parse_jsonl_line(line, where, index);
  if (format == PromptFormat::Jsonl) p.format = PromptFormat::Jsonl;
  return p;
}

namespace {
// A line without its '\r\n' or '\n'; false for a blank one (not a prompt).
bool prompt_line(std::string& line) {
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line.find_first_not_of(" \t") != std::string::npos;
}
}  // namespace

std::vector<Prompt> parse_prompts(const std::string& content, const std::string& filename, PromptFormat format) {
  format = resolve_prompt_format(format, filename, content.substr(0, content.find('\n')));
  std::vector<Prompt> prompts;
  std::map<std::string, std::string> seen_ids;  // id -> where, to refuse duplicates
  std::size_t line_number = 0, start = 0;
  while (start < content.size()) {
    std::size_t end = content.find('\n', start);
    if (end == std::string::npos) end = content.size();
    std::string line = content.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (!prompt_line(line)) continue;
    Prompt p = parse_prompt_line(line, format, filename, line_number, prompts.size());
    if (format != PromptFormat::Text) {
      const std::string key = p.id.dump();
      auto [it, inserted] = seen_ids.emplace(key, p.origin);
      STRATA_CHECK(inserted, Usage, p.origin, ": ", format == PromptFormat::OpenAiBatch ? "custom_id " : "id ", key,
                   " was already used at ", it->second);
    }
    prompts.push_back(std::move(p));
  }
  STRATA_CHECK(!prompts.empty(), Usage, filename, ": no prompts found");
  return prompts;
}

PromptReader::PromptReader(const std::string& path, PromptFormat format) : in_(path, std::ios::binary), path_(path) {
  STRATA_CHECK(in_, Io, "cannot open ", path, ": ", std::strerror(errno));
  std::string first;
  std::getline(in_, first);
  format_ = resolve_prompt_format(format, path, first);
  in_.clear();
  in_.seekg(0);
}

bool PromptReader::next(Prompt& prompt, std::string& line, std::size_t& line_number) {
  while (std::getline(in_, line)) {
    ++line_number_;
    if (!prompt_line(line)) continue;
    line_number = line_number_;
    prompt = parse_prompt_line(line, format_, path_, line_number_, count_++);
    return true;
  }
  STRATA_CHECK(!in_.bad(), Io, "cannot read ", path_, " after line ", line_number_, ": ", std::strerror(errno));
  return false;
}

namespace {
std::uint64_t id_hash(const std::string& id) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : id) h = (h ^ c) * 1099511628211ull;
  return h;
}
}  // namespace

void DuplicateIds::add(const Prompt& prompt, std::size_t line_number, std::size_t index) {
  if (format_ != PromptFormat::Text) seen_.push_back(Seen{id_hash(prompt.id.dump()), line_number, index});
}

void DuplicateIds::check() {
  std::sort(seen_.begin(), seen_.end());
  // The repeat that comes first in the file: (first use, repeat) with the smallest repeat line.
  const Seen* first = nullptr;
  const Seen* repeat = nullptr;
  std::size_t run = 0;  // where the run of equal hashes holding entry i starts (its first, lowest line)
  for (std::size_t i = 1; i < seen_.size(); ++i) {
    if (seen_[i].hash != seen_[i - 1].hash) {
      run = i;
      continue;
    }
    if (!repeat || seen_[i].line < repeat->line) {
      first = &seen_[run];
      repeat = &seen_[i];
    }
  }
  if (!repeat) return;
  // Confirm on the lines themselves (a 64-bit hash collision is not a repeat).
  std::ifstream in(path_, std::ios::binary);
  std::string line, first_line, repeat_line;
  for (std::uint64_t n = 1; std::getline(in, line) && n <= repeat->line; ++n) {
    if (n == first->line) first_line = line;
    if (n == repeat->line) repeat_line = line;
  }
  prompt_line(first_line);
  prompt_line(repeat_line);
  const Prompt a = parse_prompt_line(first_line, format_, path_, first->line, first->index);
  const Prompt b = parse_prompt_line(repeat_line, format_, path_, repeat->line, repeat->index);
  STRATA_CHECK(a.id != b.id, Usage, b.origin, ": ", format_ == PromptFormat::OpenAiBatch ? "custom_id " : "id ",
               b.id.dump(), " was already used at ", a.origin);
}

}  // namespace strata
