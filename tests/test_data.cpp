// Tests of the data side (include/rolora/data): e-mail cleaning on synthetic messages whose
// expected text is written out by hand, the byte tokenizer, the seeded corpus split, the
// pretraining windows and the masked-byte batches; and, when scripts/fetch_data.sh has filled the
// cache, the real SpamAssassin corpus.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/data/chat.hpp>
#include <rolora/data/data.hpp>
#include <rolora/federated/partition.hpp>
#include <set>
#include <string>
#include <vector>

#include "test_skip.hpp"

namespace data = rolora::data;
using data::byte_tokenizer;

namespace {

// The cache fetch_data.sh fills: $ROLORA_DATA_DIR, else <repo>/.cache/data.
std::filesystem::path data_cache() {
  if (const char* dir = std::getenv("ROLORA_DATA_DIR"); dir && *dir) return dir;
  return std::filesystem::path(__FILE__).parent_path().parent_path() / ".cache" / "data";
}

bool corpus_available() {
  return std::filesystem::is_directory(data::spam_assassin_dir(data_cache()) / "spam-2");
}

// A message with CRLF line ends, a mbox separator, folded headers and tell-tale spam headers.
const std::string crlf_message =
    "From spammer@example.com  Thu Aug 22 12:36:23 2002\r\n"
    "Return-Path: <spammer@example.com>\r\n"
    "Received: from mail.example.com (mail.example.com [10.0.0.1])\r\n"
    "\tby mx.example.org (Postfix) with ESMTP id D03E543C36\r\n"
    "\tfor <you@example.org>; Thu, 22 Aug 2002 07:36:16 -0400 (EDT)\r\n"
    "X-Spam-Status: Yes, hits=12.3 required=5.0\r\n"
    "\ttests=BIG_MONEY,CLICK_BELOW\r\n"
    "Subject: Make money\r\n"
    "  fast, really\r\n"
    "List-Id: <deals.example.com>\r\n"
    "\r\n"
    "Hello   friend,\r\n"
    "\r\n"
    "click  here.\r\n";

}  // namespace

TEST_CASE("data: header fields are unfolded and the mbox separator is not a header") {
  const auto e = data::parse_entity(data::normalize_newlines(crlf_message));
  REQUIRE(e.headers.size() == 5);
  CHECK(e.headers[0].name == "Return-Path");
  CHECK(e.headers[1].name == "Received");
  CHECK(e.headers[1].value ==
        "from mail.example.com (mail.example.com [10.0.0.1])\tby mx.example.org (Postfix) with "
        "ESMTP id "
        "D03E543C36\tfor <you@example.org>; Thu, 22 Aug 2002 07:36:16 -0400 (EDT)");
  CHECK(data::find_header(e.headers, "subject").value() == "Make money  fast, really");
  CHECK(data::find_header(e.headers, "X-SPAM-STATUS").value() ==
        "Yes, hits=12.3 required=5.0\ttests=BIG_MONEY,CLICK_BELOW");
  CHECK_FALSE(data::find_header(e.headers, "Content-Type").has_value());
  CHECK(e.body == "Hello   friend,\n\nclick  here.\n");
}

TEST_CASE("data: email_text keeps the Subject and the body and strips every other header") {
  const std::string text = data::email_text(crlf_message);
  CHECK(text == "Make money fast, really\nHello friend,\nclick here.");
  for (const char* leak :
       {"X-Spam", "Received", "Return-Path", "List-Id", "BIG_MONEY", "Postfix", "\r"}) {
    CHECK_MESSAGE(text.find(leak) == std::string::npos, leak);
  }
  // No Subject at all: the body alone.
  CHECK(data::email_text("X-Spam-Flag: YES\n\nbody only\n") == "body only");
}

