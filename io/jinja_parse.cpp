// Lexer and parser of the chat-template Jinja subset. Whitespace is handled as python3-jinja2 does with
// transformers' settings: newlines normalised to \n and one trailing newline dropped, {%- -%} stripping, trim_blocks
// (the newline after a block or comment tag goes) and lstrip_blocks (spaces and tabs before a block or comment tag
// on its own line go). Operator precedence follows jinja2's parser, so the trees are the ones Jinja would build.
#include <cstring>
#include <initializer_list>

#include "io/jinja_ast.h"

namespace strata::jinja {
namespace {

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };

struct Token {
  Tok type;
  std::string text;
  int line = 1;
  std::int64_t integer = 0;
  double number = 0;
};

class Lexer {
 public:
  Lexer(const std::string& source, const std::string& name) : name_(name) { src_ = normalise_newlines(source); }

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      const std::size_t start = next_tag(pos_);
      std::string text = src_.substr(pos_, start - pos_);
      if (start == std::string::npos) {
        emit_text(text, line_);
        break;
      }
      const char kind = src_[start + 1];
      const char sign =
          start + 2 < src_.size() && (src_[start + 2] == '-' || src_[start + 2] == '+') ? src_[start + 2] : 0;
      const int text_line = line_;
      line_ += count_newlines(pos_, start);
      if (sign == '-')
        text = strip(text, StripSide::Right);
      else if (kind != '{' && sign != '+')
        text = lstrip_block(text, line_starting);
      emit_text(text, text_line);
      pos_ = start + 2 + (sign ? 1 : 0);
      if (kind == '#')
        skip_comment();
      else
        lex_tag(kind == '{');
      line_starting = pos_ > 0 && src_[pos_ - 1] == '\n';
    }
    tokens_.push_back({Tok::End, "", line_});
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void fail(const std::string& why, int line) const {
    throw Error(ErrorKind::Config, cat(name_, ", line ", line, ": ", why));
  }

