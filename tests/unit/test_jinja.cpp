// The chat-template Jinja subset construct by construct, each expected output written as python3-jinja2 renders it
// with transformers' settings (trim_blocks, lstrip_blocks); and the refusals, naming the construct and the line.
// tests/tokenizer/test_chat_templates.py compares whole real templates with jinja2 itself.
#include <gtest/gtest.h>

#include "io/chat_template.h"
#include "io/jinja.h"
#include "tests/unit/error_of.h"

namespace strata::jinja {
namespace {

std::tm fixed_time() {
  std::tm t{};
  t.tm_year = 124;  // 2024-07-26, a Friday
  t.tm_mon = 6;
  t.tm_mday = 26;
  t.tm_wday = 5;
  return t;
}

std::string render(const std::string& source,
                   const nlohmann::ordered_json& variables = nlohmann::ordered_json::object()) {
  return Template(source, "t.jinja").render(variables, fixed_time());
}

std::string render_error(const std::string& source, const nlohmann::ordered_json& variables = {}) {
  return test::error_of([&] { render(source, variables.is_null() ? nlohmann::ordered_json::object() : variables); });
}

TEST(Jinja, TextAndOutput) {
  EXPECT_EQ(render("a{{ 1 + 2 }}b{{ 'x' ~ 3 ~ none }}"), "a3bx3None");
  EXPECT_EQ(render("{{ none }}|{{ true }}|{{ 1.0 }}|{{ 1e20 }}|{{ 1/3 }}|{{ 0.0001 }}|{{ 0.00001 }}"),
            "None|True|1.0|1e+20|0.3333333333333333|0.0001|1e-05");
  EXPECT_EQ(render("{{ [1, 'a', none, [true]] }}|{{ {'k': (1, 'b')} }}|{{ (1,) }}"),
            "[1, 'a', None, [True]]|{'k': (1, 'b')}|(1,)");
  EXPECT_EQ(render("{{ \"it's\" }}|{{ ['it\\'s', 'a\\nb'] }}"), "it's|[\"it's\", 'a\\nb']");
  EXPECT_EQ(render("{{ undefined_name }}|{{ x.missing }}", {{"x", {{"a", 1}}}}), "|");
  EXPECT_EQ(render("{# a comment #}x"), "x");
}

TEST(Jinja, WhitespaceControl) {
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before one.
  EXPECT_EQ(render("{% if true %}\n  yes\n  {% endif %}\nafter"), "  yes\nafter");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(render("{{ 'x' }}\ny"), "x\ny");  // a variable tag keeps its newline
  EXPECT_EQ(render("a {{- 'b' -}} \n c"), "abc");
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");  // + keeps the indentation
  EXPECT_EQ(render("line\r\nnext\n"), "line\nnext");         // newlines normalised, the final one dropped
  EXPECT_EQ(render("{% for i in [1, 2] %}\n    {{ i }}\n{% endfor %}"), "    1\n    2\n");
}

TEST(Jinja, Expressions) {
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 'ab' * 2 }} {{ true + 1 }}"),
            "3 -4 2 1024 3.5 abab 2");
  EXPECT_EQ(render("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' in 'cat' }} {{ 2 not in [1] }} {{ 'k' in {'k': 1} }}"),
            "True False True True True");
  EXPECT_EQ(render("{{ 0 or 'x' }} {{ 'y' and 0 }} {{ not none }} {{ 'a' if false else 'b' }} {{ 'c' if true }}"),
            "x 0 True b c");
  EXPECT_EQ(render("{{ [1, 2] + [3] }} {{ 1 == 1.0 }} {{ [1] == [1.0] }} {{ {'a': 1} == {'a': 1} }}"),
            "[1, 2, 3] True True True");
  EXPECT_EQ(render("{{ 'a' 'b' }} {{ '\\u00e9\\x41\\t|' }}"),
            "ab \xC3\xA9"
            "A\t|");
  EXPECT_NE(render_error("{{ 'a' + 1 }}").find("can only concatenate str"), std::string::npos);
  EXPECT_NE(render_error("{{ 1 / 0 }}").find("division by zero"), std::string::npos);
}