TEST_CASE("data: multipart/mixed keeps the text parts, decodes them and drops attachments") {
  const std::string msg =
      "Subject: =?iso-8859-1?Q?Caf=E9_menu?=\n"
      "MIME-Version: 1.0\n"
      "Content-Type: multipart/mixed;\n"
      "\tboundary=\"==outer==\"\n"
      "X-Spam-Level: *****\n"
      "\n"
      "This is a multi-part message in MIME format.\n"
      "--==outer==\n"
      "Content-Type: text/plain; charset=iso-8859-1\n"
      "Content-Transfer-Encoding: quoted-printable\n"
      "\n"
      "Soup du jour: caf=E9 cr=E8me, a very long line that is wrapped by a so=\n"
      "ft line break; 2 + 2 =3D 4.\n"
      "--==outer==\n"
      "Content-Type: image/gif; name=\"logo.gif\"\n"
      "Content-Transfer-Encoding: base64\n"
      "Content-Disposition: attachment; filename=\"logo.gif\"\n"
      "\n"
      "R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=\n"
      "--==outer==\n"
      "Content-Type: text/plain\n"
      "Content-Transfer-Encoding: base64\n"
      "\n"
      "U2VlIHlvdSBh\n"
      "dCBub29uLg==\n"
      "--==outer==--\n"
      "epilogue that is ignored\n";
  const std::string text = data::email_text(msg);
  CHECK(text ==
        "Caf\xE9 menu\nSoup du jour: caf\xE9 cr\xE8me, a very long line that is wrapped by a soft "
        "line break; 2 + "
        "2 = 4.\nSee you at noon.");
  for (const char* leak :
       {"Content-Type", "base64", "R0lGOD", "==outer==", "MIME", "epilogue", "X-Spam"}) {
    CHECK_MESSAGE(text.find(leak) == std::string::npos, leak);
  }
}

TEST_CASE("data: multipart/alternative prefers text/plain; HTML is reduced to its text") {
  const std::string both =
      "Subject: hi\n"
      "Content-Type: multipart/alternative; boundary=b1\n"
      "\n"
      "--b1\n"
      "Content-Type: text/html\n"
      "\n"
      "<p>html version</p>\n"
      "--b1\n"
      "Content-Type: text/plain\n"
      "\n"
      "plain version\n"
      "--b1--\n";
  CHECK(data::email_text(both) == "hi\nplain version");

  const std::string html_only =
      "Subject: offer\n"
      "Content-Type: multipart/alternative; boundary=\"----=_NextPart_000\"\n"
      "\n"
      "------=_NextPart_000\n"
      "Content-Type: text/html; charset=us-ascii\n"
      "Content-Transfer-Encoding: quoted-printable\n"
      "\n"
      "<html><head><style>p {color: red}</style><title>T</title></head>\n"
      "<body><!-- tracking --><p>Buy&nbsp;now &amp; "
      "save</p><table><tr><td>A&#66;</td><td>&#x43;</td></tr></table>\n"
      "<script>alert(1)</script><a href=3D\"http://x.example\">click</a> 1 &lt; 2</body></html>\n"
      "------=_NextPart_000--\n";
  CHECK(data::email_text(html_only) == "offer\nT\nBuy now & save\nAB C\nclick 1 < 2");

  // A text/plain part that is really an HTML document (common in spam) is stripped too.
  CHECK(data::email_text(
            "Subject: s\nContent-Type: text/plain\n\n  <HTML><BODY>hi<br>there</BODY></HTML>\n") ==
        "s\nhi\nthere");
  // ... but HTML-looking text inside a plain mail stays as written.
  CHECK(data::email_text("Subject: s\nContent-Type: text/plain\n\nuse <b>bold</b>\n") ==
        "s\nuse <b>bold</b>");
}

TEST_CASE("data: nested multipart, message/rfc822, signatures and a boundary written with blanks") {
  const std::string msg =
      "Subject: fwd\n"
      "Content-Type: multipart/signed; boundary=sig; protocol=\"application/pgp-signature\"\n"
      "\n"
      "--sig\n"
      "Content-Type: multipart/mixed; boundary=\"inner\"\n"
      "\n"
      "--inner\n"
      "Content-Type: text/plain\n"
      "\n"
      "see below\n"
      "--inner\n"
      "Content-Type: message/rfc822\n"
      "\n"
      "Received: from somewhere\n"
      "Subject: inner subject\n"
      "\n"
      "forwarded body\n"
      "--inner--\n"
      "--sig\n"
      "Content-Type: application/pgp-signature\n"
      "\n"
      "-----BEGIN PGP SIGNATURE-----\n"
      "iD8DBQE9\n"
      "-----END PGP SIGNATURE-----\n"
      "--sig--\n";
  CHECK(data::email_text(msg) == "fwd\nsee below\nforwarded body");

  const std::string blanks =
      "Subject: x\n"
      "Content-Type: multipart/alternative; boundary=\"=Multipart Boundary 07\"\n"
      "\n"
      "--= Multipart Boundary 07\n"
      "Content-Type: text/plain\n"
      "\n"
      "text\n"
      "--= Multipart Boundary 07--\n";
  CHECK(data::email_text(blanks) == "x\ntext");

  // No Content-Type, but a MIME body all the same.
  const std::string untyped =
      "Subject: y\n"
      "\n"
      "This is a MIME Message\n"
      "\n"
      "----=_Part_1\n"
      "Content-Type: text/plain\n"
      "\n"
      "the text\n"
      "----=_Part_1\n"
      "Content-Type: application/octet-stream\n"
      "\n"
      "AAAA\n"
      "----=_Part_1--\n";
  CHECK(data::email_text(untyped) == "y\nthe text");  // the MIME preamble is not text
}

