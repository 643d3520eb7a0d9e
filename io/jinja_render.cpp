// Runs a parsed chat template (jinja_ast.h) with Jinja's semantics: scopes (a for loop's body gets a fresh scope
// per iteration, so a {% set %} there does not outlive it; namespace() is how templates carry state out), the loop
// object, macros that see their defining scope, Undefined (prints as "", is falsy, fails when its attributes are
// used), the sandbox's refusal of methods that modify lists and dicts, and the filters, tests, methods and globals
// chat templates use. transformers' globals: raise_exception, strftime_now; its tojson is Python's json.dumps.
#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <set>

#include "io/jinja_ast.h"

namespace strata::jinja {
namespace {

struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Scope> parent;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get())
      for (const auto& [key, value] : s->vars)
        if (key == name) return &value;
    return nullptr;
  }
  void set(const std::string& name, Value value) {
    for (auto& [key, v] : vars)
      if (key == name) {
        v = std::move(value);
        return;
      }
    vars.emplace_back(name, std::move(value));
  }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr child_of(ScopePtr parent) {
  auto s = std::make_shared<Scope>();
  s->parent = std::move(parent);
  return s;
}

Value make_function(std::string name, std::function<Value(const CallArgs&)> call) {
  Value v;
  v.kind = Kind::Function;
  v.function = std::make_shared<Function>(Function{std::move(name), std::move(call)});
  return v;
}

Value make_tuple(List items) {
  Value v = Value::of(std::move(items));
  v.tuple = true;
  return v;
}

Value make_generator(List items) {
  Value v = Value::of(std::move(items));
  v.generator = true;
  return v;
}

[[noreturn]] void fail_undefined(const Value& v) { throw Failure(v.text.empty() ? "a value is undefined" : v.text); }

std::int64_t as_int(const Value& v, const std::string& what) {
  if (v.kind == Kind::Int) return v.integer;
  if (v.kind == Kind::Bool) return v.boolean;
  if (v.kind == Kind::Undefined) fail_undefined(v);
  throw Failure(cat(what, " must be an integer, not ", type_name(v)));
}

std::string as_string(const Value& v, const std::string& what) {
  if (v.kind == Kind::String) return v.text;
  if (v.kind == Kind::Undefined) fail_undefined(v);
  throw Failure(cat(what, " must be a string, not ", type_name(v)));
}

std::optional<std::string> optional_string(const Value& v, const std::string& what) {
  if (v.kind == Kind::None || v.kind == Kind::Undefined) return std::nullopt;
  return as_string(v, what);
}

// The items a for loop, |list or |join sees: a list's items, a dict's keys, a string's characters.
List iterate(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return {};
    case Kind::List:
      return *v.items;
    case Kind::Dict: {
      List keys;
      for (const auto& [key, value] : v.dict->entries) keys.push_back(key);
      return keys;
    }
    case Kind::String: {
      List chars;
      for (char32_t c : utf32(v.text)) chars.push_back(Value::of(utf8(std::u32string(1, c))));
      return chars;
    }
    default:
      throw Failure(cat("'", type_name(v), "' object is not iterable"));
  }
}

std::int64_t length(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return 0;
    case Kind::String:
      return code_points(v.text);
    case Kind::List:
      if (v.generator) throw Failure("object of type 'generator' has no len()");
      return std::int64_t(v.items->size());
    case Kind::Dict:
      return std::int64_t(v.dict->entries.size());
    default:
      throw Failure(cat("object of type '", type_name(v), "' has no len()"));
  }
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Kind::Undefined:
      return false;
    case Kind::String:
      if (item.kind != Kind::String)
        throw Failure(cat("'in <string>' requires string as left operand, not ", type_name(item)));
      return container.text.find(item.text) != std::string::npos;
    case Kind::List:
      return std::any_of(container.items->begin(), container.items->end(),
                         [&](const Value& v) { return equal(v, item); });
    case Kind::Dict:
      return container.dict->find(item) != nullptr;
    default:
      throw Failure(cat("argument of type '", type_name(container), "' is not iterable"));
  }
}

// ---- arithmetic -------------------------------------------------------------------------------------------------

double as_double(const Value& v) {
  return v.kind == Kind::Float ? v.number : v.kind == Kind::Int ? double(v.integer) : double(v.boolean);
}
std::int64_t int_of(const Value& v) { return v.kind == Kind::Int ? v.integer : v.boolean; }

[[noreturn]] void unsupported(const std::string& op, const Value& a, const Value& b) {
  if (a.kind == Kind::Undefined) fail_undefined(a);
  if (b.kind == Kind::Undefined) fail_undefined(b);
  if (op == "+" && a.kind == Kind::String)
    throw Failure(cat("can only concatenate str (not \"", type_name(b), "\") to str"));
  throw Failure(cat("unsupported operand type(s) for ", op, ": '", type_name(a), "' and '", type_name(b), "'"));
}

// `op` is one of the __builtin_*_overflow functions.
template <typename Op>
Value checked(Op op, std::int64_t a, std::int64_t b) {
  std::int64_t result = 0;
  if (op(a, b, &result)) throw Failure("integer overflow (beyond 64 bits)");
  return Value::of(result);
}
const auto kAdd = [](std::int64_t a, std::int64_t b, std::int64_t* r) { return __builtin_add_overflow(a, b, r); };
const auto kSub = [](std::int64_t a, std::int64_t b, std::int64_t* r) { return __builtin_sub_overflow(a, b, r); };
const auto kMul = [](std::int64_t a, std::int64_t b, std::int64_t* r) { return __builtin_mul_overflow(a, b, r); };

