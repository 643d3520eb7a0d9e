// See chat_template.h.
#include "io/chat_template.h"

#include <filesystem>

#include "io/prompts.h"
#include "runtime/base/error.h"

namespace strata {
namespace {
namespace fs = std::filesystem;

// transformers' SPECIAL_TOKENS_ATTRIBUTES: what apply_chat_template passes to the template when set.
const char* const kSpecialTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                      "pad_token", "cls_token", "mask_token"};

// A special token as tokenizer_config.json writes it: "<s>", or {"content": "<s>", ...} (an AddedToken).
std::optional<std::string> token_text(const nlohmann::json& value, const std::string& where) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return value.get<std::string>();
  STRATA_CHECK(value.is_object() && value.contains("content") && value["content"].is_string(), Config, where,
               ": expected a string or {\"content\": ...}, got ", value.dump());
  return value["content"].get<std::string>();
}

std::string chat_template_of(const nlohmann::json& config, const std::string& where) {
  const nlohmann::json& t = config["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  STRATA_CHECK(t.is_array(), Config, where, ": chat_template must be a string or a list of named templates");
  std::string names;
  for (const auto& named : t) {
    STRATA_CHECK(named.is_object() && named.value("name", nlohmann::json()).is_string() &&
                     named.value("template", nlohmann::json()).is_string(),
                 Config, where, ": each named chat template needs string 'name' and 'template'");
    if (named["name"] == "default") return named["template"].get<std::string>();
    names += (names.empty() ? "" : ", ") + named["name"].get<std::string>();
  }
  throw Error(ErrorKind::Config, cat(where, ": chat_template names templates (", names,
                                     ") but none 'default', the one a chat request uses; write the one to use to "
                                     "chat_template.jinja beside it"));
}

}  // namespace

nlohmann::json generation_config_from_hf(const std::string& hf_dir) {
  const fs::path path = fs::path(hf_dir) / "generation_config.json";
  if (!fs::exists(path)) return nullptr;
  try {
    return nlohmann::json::parse(read_file(path.string()));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Config, cat(path.string(), ": not valid JSON (", e.what(), ")"));
  }
}

nlohmann::json tokenizer_config_from_hf(const std::string& hf_dir) {
  const fs::path config_path = fs::path(hf_dir) / "tokenizer_config.json";
  const fs::path jinja_path = fs::path(hf_dir) / "chat_template.jinja";
  if (!fs::exists(config_path) && !fs::exists(jinja_path)) return nullptr;
  nlohmann::json config = nlohmann::json::object(), kept = nlohmann::json::object();
  const std::string where = config_path.string();
  if (fs::exists(config_path)) {
    try {
      config = nlohmann::json::parse(read_file(where));
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::Config, cat(where, ": not valid JSON (", e.what(), ")"));
    }
    STRATA_CHECK(config.is_object(), Config, where, ": expected a JSON object");
  }
  if (fs::exists(jinja_path))
    kept["chat_template"] = read_file(jinja_path.string());
  else if (config.contains("chat_template") && !config["chat_template"].is_null())
    kept["chat_template"] = chat_template_of(config, where);
  for (const char* key : kSpecialTokens)
    if (config.contains(key))
      if (auto text = token_text(config[key], cat(where, ": ", key))) kept[key] = *text;
  if (config.contains("additional_special_tokens") && config["additional_special_tokens"].is_array()) {
    nlohmann::json extra = nlohmann::json::array();
    for (const auto& token : config["additional_special_tokens"])
      if (auto text = token_text(token, cat(where, ": additional_special_tokens"))) extra.push_back(*text);
    kept["additional_special_tokens"] = extra;
  }
  return kept;
}

ChatTemplate::ChatTemplate(const std::string& source, const std::string& name, const nlohmann::json& tokenizer_config)
    : template_(std::make_shared<const jinja::Template>(source, name)),
      special_tokens_(nlohmann::ordered_json::object()) {
  if (!tokenizer_config.is_object()) return;
  for (const char* key : kSpecialTokens)
    if (tokenizer_config.contains(key)) special_tokens_[key] = tokenizer_config[key];
  if (tokenizer_config.contains("additional_special_tokens"))
    special_tokens_["additional_special_tokens"] = tokenizer_config["additional_special_tokens"];
}

std::optional<ChatTemplate> ChatTemplate::from_manifest_source(const nlohmann::json& source, const std::string& where) {
  if (!source.is_object() || !source.contains("tokenizer_config")) return std::nullopt;
  const nlohmann::json& config = source["tokenizer_config"];
  if (!config.is_object() || !config.contains("chat_template")) return std::nullopt;
  STRATA_CHECK(config["chat_template"].is_string(), Checkpoint, where,
               ": tokenizer_config.chat_template is not a string");
  return ChatTemplate(config["chat_template"].get<std::string>(),
                      cat("the chat template of ", where, " (tokenizer_config.json's chat_template)"), config);
}

namespace {

// A message's content as the template sees it: text parts joined with "\n" (vLLM's flattening for templates that
// expect a string); any other part is refused, since strata serves text only.
nlohmann::ordered_json flat_content(const nlohmann::ordered_json& content, std::size_t index) {
  if (!content.is_array()) return content;
  std::string text;
  for (std::size_t k = 0; k < content.size(); ++k) {
    const auto& part = content[k];
    STRATA_CHECK(part.is_object() && part.contains("type") && part["type"].is_string(), Usage, "messages[", index,
                 "].content[", k, "] is not a {\"type\": ...} part");
    const std::string type = part["type"].get<std::string>();
    STRATA_CHECK(type == "text", Usage, "messages[", index, "].content[", k, "] is a '", type,
                 "' part; strata serves text only");
    STRATA_CHECK(part.contains("text") && part["text"].is_string(), Usage, "messages[", index, "].content[", k,
                 "] has no string 'text'");
    text += (k ? "\n" : "") + part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, const std::tm& now,
                                 const nlohmann::ordered_json& tools) const {
  STRATA_CHECK(messages.is_array() && !messages.empty(), Usage, "'messages' must be a non-empty list");
  nlohmann::ordered_json flat = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    STRATA_CHECK(m.is_object() && m.contains("role") && m["role"].is_string(), Usage, "messages[", i,
                 "] needs a string 'role'");
    STRATA_CHECK(
        !m.contains("content") || m["content"].is_string() || m["content"].is_null() || m["content"].is_array(), Usage,
        "messages[", i, "].content must be a string, null or a list of text parts");
    nlohmann::ordered_json message = m;
    if (m.contains("content")) message["content"] = flat_content(m["content"], i);
    flat.push_back(std::move(message));
  }
  nlohmann::ordered_json variables = {
      {"messages", std::move(flat)}, {"tools", tools}, {"documents", nullptr}, {"add_generation_prompt", true}};
  for (const auto& [key, value] : special_tokens_.items()) variables[key] = value;
  return template_->render(variables, now);
}

}  // namespace strata