TEST_CASE("data: transfer and header decoders") {
  CHECK(data::decode_quoted_printable("a=3Db=\nc =E9=\r\nd =ZZ end=") == "a=bc \xE9=\r\nd =ZZ end");
  CHECK(data::decode_quoted_printable("soft=  \nbreak") == "softbreak");
  CHECK(data::decode_base64("SGVs\nbG8s\r\nIHdvcmxkIQ==") == "Hello, world!");
  CHECK(data::decode_base64("YQ") == "a");
  CHECK(data::decode_encoded_words("=?iso-8859-1?Q?Caf=E9_au_lait?= =?utf-8?B?w6k=?= ok") ==
        "Caf\xE9 au lait\xC3\xA9 ok");
  CHECK(data::decode_encoded_words("plain =?x?Q?a?= and =?bad") == "plain a and =?bad");
  CHECK(data::html_to_text("a<b>b</b>c &#233;&#8364; &unknown; <3 x") ==
        "abc \xE9\xE2\x82\xAC &unknown; <3 x");
  CHECK(data::collapse_whitespace("  a \t b \n\n  c  ") == "a b\nc");
  const auto ct = data::parse_content_type("Text/HTML; Charset=\"utf-8\"; boundary=\"a;b\"");
  CHECK(ct.type == "text");
  CHECK(ct.subtype == "html");
  CHECK(ct.param("charset") == "utf-8");
  CHECK(ct.param("boundary") == "a;b");
}

TEST_CASE("data: byte tokenizer pads, truncates and round-trips every byte") {
  static_assert(byte_tokenizer::vocab_size == 259);
  const auto e = data::encode("ab", 5);
  CHECK(e.ids == std::vector<std::int32_t>{byte_tokenizer::cls, 'a', 'b', byte_tokenizer::pad,
                                           byte_tokenizer::pad});
  CHECK(e.length == 3);
  const auto t = data::encode("abcdef", 4);
  CHECK(t.ids == std::vector<std::int32_t>{byte_tokenizer::cls, 'a', 'b', 'c'});
  CHECK(t.length == 4);
  CHECK(data::encode("", 1).ids == std::vector<std::int32_t>{byte_tokenizer::cls});

  std::string all(256, '\0');
  std::iota(all.begin(), all.end(), '\0');  // bytes 0..255, including NUL and 0x80..0xFF
  const auto full = data::encode(all, 300);
  CHECK(full.length == 257);
  std::vector<std::int32_t> bytes(full.ids.begin() + 1, full.ids.begin() + 257);
  std::vector<std::int32_t> expected(256);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(bytes == expected);
  CHECK(data::decode(full.ids) == all);

  const std::vector<std::string> texts = {"xy", "hello world", ""};
  const std::vector<std::size_t> order = {1, 0, 2};
  const auto batch = data::encode_batch(texts, order, 4);
  CHECK(batch.size() == 3);
  CHECK(batch.ids ==
        std::vector<std::int32_t>{257, 'h', 'e', 'l', 257, 'x', 'y', 256, 257, 256, 256, 256});
  CHECK(batch.lengths == std::vector<std::size_t>{4, 3, 1});

  CHECK_THROWS_AS(data::encode("a", 0), rolora::config_error);
  const std::vector<std::int32_t> bad = {257, 300};
  CHECK_THROWS_WITH_AS(data::decode(bad),
                       doctest::Contains("[rolora.data.tokenizer] decode: id 300 at position 1"),
                       rolora::value_error);
  const std::vector<std::size_t> out_of_range = {3};
  CHECK_THROWS_AS(data::encode_batch(texts, out_of_range, 4), rolora::value_error);
}

namespace {
// 1000 labels in three unbalanced classes, interleaved.
std::vector<int> synthetic_labels() {
  std::vector<int> labels;
  for (int i = 0; i < 1000; ++i) labels.push_back(i % 10 < 6 ? 0 : (i % 10 < 7 ? 1 : 2));
  return labels;
}
}  // namespace

