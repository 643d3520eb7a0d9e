// Python's semantics for chat-template values (see jinja_value.h). Case mapping and "printable" come from ICU, as
// Python's come from the Unicode database.
#include "io/jinja_value.h"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "runtime/base/error.h"

namespace strata::jinja {

Value Value::undefined(std::string what) {
  Value v;
  v.text = std::move(what);
  return v;
}
Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value Value::of(bool b) {
  Value v;
  v.kind = Kind::Bool;
  v.boolean = b;
  return v;
}
Value Value::of(std::int64_t i) {
  Value v;
  v.kind = Kind::Int;
  v.integer = i;
  return v;
}
Value Value::of(double d) {
  Value v;
  v.kind = Kind::Float;
  v.number = d;
  return v;
}
Value Value::of(std::string s) {
  Value v;
  v.kind = Kind::String;
  v.text = std::move(s);
  return v;
}
Value Value::of(List list) {
  Value v;
  v.kind = Kind::List;
  v.items = std::make_shared<const List>(std::move(list));
  return v;
}
Value Value::of(Dict dict) {
  Value v;
  v.kind = Kind::Dict;
  v.dict = std::make_shared<const Dict>(std::move(dict));
  return v;
}

const Value* Dict::find(const Value& key) const {
  for (const auto& [k, v] : entries)
    if (equal(k, key)) return &v;
  return nullptr;
}

void Dict::set(Value key, Value value) {
  for (auto& [k, v] : entries)
    if (equal(k, key)) {
      v = std::move(value);
      return;
    }
  entries.emplace_back(std::move(key), std::move(value));
}

Value* Object::find(const std::string& name) {
  for (auto& [k, v] : attributes)
    if (k == name) return &v;
  return nullptr;
}

void Object::set(const std::string& name, Value value) {
  if (Value* v = find(name))
    *v = std::move(value);
  else
    attributes.emplace_back(name, std::move(value));
}

Value CallArgs::get(std::size_t index, const std::string& name, Value fallback) const {
  const auto named = std::find_if(keyword.begin(), keyword.end(), [&](const auto& kv) { return kv.first == name; });
  if (index < positional.size()) {
    if (named != keyword.end()) throw Failure(cat("got multiple values for argument '", name, "'"));
    return positional[index];
  }
  return named != keyword.end() ? named->second : fallback;
}

void CallArgs::expect_at_most(std::size_t positional_count, std::initializer_list<const char*> names,
                              const std::string& what) const {
  if (positional.size() > positional_count)
    throw Failure(
        cat(what, " takes at most ", positional_count, " positional arguments (", positional.size(), " given)"));
  for (const auto& [key, value] : keyword)
    if (std::none_of(names.begin(), names.end(), [&](const char* n) { return key == n; }))
      throw Failure(cat(what, " got an unexpected keyword argument '", key, "'"));
}

// ---- text ---------------------------------------------------------------------------------------------------

std::u32string utf32(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int extra = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
    char32_t cp = extra == 0 ? c : extra == 1 ? (c & 0x1F) : extra == 2 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k <= extra && i + std::size_t(k) < s.size(); ++k)
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + std::size_t(k)]) & 0x3F);
    out.push_back(cp);
    i += std::size_t(extra) + 1;
  }
  return out;
}