Value repeat(const Value& seq, std::int64_t times) {
  if (seq.kind == Kind::String) {
    std::string out;
    for (std::int64_t i = 0; i < times; ++i) out += seq.text;
    return Value::of(std::move(out));
  }
  List out;
  for (std::int64_t i = 0; i < times; ++i) out.insert(out.end(), seq.items->begin(), seq.items->end());
  return Value::of(std::move(out));
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  const bool numbers = a.is_number() && b.is_number();
  const bool integers = numbers && a.kind != Kind::Float && b.kind != Kind::Float;
  if (op == "+") {
    if (integers) return checked(kAdd, int_of(a), int_of(b));
    if (numbers) return Value::of(as_double(a) + as_double(b));
    if (a.kind == Kind::String && b.kind == Kind::String) return Value::of(a.text + b.text);
    if (a.kind == Kind::List && b.kind == Kind::List && !a.generator && !b.generator) {
      List out = *a.items;
      out.insert(out.end(), b.items->begin(), b.items->end());
      Value v = Value::of(std::move(out));
      v.tuple = a.tuple && b.tuple;
      return v;
    }
  } else if (op == "-") {
    if (integers) return checked(kSub, int_of(a), int_of(b));
    if (numbers) return Value::of(as_double(a) - as_double(b));
  } else if (op == "*") {
    if (integers) return checked(kMul, int_of(a), int_of(b));
    if (numbers) return Value::of(as_double(a) * as_double(b));
    const bool seq_a = a.kind == Kind::String || (a.kind == Kind::List && !a.generator);
    const bool seq_b = b.kind == Kind::String || (b.kind == Kind::List && !b.generator);
    if (seq_a && (b.kind == Kind::Int || b.kind == Kind::Bool)) return repeat(a, int_of(b));
    if (seq_b && (a.kind == Kind::Int || a.kind == Kind::Bool)) return repeat(b, int_of(a));
  } else if (op == "/") {
    if (numbers) {
      if (as_double(b) == 0) throw Failure("division by zero");
      return Value::of(as_double(a) / as_double(b));
    }
  } else if (op == "//" || op == "%") {
    if (numbers && as_double(b) == 0)
      throw Failure(op == "//" ? "integer division or modulo by zero" : "modulo by zero");
    if (integers) {
      const std::int64_t x = int_of(a), y = int_of(b);
      if (x == INT64_MIN && y == -1) throw Failure("integer overflow (beyond 64 bits)");
      std::int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors
        --q;
        m += y;
      }
      return Value::of(op == "//" ? q : m);
    }
    if (numbers) {
      const double x = as_double(a), y = as_double(b);
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::of(op == "//" ? std::floor((x - m) / y + 0.5) : m);
    }
    if (op == "%" && a.kind == Kind::String)
      throw Failure("printf-style string formatting (str % x) is not implemented");
  } else if (op == "**") {
    if (integers && int_of(b) >= 0) {
      std::int64_t result = 1, base = int_of(a);
      for (std::int64_t e = int_of(b); e > 0; --e)
        if (__builtin_mul_overflow(result, base, &result)) throw Failure("integer overflow (beyond 64 bits)");
      return Value::of(result);
    }
    if (numbers) return Value::of(std::pow(as_double(a), as_double(b)));
  }
  unsupported(op, a, b);
}

bool compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equal(a, b);
  if (op == "!=") return !equal(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (a.kind == Kind::Undefined) fail_undefined(a);
  if (b.kind == Kind::Undefined) fail_undefined(b);
  const int c = compare(a, b);
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

// ---- attribute and item access (jinja2's environment.getattr / getitem, sandboxed) ------------------------------

const std::set<std::string> kStrMethods = {"strip",    "lstrip", "rstrip", "split", "startswith",
                                           "endswith", "upper",  "lower",  "title", "capitalize",
                                           "replace",  "find",   "join"};
const std::set<std::string> kDictMethods = {"items", "keys", "values", "get"};
// What ImmutableSandboxedEnvironment refuses: methods that modify a list or dict.
const std::set<std::string> kUnsafeListMethods = {"append", "pop",   "extend",  "insert",     "remove",
                                                  "sort",   "clear", "reverse", "__setitem__"};
const std::set<std::string> kUnsafeDictMethods = {"pop", "popitem", "update", "clear", "setdefault"};

Value unsafe(const std::string& attribute, const Value& obj) {
  return Value::undefined(cat("access to attribute '", attribute, "' of '", type_name(obj), "' object is unsafe."));
}

Value bound_method(const Value& obj, const std::string& name);

Value get_attribute(const Value& obj, const std::string& name) {
  switch (obj.kind) {
    case Kind::Undefined:
      fail_undefined(obj);
    case Kind::Dict:
      if (kDictMethods.count(name)) return bound_method(obj, name);
      if (kUnsafeDictMethods.count(name)) return unsafe(name, obj);
      if (const Value* v = obj.dict->find(Value::of(name))) return *v;
      break;
    case Kind::String:
      if (kStrMethods.count(name)) return bound_method(obj, name);
      break;
    case Kind::List:
      if (kUnsafeListMethods.count(name) && !obj.generator) return unsafe(name, obj);
      break;
    case Kind::Object:
      if (Value* v = obj.object->find(name)) return *v;
      break;
    default:
      break;
  }
  return Value::undefined(cat("'", type_name(obj), " object' has no attribute '", name, "'"));
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind) {
    case Kind::Undefined:
      fail_undefined(obj);
    case Kind::Dict:
      if (const Value* v = obj.dict->find(key)) return *v;
      break;
    case Kind::List:
      if (obj.generator) break;
      if (key.kind == Kind::Int || key.kind == Kind::Bool) {
        if (auto i = list_index(int_of(key), obj.items->size())) return (*obj.items)[*i];
        return Value::undefined(cat("list object has no element ", int_of(key)));
      }
      break;
    case Kind::String:
      if (key.kind == Kind::Int || key.kind == Kind::Bool) {
        const std::u32string text = utf32(obj.text);
        if (auto i = list_index(int_of(key), text.size())) return Value::of(utf8(std::u32string(1, text[*i])));
        return Value::undefined(cat("str object has no element ", int_of(key)));
      }
      break;
    default:
      break;
  }
  if (key.kind == Kind::String && obj.kind != Kind::Dict) return get_attribute(obj, key.text);
  if (key.kind == Kind::String) {
    if (kDictMethods.count(key.text)) return bound_method(obj, key.text);
    return Value::undefined(cat("'dict object' has no attribute '", key.text, "'"));
  }
  return Value::undefined(cat("'", type_name(obj), " object' has no element ", repr(key)));
}

