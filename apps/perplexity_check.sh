#!/usr/bin/env bash
# ctest app.perplexity: perplexity on the tiny Llama (tests/data/hf_tiny/llama, character-level
# tokenizer.json): the predicted tokens are tokenize's ids minus one per line, --max-len caps each
# line, the Python-written PEFT adapter changes the likelihood, an encoder and a bad adapter are
# refused.   perplexity_check.sh PERPLEXITY TOKENIZE HF_TINY WORK
set -euo pipefail
ppl="$1" tok="$2" tiny="$3" work="$4"
mkdir -p "$work"
printf 'hello world\nthe quick brown fox jumps\n\nok\n' > "$work/text.txt"
fail() { echo "FAIL: $*" >&2; exit 1; }

# Predicted tokens: every line's ids (with <s>) minus one; a one-token line predicts nothing.
expected=$("$tok" --tokenizer "$tiny/llama" < "$work/text.txt" |
           awk 'NF > 1 { t += NF - 1 } END { print t }')
out=$("$ppl" --model "$tiny/llama" --text "$work/text.txt")
echo "$out"
[[ $out =~ ^nll\ ([0-9.]+)\ tokens\ ([0-9]+)\ perplexity\ ([0-9.]+)$ ]] || fail "format: $out"
nll="${BASH_REMATCH[1]}" tokens="${BASH_REMATCH[2]}" p="${BASH_REMATCH[3]}"
[ "$tokens" -eq "$expected" ] || fail "tokens $tokens, tokenize says $expected"
awk -v n="$nll" -v p="$p" 'BEGIN { d = exp(n) - p; exit !(d < 1e-3 * p && d > -1e-3 * p) }' ||
  fail "perplexity $p is not exp($nll)"
# A random 128-token model: close to uniform, log(128) = 4.85.
awk -v n="$nll" 'BEGIN { exit !(n > 4.0 && n < 6.0) }' || fail "nll $nll far from log(128)"

capped=$("$ppl" --model "$tiny/llama" --text "$work/text.txt" --max-len 4)
echo "$capped"
[[ $capped == *" tokens 8 "* ]] || fail "--max-len 4: expected 3 + 3 + 0 + 2 predicted tokens: $capped"

adapted=$("$ppl" --model "$tiny/llama" --text "$work/text.txt" --adapter "$tiny/llama_peft")
echo "$adapted"
[ "${adapted%% tokens*}" != "${out%% tokens*}" ] || fail "the adapter changed nothing"
[[ $adapted == *" tokens $tokens "* ]] || fail "the adapter changed the token count"

if err=$("$ppl" --model "$tiny/bert" --text "$work/text.txt" 2>&1); then fail "an encoder was accepted"; fi
[[ $err == *"is an encoder; perplexity needs a decoder"* ]] || fail "encoder refusal: $err"
if err=$("$ppl" --model "$tiny/llama" --text "$work/text.txt" --adapter "$tiny/bert_peft" 2>&1); then
  fail "a BERT adapter was accepted on Llama"
fi
echo "$err"
echo "app.perplexity: ok"
