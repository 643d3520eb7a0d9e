// Choosing and configuring the chat template of a run (generate, chat-template): the checkpoint's, or a file's.
#pragma once
#include <ctime>
#include <string>

#include "io/chat_template.h"

namespace strata {

// The template of checkpoint `model_dir` (or of Hugging Face folder `hf_dir`), or `file`'s when given (with the
// model's special tokens). Throws Error(Usage) when there is none, saying to pass --chat-template.
ChatTemplate load_chat_template(const std::string& model_dir, const std::string& hf_dir, const std::string& file);

// strftime_now's time: "YYYY-MM-DD[THH:MM:SS]" in local time, or now when empty.
std::tm parse_now(const std::string& text);

}  // namespace strata
