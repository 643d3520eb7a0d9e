// The subset of Jinja that Hugging Face chat templates use, rendering byte for byte what python3-jinja2 renders
// for them as transformers configures it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loop controls,
// transformers' tojson, raise_exception and strftime_now, the {% generation %} tag rendered as its body).
// What is covered is listed in docs/architecture.md ("Chat templates"); anything else is refused when the template
// is parsed, naming the construct and its line, never silently rendered differently.
#pragma once
#include <ctime>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/base/error.h"

namespace strata::jinja {

struct TemplateBody;  // the parsed statements (jinja_ast.h)

// A failure while rendering: `raised` when the template called raise_exception(message).
class RenderError : public Error {
 public:
  RenderError(const std::string& message, bool raised) : Error(ErrorKind::Usage, message), raised_(raised) {}
  bool raised() const { return raised_; }

 private:
  bool raised_;
};

class Template {
 public:
  // Parses `source`; `name` ("tokenizer_config.json's chat_template", a file path) prefixes every error, with the
  // template line. Throws Error(Config) for a syntax error or a construct this subset does not implement.
  Template(const std::string& source, const std::string& name);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the top-level variables of `variables` (a JSON object; key order is kept, as Python keeps it).
  // `now` is what strftime_now formats (a broken-down local time). Throws RenderError naming the template line.
  std::string render(const nlohmann::ordered_json& variables, const std::tm& now) const;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::unique_ptr<TemplateBody> body_;
};

}  // namespace strata::jinja