Value slice(const Value& obj, std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
            std::optional<std::int64_t> step) {
  if (obj.kind == Kind::String) {
    const std::u32string text = utf32(obj.text);
    std::u32string out;
    for (std::size_t i : slice_indices(start, stop, step, text.size())) out.push_back(text[i]);
    return Value::of(utf8(out));
  }
  if (obj.kind == Kind::List && !obj.generator) {
    List out;
    for (std::size_t i : slice_indices(start, stop, step, obj.items->size())) out.push_back((*obj.items)[i]);
    Value v = Value::of(std::move(out));
    v.tuple = obj.tuple;
    return v;
  }
  if (obj.kind == Kind::Undefined) fail_undefined(obj);
  throw Failure(cat("'", type_name(obj), "' object is not subscriptable"));
}

// "a.b.0": jinja2's attribute getter for map / selectattr / join(attribute=...).
Value get_path(const Value& obj, const std::string& path) {
  Value v = obj;
  for (const std::string& part : split(path, std::string("."), -1)) {
    const bool digits = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
    v = get_item(v, digits ? Value::of(std::int64_t(std::stoll(part))) : Value::of(part));
  }
  return v;
}

bool starts_or_ends(const std::string& s, const Value& affix, bool start) {
  const auto one = [&](const Value& v) {
    const std::string a = as_string(v, start ? "startswith's argument" : "endswith's argument");
    return s.size() >= a.size() && s.compare(start ? 0 : s.size() - a.size(), a.size(), a) == 0;
  };
  if (affix.kind == Kind::List && affix.tuple) return std::any_of(affix.items->begin(), affix.items->end(), one);
  return one(affix);
}

Value str_method(const std::string& s, const std::string& name, const CallArgs& a) {
  const std::string what = "str." + name + "()";
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    a.expect_at_most(1, {}, what);
    const StripSide side = name == "strip" ? StripSide::Both : name == "lstrip" ? StripSide::Left : StripSide::Right;
    return Value::of(strip(s, side, optional_string(a.get(0, ""), what)));
  }
  if (name == "split") {
    a.expect_at_most(2, {"sep", "maxsplit"}, what);
    List parts;
    for (auto& part :
         split(s, optional_string(a.get(0, "sep"), what), as_int(a.get(1, "maxsplit", Value::of(-1)), what)))
      parts.push_back(Value::of(std::move(part)));
    return Value::of(std::move(parts));
  }
  if (name == "startswith" || name == "endswith") {
    a.expect_at_most(1, {}, what);
    return Value::of(starts_or_ends(s, a.get(0, ""), name == "startswith"));
  }
  a.expect_at_most(name == "replace" ? 3 : name == "find" || name == "join" ? 1 : 0, {}, what);
  if (name == "upper") return Value::of(upper(s));
  if (name == "lower") return Value::of(lower(s));
  if (name == "title") return Value::of(title(s));
  if (name == "capitalize") return Value::of(capitalize(s));
  if (name == "replace")
    return Value::of(replace(s, as_string(a.get(0, ""), what), as_string(a.get(1, ""), what),
                             as_int(a.get(2, "", Value::of(-1)), what)));
  if (name == "find") {
    const std::size_t at = s.find(as_string(a.get(0, ""), what));
    return Value::of(at == std::string::npos ? std::int64_t(-1) : code_points(s.substr(0, at)));
  }
  std::string out;  // join
  const List items = iterate(a.get(0, ""));
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? s : "") + as_string(items[i], "join's items");
  return Value::of(std::move(out));
}

Value dict_method(const Dict& d, const std::string& name, const CallArgs& a) {
  const std::string what = "dict." + name + "()";
  a.expect_at_most(name == "get" ? 2 : 0, {}, what);
  if (name == "get") {
    const Value* v = d.find(a.get(0, ""));
    return v ? *v : a.get(1, "", Value::none());
  }
  List out;
  for (const auto& [key, value] : d.entries)
    out.push_back(name == "keys" ? key : name == "values" ? value : make_tuple({key, value}));
  return Value::of(std::move(out));
}

Value bound_method(const Value& obj, const std::string& name) {
  if (obj.kind == Kind::String)
    return make_function(name, [text = obj.text, name](const CallArgs& a) { return str_method(text, name, a); });
  return make_function(name, [dict = obj.dict, name](const CallArgs& a) { return dict_method(*dict, name, a); });
}

// ---- tests ------------------------------------------------------------------------------------------------------

using TestFn = std::function<bool(const Value&, const CallArgs&)>;

