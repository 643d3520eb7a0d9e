// Chat requests to prompt text: the model's chat template (Jinja, io/jinja.h) rendered over the messages as
// transformers' apply_chat_template(messages, add_generation_prompt=True) renders it: the variables are messages,
// tools and documents (None), add_generation_prompt (True) and the tokenizer's special tokens (bos_token,
// eos_token, ... from tokenizer_config.json). The text already holds the template's BOS, so it is tokenized without
// adding one (as transformers and vLLM do).
#pragma once
#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "io/jinja.h"

namespace strata {

// What `strata convert` keeps of a Hugging Face folder's tokenizer_config.json (and chat_template.jinja, which
// transformers prefers when both exist), stored in the manifest as source.tokenizer_config:
// {"chat_template": "...", "bos_token": "<s>", "eos_token": "</s>", ..., "additional_special_tokens": [...]}, special
// tokens as strings (the file may write them as {"content": ...} objects). The chat template is the "default" one
// when the file lists named templates; absent when the model has none. Null when the folder has neither file.
// Errors name the file.
nlohmann::json tokenizer_config_from_hf(const std::string& hf_dir);

// A Hugging Face folder's generation_config.json as written (its eos_token_id list ends generation); null when the
// folder has none. Errors name the file.
nlohmann::json generation_config_from_hf(const std::string& hf_dir);

class ChatTemplate {
 public:
  // `source` is Jinja; `name` names it in errors (a file, or "the checkpoint's chat template");
  // `tokenizer_config` (the stored subset above, or null) gives the special-token variables.
  ChatTemplate(const std::string& source, const std::string& name, const nlohmann::json& tokenizer_config);

  // The checkpoint's template (manifest source.tokenizer_config), or nullopt when it has none.
  static std::optional<ChatTemplate> from_manifest_source(const nlohmann::json& source, const std::string& where);

  // The prompt for `messages` (OpenAI's layout: [{"role": ..., "content": ...}, ...]; content a string, null, or a
  // list of {"type": "text", "text": ...} parts, joined with "\n" as vLLM joins them). `now` is strftime_now's time.
  // `tools` (JSON schemas, or null) is the template's `tools`, as apply_chat_template(tools=...) passes it.
  // Throws Error(Usage) for malformed messages and jinja::RenderError when the template fails or raises.
  std::string render(const nlohmann::ordered_json& messages, const std::tm& now,
                     const nlohmann::ordered_json& tools = nullptr) const;
  const std::string& name() const { return template_->name(); }

 private:
  std::shared_ptr<const jinja::Template> template_;  // shared: copies of a ChatTemplate render the same parse
  nlohmann::ordered_json special_tokens_;
};

}  // namespace strata