TEST(Jinja, SubscriptsAndSlices) {
  const nlohmann::ordered_json v = {{"m", {{{"role", "user"}, {"content", "héllo"}}}}};
  EXPECT_EQ(render("{{ m[0]['role'] }} {{ m[0].content }} {{ m[-1].role }} {{ m[5] }}.", v), "user héllo user .");
  EXPECT_EQ(render("{{ 'héllo'[1] }} {{ 'héllo'[::-1] }} {{ 'héllo'[1:3] }} {{ [1, 2, 3][1:] }} {{ [1, 2, 3][::2] }}"),
            "é olléh él [2, 3] [1, 3]");
  EXPECT_EQ(render("{{ x.0 }}", {{"x", {7, 8}}}), "7");
}

TEST(Jinja, Statements) {
  EXPECT_EQ(render("{% if 0 %}a{% elif '' %}b{% elif [1] %}c{% else %}d{% endif %}"), "c");
  EXPECT_EQ(render("{% set x = 1 %}{% set a, b = [2, 3] %}{{ x }}{{ a }}{{ b }}"), "123");
  EXPECT_EQ(render("{% set t %}  inner {{ 1 }} {% endset %}[{{ t }}]"), "[  inner 1 ]");
  EXPECT_EQ(render("{% set t | trim | upper %}  inner  {% endset %}[{{ t }}]"), "[INNER]");
  EXPECT_EQ(render("{% filter upper %}abc{% endfilter %}"), "ABC");
  EXPECT_EQ(render("{% generation %}kept{% endgeneration %}"), "kept");
}

TEST(Jinja, Loops) {
  EXPECT_EQ(render("{% for x in [3, 4, 5] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}"
                   "{{ loop.last }}{{ loop.length }};{% endfor %}"),
            "103TrueFalse3;212FalseFalse3;321FalseTrue3;");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}"), "2242");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }} {% endfor %}"), "a=1 b=2 ");
  EXPECT_EQ(render("{% for c in 'ab' %}{{ c }}.{% endfor %}{% for k in {'x': 1} %}{{ k }}{% endfor %}"), "a.b.x");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}"
                   "{% endif %}{{ x }}{% endfor %}"),
            "13");
  EXPECT_EQ(render("{% for x in [1, 2] %}{{ loop.previtem }}|{{ loop.nextitem }}|{{ loop.cycle('a', 'b') }};"
                   "{% endfor %}"),
            "|2|a;1||b;");
  // A set inside a loop lasts one iteration; a namespace carries state out.
  EXPECT_EQ(render("{% set x = 0 %}{% set ns = namespace(n=0) %}{% for i in [1, 2] %}{% set x = i %}"
                   "{% set ns.n = ns.n + i %}{% endfor %}{{ x }} {{ ns.n }}"),
            "0 3");
}

TEST(Jinja, Macros) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('A') }} {{ greet('B', punct='?') }} {{ greet(name='C') }}"),
            "Hi A! Hi B? Hi C!");
  // A macro sees the variables of the scope it was defined in, as they are when it is called.
  EXPECT_EQ(render("{% macro m() %}{{ a }}{% endmacro %}{% set a = 1 %}{{ m() }}{% set a = 2 %}{{ m() }}"), "12");
}