std::string utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c < 0x80) {
      out.push_back(char(c));
    } else if (c < 0x800) {
      out.push_back(char(0xC0 | (c >> 6)));
      out.push_back(char(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(char(0xE0 | (c >> 12)));
      out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(char(0x80 | (c & 0x3F)));
    } else {
      out.push_back(char(0xF0 | (c >> 18)));
      out.push_back(char(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(char(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

std::int64_t code_points(const std::string& s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string strip(const std::string& s, StripSide side, const std::optional<std::string>& chars) {
  const std::u32string text = utf32(s), set = chars ? utf32(*chars) : std::u32string();
  const auto stripped = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : is_py_space(c); };
  std::size_t begin = 0, end = text.size();
  if (side != StripSide::Right)
    while (begin < end && stripped(text[begin])) ++begin;
  if (side != StripSide::Left)
    while (end > begin && stripped(text[end - 1])) --end;
  return utf8(text.substr(begin, end - begin));
}

std::vector<std::string> split(const std::string& s, const std::optional<std::string>& sep, std::int64_t maxsplit) {
  std::vector<std::string> parts;
  if (sep) {
    if (sep->empty()) throw Failure("empty separator");
    std::size_t start = 0;
    for (std::size_t at;
         (maxsplit < 0 || std::int64_t(parts.size()) < maxsplit) && (at = s.find(*sep, start)) != std::string::npos;
         start = at + sep->size())
      parts.push_back(s.substr(start, at - start));
    parts.push_back(s.substr(start));
    return parts;
  }
  // Runs of whitespace separate; none at either end makes an empty part.
  const std::u32string text = utf32(s);
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_py_space(text[i])) ++i;
    if (i == text.size()) break;
    if (maxsplit >= 0 && std::int64_t(parts.size()) == maxsplit) {
      std::size_t end = text.size();
      while (end > i && is_py_space(text[end - 1])) --end;
      parts.push_back(utf8(text.substr(i, end - i)));
      break;
    }
    const std::size_t start = i;
    while (i < text.size() && !is_py_space(text[i])) ++i;
    parts.push_back(utf8(text.substr(start, i - start)));
  }
  return parts;
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, std::int64_t count) {
  std::string out;
  std::int64_t done = 0;
  if (from.empty()) {  // Python puts `to` before every character and at the end
    const std::u32string text = utf32(s);
    for (char32_t c : text) {
      if (count < 0 || done++ < count) out += to;
      out += utf8(std::u32string(1, c));
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  std::size_t start = 0;
  for (std::size_t at; (count < 0 || done < count) && (at = s.find(from, start)) != std::string::npos; ++done) {
    out.append(s, start, at - start);
    out += to;
    start = at + from.size();
  }
  out.append(s, start, std::string::npos);
  return out;
}

namespace {

std::string from_icu(const icu::UnicodeString& u) {
  std::string out;
  u.toUTF8String(out);
  return out;
}

icu::UnicodeString to_icu(const std::string& s) { return icu::UnicodeString::fromUTF8(s); }

std::string title_char(char32_t c) {
  icu::UnicodeString u{UChar32(c)};
  return from_icu(
      u.toTitle(nullptr, icu::Locale::getRoot(), U_TITLECASE_NO_LOWERCASE | U_TITLECASE_NO_BREAK_ADJUSTMENT));
}

std::string lower_char(char32_t c) { return from_icu(icu::UnicodeString(UChar32(c)).toLower(icu::Locale::getRoot())); }

}  // namespace

std::string lower(const std::string& s) { return from_icu(to_icu(s).toLower(icu::Locale::getRoot())); }
std::string upper(const std::string& s) { return from_icu(to_icu(s).toUpper(icu::Locale::getRoot())); }

// Python's str.title(): a character after a cased one is lowered, any other is title-cased.
std::string title(const std::string& s) {
  std::string out;
  bool previous_cased = false;
  for (char32_t c : utf32(s)) {
    out += previous_cased ? lower_char(c) : title_char(c);
    previous_cased = u_hasBinaryProperty(UChar32(c), UCHAR_CASED);
  }
  return out;
}

std::string capitalize(const std::string& s) {
  const std::u32string text = utf32(s);
  if (text.empty()) return s;
  std::string out = title_char(text[0]);
  for (std::size_t i = 1; i < text.size(); ++i) out += lower_char(text[i]);
  return out;
}

std::optional<std::size_t> list_index(std::int64_t index, std::size_t length) {
  if (index < 0) index += std::int64_t(length);
  if (index < 0 || index >= std::int64_t(length)) return std::nullopt;
  return std::size_t(index);
}

std::vector<std::size_t> slice_indices(std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
                                       std::optional<std::int64_t> step, std::size_t length) {
  const std::int64_t n = std::int64_t(length), by = step.value_or(1);
  if (by == 0) throw Failure("slice step cannot be zero");
  const auto clamp = [&](std::int64_t i, std::int64_t low, std::int64_t high) {
    if (i < 0) i += n;
    return std::clamp(i, low, high);
  };
  std::vector<std::size_t> out;
  if (by > 0) {
    const std::int64_t from = start ? clamp(*start, 0, n) : 0, to = stop ? clamp(*stop, 0, n) : n;
    for (std::int64_t i = from; i < to; i += by) out.push_back(std::size_t(i));
  } else {
    const std::int64_t from = start ? clamp(*start, -1, n - 1) : n - 1, to = stop ? clamp(*stop, -1, n - 1) : -1;
    for (std::int64_t i = from; i > to; i += by) out.push_back(std::size_t(i));
  }
  return out;
}

// ---- Python's str(), repr(), == and < -----------------------------------------------------------------------

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return "Undefined";
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::List:
      return "list";
    case Kind::Dict:
      return "dict";
    case Kind::Object:
      return v.object->type;
    case Kind::Function:
      return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
    case Kind::None:
      return false;
    case Kind::Bool:
      return v.boolean;
    case Kind::Int:
      return v.integer != 0;
    case Kind::Float:
      return v.number != 0;
    case Kind::String:
      return !v.text.empty();
    case Kind::List:
      return v.generator || !v.items->empty();
    case Kind::Dict:
      return !v.dict->entries.empty();
    default:
      return true;
  }
}

// Python's float repr: the shortest digits that round-trip, positional for exponents -4..15, else d.ddde+XX.
std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  const std::string sci(buf, result.ptr);
  const std::size_t e = sci.find('e');
  std::string mantissa = sci.substr(0, e);
  const int exponent = std::stoi(sci.substr(e + 1));
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits.push_back(c);
  std::string out;
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out = "0." + std::string(std::size_t(-exponent - 1), '0') + digits;
    } else if (std::size_t(exponent) + 1 >= digits.size()) {
      out = digits + std::string(std::size_t(exponent) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, std::size_t(exponent) + 1) + "." + digits.substr(std::size_t(exponent) + 1);
    }
  } else {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp;
  }
  return negative ? "-" + out : out;
}

namespace {

bool printable(char32_t c) {
  if (c == ' ') return true;
  switch (u_charType(UChar32(c))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

std::string hex_escape(const char* prefix, char32_t c, int width) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%s%0*x", prefix, width, unsigned(c));
  return buf;
}

std::string string_repr(const std::string& s) {
  const std::u32string text = utf32(s);
  const bool has_single = text.find(U'\'') != std::u32string::npos,
             has_double = text.find(U'"') != std::u32string::npos;
  const char32_t quote = has_single && !has_double ? U'"' : U'\'';
  std::string out(1, char(quote));
  for (char32_t c : text) {
    if (c == quote || c == U'\\') {
      out.push_back('\\');
      out.push_back(char(c));
    } else if (c == U'\t')
      out += "\\t";
    else if (c == U'\n')
      out += "\\n";
    else if (c == U'\r')
      out += "\\r";
    else if (c < 0x20 || c == 0x7f)
      out += hex_escape("\\x", c, 2);
    else if (c < 0x7f || printable(c))
      out += utf8(std::u32string(1, c));
    else
      out += c <= 0xff ? hex_escape("\\x", c, 2) : c <= 0xffff ? hex_escape("\\u", c, 4) : hex_escape("\\U", c, 8);
  }
  return out + char(quote);
}

std::string container_str(const Value& v) {
  std::string out;
  if (v.kind == Kind::List) {
    // Python prints a generator with its address: nothing a template should print, nor one renderer could match.
    if (v.generator) throw Failure("a generator (what select, map and items return) cannot be printed; add |list");
    for (const Value& item : *v.items) out += (out.empty() ? "" : ", ") + repr(item);
    if (v.tuple) return "(" + out + (v.items->size() == 1 ? ",)" : ")");
    return "[" + out + "]";
  }
  for (const auto& [key, value] : v.dict->entries) out += (out.empty() ? "" : ", ") + repr(key) + ": " + repr(value);
  return "{" + out + "}";
}

double as_double(const Value& v) {
  return v.kind == Kind::Float ? v.number : v.kind == Kind::Int ? double(v.integer) : v.boolean ? 1.0 : 0.0;
}

}  // namespace

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return "";
    case Kind::None:
      return "None";
    case Kind::Bool:
      return v.boolean ? "True" : "False";
    case Kind::Int:
      return std::to_string(v.integer);
    case Kind::Float:
      return float_repr(v.number);
    case Kind::String:
      return v.text;
    case Kind::List:
    case Kind::Dict:
      return container_str(v);
    case Kind::Object: {
      std::string out;
      for (const auto& [key, value] : v.object->attributes)
        out += (out.empty() ? "" : ", ") + string_repr(key) + ": " + repr(value);
      return "<" + v.object->type + " {" + out + "}>";
    }
    case Kind::Function:
      return "<function " + v.function->name + ">";
  }
  return "";
}

std::string repr(const Value& v) {
  if (v.kind == Kind::String) return string_repr(v.text);
  if (v.kind == Kind::Undefined) return "Undefined";
  return to_str(v);
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind != Kind::Float && b.kind != Kind::Float)
      return (a.kind == Kind::Int ? a.integer : a.boolean) == (b.kind == Kind::Int ? b.integer : b.boolean);
    return as_double(a) == as_double(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::Undefined:
    case Kind::None:
      return true;
    case Kind::String:
      return a.text == b.text;
    case Kind::List:
      return a.items->size() == b.items->size() &&
             std::equal(a.items->begin(), a.items->end(), b.items->begin(), equal);
    case Kind::Dict: {
      if (a.dict->entries.size() != b.dict->entries.size()) return false;
      for (const auto& [key, value] : a.dict->entries) {
        const Value* other = b.dict->find(key);
        if (!other || !equal(value, *other)) return false;
      }
      return true;
    }
    case Kind::Object:
      return a.object == b.object;
    case Kind::Function:
      return a.function == b.function;
    default:
      return false;
  }
}