TEST_CASE("data: the corpus split is deterministic, disjoint, covering and stratified") {
  const auto labels = synthetic_labels();  // 600 / 100 / 300
  const auto s = data::split_corpus(labels, 42);
  const auto again = data::split_corpus(labels, 42);
  CHECK(s.test == again.test);
  CHECK(s.pretrain == again.pretrain);
  CHECK(s.finetune == again.finetune);
  CHECK(data::split_corpus(labels, 43).test != s.test);

  std::vector<int> seen(labels.size(), 0);
  for (const auto* part : {&s.test, &s.pretrain, &s.finetune}) {
    CHECK(std::is_sorted(part->begin(), part->end()));
    for (const std::size_t i : *part) ++seen[i];
  }
  CHECK(std::all_of(seen.begin(), seen.end(),
                    [](int k) { return k == 1; }));  // disjoint and covering

  auto per_class = [&](const std::vector<std::size_t>& part) {
    std::map<int, std::size_t> n;
    for (const std::size_t i : part) ++n[labels[i]];
    return n;
  };
  // round(0.20 n_c), round(0.15 n_c), the rest: exactly, for every class.
  CHECK(per_class(s.test) == std::map<int, std::size_t>{{0, 120}, {1, 20}, {2, 60}});
  CHECK(per_class(s.pretrain) == std::map<int, std::size_t>{{0, 90}, {1, 15}, {2, 45}});
  CHECK(per_class(s.finetune) == std::map<int, std::size_t>{{0, 390}, {1, 65}, {2, 195}});

  CHECK_THROWS_AS(data::split_corpus(labels, 1, {0.5, 0.5}), rolora::config_error);
  CHECK_THROWS_AS(data::split_corpus(labels, 1, {-0.1, 0.2}), rolora::config_error);
}

TEST_CASE("data: the fine-tuning pool feeds the partitioners and maps back to corpus indices") {
  const auto labels = synthetic_labels();
  const auto s = data::split_corpus(labels, 7);
  const auto pool_labels = data::gather(labels, s.finetune);
  REQUIRE(pool_labels.size() == s.finetune.size());
  const auto parts = rolora::partition_dirichlet(pool_labels, 8, 0.5, 7);
  const auto clients = data::to_corpus_indices(parts, s.finetune);
  const std::set<std::size_t> pool(s.finetune.begin(), s.finetune.end());
  std::size_t total = 0;
  for (std::size_t c = 0; c < clients.size(); ++c) {
    total += clients[c].size();
    for (std::size_t k = 0; k < clients[c].size(); ++k) {
      CHECK(pool.count(clients[c][k]) == 1);  // never a test or pretraining email
      CHECK(labels[clients[c][k]] == pool_labels[parts[c][k]]);  // the label the partitioner saw
    }
  }
  CHECK(total == s.finetune.size());
  const std::vector<std::size_t> bad = {5000};
  CHECK_THROWS_AS(data::gather(labels, bad), rolora::value_error);
}

TEST_CASE("data: personal evaluation shares follow each client's training label mix") {
  // Client 0 trains on classes 0 and 1 (3:1), client 1 on class 1 only, client 2 on 0 and 1
  // (1:1); nobody trains on class 2.
  const std::vector<std::vector<int>> train = {{0, 0, 0, 1}, {1, 1}, {0, 1}};
  std::vector<int> test;
  for (int k = 0; k < 80; ++k) test.push_back(0);  // 80 of class 0
  for (int k = 0; k < 40; ++k) test.push_back(1);  // 40 of class 1
  for (int k = 0; k < 10; ++k) test.push_back(2);  // 10 of class 2
  const auto shares = rolora::partition_like(train, test, 5);
  REQUIRE(shares.size() == 3);
  const auto count = [&](std::size_t c, int y) {
    return std::count_if(shares[c].begin(), shares[c].end(),
                         [&](std::size_t i) { return test[i] == y; });
  };
  // Class 0: weights 3 : 0 : 1 of 80; class 1: 1 : 2 : 1 of 40; class 2: nobody.
  CHECK(count(0, 0) == 60);
  CHECK(count(1, 0) == 0);
  CHECK(count(2, 0) == 20);
  CHECK(count(0, 1) == 10);
  CHECK(count(1, 1) == 20);
  CHECK(count(2, 1) == 10);
  std::set<std::size_t> seen;
  for (const auto& share : shares) {
    CHECK(std::is_sorted(share.begin(), share.end()));
    for (const auto i : share) {
      CHECK(test[i] != 2);
      CHECK(seen.insert(i).second);  // disjoint
    }
  }
  CHECK(seen.size() == 120);
  CHECK(rolora::partition_like(train, test, 5) == shares);  // seeded
  CHECK(rolora::partition_like(train, test, 6) != shares);
  CHECK_THROWS_AS(rolora::partition_like({}, test, 5), rolora::config_error);
}