const std::map<std::string, TestFn>& tests() {
  static const std::map<std::string, TestFn> table = [] {
    std::map<std::string, TestFn> t;
    const auto arg = [](const CallArgs& a) { return a.get(0, "value"); };
    t["defined"] = [](const Value& v, const CallArgs&) { return v.kind != Kind::Undefined; };
    t["undefined"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::Undefined; };
    t["none"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::None; };
    t["string"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::String; };
    t["mapping"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::Dict; };
    t["number"] = [](const Value& v, const CallArgs&) { return v.is_number(); };
    t["integer"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::Int; };
    t["float"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::Float; };
    t["boolean"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::Bool; };
    t["true"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::Bool && v.boolean; };
    t["false"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::Bool && !v.boolean; };
    // Undefined has __iter__ and __len__ in jinja2, so it is iterable and a sequence; a generator has no len().
    t["iterable"] = [](const Value& v, const CallArgs&) {
      return v.kind == Kind::Undefined || v.kind == Kind::String || v.kind == Kind::List || v.kind == Kind::Dict;
    };
    t["sequence"] = [](const Value& v, const CallArgs&) {
      return v.kind == Kind::Undefined || v.kind == Kind::String || (v.kind == Kind::List && !v.generator) ||
             v.kind == Kind::Dict;
    };
    t["callable"] = [](const Value& v, const CallArgs&) { return v.kind == Kind::Function; };
    t["odd"] = [](const Value& v, const CallArgs&) { return as_int(v, "odd's value") % 2 != 0; };
    t["even"] = [](const Value& v, const CallArgs&) { return as_int(v, "even's value") % 2 == 0; };
    t["divisibleby"] = [arg](const Value& v, const CallArgs& a) {
      const std::int64_t d = as_int(arg(a), "divisibleby's argument");
      if (d == 0) throw Failure("integer division or modulo by zero");
      return as_int(v, "divisibleby's value") % d == 0;
    };
    for (const char* name : {"equalto", "eq", "=="})
      t[name] = [arg](const Value& v, const CallArgs& a) { return equal(v, arg(a)); };
    for (const char* name : {"ne", "!="})
      t[name] = [arg](const Value& v, const CallArgs& a) { return !equal(v, arg(a)); };
    for (const char* name : {"lt", "lessthan", "<"})
      t[name] = [arg](const Value& v, const CallArgs& a) { return compare_op("<", v, arg(a)); };
    for (const char* name : {"le", "<="})
      t[name] = [arg](const Value& v, const CallArgs& a) { return compare_op("<=", v, arg(a)); };
    for (const char* name : {"gt", "greaterthan", ">"})
      t[name] = [arg](const Value& v, const CallArgs& a) { return compare_op(">", v, arg(a)); };
    for (const char* name : {"ge", ">="})
      t[name] = [arg](const Value& v, const CallArgs& a) { return compare_op(">=", v, arg(a)); };
    t["in"] = [arg](const Value& v, const CallArgs& a) { return contains(arg(a), v); };
    t["sameas"] = [arg](const Value& v, const CallArgs& a) {
      const Value other = arg(a);
      if (v.kind != other.kind) return false;
      if (v.kind == Kind::None || v.kind == Kind::Undefined) return true;
      if (v.kind == Kind::Bool) return v.boolean == other.boolean;
      return v.kind == Kind::List ? v.items == other.items : v.kind == Kind::Dict ? v.dict == other.dict : false;
    };
    return t;
  }();
  return table;
}

bool run_test(const std::string& name, const Value& v, const CallArgs& args) {
  const auto it = tests().find(name);
  if (it == tests().end()) throw Failure(cat("no test named '", name, "'"));
  return it->second(v, args);
}

}  // namespace

bool is_test(const std::string& name) { return tests().count(name) > 0; }

// ---- the renderer -----------------------------------------------------------------------------------------------

namespace {

class Renderer;
using FilterFn = std::function<Value(Renderer&, const Value&, const CallArgs&)>;
const std::map<std::string, FilterFn>& filters();

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  Renderer(const std::tm& now) : now_(now) {}

  int line() const { return line_; }