TEST(Jinja, Filters) {
  const nlohmann::ordered_json v = {
      {"msgs", {{{"role", "system"}, {"content", "s"}}, {{"role", "user"}, {"content", "u"}}}}};
  EXPECT_EQ(render("{{ '  a b \u3000' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'aBc' | upper }}{{ 'ÀBC' | lower }}|"
                   "{{ 'hello wORLD-x' | title }}|{{ 'hELLO' | capitalize }}"),
            "a b|a|ABCàbc|Hello World-X|Hello");
  EXPECT_EQ(render("{{ [1, 2] | length }} {{ 'héllo' | count }} {{ none | string }} {{ 'aXa' | replace('a', 'b') }} "
                   "{{ [1, 2] | join(', ') }} {{ x | default('d') }} {{ '' | default('e', true) }}"),
            "2 5 None bXb 1, 2 d e");
  EXPECT_EQ(render("{{ [3, 4] | first }}{{ [3, 4] | last }} {{ 'ab' | list }} {{ '42' | int + 1 }} {{ '2.5' | float }} "
                   "{{ 'x' | int(7) }} {{ -3 | abs }} {{ [1, 2] | reverse | list }}"),
            "34 ['a', 'b'] 43 2.5 7 3 [2, 1]");
  EXPECT_EQ(render("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join }}"
                   "{{ msgs | rejectattr('role', 'eq', 'user') | list | length }}"
                   "{{ [1, 2, 3, 4] | select('odd') | list }}{{ [1, 2, 3] | reject('in', [2]) | list }}"
                   "{{ ['a', 'b'] | map('upper') | join }}",
                   v),
            "u1[1, 3][1, 3]AB");
  EXPECT_EQ(render("{{ {'b': 1, 'a': [1, 'é', none, true, 1.5]} | tojson }}"),
            "{\"b\": 1, \"a\": [1, \"\xC3\xA9\", null, true, 1.5]}");
  EXPECT_EQ(render("{{ {'a': [1, {}], 'b': 'x'} | tojson(indent=2) }}"),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": \"x\"\n}");
  EXPECT_EQ(render("{{ {'b': '\"\\n', 'a': 'é'} | tojson(ensure_ascii=true, sort_keys=true) }}"),
            "{\"a\": \"\\u00e9\", \"b\": \"\\\"\\n\"}");
  EXPECT_EQ(render("{{ {'a': 1} | items | list }} {{ {'a': 1} | tojson | safe }}"), "[('a', 1)] {\"a\": 1}");
  // What select returns is a generator: always true, and it has no length.
  EXPECT_EQ(render("{% if [] | select('odd') %}yes{% endif %}"), "yes");
  EXPECT_NE(render_error("{{ [1] | select('odd') | length }}").find("has no len()"), std::string::npos);
}

TEST(Jinja, Tests) {
  EXPECT_EQ(render("{{ x is defined }}{{ x is undefined }}{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}"
                   "{{ [] is iterable }}{{ 1 is number }}{{ 'a' is sequence }}{{ 3 is odd }}{{ 4 is even }}"
                   "{{ 6 is divisibleby 3 }}{{ 1 is equalto 1 }}{{ 'a' is in 'abc' }}{{ false is false }}"
                   "{{ 1 is not string }}"),
            "FalseTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrue");
}

TEST(Jinja, Methods) {
  EXPECT_EQ(render("{{ '  a  '.strip() }}|{{ 'xa'.lstrip('x') }}|{{ 'a\\n'.rstrip() }}|{{ 'a b  c'.split() }}|"
                   "{{ 'a,b,c'.split(',', 1) }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}|"
                   "{{ 'ab'.upper() }}{{ 'AB'.lower() }}|{{ \"they're ok\".title() }}|{{ 'aXa'.replace('a', '') }}|"
                   "{{ 'abc'.find('c') }}|{{ '-'.join(['a', 'b']) }}"),
            "a|a|a|['a', 'b', 'c']|['a', 'b,c']|TrueTrue|ABab|They'Re Ok|X|2|a-b");
  EXPECT_EQ(
      render("{{ d.get('a') }} {{ d.get('z', 0) }} {{ d.keys() | list }} {{ d.values() | list }}", {{"d", {{"a", 1}}}}),
      "1 0 ['a'] [1]");
}

TEST(Jinja, Globals) {
  EXPECT_EQ(render("{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ dict(a=1) }} {{ strftime_now('%d %b %Y') }}"),
            "[0, 1, 2] [1, 3, 5] {'a': 1} 26 Jul 2024");
  try {
    render("\n{{ raise_exception('roles must alternate') }}");
    ADD_FAILURE() << "raise_exception did not throw";
  } catch (const RenderError& e) {
    EXPECT_TRUE(e.raised());
    EXPECT_EQ(std::string(e.what()), "t.jinja, line 2: raise_exception(\"roles must alternate\")");
  }
}