TEST_CASE("data: fortunes files and pretraining windows") {
  CHECK(data::parse_fortunes("a\n%\nb\r\nc\n%\n\n%\n  d  \n") ==
        std::vector<std::string>{"a", "b\nc", "d"});

  const auto dir = std::filesystem::temp_directory_path() / "rolora_test_fortunes";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "zeta") << "z1\n%\nz2\n";
  std::ofstream(dir / "alpha") << "a1\n%\n";
  std::ofstream(dir / "alpha.dat") << "index bytes\n";
  std::filesystem::create_symlink(dir / "alpha", dir / "alpha.u8");
  CHECK(data::read_fortunes(dir) == std::vector<std::string>{"a1", "z1", "z2"});

  std::vector<data::email_record> emails(3);
  emails[0].text = "e0";
  emails[2].text = "e2";
  const std::vector<std::size_t> set_aside = {2, 0};
  CHECK(data::pretraining_documents(emails, set_aside, dir) ==
        std::vector<std::string>{"a1", "z1", "z2", "e2", "e0"});
  std::filesystem::remove_all(dir);
  CHECK_THROWS_AS(data::read_fortunes(dir), rolora::error);

  // "abc" + "\n" + "de" = 6 bytes -> three windows of CLS + 2 bytes.
  const auto w = data::make_windows({"abc", "de"}, 3);
  CHECK(w.count() == 3);
  CHECK(w.ids == std::vector<std::int32_t>{257, 'a', 'b', 257, 'c', '\n', 257, 'd', 'e'});
  CHECK(data::make_windows({"abcd"}, 3).count() == 2);   // "ab", "cd"
  CHECK(data::make_windows({"abcde"}, 3).count() == 2);  // the last, short piece is dropped
  CHECK_THROWS_AS(data::make_windows({"abc"}, 1), rolora::config_error);
}

namespace {
// n sequences of length L: CLS, a varying number of bytes, PAD.
std::vector<std::int32_t> padded_batch(std::size_t n, std::size_t len) {
  std::vector<std::int32_t> ids(n * len);
  for (std::size_t s = 0; s < n; ++s) {
    const std::size_t real = 1 + (s * 37) % len;  // 1..len real tokens
    for (std::size_t t = 0; t < len; ++t) {
      ids[s * len + t] = t == 0
                             ? byte_tokenizer::cls
                             : (t < real ? std::int32_t((s + 3 * t) % 256) : byte_tokenizer::pad);
    }
  }
  return ids;
}
}  // namespace

TEST_CASE(
    "data: masked-byte batches follow BERT's 15% / 80-10-10 rates and leave CLS and PAD alone") {
  const std::size_t n = 2000, len = 128;
  const auto ids = padded_batch(n, len);
  const auto b = data::mask_tokens(ids, len, 2024, 3);
  REQUIRE(b.inputs.size() == ids.size());
  REQUIRE(b.targets.size() == ids.size());
  double candidates = 0, chosen = 0, masked = 0, random_byte = 0, unchanged = 0;
  std::size_t wrong =
      0;  // positions that break the contract (counted: one CHECK per position is slow)
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const bool special = ids[i] == byte_tokenizer::cls || ids[i] == byte_tokenizer::pad;
    candidates += special ? 0 : 1;
    if (b.targets[i] == -1) {
      wrong += b.inputs[i] != ids[i];
      continue;
    }
    wrong += special || b.targets[i] != ids[i];
    ++chosen;
    if (b.inputs[i] == byte_tokenizer::mask) {
      ++masked;
    } else if (b.inputs[i] == ids[i]) {
      ++unchanged;
    } else {
      ++random_byte;
      wrong += b.inputs[i] >= 256;
    }
  }
  CHECK(wrong == 0);
  // Binomial: 4 standard deviations.
  const double rate = chosen / candidates, sd = std::sqrt(0.15 * 0.85 / candidates);
  MESSAGE("candidates ", candidates, ", chosen rate ", rate, ", mask ", masked / chosen,
          ", random ", random_byte / chosen, ", unchanged ", unchanged / chosen);
  CHECK(std::abs(rate - 0.15) < 4 * sd);
  auto near = [&](double count, double p) {
    return std::abs(count / chosen - p) < 4 * std::sqrt(p * (1 - p) / chosen);
  };
  CHECK(near(masked, 0.8));
  // A random byte equals the original one time in 256.
  CHECK(near(random_byte, 0.1 * 255.0 / 256.0));
  CHECK(near(unchanged, 0.1 + 0.1 / 256.0));
}