  Flow exec(const Body& body, const ScopePtr& scope, std::string& out) {
    for (const StmtPtr& s : body) {
      const Flow flow = exec(*s, scope, out);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

  Value apply_filter(const std::string& name, const Value& input, const CallArgs& args) {
    return filters().at(name)(*this, input, args);
  }

  Value call(const Value& callee, const CallArgs& args) {
    if (callee.kind == Kind::Undefined) fail_undefined(callee);
    if (callee.kind != Kind::Function) throw Failure(cat("'", type_name(callee), "' object is not callable"));
    return callee.function->call(args);
  }

  const std::tm& now() const { return now_; }

 private:
  Flow exec(const Stmt& s, const ScopePtr& scope, std::string& out) {
    line_ = s.line;
    switch (s.type) {
      case Stmt::Type::Text:
        out += s.text;
        break;
      case Stmt::Type::Output:
        out += to_str(eval(*s.expr, *scope));
        break;
      case Stmt::Type::If:
        return exec(truthy(eval(*s.expr, *scope)) ? s.body : s.else_body, scope, out);
      case Stmt::Type::For:
        exec_for(s, scope, out);
        break;
      case Stmt::Type::Set:
        assign(s, eval(*s.expr, *scope), *scope);
        break;
      case Stmt::Type::SetBlock: {
        std::string text;
        exec(s.body, scope, text);
        assign(s, s.filter ? filter_chain(*s.filter, Value::of(text), *scope) : Value::of(text), *scope);
        break;
      }
      case Stmt::Type::FilterBlock: {
        std::string text;
        exec(s.body, scope, text);
        out += to_str(filter_chain(*s.filter, Value::of(text), *scope));
        break;
      }
      case Stmt::Type::Macro:
        scope->set(s.name, make_macro(s, scope));
        break;
      case Stmt::Type::Break:
        return Flow::Break;
      case Stmt::Type::Continue:
        return Flow::Continue;
      case Stmt::Type::Generation:
        return exec(s.body, scope, out);
    }
    return Flow::Normal;
  }

  void bind_targets(const Stmt& s, const Value& value, Scope& scope) {
    if (!s.unpack) {
      scope.set(s.targets[0], value);
      return;
    }
    const List items = iterate(value);
    if (items.size() != s.targets.size())
      throw Failure(cat("cannot unpack ", items.size(), " values into ", s.targets.size(), " names"));
    for (std::size_t i = 0; i < items.size(); ++i) scope.set(s.targets[i], items[i]);
  }

  void assign(const Stmt& s, const Value& value, Scope& scope) {
    if (s.attribute.empty()) return bind_targets(s, value, scope);
    const Value* target = scope.find(s.targets[0]);
    if (!target || target->kind != Kind::Object || target->object->type != "Namespace")
      throw Failure(cat("cannot assign attribute on non-namespace object '", s.targets[0], "'"));
    target->object->set(s.attribute, value);
  }

  void exec_for(const Stmt& s, const ScopePtr& scope, std::string& out) {
    List items;
    for (const Value& item : iterate(eval(*s.expr, *scope))) {
      if (s.condition) {  // for x in xs if cond: the condition sees the item but no loop object
        const ScopePtr filter_scope = child_of(scope);
        bind_targets(s, item, *filter_scope);
        if (!truthy(eval(*s.condition, *filter_scope))) continue;
      }
      items.push_back(item);
    }
    if (items.empty()) {
      exec(s.else_body, scope, out);
      return;
    }
    for (std::size_t i = 0; i < items.size(); ++i) {
      const ScopePtr body_scope = child_of(scope);  // per iteration, as jinja2's loop frames are
      body_scope->set("loop", loop_object(items, i));
      bind_targets(s, items[i], *body_scope);
      if (exec(s.body, body_scope, out) == Flow::Break) break;
    }
  }

  static Value loop_object(const List& items, std::size_t i) {
    const auto n = std::int64_t(items.size()), at = std::int64_t(i);
    Value v;
    v.kind = Kind::Object;
    v.object = std::make_shared<Object>();
    v.object->type = "LoopContext";
    v.object->attributes = {{"index", Value::of(at + 1)},
                            {"index0", Value::of(at)},
                            {"revindex", Value::of(n - at)},
                            {"revindex0", Value::of(n - at - 1)},
                            {"first", Value::of(i == 0)},
                            {"last", Value::of(at == n - 1)},
                            {"length", Value::of(n)},
                            {"depth", Value::of(1)},
                            {"depth0", Value::of(0)},
                            {"previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item")},
                            {"nextitem", at + 1 < n ? items[i + 1] : Value::undefined("there is no next item")}};
    v.object->attributes.emplace_back("cycle", make_function("cycle", [at](const CallArgs& a) {
                                        if (a.positional.empty()) throw Failure("no items for cycling given");
                                        return a.positional[std::size_t(at) % a.positional.size()];
                                      }));
    return v;
  }

  Value make_macro(const Stmt& s, const ScopePtr& scope) {
    return make_function(s.name, [this, &s, scope](const CallArgs& args) {
      if (args.positional.size() > s.params.size())
        throw Failure(cat("macro '", s.name, "' takes not more than ", s.params.size(), " argument(s)"));
      const ScopePtr frame = child_of(scope);
      for (const auto& [key, value] : args.keyword)
        if (std::find(s.params.begin(), s.params.end(), key) == s.params.end())
          throw Failure(cat("macro '", s.name, "' takes no keyword argument '", key, "'"));
      for (std::size_t i = 0; i < s.params.size(); ++i) {
        Value v = args.get(i, s.params[i], Value::undefined(cat("'", s.params[i], "' is undefined")));
        if (v.kind == Kind::Undefined && s.defaults[i] && i >= args.positional.size()) v = eval(*s.defaults[i], *frame);
        frame->set(s.params[i], v);
      }
      const int caller_line = line_;
      std::string text;
      exec(s.body, frame, text);
      line_ = caller_line;
      return Value::of(std::move(text));
    });
  }

  CallArgs eval_args(const Expr& e, std::size_t first, Scope& scope) {
    CallArgs args;
    for (std::size_t i = first; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i], scope));
    for (const auto& [key, value] : e.keywords) args.keyword.emplace_back(key, eval(*value, scope));
    return args;
  }

  Value filter_chain(const Expr& e, const Value& input, Scope& scope) {
    const Value operand = e.args[0] ? filter_chain(*e.args[0], input, scope) : input;
    line_ = e.line;
    return apply_filter(e.name, operand, eval_args(e, 1, scope));
  }

  std::optional<std::int64_t> slice_part(const ExprPtr& e, Scope& scope) {
    if (!e) return std::nullopt;
    const Value v = eval(*e, scope);
    if (v.kind == Kind::None) return std::nullopt;
    return as_int(v, "a slice index");
  }

 public:
  Value eval(const Expr& e, Scope& scope) {
    line_ = e.line;
    switch (e.type) {
      case Expr::Type::Const:
        return e.constant;
      case Expr::Type::Name: {
        const Value* v = scope.find(e.name);
        return v ? *v : Value::undefined(cat("'", e.name, "' is undefined"));
      }
      case Expr::Type::Getattr:
        return get_attribute(eval(*e.args[0], scope), e.name);
      case Expr::Type::Getitem: {
        const Value obj = eval(*e.args[0], scope);
        const Expr& index = *e.args[1];
        if (index.type == Expr::Type::Slice)
          return slice(obj, slice_part(index.args[0], scope), slice_part(index.args[1], scope),
                       slice_part(index.args[2], scope));
        return get_item(obj, eval(index, scope));
      }
      case Expr::Type::Slice:
        throw Failure("a slice outside [ ]");
      case Expr::Type::Call: {
        const Value callee = eval(*e.args[0], scope);
        const CallArgs args = eval_args(e, 1, scope);
        line_ = e.line;
        return call(callee, args);
      }
      case Expr::Type::Filter: {
        const Value operand = eval(*e.args[0], scope);
        const CallArgs args = eval_args(e, 1, scope);
        line_ = e.line;
        return apply_filter(e.name, operand, args);
      }
      case Expr::Type::Test: {
        const Value operand = eval(*e.args[0], scope);
        const CallArgs args = eval_args(e, 1, scope);
        line_ = e.line;
        return Value::of(run_test(e.name, operand, args) != e.negated);
      }
      case Expr::Type::Neg:
      case Expr::Type::Pos: {
        const Value v = eval(*e.args[0], scope);
        if (v.kind == Kind::Float) return Value::of(e.type == Expr::Type::Neg ? -v.number : v.number);
        if (v.kind == Kind::Int || v.kind == Kind::Bool)
          return e.type == Expr::Type::Neg ? arithmetic("-", Value::of(0), v) : Value::of(int_of(v));
        if (v.kind == Kind::Undefined) fail_undefined(v);
        throw Failure(
            cat("bad operand type for unary ", e.type == Expr::Type::Neg ? "-" : "+", ": '", type_name(v), "'"));
      }
      case Expr::Type::Not:
        return Value::of(!truthy(eval(*e.args[0], scope)));
      case Expr::Type::Binary: {
        const Value a = eval(*e.args[0], scope), b = eval(*e.args[1], scope);
        line_ = e.line;
        return arithmetic(e.name, a, b);
      }
      case Expr::Type::And: {
        Value a = eval(*e.args[0], scope);
        return truthy(a) ? eval(*e.args[1], scope) : a;
      }
      case Expr::Type::Or: {
        Value a = eval(*e.args[0], scope);
        return truthy(a) ? a : eval(*e.args[1], scope);
      }
      case Expr::Type::Compare: {
        Value left = eval(*e.args[0], scope);
        for (std::size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1], scope);
          line_ = e.line;
          if (!compare_op(e.ops[i], left, right)) return Value::of(false);
          left = std::move(right);
        }
        return Value::of(true);
      }
      case Expr::Type::Concat: {
        std::string out;
        for (const ExprPtr& part : e.args) out += to_str(eval(*part, scope));
        return Value::of(std::move(out));
      }
      case Expr::Type::CondExpr:
        if (truthy(eval(*e.args[1], scope))) return eval(*e.args[0], scope);
        return e.args[2] ? eval(*e.args[2], scope) : Value::undefined("the inline if had no else and was false");
      case Expr::Type::ListLiteral:
      case Expr::Type::TupleLiteral: {
        List items;
        for (const ExprPtr& item : e.args) items.push_back(eval(*item, scope));
        return e.type == Expr::Type::TupleLiteral ? make_tuple(std::move(items)) : Value::of(std::move(items));
      }
      case Expr::Type::DictLiteral: {
        Dict d;
        for (std::size_t i = 0; i + 1 < e.args.size(); i += 2)
          d.set(eval(*e.args[i], scope), eval(*e.args[i + 1], scope));
        return Value::of(std::move(d));
      }
    }
    return {};
  }

 private:
  std::tm now_;
  int line_ = 1;
};

