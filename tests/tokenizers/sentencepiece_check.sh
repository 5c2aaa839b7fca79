#!/usr/bin/env bash
# ctest tokenizers.sentencepiece: a model directory with a SentencePiece tokenizer.model and no
# tokenizer.json (rolora/tokenizers/sentencepiece.hpp) against SentencePiece's own spm_encode.
# A BPE model with byte fallback is trained here (spm_train, as Llama 2's: digits split, extra
# whitespace kept) on docs/*.md and hard_cases.txt; then `tokenize` must give spm_encode's ids on
# every line, with "legacy" true and false (the same on text without special tokens), and
# <s> first with the special tokens; a special token inside the text is cut out, the text after
# it encoded with SentencePiece's dummy prefix under legacy and without it otherwise; a pair is
# <s> a <s> b; a broken tokenizer.model is one line naming the file.
#   usage: sentencepiece_check.sh PATH/TO/tokenize REPO_ROOT WORK_DIR
set -euo pipefail
tokenize=$1
root=$2
work=$3
command -v spm_train > /dev/null && command -v spm_encode > /dev/null ||
  { echo "rolora-skip: spm_train/spm_encode not found (Debian: sentencepiece)"; exit 0; }
rm -rf "$work"
mkdir -p "$work/legacy" "$work/modern"
fail() { echo "FAIL: $*"; exit 1; }
cat "$root"/docs/*.md "$root/tests/tokenizers/hard_cases.txt" > "$work/corpus.txt"
spm_train --input="$work/corpus.txt" --model_prefix="$work/m" --vocab_size=800 --model_type=bpe \
  --byte_fallback=true --split_digits=true --remove_extra_whitespaces=false \
  --character_coverage=0.9995 --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --minloglevel=2 \
  > "$work/train.log" 2>&1 || { cat "$work/train.log"; fail "spm_train"; }
cp "$work/m.model" "$work/legacy/tokenizer.model"
cp "$work/m.model" "$work/modern/tokenizer.model"
echo '{"legacy": true}' > "$work/legacy/tokenizer_config.json"
echo '{"legacy": false, "add_bos_token": true}' > "$work/modern/tokenizer_config.json"
if ! out=$(echo hi | "$tokenize" --tokenizer "$work/legacy" 2>&1); then
  [[ $out == *"this build has no SentencePiece"* ]] &&
    { echo "rolora-skip: rolora was built without SentencePiece (Debian: libsentencepiece-dev)"; exit 0; }
  fail "$out"
fi
# The lines without the special tokens' text (tokenize cuts those out, as transformers does;
# spm_encode reads them as text) and without \r (a line end to spm_encode).
grep -a -v -e $'\r' -e '<s>' -e '</s>' -e '<unk>' "$work/corpus.txt" > "$work/lines.txt"
spm_encode --model="$work/m.model" --output_format=id < "$work/lines.txt" > "$work/ref.txt"
for dir in legacy modern; do
  "$tokenize" --tokenizer "$work/$dir" --no-special < "$work/lines.txt" > "$work/$dir.txt"
  cmp "$work/ref.txt" "$work/$dir.txt" || fail "$dir: ids differ from spm_encode's"
  "$tokenize" --tokenizer "$work/$dir" < "$work/lines.txt" > "$work/$dir.special.txt"
  cmp <(sed 's/^/1 /; s/ $//' "$work/ref.txt") "$work/$dir.special.txt" ||
    fail "$dir: not <s> then spm_encode's ids"
done
echo "ok: $(wc -l < "$work/lines.txt") lines, spm_encode's ids under legacy true and false"
ids() { printf '%s\n' "$1" | spm_encode --model="$work/m.model" --output_format=id; }
legacy=$(printf 'Hello</s>world\n' | "$tokenize" --tokenizer "$work/legacy" --no-special)
[ "$legacy" = "$(ids Hello) 2 $(ids world)" ] || fail "legacy: 'Hello</s>world' gave $legacy"
modern=$(printf 'Hello</s>world\n' | "$tokenize" --tokenizer "$work/modern" --no-special)
[[ $modern == "$(ids Hello) 2 "* && $modern != "$legacy" ]] ||
  fail "legacy false: 'Hello</s>world' gave $modern (legacy: $legacy)"
pair=$(printf 'Hello\tworld\n' | "$tokenize" --tokenizer "$work/legacy" --pair)
[ "$pair" = "1 $(ids Hello) 1 $(ids world)" ] || fail "pair: $pair"
echo "ok: special tokens cut out (legacy: '$legacy', not: '$modern'), pairs <s> a <s> b"
mkdir -p "$work/broken"
head -c 100 "$work/m.model" > "$work/broken/tokenizer.model"
if out=$(echo hi | "$tokenize" --tokenizer "$work/broken" 2>&1); then fail "a broken model was read"; fi
[ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == *"broken/tokenizer.model: SentencePiece cannot load it"* ]] ||
  fail "broken model: $out"
echo "ok: a broken tokenizer.model refused: $out"