TEST_CASE("data: masking is a pure function of (seed, step, sequence, position)") {
  const std::size_t n = 64, len = 32;
  const auto ids = padded_batch(n, len);
  const auto b = data::mask_tokens(ids, len, 5, 17);
  const auto again = data::mask_tokens(ids, len, 5, 17);
  CHECK(b.inputs == again.inputs);
  CHECK(b.targets == again.targets);
  CHECK(data::mask_tokens(ids, len, 5, 18).targets != b.targets);
  CHECK(data::mask_tokens(ids, len, 6, 17).targets != b.targets);

  // The documented draws: position i is chosen iff uniform(i) < 0.15 on (seed, batching, step,
  // 0xFFFFFF).
  const rolora::random_stream rs(5, rolora::stream::batching, 17, data::masking_substream);
  std::size_t disagree = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const bool candidate = ids[i] != byte_tokenizer::cls && ids[i] != byte_tokenizer::pad;
    disagree += (b.targets[i] != -1) != (candidate && rs.uniform(i) < 0.15);
  }
  CHECK(disagree == 0);

  // A step's batch cut into micro-batches is masked exactly as the whole batch.
  const std::size_t cut = 23;
  const std::span<const std::int32_t> all(ids);
  const auto first = data::mask_tokens(all.subspan(0, cut * len), len, 5, 17, 0);
  const auto second = data::mask_tokens(all.subspan(cut * len), len, 5, 17, cut);
  std::vector<std::int32_t> joined = first.inputs;
  joined.insert(joined.end(), second.inputs.begin(), second.inputs.end());
  CHECK(joined == b.inputs);

  CHECK_THROWS_AS(data::mask_tokens(std::span(ids).subspan(1), len, 5, 17), rolora::shape_error);
  CHECK_THROWS_AS(data::mask_tokens(ids, len, 5, 17, 0, {0.15, 0.9, 0.2}), rolora::config_error);
  CHECK_THROWS_AS(data::mask_tokens(ids, len, 5, std::uint64_t{1} << 32), rolora::config_error);
}

TEST_CASE("data: pretraining batches draw windows reproducibly and mask them") {
  std::vector<std::string> docs;
  for (int k = 0; k < 50; ++k)
    docs.push_back("document number " + std::to_string(k) + " with some text in it");
  const auto w = data::make_windows(docs, 16);
  REQUIRE(w.count() > 20);
  const auto b = data::pretraining_batch(w, 9, 4, 0, 12);
  const auto again = data::pretraining_batch(w, 9, 4, 0, 12);
  CHECK(b.inputs == again.inputs);
  CHECK(b.targets == again.targets);
  // Sequences 5..11 alone are the same as in the whole batch.
  const auto tail = data::pretraining_batch(w, 9, 4, 5, 7);
  CHECK(std::equal(tail.inputs.begin(), tail.inputs.end(), b.inputs.begin() + 5 * 16));
  CHECK(std::equal(tail.targets.begin(), tail.targets.end(), b.targets.begin() + 5 * 16));
  // Undoing the masking gives back one of the windows.
  for (std::size_t s = 0; s < 12; ++s) {
    std::vector<std::int32_t> original(b.inputs.begin() + std::ptrdiff_t(s * 16),
                                       b.inputs.begin() + std::ptrdiff_t(s * 16 + 16));
    for (std::size_t t = 0; t < 16; ++t) {
      if (b.targets[s * 16 + t] != -1) original[t] = b.targets[s * 16 + t];
    }
    bool found = false;
    for (std::size_t k = 0; k < w.count() && !found; ++k) {
      const auto win = w.window(k);
      found = std::equal(win.begin(), win.end(), original.begin());
    }
    CHECK(found);
  }
  CHECK_THROWS_AS(data::pretraining_batch(data::token_windows{}, 9, 4, 0, 1), rolora::value_error);
}