int compare(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind != Kind::Float && b.kind != Kind::Float) {
      const std::int64_t x = a.kind == Kind::Int ? a.integer : a.boolean,
                         y = b.kind == Kind::Int ? b.integer : b.boolean;
      return x < y ? -1 : x > y ? 1 : 0;
    }
    const double x = as_double(a), y = as_double(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.kind == Kind::String && b.kind == Kind::String)
    return a.text.compare(b.text) < 0 ? -1 : a.text == b.text ? 0 : 1;
  if (a.kind == Kind::List && b.kind == Kind::List) {
    for (std::size_t i = 0; i < a.items->size() && i < b.items->size(); ++i)
      if (!equal((*a.items)[i], (*b.items)[i])) return compare((*a.items)[i], (*b.items)[i]);
    return a.items->size() < b.items->size() ? -1 : a.items->size() > b.items->size() ? 1 : 0;
  }
  throw Failure(cat("'<' not supported between instances of '", type_name(a), "' and '", type_name(b), "'"));
}

// ---- json.dumps ---------------------------------------------------------------------------------------------

namespace {

std::string json_string(const std::string& s, bool ensure_ascii) {
  std::string out = "\"";
  for (char32_t c : utf32(s)) {
    switch (c) {
      case U'"':
        out += "\\\"";
        continue;
      case U'\\':
        out += "\\\\";
        continue;
      case U'\n':
        out += "\\n";
        continue;
      case U'\r':
        out += "\\r";
        continue;
      case U'\t':
        out += "\\t";
        continue;
      case U'\b':
        out += "\\b";
        continue;
      case U'\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    if (c < 0x20 || (ensure_ascii && c >= 0x7f && c < 0x10000)) {
      out += hex_escape("\\u", c, 4);
    } else if (ensure_ascii && c >= 0x10000) {
      const char32_t v = c - 0x10000;
      out += hex_escape("\\u", 0xD800 + (v >> 10), 4) + hex_escape("\\u", 0xDC00 + (v & 0x3FF), 4);
    } else {
      out += utf8(std::u32string(1, c));
    }
  }
  return out + "\"";
}

std::string json_key(const Value& key) {
  switch (key.kind) {
    case Kind::String:
      return key.text;
    case Kind::Bool:
      return key.boolean ? "true" : "false";
    case Kind::None:
      return "null";
    case Kind::Int:
      return std::to_string(key.integer);
    case Kind::Float:
      return float_repr(key.number);
    default:
      throw Failure(cat("keys must be str, int, float, bool or None, not ", type_name(key)));
  }
}

void dump(const Value& v, const JsonOptions& o, int level, std::string& out) {
  const auto newline = [&](int depth) {
    if (!o.indent) return std::string();
    std::string s = "\n";
    for (int i = 0; i < depth; ++i) s += *o.indent;
    return s;
  };
  switch (v.kind) {
    case Kind::None:
      out += "null";
      return;
    case Kind::Bool:
      out += v.boolean ? "true" : "false";
      return;
    case Kind::Int:
      out += std::to_string(v.integer);
      return;
    case Kind::Float:
      out += std::isnan(v.number)   ? "NaN"
             : std::isinf(v.number) ? (v.number < 0 ? "-Infinity" : "Infinity")
                                    : float_repr(v.number);
      return;
    case Kind::String:
      out += json_string(v.text, o.ensure_ascii);
      return;
    case Kind::List: {
      if (v.generator) throw Failure("Object of type generator is not JSON serializable");
      if (v.items->empty()) {
        out += "[]";
        return;
      }
      out += "[" + newline(level + 1);
      for (std::size_t i = 0; i < v.items->size(); ++i) {
        if (i) out += o.item_separator + newline(level + 1);
        dump((*v.items)[i], o, level + 1, out);
      }
      out += newline(level) + "]";
      return;
    }
    case Kind::Dict: {
      if (v.dict->entries.empty()) {
        out += "{}";
        return;
      }
      std::vector<std::pair<std::string, const Value*>> entries;
      for (const auto& [key, value] : v.dict->entries) entries.emplace_back(json_key(key), &value);
      if (o.sort_keys)
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
      out += "{" + newline(level + 1);
      for (std::size_t i = 0; i < entries.size(); ++i) {
        if (i) out += o.item_separator + newline(level + 1);
        out += json_string(entries[i].first, o.ensure_ascii) + o.key_separator;
        dump(*entries[i].second, o, level + 1, out);
      }
      out += newline(level) + "}";
      return;
    }
    default:
      throw Failure(cat("Object of type ", type_name(v), " is not JSON serializable"));
  }
}

}  // namespace

std::string to_json(const Value& v, const JsonOptions& options) {
  std::string out;
  dump(v, options, 0, out);
  return out;
}

Value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::none();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::of(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value::of(j.get<std::int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned:
      if (j.get<std::uint64_t>() > std::uint64_t(INT64_MAX)) throw Failure(cat("integer ", j.dump(), " is too large"));
      return Value::of(std::int64_t(j.get<std::uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float:
      return Value::of(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::of(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List list;
      for (const auto& item : j) list.push_back(from_json(item));
      return Value::of(std::move(list));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict dict;
      for (const auto& [key, value] : j.items()) dict.entries.emplace_back(Value::of(key), from_json(value));
      return Value::of(std::move(dict));
    }
    default:
      throw Failure("binary JSON values are not supported");
  }
}

}  // namespace strata::jinja
