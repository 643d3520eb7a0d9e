// Throughput of Hugging Face's own tokenizers (Rust, via the @anush008/tokenizers Node binding) on a text file, one
// input per line, encoded one at a time as strata tokenize --bench does (cold: first pass; warm: the second):
//   node reference_bench.js NODE_MODULES_DIR TOKENIZER_JSON TEXT_FILE
const path = require('path');
const fs = require('fs');
const [modules, tokenizerFile, textFile] = process.argv.slice(2);
const { Tokenizer } = require(path.resolve(modules, '@anush008/tokenizers'));

(async () => {
  const tokenizer = Tokenizer.fromFile(tokenizerFile);
  const lines = fs.readFileSync(textFile, 'utf8').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const bytes = lines.reduce((n, l) => n + Buffer.byteLength(l), 0);
  for (const pass of ['cold', 'warm']) {
    const start = process.hrtime.bigint();
    let tokens = 0;
    for (const line of lines) tokens += (await tokenizer.encode(line, null, { addSpecialTokens: false })).getIds().length;
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    console.log(JSON.stringify({ pass, texts: lines.length, bytes, tokens, seconds, MB_per_s: bytes / seconds / 1e6 }));
  }
})();
