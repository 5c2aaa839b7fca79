#!/usr/bin/env node
// Writes, as JSON, how the reference library classes every code point where its crates use their
// own (old) Unicode tables: what BertNormalizer's clean_text removes or turns into a space, what
// its strip_accents drops (non-spacing marks, after NFD), what StripAccents drops (combining
// marks), what BertPreTokenizer isolates (punctuation), and which code points NFD changes.
// scripts/gen_tokenizer_unicode.py's exception lists are the differences between this and
// Python's unicodedata.   node tests/tokenizers/probe_unicode.js out.json   (about 10 s)
'use strict';
const fs = require('fs');
const hf = require('@anush008/tokenizers');

const clean = hf.bertNormalizer({ cleanText: true, handleChineseChars: false, stripAccents: false, lowercase: false });
const strip = hf.bertNormalizer({ cleanText: false, handleChineseChars: false, stripAccents: true, lowercase: false });
const combining = hf.stripAccentsNormalizer();
const nfd = hf.nfdNormalizer();
const pre = hf.bertPreTokenizer();
const out = { removed: [], space: [], nonspacing: [], combining: [], punctuation: [], decomposes: [] };
for (let c = 0; c < 0x110000; ++c) {
  if (c >= 0xd800 && c <= 0xdfff) continue;
  const ch = String.fromCodePoint(c);
  const s = 'a' + ch + 'b';
  const n = clean.normalizeString(s);
  if (n === 'ab') out.removed.push(c);
  else if (n === 'a b' && c !== 0x20) out.space.push(c);
  if (nfd.normalizeString(ch) !== ch) out.decomposes.push(c);
  else if (strip.normalizeString(s) === 'ab') out.nonspacing.push(c);
  if (combining.normalizeString(s) === 'ab') out.combining.push(c);
  if (pre.preTokenizeString(s).length === 3) out.punctuation.push(c);
}
fs.writeFileSync(process.argv[2] || 'probe_unicode.json', JSON.stringify(out));