// ---- filters ----------------------------------------------------------------------------------------------------

// jinja2's title filter (not str.title): each run after a space, -, (, {, [ or < starts upper-cased, the rest lower.
std::string title_filter(const std::string& s) {
  const std::u32string text = utf32(s);
  std::string out;
  std::size_t i = 0;
  const auto separator = [](char32_t c) {
    return is_py_space(c) || c == U'-' || c == U'(' || c == U'{' || c == U'[' || c == U'<';
  };
  while (i < text.size()) {
    std::size_t j = i;
    const bool sep = separator(text[i]);
    while (j < text.size() && separator(text[j]) == sep) ++j;
    out += upper(utf8(text.substr(i, 1))) + lower(utf8(text.substr(i + 1, j - i - 1)));
    i = j;
  }
  return out;
}

Value to_int(const Value& v, const Value& fallback, std::int64_t base) {
  switch (v.kind) {
    case Kind::Int:
      return v;
    case Kind::Bool:
      return Value::of(std::int64_t(v.boolean));
    case Kind::Float:
      if (std::isfinite(v.number) && std::fabs(v.number) < 9.2e18) return Value::of(std::int64_t(v.number));
      return fallback;
    case Kind::String: {
      const std::string s = strip(v.text, StripSide::Both);
      std::string digits;
      for (char c : s)
        if (c != '_') digits.push_back(c);
      try {
        std::size_t used = 0;
        const long long i = std::stoll(digits, &used, int(base));
        if (used == digits.size() && !digits.empty()) return Value::of(std::int64_t(i));
      } catch (const std::exception&) {
      }
      try {
        std::size_t used = 0;
        const double d = std::stod(s, &used);
        if (used == s.size() && std::isfinite(d)) return Value::of(std::int64_t(d));
      } catch (const std::exception&) {
      }
      return fallback;
    }
    default:
      return fallback;
  }
}

Value to_float(const Value& v, const Value& fallback) {
  if (v.is_number()) return Value::of(as_double(v));
  if (v.kind == Kind::String) {
    const std::string s = strip(v.text, StripSide::Both);
    try {
      std::size_t used = 0;
      const double d = std::stod(s, &used);
      if (used == s.size()) return Value::of(d);
    } catch (const std::exception&) {
    }
  }
  return fallback;
}

JsonOptions json_options(const CallArgs& a) {
  a.expect_at_most(4, {"ensure_ascii", "indent", "separators", "sort_keys"}, "tojson");
  JsonOptions o;
  o.ensure_ascii = truthy(a.get(0, "ensure_ascii", Value::of(false)));
  const Value indent = a.get(1, "indent", Value::none());
  if (indent.kind == Kind::Int || indent.kind == Kind::Bool)
    o.indent = std::string(std::size_t(std::max<std::int64_t>(0, int_of(indent))), ' ');
  else if (indent.kind == Kind::String)
    o.indent = indent.text;
  else if (indent.kind != Kind::None)
    throw Failure(cat("tojson's indent must be an integer or a string, not ", type_name(indent)));
  if (o.indent) o.item_separator = ",";
  const Value separators = a.get(2, "separators", Value::none());
  if (separators.kind == Kind::List && separators.items->size() == 2) {
    o.item_separator = as_string((*separators.items)[0], "tojson's separators");
    o.key_separator = as_string((*separators.items)[1], "tojson's separators");
  } else if (separators.kind != Kind::None) {
    throw Failure("tojson's separators must be a pair of strings");
  }
  o.sort_keys = truthy(a.get(3, "sort_keys", Value::of(false)));
  return o;
}

