// tokenize: a Hugging Face tokenizer.json on the command line (rolora/tokenizers/tokenizer.hpp).
// Reads UTF-8 lines on stdin and prints each line's token ids, space-separated, one output line
// per input line (an empty encoding: an empty line), with the special tokens the tokenizer's
// post-processor adds, as the reference library's encode does by default.
//   tokenize --tokenizer models/llama3 < lines.txt          # a directory holding tokenizer.json
//   tokenize --tokenizer tokenizer.json --no-special < lines.txt
//   tokenize --tokenizer tokenizer.json --pair < pairs.tsv  # "first<TAB>second" per line
// Lines end at '\n' only (a '\r' before it is part of the text). A file the library cannot read
// or refuses, a line that is not valid UTF-8, or --pair without a tab: a one-line error on
// stderr naming the line, and a nonzero exit. docs/tokenizers.md.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <rolora/core/error.hpp>
#include <rolora/tokenizers/tokenizer.hpp>
#include <string>
#include <vector>

#include "common/exit_code.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "Prints the token ids of each line of stdin (space-separated, one line per line) under a "
      "Hugging Face tokenizer.json."};
  std::string path;
  bool no_special = false, pair = false;
  app.add_option("--tokenizer", path, "a tokenizer.json, or a model directory holding one")
      ->required();
  app.add_flag("--no-special", no_special, "leave out the special tokens of the post-processor");
  app.add_flag("--pair", pair, "each line is a pair of texts separated by its first tab");
  CLI11_PARSE(app, argc, argv);
  return rolora::apps::exit_code_of([&] {
    const auto tok = rolora::tokenizers::tokenizer::from_path(path);
    std::ios::sync_with_stdio(false);
    std::string line, out;
    std::size_t number = 0;
    while (std::getline(std::cin, line)) {
      ++number;
      std::vector<std::int32_t> ids;
      try {
        if (pair) {
          const auto tab = line.find('\t');
          if (tab == std::string::npos)
            rolora::raise<rolora::value_error>("--pair: the line has no tab between its two texts");
          ids = tok.encode_pair(std::string_view(line).substr(0, tab),
                                std::string_view(line).substr(tab + 1), !no_special);
        } else {
          ids = tok.encode(line, !no_special);
        }
      } catch (const rolora::error& e) {
        rolora::raise<rolora::value_error>("line ", number, ": ", e.what());
      }
      out.clear();
      for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i > 0) out += ' ';
        out += std::to_string(ids[i]);
      }
      out += '\n';
      std::cout << out;
    }
    std::cout.flush();
    return std::cout ? 0 : 1;
  });
}