TEST(Jinja, RuntimeFailuresNameTheLine) {
  EXPECT_EQ(render_error("a\n\n{{ x.y.z }}"), "t.jinja, line 3: 'x' is undefined");
  // The immutable sandbox: methods that modify lists and dicts fail when called (they may sit in untaken branches).
  EXPECT_EQ(render_error("{% set l = [] %}\n{{ l.append(1) }}"),
            "t.jinja, line 2: access to attribute 'append' of 'list' object is unsafe.");
  EXPECT_EQ(render("{% if false %}{{ [].append(1) }}{% endif %}ok"), "ok");
  EXPECT_NE(render_error("{% set x = 1 %}{% set x.a = 2 %}").find("non-namespace"), std::string::npos);
  EXPECT_NE(render_error("{% for x in none %}{% endfor %}").find("'NoneType' object is not iterable"),
            std::string::npos);
}

TEST(Jinja, RefusesWhatIsNotImplementedNamingConstructAndLine) {
  EXPECT_EQ(test::error_of([] { Template("a\n{{ x | wordwrap }}", "t.jinja"); }),
            "t.jinja, line 2: the filter 'wordwrap' is not implemented by strata's Jinja subset (see "
            "docs/architecture.md, \"Chat templates\")");
  EXPECT_NE(test::error_of([] {
              Template("\n\n{% if x is lower %}{% endif %}", "t.jinja");
            }).find("t.jinja, line 3: the test 'lower' is not implemented"),
            std::string::npos);
  EXPECT_NE(test::error_of([] {
              Template("{{ 'a'.zfill(3) }}", "t.jinja");
            }).find("line 1: the method '.zfill()' is not implemented"),
            std::string::npos);
  EXPECT_NE(test::error_of([] {
              Template("x\n{% include 'other' %}", "t.jinja");
            }).find("line 2: the {% include %} tag is not implemented"),
            std::string::npos);
  EXPECT_NE(test::error_of([] {
              Template("{% for x in y recursive %}{% endfor %}", "t.jinja");
            }).find("a recursive for loop is not implemented"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { Template("{{ f(*args) }}", "t.jinja"); }).find("*args and **kwargs"),
            std::string::npos);
  // Syntax errors name the line too.
  EXPECT_NE(test::error_of([] { Template("\n{% if x %}", "t.jinja"); }).find("t.jinja, line 2"), std::string::npos);
  EXPECT_NE(test::error_of([] { Template("{{ 'open }}", "t.jinja"); }).find("never closed"), std::string::npos);
  EXPECT_NE(test::error_of([] { Template("{% break %}", "t.jinja"); }).find("outside a for loop"), std::string::npos);
  EXPECT_NE(test::error_of([] { Template("\xff", "t.jinja"); }).find("not valid UTF-8"), std::string::npos);
}

}  // namespace
}  // namespace strata::jinja

namespace strata {
namespace {

TEST(ChatTemplate, RendersMessagesWithTheSpecialTokensAndAGenerationPrompt) {
  const ChatTemplate chat(
      "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}{{ tools is none }}",
      "chat", {{"bos_token", "<s>"}, {"eos_token", "</s>"}});
  const auto messages = nlohmann::ordered_json::parse(
      R"([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
          {"role": "assistant", "content": "c"}])");
  EXPECT_EQ(chat.render(messages, {}), "<s><user>a\nb</s><assistant>c</s><assistant>True");
  EXPECT_NE(test::error_of([&] {
              chat.render(nlohmann::ordered_json::parse(R"([{"role": "user", "content": [{"type": "image_url"}]}])"),
                          {});
            }).find("messages[0].content[0] is a 'image_url' part; strata serves text only"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { chat.render(nlohmann::ordered_json::array(), {}); }).find("non-empty"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              chat.render(nlohmann::ordered_json::parse(R"([{"content": "x"}])"), {});
            }).find("messages[0] needs a string 'role'"),
            std::string::npos);
}

}  // namespace
}  // namespace strata