TEST_CASE("data: the real SpamAssassin corpus has 6046 messages in its five groups") {
  if (!corpus_available()) {
    ROLORA_SKIP("no SpamAssassin corpus under "
                << data_cache().string() << " (run scripts/fetch_data.sh, or set ROLORA_DATA_DIR)");
  }
  const auto emails = data::read_spam_assassin(data::spam_assassin_dir(data_cache()));
  REQUIRE(emails.size() == 6046);
  std::map<std::string, std::size_t> per_group;
  std::map<int, std::size_t> per_class;
  for (const auto& e : emails) {
    ++per_group[e.group];
    ++per_class[e.label];
  }
  CHECK(per_group == std::map<std::string, std::size_t>{{"easy-ham-1", 2500},
                                                        {"easy-ham-2", 1400},
                                                        {"hard-ham-1", 250},
                                                        {"spam-1", 500},
                                                        {"spam-2", 1396}});
  CHECK(per_class == std::map<int, std::size_t>{{0, 3900}, {1, 250}, {2, 1896}});
  for (const auto& g : data::spam_assassin_groups) CHECK(per_group[std::string(g.name)] == g.count);
  // Every message yields some text, and none starts with a header line.
  std::size_t empty = 0, header_first = 0;
  for (const auto& e : emails) {
    empty += e.text.empty();
    // (A Subject may well start with "From ", as one in easy-ham-1 does.)
    header_first += e.text.starts_with("Return-Path:") || e.text.starts_with("Received:") ||
                    e.text.starts_with("Delivered-To:") || e.text.starts_with("X-");
  }
  CHECK(empty == 0);
  CHECK(header_first == 0);
  // The default split of docs/data.md.
  const auto s = data::split_corpus(data::labels_of(emails), 0);
  CHECK(s.test.size() == 780 + 50 + 379);
  CHECK(s.pretrain.size() == 585 + 38 + 284);
  CHECK(s.finetune.size() == 2535 + 162 + 1233);
}

TEST_CASE("data: a missing corpus directory says how to get it") {
  const auto missing = std::filesystem::temp_directory_path() / "rolora_no_such_corpus";
  CHECK_THROWS_WITH_AS(data::read_spam_assassin(missing),
                       doctest::Contains("run scripts/fetch_data.sh"), rolora::error);
}

