// The parsed form of a chat template (private to io/): expressions and statements as jinja_parse.cpp builds them
// and jinja_render.cpp runs them. Every node keeps its template line for messages.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/jinja.h"
#include "io/jinja_value.h"

namespace strata::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Type {
    Const,         // constant
    Name,          // name
    Getattr,       // args[0].name
    Getitem,       // args[0][args[1]]
    Slice,         // args[0]:args[1]:args[2] (each may be null), only as a Getitem index
    Call,          // args[0](args[1..], keywords)
    Filter,        // args[0] | name(args[1..], keywords); args[0] null in {% filter %} and {% set x | f %}
    Test,          // args[0] is [not] name(args[1..], keywords)
    Neg,           // -args[0]
    Pos,           // +args[0]
    Not,           // not args[0]
    Binary,        // args[0] name args[1], name one of + - * / // % **
    And,           // args[0] and args[1]
    Or,            // args[0] or args[1]
    Compare,       // args[0] ops[0] args[1] ops[1] args[2] ...
    Concat,        // args[0] ~ args[1] ~ ...
    CondExpr,      // args[0] if args[1] else args[2] (args[2] may be null)
    ListLiteral,   // [args...]
    TupleLiteral,  // (args...)
    DictLiteral,   // {args[0]: args[1], args[2]: args[3], ...}
  };
  Type type;
  int line = 0;
  Value constant;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> keywords;
  std::vector<std::string> ops;  // Compare: == != < <= > >= in notin
  bool negated = false;          // Test: is not
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Type {
    Text,         // text
    Output,       // {{ expr }}
    If,           // if expr: body, else else_body (an elif is an If alone in else_body)
    For,          // for targets in expr [if condition]: body, else else_body
    Set,          // set targets = expr, or set targets[0].attribute = expr (namespace)
    SetBlock,     // set targets[0] [| filter] %} body {% endset
    Macro,        // macro name(params = defaults) body
    FilterBlock,  // filter <filter> body
    Break,
    Continue,
    Generation,  // transformers' {% generation %}: its body, as rendered without an assistant mask
  };
  Type type;
  int line = 0;
  std::string text, name, attribute;
  ExprPtr expr, condition, filter;
  std::vector<std::string> targets;
  bool unpack = false;  // targets written as a tuple (a, b)
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // per param, null when none
  Body body, else_body;
};

struct TemplateBody {
  Body statements;
};

// Parses a template (jinja_parse.cpp); errors are Error(Config) naming `name` and the template line.
std::unique_ptr<TemplateBody> parse_template(const std::string& source, const std::string& name);

// What the renderer implements (jinja_render.cpp), so that the parser can refuse the rest by name.
bool is_filter(const std::string& name);
bool is_test(const std::string& name);
bool is_method(const std::string& name);  // str, dict and list methods (the unsafe list/dict ones fail when run)

}  // namespace strata::jinja
