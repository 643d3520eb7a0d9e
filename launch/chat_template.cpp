// `strata chat-template`: the prompt text each chat request becomes (what generate tokenizes), for checking a
// template and for the tests that compare strata's Jinja with python3-jinja2. No MPI: it runs as a plain process.
// Input: JSONL, {"messages": [...], optional "tools": [...]} per line; output: one JSON line per input, {"text": ...} or, when the request
// cannot be rendered, {"error": ..., "raised": true when the template called raise_exception}.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>

#include "launch/chat_template.h"

#include "io/checkpoint.h"
#include "io/prompts.h"
#include "launch/commands.h"
#include "launch/mpi_job.h"
#include "runtime/base/log.h"

namespace strata {

std::tm parse_now(const std::string& text) {
  std::time_t seconds = std::time(nullptr);
  std::tm tm{};
  if (text.empty()) {
    localtime_r(&seconds, &tm);
    return tm;
  }
  const char* end = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end || *end) {
    tm = {};
    end = strptime(text.c_str(), "%Y-%m-%d", &tm);
  }
  STRATA_CHECK(end && !*end, Usage, "--now '", text, "': expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS");
  tm.tm_isdst = -1;
  seconds = std::mktime(&tm);  // fills in the weekday and day of the year (%a, %j)
  localtime_r(&seconds, &tm);
  return tm;
}

ChatTemplate load_chat_template(const std::string& model_dir, const std::string& hf_dir, const std::string& file) {
  nlohmann::json tokenizer_config;
  std::optional<ChatTemplate> chat;
  if (!model_dir.empty()) {
    const Manifest manifest = Manifest::read(model_dir);
    tokenizer_config =
        manifest.source.is_object() ? manifest.source.value("tokenizer_config", nlohmann::json()) : nlohmann::json();
    if (file.empty()) chat = ChatTemplate::from_manifest_source(manifest.source, manifest_path(model_dir));
  } else if (!hf_dir.empty()) {
    tokenizer_config = tokenizer_config_from_hf(hf_dir);
    if (file.empty() && tokenizer_config.is_object() && tokenizer_config.contains("chat_template"))
      chat.emplace(tokenizer_config["chat_template"].get<std::string>(), cat(hf_dir, "'s chat template"),
                   tokenizer_config);
  }
  if (!file.empty()) return ChatTemplate(read_file(file), file, tokenizer_config);
  STRATA_CHECK(chat, Usage, model_dir.empty() ? hf_dir : model_dir,
               " has no chat template (tokenizer_config.json had no chat_template); pass --chat-template FILE");
  return std::move(*chat);
}

namespace {

std::string read_input(const std::string& input) {
  if (input != "-") return read_file(input);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

nlohmann::ordered_json render_line(const ChatTemplate& chat, const std::string& line, const std::string& where,
                                   const std::tm& now) {
  nlohmann::ordered_json request;
  try {
    request = nlohmann::ordered_json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Usage, cat(where, ": not valid JSON (", e.what(), ")"));
  }
  STRATA_CHECK(request.is_object() && request.contains("messages"), Usage, where, ": expected {\"messages\": [...]}");
  try {
    return {{"text", chat.render(request["messages"], now, request.value("tools", nlohmann::ordered_json()))}};
  } catch (const jinja::RenderError& e) {
    return {{"error", e.what()}, {"raised", e.raised()}};
  } catch (const Error& e) {
    return {{"error", e.what()}, {"raised", false}};
  }
}

int chat_template(const ChatTemplateOptions& o) {
  const ChatTemplate chat = load_chat_template(o.model, o.hf, o.chat_template);
  const std::tm now = parse_now(o.now);
  const std::string content = read_input(o.input);
  const std::string origin = o.input == "-" ? "<stdin>" : o.input;
  std::size_t at = 0, line_number = 0;
  while (at < content.size()) {
    std::size_t end = content.find('\n', at);
    if (end == std::string::npos) end = content.size();
    const std::string line = content.substr(at, end - at);
    at = end + 1;
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::printf("%s\n", render_line(chat, line, cat(origin, ":", line_number), now)
                            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                            .c_str());
  }
  return 0;
}

}  // namespace

int run_chat_template(const ChatTemplateOptions& o) {
  try {
    return chat_template(o);
  } catch (const std::exception& e) {
    log_line(LogLevel::Error, describe_error(e));
    return 1;
  }
}

}  // namespace strata
