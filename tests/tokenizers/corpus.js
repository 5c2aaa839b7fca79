// The corpus of the tokenizer comparisons (check.js): hard_cases.txt (hand-written: accents,
// CJK, emoji sequences, scripts, combining marks, whitespace runs, contractions, numbers, special
// tokens written inline, long words, empty lines) and lines of the SpamAssassin mail
// (scripts/fetch_data.sh), read leniently: a line that is not valid UTF-8 is left out.
'use strict';
const fs = require('fs');
const path = require('path');

const MAX_SPAM_LINES = 3000;  // encoded
const MAX_TRAIN_LINES = 4000;  // the trained tokenizers learn from other messages
const MAX_LINE_BYTES = 2000;

function linesOf(buffer) {
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const out = [];
  let start = 0;
  for (let i = 0; i <= buffer.length; ++i) {
    if (i < buffer.length && buffer[i] !== 0x0a) continue;
    const bytes = buffer.subarray(start, i);
    start = i + 1;
    if (bytes.length > MAX_LINE_BYTES) continue;
    try {
      out.push(decoder.decode(bytes));
    } catch (e) {
      // not UTF-8 (Latin-1 mail, binary attachments): left out
    }
  }
  return out;
}

// Lines of every `step`-th message from `offset`, distinct, at most `limit`.
function mailLines(dataDir, step, offset, limit) {
  const out = [];
  const seen = new Set();
  const groups = fs.readdirSync(dataDir).filter((g) => fs.statSync(path.join(dataDir, g)).isDirectory()).sort();
  const files = [];
  for (const g of groups) {
    for (const f of fs.readdirSync(path.join(dataDir, g)).sort()) {
      if (f.endsWith('.txt')) files.push(path.join(dataDir, g, f));
    }
  }
  for (let i = offset; i < files.length && out.length < limit; i += step) {
    for (const line of linesOf(fs.readFileSync(files[i]))) {
      if (seen.has(line)) continue;
      seen.add(line);
      out.push(line);
      if (out.length >= limit) break;
    }
  }
  return out;
}

function buildCorpus(dataDir, hardCasesFile) {
  const hard = linesOf(fs.readFileSync(hardCasesFile));
  if (hard.length > 0 && hard[hard.length - 1] === '') hard.pop();
  let spam = [], train = [];
  const have = dataDir && fs.existsSync(dataDir);
  if (have) {
    spam = mailLines(dataDir, 20, 0, MAX_SPAM_LINES);
    train = mailLines(dataDir, 20, 10, MAX_TRAIN_LINES);
  } else {
    train = hard.slice();
  }
  const lines = hard.concat(spam);
  // Pairs: each line (without a tab: the first tab separates the two) with the one after it.
  const pairs = [];
  for (let i = 0; i < lines.length && pairs.length < 1500; ++i) {
    if (lines[i].includes('\t')) continue;
    pairs.push(lines[i] + '\t' + lines[(i + 1) % lines.length]);
  }
  const describe = `${hard.length} hard-case lines + ${spam.length} SpamAssassin lines` +
                   (have ? '' : ' (SpamAssassin not fetched: scripts/fetch_data.sh)') +
                   `, ${pairs.length} pairs; trained on ${train.length} other lines`;
  return { lines, pairs, train, describe };
}

module.exports = { buildCorpus };