// select / reject / selectattr / rejectattr: items whose (attribute's) test passes, or fails.
Value select_items(const Value& seq, const CallArgs& a, bool by_attribute, bool keep_when) {
  std::size_t next = 0;
  std::string attribute;
  if (by_attribute) attribute = as_string(a.get(next++, ""), "the attribute name");
  std::optional<std::string> test;
  if (next < a.positional.size()) test = as_string(a.positional[next++], "the test name");
  CallArgs test_args;
  test_args.positional.assign(a.positional.begin() + std::ptrdiff_t(std::min(next, a.positional.size())),
                              a.positional.end());
  test_args.keyword = a.keyword;
  if (test && !is_test(*test)) throw Failure(cat("no test named '", *test, "'"));
  List out;
  for (const Value& item : iterate(seq)) {
    const Value subject = by_attribute ? get_path(item, attribute) : item;
    const bool passed = test ? run_test(*test, subject, test_args) : truthy(subject);
    if (passed == keep_when) out.push_back(item);
  }
  return make_generator(std::move(out));
}

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> table = [] {
    std::map<std::string, FilterFn> f;
    const auto no_args = [](const CallArgs& a, const char* name) { a.expect_at_most(0, {}, name); };
    f["length"] = f["count"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "length");
      return Value::of(length(v));
    };
    f["string"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "string");
      return Value::of(to_str(v));
    };
    f["safe"] = f["string"];
    f["trim"] = [](Renderer&, const Value& v, const CallArgs& a) {
      a.expect_at_most(1, {"chars"}, "trim");
      return Value::of(strip(to_str(v), StripSide::Both, optional_string(a.get(0, "chars"), "trim's chars")));
    };
    f["lower"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "lower");
      return Value::of(lower(to_str(v)));
    };
    f["upper"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "upper");
      return Value::of(upper(to_str(v)));
    };
    f["capitalize"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "capitalize");
      return Value::of(capitalize(to_str(v)));
    };
    f["title"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "title");
      return Value::of(title_filter(to_str(v)));
    };
    f["replace"] = [](Renderer&, const Value& v, const CallArgs& a) {
      a.expect_at_most(3, {"old", "new", "count"}, "replace");
      const Value count = a.get(2, "count", Value::none());
      return Value::of(replace(to_str(v), to_str(a.get(0, "old")), to_str(a.get(1, "new")),
                               count.kind == Kind::None ? -1 : as_int(count, "replace's count")));
    };
    f["tojson"] = [](Renderer&, const Value& v, const CallArgs& a) { return Value::of(to_json(v, json_options(a))); };
    f["default"] = f["d"] = [](Renderer&, const Value& v, const CallArgs& a) {
      a.expect_at_most(2, {"default_value", "boolean"}, "default");
      const bool boolean = truthy(a.get(1, "boolean", Value::of(false)));
      if (v.kind == Kind::Undefined || (boolean && !truthy(v))) return a.get(0, "default_value", Value::of(""));
      return v;
    };
    f["first"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "first");
      const List items = iterate(v);
      return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
    };
    f["last"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "last");
      if (v.kind == Kind::List && v.generator) throw Failure("'generator' object is not reversible");
      const List items = iterate(v);
      return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
    };
    f["list"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "list");
      return Value::of(iterate(v));
    };
    f["reverse"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "reverse");
      if (v.kind == Kind::String) {
        std::u32string text = utf32(v.text);
        std::reverse(text.begin(), text.end());
        return Value::of(utf8(text));
      }
      List items = iterate(v);
      std::reverse(items.begin(), items.end());
      return make_generator(std::move(items));
    };
    f["items"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "items");
      if (v.kind == Kind::Undefined) return make_generator({});
      if (v.kind != Kind::Dict) throw Failure("Can only get item pairs from a mapping.");
      List pairs;
      for (const auto& [key, value] : v.dict->entries) pairs.push_back(make_tuple({key, value}));
      return make_generator(std::move(pairs));
    };
    f["join"] = [](Renderer&, const Value& v, const CallArgs& a) {
      a.expect_at_most(2, {"d", "attribute"}, "join");
      const std::string separator = to_str(a.get(0, "d", Value::of("")));
      const Value attribute = a.get(1, "attribute", Value::none());
      std::string out;
      bool first = true;
      for (const Value& item : iterate(v)) {
        out +=
            (first ? "" : separator) + to_str(attribute.kind == Kind::None ? item : get_path(item, to_str(attribute)));
        first = false;
      }
      return Value::of(std::move(out));
    };
    f["map"] = [](Renderer& r, const Value& v, const CallArgs& a) {
      List out;
      const auto keyword = [&](const char* name) {
        for (const auto& [key, value] : a.keyword)
          if (key == name) return value;
        return Value::none();
      };
      const Value attribute = keyword("attribute");
      if (attribute.kind != Kind::None) {
        a.expect_at_most(0, {"attribute", "default"}, "map");
        const Value fallback = keyword("default");
        for (const Value& item : iterate(v)) {
          Value x = get_path(item, to_str(attribute));
          out.push_back(x.kind == Kind::Undefined && fallback.kind != Kind::None ? fallback : x);
        }
        return make_generator(std::move(out));
      }
      if (a.positional.empty()) throw Failure("map needs a filter name or attribute=");
      const std::string name = as_string(a.positional[0], "map's filter name");
      if (!is_filter(name)) throw Failure(cat("no filter named '", name, "'"));
      CallArgs rest;
      rest.positional.assign(a.positional.begin() + 1, a.positional.end());
      rest.keyword = a.keyword;
      for (const Value& item : iterate(v)) out.push_back(r.apply_filter(name, item, rest));
      return make_generator(std::move(out));
    };
    f["select"] = [](Renderer&, const Value& v, const CallArgs& a) { return select_items(v, a, false, true); };
    f["reject"] = [](Renderer&, const Value& v, const CallArgs& a) { return select_items(v, a, false, false); };
    f["selectattr"] = [](Renderer&, const Value& v, const CallArgs& a) { return select_items(v, a, true, true); };
    f["rejectattr"] = [](Renderer&, const Value& v, const CallArgs& a) { return select_items(v, a, true, false); };
    f["int"] = [](Renderer&, const Value& v, const CallArgs& a) {
      a.expect_at_most(2, {"default", "base"}, "int");
      return to_int(v, a.get(0, "default", Value::of(0)), as_int(a.get(1, "base", Value::of(10)), "int's base"));
    };
    f["float"] = [](Renderer&, const Value& v, const CallArgs& a) {
      a.expect_at_most(1, {"default"}, "float");
      return to_float(v, a.get(0, "default", Value::of(0.0)));
    };
    f["abs"] = [no_args](Renderer&, const Value& v, const CallArgs& a) {
      no_args(a, "abs");
      if (v.kind == Kind::Float) return Value::of(std::fabs(v.number));
      const std::int64_t i = as_int(v, "abs's value");
      if (i == INT64_MIN) throw Failure("integer overflow (beyond 64 bits)");
      return Value::of(i < 0 ? -i : i);
    };
    return f;
  }();
  return table;
}

