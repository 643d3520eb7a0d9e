// The independent reference: Hugging Face's own `tokenizers` library (Rust, through the @anush008/tokenizers
// Node binding) encodes every JSONL prompt and decodes the ids again (special tokens skipped); prints one JSON
// line {"ids": [...], "text": "..."} per prompt.
//   node reference_encode.js NODE_MODULES_DIR TOKENIZER_JSON PROMPTS_JSONL [--add-special]
// With --decode instead, each input line is {"ids": [...]} and only the decoded text is printed.
const path = require('path');
const fs = require('fs');
const [modules, tokenizerFile, promptsFile, flag] = process.argv.slice(2);
const { Tokenizer } = require(path.resolve(modules, '@anush008/tokenizers'));

(async () => {
  const tokenizer = Tokenizer.fromFile(tokenizerFile);
  const lines = fs.readFileSync(promptsFile, 'utf8').split('\n').filter((l) => l.length > 0);
  const out = [];
  for (const line of lines) {
    if (flag === '--decode') {
      out.push(JSON.stringify({ text: await tokenizer.decode(JSON.parse(line).ids, true) }));
      continue;
    }
    const encoding = await tokenizer.encode(JSON.parse(line).prompt, null, { addSpecialTokens: flag === '--add-special' });
    const ids = Array.from(encoding.getIds());
    out.push(JSON.stringify({ ids, text: await tokenizer.decode(ids, true) }));
  }
  process.stdout.write(out.join('\n') + '\n');
})().catch((e) => {
  console.error(`reference_encode.js: ${e.stack || e}`);
  process.exit(1);
});