  // \r\n and \r become \n, and one final newline is dropped (keep_trailing_newline=False).
  static std::string normalise_newlines(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\r') {
        out.push_back('\n');
        if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
      } else {
        out.push_back(s[i]);
      }
    }
    if (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }

  std::size_t next_tag(std::size_t from) const {
    for (std::size_t at = src_.find('{', from); at != std::string::npos; at = src_.find('{', at + 1))
      if (at + 1 < src_.size() && (src_[at + 1] == '{' || src_[at + 1] == '%' || src_[at + 1] == '#')) return at;
    return std::string::npos;
  }

  int count_newlines(std::size_t from, std::size_t to) const {
    int n = 0;
    for (std::size_t i = from; i < to && i < src_.size(); ++i) n += src_[i] == '\n';
    return n;
  }

  // lstrip_blocks: the spaces and tabs between the line's start and a block or comment tag go, when nothing else
  // is there ("line start": after a newline in this text, or right after a tag that ended with one).
  static std::string lstrip_block(const std::string& text, bool line_starting) {
    const std::size_t line_start = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
    if (line_start == 0 && !line_starting) return text;
    const std::string rest = text.substr(line_start);
    if (rest.empty() || !strip(rest, StripSide::Left).empty()) return text;
    return text.substr(0, line_start);
  }

  void emit_text(const std::string& text, int line) {
    if (!text.empty()) tokens_.push_back({Tok::Text, text, line});
  }

  // After a tag: "-" strips all following whitespace; otherwise trim_blocks drops one newline after a block tag.
  void after_tag(bool strip_after, bool trim_newline) {
    if (strip_after) {
      const std::u32string rest = utf32(src_.substr(pos_));
      std::size_t n = 0;
      while (n < rest.size() && is_py_space(rest[n])) ++n;
      const std::size_t bytes = utf8(rest.substr(0, n)).size();
      line_ += count_newlines(pos_, pos_ + bytes);
      pos_ += bytes;
    } else if (trim_newline && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
      ++line_;
    }
  }

  void skip_comment() {
    const int line = line_;
    const std::size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) fail("a comment {# is never closed", line);
    line_ += count_newlines(pos_, end);
    const bool minus = end > pos_ && src_[end - 1] == '-', plus = end > pos_ && src_[end - 1] == '+';
    pos_ = end + 2;
    after_tag(minus, !plus);
  }

  void lex_tag(bool variable) {
    const int begin_line = line_;
    tokens_.push_back({variable ? Tok::VarBegin : Tok::BlockBegin, "", line_});
    const char close = variable ? '}' : '%';
    int depth = 0;  // open brackets: a "}}" inside {{ {'a': {'b': 1}} }} closes a dict, not the tag
    while (true) {
      while (pos_ < src_.size() && std::strchr(" \t\n\r\f\v", src_[pos_])) line_ += src_[pos_++] == '\n';
      if (pos_ >= src_.size()) fail(variable ? "a {{ is never closed" : "a {% is never closed", begin_line);
      if (depth == 0) {
        const bool minus = src_[pos_] == '-' && src_.compare(pos_ + 1, 2, std::string{close, '}'}) == 0;
        const bool plus = !variable && src_[pos_] == '+' && src_.compare(pos_ + 1, 2, "%}") == 0;
        if (minus || plus || src_.compare(pos_, 2, std::string{close, '}'}) == 0) {
          tokens_.push_back({variable ? Tok::VarEnd : Tok::BlockEnd, "", line_});
          pos_ += minus || plus ? 3 : 2;
          after_tag(minus, !variable && !plus);
          return;
        }
      }
      lex_token(depth);
    }
  }

  void lex_token(int& depth) {
    const char c = src_[pos_];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      const std::size_t start = pos_;
      while (pos_ < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) ++pos_;
      tokens_.push_back({Tok::Name, src_.substr(start, pos_ - start), line_});
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      lex_number();
    } else if (c == '\'' || c == '"') {
      lex_string(c);
    } else {
      static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                         "]",  "(",  ")",  "{",  "}",  "<",  ">", "=", ".", ":", "|", ",", ";"};
      for (const char* op : kOps)
        if (src_.compare(pos_, std::strlen(op), op) == 0) {
          if (std::strchr("([{", op[0])) ++depth;
          if (std::strchr(")]}", op[0]) && depth > 0) --depth;
          tokens_.push_back({Tok::Op, op, line_});
          pos_ += std::strlen(op);
          return;
        }
      fail(cat("unexpected character '", c, "'"), line_);
    }
  }

  void lex_number() {
    std::string digits;
    bool is_float = false;
    const auto take_digits = [&] {
      while (pos_ < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_'))
        if (src_[pos_++] != '_') digits.push_back(src_[pos_ - 1]);
    };
    take_digits();
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      is_float = true;
      digits.push_back(src_[pos_++]);
      take_digits();
    }
    if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      std::size_t at = pos_ + 1;
      if (at < src_.size() && (src_[at] == '+' || src_[at] == '-')) ++at;
      if (at < src_.size() && std::isdigit(static_cast<unsigned char>(src_[at]))) {
        is_float = true;
        digits += src_.substr(pos_, at - pos_);
        pos_ = at;
        take_digits();
      }
    }
    Token t{is_float ? Tok::Float : Tok::Int, digits, line_};
    try {
      if (is_float)
        t.number = std::stod(digits);
      else
        t.integer = std::stoll(digits);
    } catch (const std::exception&) {
      fail(cat("number ", digits, " is out of range"), line_);
    }
    tokens_.push_back(t);
  }

  // A quoted string with Python's escapes (jinja2 decodes literals with "unicode-escape").
  void lex_string(char quote) {
    const int line = line_;
    std::string out;
    ++pos_;
    while (true) {
      if (pos_ >= src_.size()) fail("a string literal is never closed", line);
      const char c = src_[pos_++];
      if (c == quote) break;
      if (c == '\n') ++line_;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= src_.size()) fail("a string literal is never closed", line);
      out += unescape(line);
    }
    tokens_.push_back({Tok::String, out, line});
  }

  std::string unescape(int line) {
    const char e = src_[pos_++];
    switch (e) {
      case '\n':
        ++line_;
        return "";
      case '\\':
        return "\\";
      case '\'':
        return "'";
      case '"':
        return "\"";
      case 'a':
        return "\a";
      case 'b':
        return "\b";
      case 'f':
        return "\f";
      case 'n':
        return "\n";
      case 'r':
        return "\r";
      case 't':
        return "\t";
      case 'v':
        return "\v";
      case 'x':
        return code_point(2, line);
      case 'u':
        return code_point(4, line);
      case 'U':
        return code_point(8, line);
      case 'N':
        fail("the \\N{...} escape is not implemented", line);
      default:
        break;
    }
    if (e >= '0' && e <= '7') {
      char32_t value = char32_t(e - '0');
      for (int k = 0; k < 2 && pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '7'; ++k)
        value = value * 8 + char32_t(src_[pos_++] - '0');
      return utf8(std::u32string(1, value));
    }
    return std::string("\\") + e;  // Python keeps an unknown escape as written
  }

  std::string code_point(int digits, int line) {
    if (pos_ + std::size_t(digits) > src_.size()) fail("truncated \\x, \\u or \\U escape", line);
    const std::string hex = src_.substr(pos_, std::size_t(digits));
    if (hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
      fail("truncated \\x, \\u or \\U escape", line);
    pos_ += std::size_t(digits);
    const unsigned long value = std::stoul(hex, nullptr, 16);
    if (value > 0x10FFFF || (value >= 0xD800 && value < 0xE000)) fail("escape is not a Unicode scalar value", line);
    return utf8(std::u32string(1, char32_t(value)));
  }

  std::string src_, name_;
  std::size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

// ---- parser -----------------------------------------------------------------------------------------------------

const char* const kUnsupportedTags[] = {"call", "include",    "import", "from",  "extends",   "block", "with",
                                        "raw",  "autoescape", "do",     "trans", "pluralize", "print"};

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name) : t_(std::move(tokens)), name_(name) {}

  Body parse() {
    std::string ended;
    Body body = parse_body({}, ended);
    return body;
  }

 private:
  [[noreturn]] void fail(const std::string& why, int line = -1) const {
    throw Error(ErrorKind::Config, cat(name_, ", line ", line < 0 ? cur().line : line, ": ", why));
  }
  [[noreturn]] void refuse(const std::string& construct, int line = -1) const {
    fail(cat(construct, " is not implemented by strata's Jinja subset (see docs/architecture.md, \"Chat templates\")"),
         line);
  }

  const Token& cur() const { return t_[i_]; }
  const Token& peek(std::size_t ahead = 1) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::Name && cur().text == name; }
  Token next() { return t_[i_ < t_.size() - 1 ? i_++ : i_]; }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Text:
        return "template text";
      case Tok::VarBegin:
        return "'{{'";
      case Tok::VarEnd:
        return "'}}'";
      case Tok::BlockBegin:
        return "'{%'";
      case Tok::BlockEnd:
        return "'%}'";
      case Tok::End:
        return "the end of the template";
      case Tok::String:
        return "a string";
      default:
        return "'" + t.text + "'";
    }
  }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(cat("expected '", op, "', got ", describe(cur())));
    next();
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail(cat("expected ", what, ", got ", describe(cur())));
    next();
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail(cat("expected a name, got ", describe(cur())));
    return next().text;
  }

  ExprPtr node(Expr::Type type, int line) {
    auto e = std::make_unique<Expr>();
    e->type = type;
    e->line = line;
    return e;
  }

  // ---- statements ----

  // Statements until a block tag named in `ends` (consumed up to the name, which is returned in `ended`).
  Body parse_body(std::initializer_list<const char*> ends, std::string& ended) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::End) {
        if (ends.size() == 0) return body;
        fail(cat("the template ends before {% ", *ends.begin(), " %}"), t.line);
      }
      if (t.type == Tok::Text) {
        auto s = std::make_unique<Stmt>();
        s->type = Stmt::Type::Text;
        s->line = t.line;
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == Tok::VarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->type = Stmt::Type::Output;
        s->line = t.line;
        s->expr = parse_tuple(true);
        expect(Tok::VarEnd, "'}}'");
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        next();
        const std::string keyword = cur().type == Tok::Name ? cur().text : "";
        for (const char* end : ends)
          if (keyword == end) {
            next();
            ended = keyword;
            return body;
          }
        body.push_back(parse_statement());
      } else {
        fail(cat("unexpected ", describe(t)));
      }
    }
  }

  void end_tag() { expect(Tok::BlockEnd, "'%}'"); }

  StmtPtr parse_statement() {
    const int line = cur().line;
    const std::string keyword = expect_name();
    auto s = std::make_unique<Stmt>();
    s->line = line;
    if (keyword == "if") return parse_if(std::move(s));
    if (keyword == "for") return parse_for(std::move(s));
    if (keyword == "set") return parse_set(std::move(s));
    if (keyword == "macro") return parse_macro(std::move(s));
    if (keyword == "filter") {
      s->type = Stmt::Type::FilterBlock;
      s->filter = parse_filter_chain();
      end_tag();
      return body_until(std::move(s), "endfilter");
    }
    if (keyword == "generation") {
      s->type = Stmt::Type::Generation;
      end_tag();
      return body_until(std::move(s), "endgeneration");
    }
    if (keyword == "break" || keyword == "continue") {
      if (loop_depth_ == 0) fail(cat("'", keyword, "' outside a for loop"), line);
      s->type = keyword == "break" ? Stmt::Type::Break : Stmt::Type::Continue;
      end_tag();
      return s;
    }
    for (const char* tag : kUnsupportedTags)
      if (keyword == tag) refuse(cat("the {% ", keyword, " %} tag"), line);
    fail(cat("unknown tag '", keyword, "'"), line);
  }

  StmtPtr body_until(StmtPtr s, const char* end) {
    std::string ended;
    s->body = parse_body({end}, ended);
    end_tag();
    return s;
  }

  StmtPtr parse_if(StmtPtr s) {
    s->type = Stmt::Type::If;
    s->expr = parse_tuple(true);
    end_tag();
    std::string ended;
    s->body = parse_body({"elif", "else", "endif"}, ended);
    if (ended == "elif") {
      auto elif = std::make_unique<Stmt>();
      elif->line = t_[i_ - 1].line;
      s->else_body.push_back(parse_if(std::move(elif)));
      return s;  // the nested if consumed the endif
    }
    end_tag();
    if (ended == "else") {
      s->else_body = parse_body({"endif"}, ended);
      end_tag();
    }
    return s;
  }

  // Assignment targets: a name, names separated by commas (optionally in parentheses), or for set, name.attr.
  void parse_targets(Stmt& s, bool allow_attribute) {
    const bool parenthesised = is_op("(");
    if (parenthesised) next();
    s.targets.push_back(expect_name());
    if (allow_attribute && !parenthesised && is_op(".")) {
      next();
      s.attribute = expect_name();
      return;
    }
    while (is_op(",")) {
      next();
      s.unpack = true;
      if (cur().type != Tok::Name) break;  // "a, b," is allowed
      s.targets.push_back(expect_name());
    }
    if (parenthesised) {
      s.unpack = true;
      expect_op(")");
    }
  }

  StmtPtr parse_for(StmtPtr s) {
    s->type = Stmt::Type::For;
    parse_targets(*s, false);
    if (!is_name("in")) fail(cat("expected 'in' in the for loop, got ", describe(cur())));
    next();
    s->expr = parse_tuple(false, {"recursive", "if"});
    if (is_name("recursive")) refuse("a recursive for loop");
    if (is_name("if")) {
      next();
      s->condition = parse_expression(true);
    }
    end_tag();
    std::string ended;
    ++loop_depth_;
    s->body = parse_body({"else", "endfor"}, ended);
    --loop_depth_;
    end_tag();
    if (ended == "else") {
      s->else_body = parse_body({"endfor"}, ended);
      end_tag();
    }
    return s;
  }

  StmtPtr parse_set(StmtPtr s) {
    parse_targets(*s, true);
    if (is_op("=")) {
      next();
      s->type = Stmt::Type::Set;
      s->expr = parse_tuple(true);
      end_tag();
      return s;
    }
    if (s->unpack || !s->attribute.empty()) fail("a block {% set %} assigns one name");
    s->type = Stmt::Type::SetBlock;
    if (is_op("|")) s->filter = parse_filter_chain();
    end_tag();
    return body_until(std::move(s), "endset");
  }

  StmtPtr parse_macro(StmtPtr s) {
    s->type = Stmt::Type::Macro;
    s->name = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      if (!s->params.empty()) expect_op(",");
      if (is_op(")")) break;
      s->params.push_back(expect_name());
      if (is_op("=")) {
        next();
        s->defaults.push_back(parse_expression(true));
      } else {
        if (!s->defaults.empty() && s->defaults.back()) fail("a macro parameter without default follows one with");
        s->defaults.push_back(nullptr);
      }
    }
    next();
    end_tag();
    const int loops = loop_depth_;
    loop_depth_ = 0;  // a break in a macro cannot leave a loop around the call
    s = body_until(std::move(s), "endmacro");
    loop_depth_ = loops;
    return s;
  }

  // "| f(args) | g" at the start of {% filter %} or after {% set x %}: Filter nodes around a null operand.
  ExprPtr parse_filter_chain() {
    if (is_op("|")) next();
    ExprPtr chain = parse_filter(nullptr);
    while (is_op("|")) {
      next();
      chain = parse_filter(std::move(chain));
    }
    return chain;
  }

  // ---- expressions (jinja2's grammar) ----

  // Comma-separated expressions, a tuple when there is a comma. `ends` names words that end the list (for's "if").
  ExprPtr parse_tuple(bool with_condexpr, std::initializer_list<const char*> ends = {}, bool parenthesised = false) {
    const int line = cur().line;
    std::vector<ExprPtr> items;
    bool comma = false;
    const auto at_end = [&] {
      if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || is_op(")")) return true;
      for (const char* e : ends)
        if (is_name(e)) return true;
      return false;
    };
    while (true) {
      if (!items.empty()) {
        if (!is_op(",")) break;
        next();
        comma = true;
      }
      if (at_end()) break;
      items.push_back(parse_expression(with_condexpr));
    }
    if (!comma) {
      if (items.empty()) {
        if (parenthesised) return make_tuple({}, line);
        fail(cat("expected an expression, got ", describe(cur())));
      }
      return std::move(items[0]);
    }
    return make_tuple(std::move(items), line);
  }

  ExprPtr make_tuple(std::vector<ExprPtr> items, int line) {
    ExprPtr e = node(Expr::Type::TupleLiteral, line);
    e->args = std::move(items);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    if (!with_condexpr) return parse_or();
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      const int line = cur().line;
      next();
      ExprPtr condition = parse_or();
      ExprPtr otherwise;
      if (is_name("else")) {
        next();
        otherwise = parse_expression(true);
      }
      ExprPtr e = node(Expr::Type::CondExpr, line);
      e->args.push_back(std::move(expr));
      e->args.push_back(std::move(condition));
      e->args.push_back(std::move(otherwise));
      expr = std::move(e);
    }
    return expr;
  }

  ExprPtr binary(Expr::Type type, ExprPtr left, ExprPtr right, int line, std::string op = {}) {
    ExprPtr e = node(type, line);
    e->name = std::move(op);
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const int line = next().line;
      left = binary(Expr::Type::Or, std::move(left), parse_and(), line);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const int line = next().line;
      left = binary(Expr::Type::And, std::move(left), parse_not(), line);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const int line = next().line;
      ExprPtr e = node(Expr::Type::Not, line);
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const int line = cur().line;
    ExprPtr first = parse_math1();
    ExprPtr e;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        next();
        next();
        op = "notin";
      } else {
        break;
      }
      if (!e) {
        e = node(Expr::Type::Compare, line);
        e->args.push_back(std::move(first));
      }
      e->ops.push_back(op);
      e->args.push_back(parse_math1());
    }
    return e ? std::move(e) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token op = next();
      left = binary(Expr::Type::Binary, std::move(left), parse_concat(), op.line, op.text);
    }
    return left;
  }

  ExprPtr parse_concat() {
    const int line = cur().line;
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    ExprPtr e = node(Expr::Type::Concat, line);
    e->args.push_back(std::move(first));
    while (is_op("~")) {
      next();
      e->args.push_back(parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token op = next();
      left = binary(Expr::Type::Binary, std::move(left), parse_pow(), op.line, op.text);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const Token op = next();
      left = binary(Expr::Type::Binary, std::move(left), parse_unary(true), op.line, op.text);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token op = next();
      e = node(op.text == "-" ? Expr::Type::Neg : Expr::Type::Pos, op.line);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filter_expr(std::move(e)) : std::move(e);
  }

  ExprPtr parse_primary() {
    const Token t = cur();
    switch (t.type) {
      case Tok::Name: {
        next();
        ExprPtr e = node(Expr::Type::Const, t.line);
        if (t.text == "true" || t.text == "True")
          e->constant = Value::of(true);
        else if (t.text == "false" || t.text == "False")
          e->constant = Value::of(false);
        else if (t.text == "none" || t.text == "None")
          e->constant = Value::none();
        else {
          e->type = Expr::Type::Name;
          e->name = t.text;
        }
        return e;
      }
      case Tok::String: {
        std::string text;
        while (cur().type == Tok::String) text += next().text;  // adjacent literals join, as in Python
        ExprPtr e = node(Expr::Type::Const, t.line);
        e->constant = Value::of(std::move(text));
        return e;
      }
      case Tok::Int:
      case Tok::Float: {
        next();
        ExprPtr e = node(Expr::Type::Const, t.line);
        e->constant = t.type == Tok::Int ? Value::of(t.integer) : Value::of(t.number);
        return e;
      }
      case Tok::Op:
        if (t.text == "(") {
          next();
          ExprPtr e = parse_tuple(true, {}, true);
          expect_op(")");
          return e;
        }
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        [[fallthrough]];
      default:
        fail(cat("unexpected ", describe(t), " in an expression"));
    }
  }

  ExprPtr parse_list() {
    ExprPtr e = node(Expr::Type::ListLiteral, next().line);
    while (!is_op("]")) {
      if (!e->args.empty()) expect_op(",");
      if (is_op("]")) break;
      e->args.push_back(parse_expression(true));
    }
    next();
    return e;
  }

  ExprPtr parse_dict() {
    ExprPtr e = node(Expr::Type::DictLiteral, next().line);
    while (!is_op("}")) {
      if (!e->args.empty()) expect_op(",");
      if (is_op("}")) break;
      e->args.push_back(parse_expression(true));
      expect_op(":");
      e->args.push_back(parse_expression(true));
    }
    next();
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("["))
        e = parse_subscript(std::move(e));
      else if (is_op("("))
        e = parse_call(std::move(e));
      else
        return e;
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        next();
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr e) {
    const Token t = next();
    if (t.text == ".") {
      if (cur().type == Tok::Int) {  // x.0 is x[0]
        ExprPtr index = node(Expr::Type::Const, cur().line);
        index->constant = Value::of(next().integer);
        ExprPtr g = node(Expr::Type::Getitem, t.line);
        g->args.push_back(std::move(e));
        g->args.push_back(std::move(index));
        return g;
      }
      ExprPtr g = node(Expr::Type::Getattr, t.line);
      g->name = expect_name();
      g->args.push_back(std::move(e));
      return g;
    }
    std::vector<ExprPtr> indices;
    while (!is_op("]")) {
      if (!indices.empty()) expect_op(",");
      if (is_op("]")) break;
      indices.push_back(parse_subscribed());
    }
    next();
    if (indices.empty()) fail("expected an index in [ ]", t.line);
    ExprPtr g = node(Expr::Type::Getitem, t.line);
    g->args.push_back(std::move(e));
    g->args.push_back(indices.size() == 1 ? std::move(indices[0]) : make_tuple(std::move(indices), t.line));
    return g;
  }

  // An index or a slice start:stop:step, each part optional.
  ExprPtr parse_subscribed() {
    const int line = cur().line;
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (!is_op(":")) return start;
    }
    next();
    ExprPtr s = node(Expr::Type::Slice, line);
    s->args.push_back(std::move(start));
    s->args.push_back(is_op("]") || is_op(",") || is_op(":") ? nullptr : parse_expression(true));
    ExprPtr step;
    if (is_op(":")) {
      next();
      if (!is_op("]") && !is_op(",")) step = parse_expression(true);
    }
    s->args.push_back(std::move(step));
    return s;
  }

  // "(a, b, key=c)" into e's args (after any already there) and keywords.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) refuse("*args and **kwargs in a call");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = next().text;
        next();
        e.keywords.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.keywords.empty()) fail("a positional argument follows a keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
    next();
  }

  ExprPtr parse_call(ExprPtr callee) {
    if (callee->type == Expr::Type::Getattr && !is_method(callee->name) && callee->name != "cycle")
      refuse(cat("the method '.", callee->name, "()'"), callee->line);
    ExprPtr e = node(Expr::Type::Call, cur().line);
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter(ExprPtr operand) {
    const int line = cur().line;
    ExprPtr e = node(Expr::Type::Filter, line);
    e->name = expect_name();
    if (is_op(".")) refuse("a dotted filter name", line);
    if (!is_filter(e->name)) refuse(cat("the filter '", e->name, "'"), line);
    e->args.push_back(std::move(operand));
    if (is_op("(")) parse_call_args(*e);
    return e;
  }

  ExprPtr parse_test(ExprPtr operand) {
    const int line = next().line;  // "is"
    ExprPtr e = node(Expr::Type::Test, line);
    if (is_name("not")) {
      next();
      e->negated = true;
    }
    e->name = expect_name();
    if (is_op(".")) refuse("a dotted test name", line);
    if (!is_test(e->name)) refuse(cat("the test '", e->name, "'"), line);
    e->args.push_back(std::move(operand));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                cur().type == Tok::Float || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail("tests cannot be chained with 'is'");
      e->args.push_back(parse_postfix(parse_primary()));  // "x is divisibleby 3"
    }
    return e;
  }

  std::vector<Token> t_;
  std::string name_;
  std::size_t i_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

std::unique_ptr<TemplateBody> parse_template(const std::string& source, const std::string& name) {
  auto body = std::make_unique<TemplateBody>();
  body->statements = Parser(Lexer(source, name).run(), name).parse();
  return body;
}

}  // namespace strata::jinja