// ---- globals ----------------------------------------------------------------------------------------------------

Value namespace_object(const CallArgs& a) {
  Value v;
  v.kind = Kind::Object;
  v.object = std::make_shared<Object>();
  v.object->type = "Namespace";
  for (const Value& p : a.positional) {
    if (p.kind != Kind::Dict) throw Failure("namespace() takes dicts and keyword arguments");
    for (const auto& [key, value] : p.dict->entries) v.object->set(to_str(key), value);
  }
  for (const auto& [key, value] : a.keyword) v.object->set(key, value);
  return v;
}

Value range_list(const CallArgs& a) {
  a.expect_at_most(3, {}, "range");
  if (a.positional.empty()) throw Failure("range expected at least 1 argument, got 0");
  std::int64_t start = 0, stop = 0, step = 1;
  if (a.positional.size() == 1) {
    stop = as_int(a.positional[0], "range's argument");
  } else {
    start = as_int(a.positional[0], "range's argument");
    stop = as_int(a.positional[1], "range's argument");
    if (a.positional.size() == 3) step = as_int(a.positional[2], "range's argument");
  }
  if (step == 0) throw Failure("range() arg 3 must not be zero");
  List out;
  for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (out.size() >= 100000) throw Failure("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    out.push_back(Value::of(i));
  }
  return Value::of(std::move(out));
}

ScopePtr global_scope(Renderer& renderer) {
  auto globals = std::make_shared<Scope>();
  globals->set("namespace", make_function("namespace", namespace_object));
  globals->set("range", make_function("range", range_list));
  globals->set("dict", make_function("dict", [](const CallArgs& a) {
                 if (!a.positional.empty()) throw Failure("dict() takes keyword arguments only here");
                 Dict d;
                 for (const auto& [key, value] : a.keyword) d.set(Value::of(key), value);
                 return Value::of(std::move(d));
               }));
  globals->set("raise_exception", make_function("raise_exception", [](const CallArgs& a) -> Value {
                 throw Failure(a.positional.empty() ? "" : to_str(a.positional[0]), true);
               }));
  globals->set("strftime_now", make_function("strftime_now", [&renderer](const CallArgs& a) {
                 a.expect_at_most(1, {}, "strftime_now");
                 const std::string format = as_string(a.get(0, "format"), "strftime_now's format");
                 char buf[512];
                 const std::size_t n =
                     format.empty() ? 0 : std::strftime(buf, sizeof buf, format.c_str(), &renderer.now());
                 if (n == 0 && !format.empty()) throw Failure("strftime_now: the formatted date is empty or too long");
                 return Value::of(std::string(buf, n));
               }));
  return globals;
}

}  // namespace

bool is_filter(const std::string& name) { return filters().count(name) > 0; }

bool is_method(const std::string& name) {
  return kStrMethods.count(name) || kDictMethods.count(name) || kUnsafeListMethods.count(name) ||
         kUnsafeDictMethods.count(name);
}

// ---- Template ---------------------------------------------------------------------------------------------------

namespace {

// Python cannot read a template that is not UTF-8 (transformers decodes tokenizer_config.json as UTF-8).
void check_utf8(const std::string& s, const std::string& name) {
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int extra = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : -1;
    bool ok = extra >= 0 && i + std::size_t(extra) < s.size() + (extra == 0 ? 1 : 0);
    for (int k = 1; ok && k <= extra; ++k) ok = (static_cast<unsigned char>(s[i + std::size_t(k)]) & 0xC0) == 0x80;
    STRATA_CHECK(ok, Config, name, ": not valid UTF-8 at byte ", i);
    i += std::size_t(extra) + 1;
  }
}

}  // namespace

Template::Template(const std::string& source, const std::string& name) : name_(name) {
  check_utf8(source, name);
  body_ = parse_template(source, name);
}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& variables, const std::tm& now) const {
  Renderer renderer(now);
  std::string out;
  try {
    ScopePtr globals = global_scope(renderer);
    ScopePtr top = child_of(globals);
    for (const auto& [key, value] : variables.items()) top->set(key, from_json(value));
    renderer.exec(body_->statements, top, out);
  } catch (const Failure& f) {
    throw RenderError(f.raised ? cat(name_, ", line ", renderer.line(), ": raise_exception(\"", f.what(), "\")")
                               : cat(name_, ", line ", renderer.line(), ": ", f.what()),
                      f.raised);
  }
  return out;
}

}  // namespace strata::jinja
