// The values a chat template computes with, and Python's rules for them as Jinja applies them: truthiness, str()
// and repr(), ==, ordering, json.dumps (transformers' tojson), and the str methods templates call, on UTF-8 text
// indexed by code point as Python indexes str. Private to io/ (jinja.cpp and its parts).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata::jinja {

// A failure inside an operation; the renderer adds the template line. `raised`: raise_exception was called.
struct Failure : std::runtime_error {
  explicit Failure(const std::string& what, bool by_template = false) : std::runtime_error(what), raised(by_template) {}
  bool raised;
};

enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Object, Function };

struct Value;
using List = std::vector<Value>;
struct Dict;
struct Object;
struct Function;

struct Value {
  Kind kind = Kind::Undefined;
  bool boolean = false;
  std::int64_t integer = 0;
  double number = 0;
  std::string text;                    // String; for Undefined, the error that using it raises
  std::shared_ptr<const List> items;   // List (Python lists, tuples and generators alike)
  bool tuple = false;                  // List: printed (a, b)
  bool generator = false;              // List: what select/map/items filters return (always true, no len())
  std::shared_ptr<const Dict> dict;    // Dict
  std::shared_ptr<Object> object;      // Object: namespace() and loop, whose attributes templates read and set
  std::shared_ptr<Function> function;  // Function: globals, macros, bound methods

  static Value undefined(std::string what = {});
  static Value none();
  static Value of(bool b);
  static Value of(std::int64_t i);
  static Value of(int i) { return of(std::int64_t(i)); }
  static Value of(double d);
  static Value of(std::string s);
  static Value of(const char* s) { return of(std::string(s)); }
  static Value of(List list);
  static Value of(Dict dict);

  bool is(Kind k) const { return kind == k; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
};

// Insertion-ordered, as Python's dict; few keys, so a linear search.
struct Dict {
  std::vector<std::pair<Value, Value>> entries;
  const Value* find(const Value& key) const;
  void set(Value key, Value value);
};

struct Object {
  std::string type;  // "namespace", "loop"
  std::vector<std::pair<std::string, Value>> attributes;
  Value* find(const std::string& name);
  void set(const std::string& name, Value value);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  // The argument at `index` or named `name`, else `fallback`; a name given twice or an unknown keyword throws.
  Value get(std::size_t index, const std::string& name, Value fallback = {}) const;
  void expect_at_most(std::size_t positional_count, std::initializer_list<const char*> names,
                      const std::string& what) const;
};

struct Function {
  std::string name;
  std::function<Value(const CallArgs&)> call;
};

// What Python calls the type, for messages ("str", "list", "NoneType", ...).
std::string type_name(const Value& v);
bool truthy(const Value& v);
std::string to_str(const Value& v);  // str(v); Undefined gives ""
std::string repr(const Value& v);
bool equal(const Value& a, const Value& b);
int compare(const Value& a, const Value& b);  // <0, 0, >0; throws Failure for unordered types, as Python does
std::string float_repr(double d);

struct JsonOptions {
  bool ensure_ascii = false;  // transformers' default
  std::optional<std::string> indent;
  std::string item_separator = ", ", key_separator = ": ";
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonOptions& options);
Value from_json(const nlohmann::ordered_json& j);

// Text by code point, Python's way.
std::u32string utf32(const std::string& s);
std::string utf8(const std::u32string& s);
std::int64_t code_points(const std::string& s);
bool is_py_space(char32_t c);  // str.isspace()
enum class StripSide { Both, Left, Right };
std::string strip(const std::string& s, StripSide side, const std::optional<std::string>& chars = std::nullopt);
std::vector<std::string> split(const std::string& s, const std::optional<std::string>& sep, std::int64_t maxsplit);
std::string replace(const std::string& s, const std::string& from, const std::string& to, std::int64_t count);
std::string lower(const std::string& s);
std::string upper(const std::string& s);
std::string title(const std::string& s);
std::string capitalize(const std::string& s);

// Python's normalisation of an index or a slice over `length` items.
std::optional<std::size_t> list_index(std::int64_t index, std::size_t length);
std::vector<std::size_t> slice_indices(std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
                                       std::optional<std::int64_t> step, std::size_t length);

}  // namespace strata::jinja
