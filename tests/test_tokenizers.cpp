// tokenizers/tokenizer.hpp without the reference library: small hand-written tokenizer.json
// strings whose ids are worked out by hand (WordPiece's greedy longest match, BPE's merge order,
// ignore_merges), the split patterns' pieces (Llama-3's \p{N}{1,3}, contractions, whitespace
// runs), NFC/NFD, and the refusals of broken or unsupported files. The comparisons with the
// reference library over a corpus are tests/tokenizers/check.js (ctest label tokenizers).
#include <doctest/doctest.h>

#include <cstdint>
#include <rolora/tokenizers/chat_template.hpp>
#include <rolora/tokenizers/tokenizer.hpp>
#include <string>
#include <vector>

using rolora::tokenizers::tokenizer;
using ids = std::vector<std::int32_t>;

namespace {

// A BERT-style WordPiece: BertNormalizer (lowercase), BertPreTokenizer, [CLS] $A [SEP].
const char* wordpiece_json = R"({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
  "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
  "pre_tokenizer": {"type": "BertPreTokenizer"},
  "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]},
  "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
  "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 9,
            "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "un": 3, "##aff": 4, "##able": 5, "unaff": 6,
                      "##a": 7, "##ff": 8, "a": 9, "!": 10, "cafe": 11}}
})";

// A BPE over "abc" whose merges are given by `merges`; no normalizer, no pre-tokenizer.
std::string bpe_json(const std::string& merges, bool ignore_merges) {
  return R"({"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
    "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": )" +
         std::string(ignore_merges ? "true" : "false") +
         R"(, "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5}, "merges": )" + merges +
         "}}";
}

std::vector<std::u32string> split_by(std::string_view pattern, const std::u32string& text) {
  const auto re = rolora::tokenizers::detail::split_regex::of(pattern);
  REQUIRE(re.has_value());
  std::vector<std::u32string> out;
  for (const auto& p : re->find_matches(text))
    out.push_back(text.substr(p.first, p.last - p.first));
  return out;
}