namespace {
// A character-level WordPiece tokenizer (a-z, "##a".."##z", "?") with ChatML's turn markers and
// "</s>" as added tokens: every boundary a chat template draws between words is a token boundary.
rolora::tokenizers::tokenizer chat_test_tokenizer() {
  nlohmann::ordered_json vocab = {
      {"<unk>", 0}, {"</s>", 1}, {"<|im_start|>", 2}, {"<|im_end|>", 3}, {"?", 4}};
  for (char c = 'a'; c <= 'z'; ++c) {
    vocab[std::string(1, c)] = vocab.size();
    vocab["##" + std::string(1, c)] = vocab.size();
  }
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (const char* t : {"<unk>", "</s>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back({{"id", vocab[t]},
                     {"content", t},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const nlohmann::ordered_json j = {{"version", "1.0"},
                                    {"added_tokens", added},
                                    {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
                                    {"model",
                                     {{"type", "WordPiece"},
                                      {"unk_token", "<unk>"},
                                      {"continuing_subword_prefix", "##"},
                                      {"max_input_chars_per_word", 100},
                                      {"vocab", vocab}}}};
  return rolora::tokenizers::tokenizer::from_json_text(j.dump());
}

nlohmann::ordered_json chat_of(std::initializer_list<std::pair<const char*, const char*>> turns) {
  auto messages = nlohmann::ordered_json::array();
  for (const auto& [role, content] : turns)
    messages.push_back({{"role", role}, {"content", content}});
  return messages;
}

// The expected example from the rendering written out by hand: (text, learned) pieces.
rolora::data::chat_example expected_chat(
    const rolora::tokenizers::tokenizer& tok,
    std::initializer_list<std::pair<const char*, bool>> pieces) {
  rolora::data::chat_example ex;
  for (const auto& [text, learned] : pieces) {
    for (const auto id : tok.encode(text, false)) {
      ex.ids.push_back(id);
      ex.targets.push_back(learned ? id : -100);
    }
  }
  return ex;
}
}  // namespace

TEST_CASE("data: a chat's loss covers the assistant's turns as the template renders them") {
  const auto tok = chat_test_tokenizer();
  const rolora::tokenizers::chat_template chatml(
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
  const auto messages = chat_of({{"system", "be brief"},
                                 {"user", "ab cd"},
                                 {"assistant", "ef?"},
                                 {"user", "gh"},
                                 {"assistant", "ij kl"}});
  const auto got = rolora::data::encode_chat(tok, chatml, messages, {});
  const auto want = expected_chat(
      tok, {{"<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nab cd<|im_end|>\n"
             "<|im_start|>assistant\n",
             false},
            {"ef?<|im_end|>\n", true},
            {"<|im_start|>user\ngh<|im_end|>\n<|im_start|>assistant\n", false},
            {"ij kl<|im_end|>\n", true}});
  CHECK(got.ids == want.ids);
  CHECK(got.targets == want.targets);

  SUBCASE("{% generation %} blocks mark the responses themselves") {
    const rolora::tokenizers::chat_template marked(
        "{% for m in messages %}{{ m.role }} {% if m.role == 'assistant' %}{% generation %}"
        "{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %} "
        "{% endfor %}");  // (a newline right after a tag would go: trim_blocks)
    const auto ex = rolora::data::encode_chat(tok, marked, messages, {});
    const auto expect = expected_chat(tok, {{"system be brief user ab cd assistant ", false},
                                            {"ef?</s>", true},
                                            {" user gh assistant ", false},
                                            {"ij kl</s>", true},
                                            {" ", false}});
    CHECK(ex.ids == expect.ids);
    CHECK(ex.targets == expect.targets);
  }
  SUBCASE("the template's variables reach it") {
    const rolora::tokenizers::chat_template with_bos(
        "{{ bos_token }}{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}");
    const auto ex = rolora::data::encode_chat(
        tok, with_bos, chat_of({{"user", "x"}, {"assistant", "y"}}), {{"bos_token", "</s>"}});
    const auto expect = expected_chat(tok, {{"</s>user x assistant ", false}, {"y ", true}});
    CHECK(ex.ids == expect.ids);
    CHECK(ex.targets == expect.targets);
  }
}

TEST_CASE("data: a chat the template cannot split into prompt and response is refused") {
  const auto tok = chat_test_tokenizer();
  const auto refused = [&](const char* source, const nlohmann::ordered_json& messages) {
    const rolora::tokenizers::chat_template tpl(source);
    try {
      rolora::data::encode_chat(tok, tpl, messages, {});
    } catch (const rolora::value_error& e) {
      return std::string(e.what());
    }
    return std::string("not refused");
  };
  const auto two_turns =
      chat_of({{"user", "ab"}, {"assistant", "cd"}, {"user", "ef"}, {"assistant", "gh"}});
  // The last response gets a prefix the earlier ones lose (as Qwen3's think block).
  CHECK(refused("{% for m in messages %}{{ m.role }} {% if loop.last and m.role == 'assistant' %}"
                "z {% endif %}{{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant {% endif %}",
                two_turns)
            .find("renders message 1 (assistant) differently once later messages follow") !=
        std::string::npos);
  // A template that ignores add_generation_prompt (always or never writes the prompt).
  for (const char* source : {"{% for m in messages %}{{ m.role }} {{ m.content }}\n{% endfor %}"
                             "assistant ",
                             "{% for m in messages %}{{ m.role }} {{ m.content }}\n{% endfor %}"}) {
    CAPTURE(source);
    CHECK(refused(source, chat_of({{"user", "ab"}, {"assistant", "cd"}}))
              .find("ignores add_generation_prompt") != std::string::npos);
  }
  // The response glued to its prompt: "assistantcd" is one word, "cd" alone another's tokens.
  CHECK(refused("{% for m in messages %}{{ m.role }}{{ m.content }} {% endfor %}"
                "{% if add_generation_prompt %}assistant{% endif %}",
                chat_of({{"user", "ab"}, {"assistant", "cd"}}))
            .find("splits what the tokenizer reads as one token") != std::string::npos);
  const char* chatml =
      "{% for m in messages %}{{ m.role }} {{ m.content }}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant {% endif %}";
  CHECK(refused(chatml, chat_of({{"user", "ab"}})).find("no assistant message") !=
        std::string::npos);
  CHECK(refused(chatml, nlohmann::ordered_json::object()).find("must be a list") !=
        std::string::npos);
  CHECK(refused(chatml, nlohmann::ordered_json::array({{{"content", "x"}}}))
            .find("message 0 must be an object with a string \"role\"") != std::string::npos);
}