// The message of the error `json` raises when read, "" if none.
std::string refusal(const std::string& json) {
  try {
    (void)tokenizer::from_json_text(json, "t.json");
  } catch (const rolora::config_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("tokenizers: WordPiece takes the longest piece in the vocabulary, left to right") {
  const auto t = tokenizer::from_json_text(wordpiece_json);
  // "unaffable": the longest prefix is "unaff" (not "un"), then "##able".
  CHECK(t.encode("Unaffable") == ids{1, 6, 5, 2});
  CHECK(t.encode("Unaffable", false) == ids{6, 5});
  // "unable!": "un" + "##able", "!" isolated by the pre-tokenizer.
  CHECK(t.encode("unable!") == ids{1, 3, 5, 10, 2});
  // A piece with no match makes the whole word [UNK], not just its tail.
  CHECK(t.encode("unx a") == ids{1, 0, 9, 2});
  // More than max_input_chars_per_word (9) characters: [UNK].
  CHECK(t.encode("unaffable a", false) == ids{6, 5, 9});
  CHECK(t.encode("unaffablea", false) == ids{0});
  // Accents stripped (NFD, marks dropped) before lookup; special tokens written in the text.
  CHECK(t.encode("CAFÉ[SEP]cafe\u0301", false) == ids{11, 2, 11});
  CHECK(t.encode_pair("a", "un") == ids{1, 9, 2, 3, 2});
  CHECK(t.encode("") == ids{1, 2});
  CHECK(t.specials().cls == 1);
  CHECK(t.specials().sep == 2);
  CHECK(t.specials().unk == 0);
  CHECK(t.token_to_id("##able") == 5);
  CHECK(t.id_to_token(6) == "unaff");
  CHECK(t.vocab_size() == 12);
  CHECK(t.decode({1, 6, 5, 10, 2}) == "unaffable!");  // cleanup joins " !"
  CHECK(t.decode({1, 9, 2}, false) == "[CLS] a [SEP]");
}

TEST_CASE("tokenizers: BPE merges the lowest-ranked pair first") {
  // (b, c) ranks before (a, b): a + bc, and (a, bc) is no merge.
  CHECK(tokenizer::from_json_text(bpe_json(R"(["b c", "a b", "ab c"])", false)).encode("abc") ==
        ids{0, 4});
  // (a, b) first: ab + c, then (ab, c) -> abc.
  CHECK(tokenizer::from_json_text(bpe_json(R"([["a", "b"], ["b", "c"], ["ab", "c"]])", false))
            .encode("abc") == ids{5});
  // Leftmost first among equal ranks: "abab" -> ab ab; "cabc" -> c ab c -> c abc.
  CHECK(tokenizer::from_json_text(bpe_json(R"(["a b", "ab c"])", false)).encode("cabc") ==
        ids{2, 5});
}

TEST_CASE("tokenizers: ignore_merges takes a word that is in the vocabulary whole") {
  // Only (b, c) merges: without ignore_merges "abc" is a + bc; with it, "abc" is a token.
  CHECK(tokenizer::from_json_text(bpe_json(R"(["b c"])", false)).encode("abc") == ids{0, 4});
  CHECK(tokenizer::from_json_text(bpe_json(R"(["b c"])", true)).encode("abc") == ids{5});
}

TEST_CASE("tokenizers: the split patterns cut as the reference's regexes do") {
  using namespace rolora::tokenizers::detail;
  // Llama-3: numbers in groups of at most three digits; Qwen2: one digit each; GPT-2: any run.
  CHECK(split_by(llama3_pattern, U"12345 x") == std::vector<std::u32string>{U"123", U"45", U" x"});
  CHECK(split_by(qwen2_pattern, U"123") == std::vector<std::u32string>{U"1", U"2", U"3"});
  CHECK(split_by(gpt2_pattern, U"12345 x") == std::vector<std::u32string>{U"12345", U" x"});
  // Contractions: case-insensitive in Llama-3 (long s folds to s), case-sensitive in GPT-2.
  CHECK(split_by(llama3_pattern, U"IT'S it\u2019s") ==
        std::vector<std::u32string>{U"IT", U"'S", U" it", U"\u2019s"});
  CHECK(split_by(llama3_pattern, U"x'\u017F") == std::vector<std::u32string>{U"x", U"'\u017F"});
  CHECK(split_by(gpt2_pattern, U"IT'S it's") ==
        std::vector<std::u32string>{U"IT", U"'", U"S", U" it", U"'s"});
  // Whitespace: a run keeps its last space for the next word; newlines end a run.
  CHECK(split_by(gpt2_pattern, U"a   b  ") ==
        std::vector<std::u32string>{U"a", U"  ", U" b", U"  "});
  CHECK(split_by(llama3_pattern, U"a \n\n  b") ==
        std::vector<std::u32string>{U"a", U" \n\n", U" ", U" b"});
  CHECK(split_by(llama3_pattern, U"\tx (y)!!\n") ==
        std::vector<std::u32string>{U"\tx", U" (", U"y", U")!!\n"});
}

TEST_CASE("tokenizers: NFC and NFD") {
  using rolora::tokenizers::nfc;
  using rolora::tokenizers::nfd;
  CHECK(nfd(U"\u00e9") == U"e\u0301");
  CHECK(nfc(U"e\u0301") == U"\u00e9");
  CHECK(nfc(U"\u1100\u1161\u11a8") == U"\uac01");  // Hangul jamo -> syllable
  CHECK(nfd(U"\uac01") == U"\u1100\u1161\u11a8");
  CHECK(nfc(U"\u2126") == U"\u03a9");                // singleton: Ohm sign -> Omega
  CHECK(nfd(U"a\u0323\u0301") == U"a\u0323\u0301");  // already in canonical order
  CHECK(nfd(U"a\u0301\u0323") == U"a\u0323\u0301");  // reordered by combining class
  CHECK(nfc(U"a\u0301\u0323") == U"\u1ea1\u0301");   // a + dot below composes first
}

TEST_CASE("tokenizers: broken and unsupported files are refused, naming the field") {
  CHECK(refusal("{\"model\": ") != "");
  CHECK(refusal(bpe_json("[]", false) + "x").find("t.json") != std::string::npos);
  std::string unigram = bpe_json("[]", false);
  unigram.replace(unigram.find("\"BPE\""), 5, "\"Unigram\"");
  CHECK(refusal(unigram).find("model.type: model type \"Unigram\" is not supported") !=
        std::string::npos);
  std::string nfkc = bpe_json("[]", false);
  nfkc.replace(nfkc.find("\"normalizer\": null"), 18, "\"normalizer\": {\"type\": \"NFKC\"}");
  CHECK(refusal(nfkc).find("normalizer.type: normalizer type \"NFKC\"") != std::string::npos);
  std::string regex = bpe_json("[]", false);
  regex.replace(
      regex.find("\"pre_tokenizer\": null"), 21,
      R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": false})");
  CHECK(refusal(regex).find("\"\\w+\" is not one of the known patterns") != std::string::npos);
  CHECK(refusal(bpe_json(R"(["a z"])", false)).find("model.merges[0]: merge token \"z\"") !=
        std::string::npos);
  CHECK(refusal(bpe_json(R"(["a b c"])", false)).find("two tokens") != std::string::npos);
  std::string id = bpe_json("[]", false);
  id.replace(id.find("\"abc\": 5"), 8, "\"abc\": -5");
  CHECK(refusal(id).find("model.vocab.abc: expected a token id") != std::string::npos);
  id.replace(id.find("\"abc\": -5"), 9, "\"abc\": 4");
  CHECK(refusal(id).find("is also the id of") != std::string::npos);
  std::string dropout = bpe_json("[]", false);
  dropout.replace(dropout.find("\"dropout\": null"), 15, "\"dropout\": 0.1");
  CHECK(refusal(dropout).find("model.dropout") != std::string::npos);
  std::string trunc = bpe_json("[]", false);
  trunc.insert(1, R"("truncation": {"max_length": 8}, )");
  CHECK(refusal(trunc).find("truncation:") != std::string::npos);
  std::string unknown = bpe_json("[]", false);
  unknown.insert(1, R"("surprise": 1, )");
  CHECK(refusal(unknown).find("surprise: unknown option") != std::string::npos);
  // An added token whose id is not the one the reference would give it.
  std::string added = bpe_json("[]", false);
  added.replace(
      added.find("\"added_tokens\": []"), 18,
      R"("added_tokens": [{"id": 9, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}])");
  CHECK(refusal(added).find("would get id 6") != std::string::npos);
  CHECK_THROWS_AS((void)tokenizer::from_file("/nonexistent/tokenizer.json"), rolora::error);
}

TEST_CASE("tokenizers: text that is not valid UTF-8 is refused") {
  const auto t = tokenizer::from_json_text(bpe_json("[]", false));
  CHECK_THROWS_AS((void)t.encode("a\xff"), rolora::value_error);
  CHECK_THROWS_AS((void)t.encode("\xc3"), rolora::value_error);
  CHECK_THROWS_AS((void)t.encode("\xed\xa0\x80"), rolora::value_error);  // a surrogate
}

// ---- Chat templates (tokenizers/chat_template.hpp). The comparisons with @huggingface/jinja over
// real templates and conversations are tests/tokenizers/check_chat.js (ctest label tokenizers).

namespace {

using rolora::tokenizers::chat_template;
using ordered_json = nlohmann::ordered_json;

std::string chat_refusal(const std::string& source) {
  try {
    chat_template t(source, "tpl");
    return "";
  } catch (const rolora::value_error& e) {
    return e.what();
  }
}
std::string render_text(const std::string& source,
                        const ordered_json& context = ordered_json::object()) {
  return chat_template(source).render(context).text;
}

}  // namespace

TEST_CASE("chat templates: a syntax error names the line and column") {
  // an unclosed block, at the end of the template
  CHECK(chat_refusal("Hi\n{% if x %}\nno end")
            .find("tpl:3:7: expected {% elif %} or {% else %} or {% endif %} closing the if block "
                  "opened at 2:1, got the end of the template") != std::string::npos);
  // a tag that is never closed
  CHECK(chat_refusal("ab\n  {{ x ").find("tpl:2:") != std::string::npos);
  // an unknown statement
  CHECK(chat_refusal("{% if a %}\n{% while b %}{% endif %}")
            .find("tpl:2:4: expected a statement (set, if, for, macro, call, filter, break, "
                  "continue), got 'while'") != std::string::npos);
  // a closing tag of another block
  CHECK(chat_refusal("{% for m in x %}{% endif %}")
            .find("tpl:1:20: expected {% endfor %} closing the for loop opened at 1:1, got {% "
                  "endif %}") != std::string::npos);
  // a bad expression
  CHECK(chat_refusal("x\n{{ a + }}").find("tpl:2:8: expected an expression, got '}}'") !=
        std::string::npos);
  CHECK(chat_refusal("{{ a | }}").find("tpl:1:8: expected the name of a filter") !=
        std::string::npos);
  CHECK(chat_refusal("{{ 'abc }}").find("tpl:1:4: a string is not closed") != std::string::npos);
  CHECK(chat_refusal("{{ a ? b }}").find("tpl:1:6: unexpected character '?'") != std::string::npos);
}

TEST_CASE("chat templates: raise_exception, runtime errors and the nesting limit") {
  const chat_template t(
      "{% if messages|length == 0 %}{{ raise_exception('no ' ~ 'messages') }}{% endif %}ok", "tpl");
  CHECK(t.render({{"messages", ordered_json::array({1})}}).text == "ok");
  try {
    (void)t.render({{"messages", ordered_json::array()}});
    FAIL("raise_exception did not throw");
  } catch (const rolora::value_error& e) {
    CHECK(std::string(e.what()).find("tpl: raise_exception: no messages") != std::string::npos);
  }
  const chat_template unknown("line\n{{ x|no_such_filter }}", "tpl");
  CHECK_THROWS_WITH_AS((void)unknown.render({{"x", "s"}}),
                       doctest::Contains("tpl:2:6: unknown filter 'no_such_filter'"),
                       rolora::value_error);
  CHECK_THROWS_WITH_AS((void)chat_template("{{ x() }}").render({{"x", 1}}),
                       doctest::Contains("cannot call a integer"), rolora::value_error);
  CHECK_THROWS_WITH_AS((void)chat_template("{{ range(100000000)|length }}").render({}),
                       doctest::Contains("range() of more than"), rolora::value_error);
  // nesting: brackets and blocks deeper than 256 levels are refused, not a stack overflow
  CHECK(chat_refusal("{{ " + std::string(1000, '[') + std::string(1000, ']') + " }}")
            .find("nests deeper than 256") != std::string::npos);
  std::string ifs;
  for (int i = 0; i < 300; ++i) ifs += "{% if true %}";
  CHECK(chat_refusal(ifs).find("nests deeper than 256") != std::string::npos);
  CHECK(chat_refusal("{{ " + std::string(100000, '(')).find("tpl:1:") != std::string::npos);
  // a macro calling itself forever
  CHECK_THROWS_WITH_AS(
      (void)chat_template("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").render({}),
      doctest::Contains("macro calls nest deeper than 256"), rolora::value_error);
}

TEST_CASE("chat templates: generation spans") {
  const chat_template t(
      "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ "
      "m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{{ '\\n' }}{% endfor "
      "%}");
  CHECK(t.has_generation_blocks());
  const auto out = t.render(
      {{"messages",
        ordered_json::parse(
            R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "ans"}])")}});
  CHECK(out.text == "<user>hi\n<assistant>yo</s>\n<user>q\n<assistant>ans</s>\n");
  REQUIRE(out.generation_spans.size() == 2);
  CHECK(out.text.substr(out.generation_spans[0].first,
                        out.generation_spans[0].second - out.generation_spans[0].first) ==
        "yo</s>");
  CHECK(out.text.substr(out.generation_spans[1].first,
                        out.generation_spans[1].second - out.generation_spans[1].first) ==
        "ans</s>");
  CHECK_FALSE(chat_template("{{ x }}").has_generation_blocks());
  // '-' on a generation tag strips the white space around it, as the reference
  const auto stripped =
      chat_template("a  {%- generation -%}  b  {%- endgeneration %}\nc").render({});
  CHECK(stripped.text == "abc");  // trim_blocks takes the newline after a tag
  REQUIRE(stripped.generation_spans.size() == 1);
  CHECK(stripped.generation_spans[0] == std::pair<std::size_t, std::size_t>{1, 2});
  const auto spaced = chat_template("x {% generation %} y {% endgeneration %} z").render({});
  CHECK(spaced.text == "x  y  z");
  REQUIRE(spaced.generation_spans.size() == 1);
  CHECK(spaced.generation_spans[0] == std::pair<std::size_t, std::size_t>{2, 5});
}

TEST_CASE("chat templates: rendering") {
  // undefined prints nothing; none too; true/false lowercase and floats as the reference prints
  // them
  CHECK(render_text("[{{ nothing }}][{{ nothing.deeper }}][{{ none }}]") == "[][][]");
  CHECK(render_text(
            "{{ true }} {{ 2.0 }} {{ 1 / 4 }} {{ 7 // 2 }} {{ [1, 'a', none] }} {{ 'x' ~ 2.0 }}") ==
        "true 2.0 0.25 3 [1, \"a\", null] x2");
  // trim_blocks and lstrip_blocks
  CHECK(render_text("a\n  {% if true %}\n  b\n  {% endif %}\nc") == "a\n  b\nc");
  // a ChatML-like template, by hand
  const chat_template chatml(
      "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% "
      "endfor -%}\n"
      "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
  const auto ctx = ordered_json::parse(
      R"({"messages": [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "2+2?"}], "add_generation_prompt": true})");
  CHECK(chatml.render(ctx).text ==
        "<|im_start|>system\nBe "
        "brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
  // namespaces, loop variables, slicing, tojson keeping the order of the mapping
  CHECK(render_text("{% set ns = namespace(n=0) %}{% for x in [3, 4, 5][::-1] %}{% set ns.n = ns.n "
                    "+ x %}{{ loop.index }}{{ ',' if not loop.last }}{% endfor %} {{ ns.n }}") ==
        "1,2,3 12");
  CHECK(render_text("{{ d|tojson }} {{ d|tojson(indent=1) }}",
                    {{"d", ordered_json::parse(R"({"b": 1, "a": [true, "é"]})")}}) ==
        "{\"b\": 1, \"a\": [true, \"é\"]} {\n \"b\": 1,\n \"a\": [\n  true,\n  \"é\"\n ]\n}");
  CHECK(render_text("{% macro m(a, b='B') %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }} {{ m(1, b=2) }} "
                    "{{ m(b=3, a=4) }}") == "1B 12 43");
}
