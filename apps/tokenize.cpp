// tokenize: a Hugging Face tokenizer.json on the command line (rolora/tokenizers/tokenizer.hpp).
// Reads UTF-8 lines on stdin and prints each line's token ids, space-separated, one output line
// per input line (an empty encoding: an empty line), with the special tokens the tokenizer's
// post-processor adds, as the reference library's encode does by default.
//   tokenize --tokenizer models/llama3 < lines.txt          # a directory holding tokenizer.json
//   tokenize --tokenizer tokenizer.json --no-special < lines.txt
//   tokenize --tokenizer tokenizer.json --pair < pairs.tsv  # "first<TAB>second" per line
//   tokenize --tokenizer models/qwen3 --chat < chats.jsonl     # chat template -> ids
//   tokenize --tokenizer models/qwen3 --chat --render < chats.jsonl  # the rendered text
// With --chat, DIR is a model directory and each stdin line a JSON object whose keys are the
// chat template's variables (messages, add_generation_prompt, tools, ...); the special tokens
// DIR/tokenizer_config.json names (bos_token, eos_token, ...) are added unless the line sets them.
// The template is DIR/chat_template.jinja, else tokenizer_config.json's "chat_template" (a string,
// or a list of {"name", "template"}: "default"; rolora/data/chat.hpp), rendered by
// rolora/tokenizers/chat_template.hpp. It
// prints the rendering's ids without the post-processor's special tokens (as transformers'
// apply_chat_template(tokenize=True): the template writes them), or with --render the text as one
// JSON string per line.
// Lines end at '\n' only (a '\r' before it is part of the text). A file the library cannot read
// or refuses, a line that is not valid UTF-8, --pair without a tab, a chat line that is not a
// JSON object or that the template fails on (raise_exception included): a one-line error on
// stderr naming the line, and a nonzero exit. docs/tokenizers.md.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/data/chat.hpp>
#include <rolora/tokenizers/tokenizer.hpp>
#include <string>
#include <vector>

#include "common/exit_code.hpp"

using ordered_json = nlohmann::ordered_json;

int main(int argc, char** argv) {
  CLI::App app{
      "Prints the token ids of each line of stdin (space-separated, one line per line) under a "
      "Hugging Face tokenizer.json; with --chat, of each line's conversation (a JSON object) "
      "rendered by the model's chat template."};
  std::string path;
  bool no_special = false, pair = false, chat = false, render = false;
  app.add_option("--tokenizer", path,
                 "a tokenizer.json, or a model directory holding one (with --chat: a directory)")
      ->required();
  app.add_flag("--no-special", no_special, "leave out the special tokens of the post-processor");
  app.add_flag("--pair", pair, "each line is a pair of texts separated by its first tab");
  app.add_flag("--chat", chat,
               "each line is a JSON object of chat-template variables (messages, "
               "add_generation_prompt, tools, ...); prints the ids of its rendering, without the "
               "post-processor's special tokens");
  app.add_flag("--render", render, "with --chat: print the rendered text as a JSON string instead");
  CLI11_PARSE(app, argc, argv);
  if (chat && (pair || no_special)) {
    std::fprintf(stderr, "error: --chat takes neither --pair nor --no-special\n");
    return 2;
  }
  if (render && !chat) {
    std::fprintf(stderr, "error: --render needs --chat\n");
    return 2;
  }
  if (chat)
    return rolora::apps::exit_code_of([&] {
      const auto tpl = rolora::data::chat_template_of(path);
      const auto specials = rolora::data::chat_variables(path);
      std::optional<rolora::tokenizers::tokenizer> tok;
      if (!render) tok = rolora::tokenizers::tokenizer::from_path(path);
      std::ios::sync_with_stdio(false);
      std::string line, out;
      std::size_t number = 0;
      while (std::getline(std::cin, line)) {
        ++number;
        out.clear();
        try {
          ordered_json context;
          try {
            context = ordered_json::parse(line);
          } catch (const nlohmann::json::exception& e) {
            rolora::raise<rolora::value_error>("not valid JSON: ", e.what());
          }
          if (!context.is_object())
            rolora::raise<rolora::value_error>("expected a JSON object, got ", context.type_name());
          for (const auto& [key, v] : specials.items())
            if (!context.contains(key)) context[key] = v;
          const auto rendered = tpl.render(context);
          if (render) {
            out = nlohmann::json(rendered.text)
                      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
          } else {
            const auto ids = tok->encode(rendered.text, false);
            for (std::size_t i = 0; i < ids.size(); ++i) {
              if (i > 0) out += ' ';
              out += std::to_string(ids[i]);
            }
          }
        } catch (const rolora::error& e) {
          rolora::raise<rolora::value_error>("line ", number, ": ", e.what());
        }
        out += '\n';
        std::cout << out;
      }
      std::cout.flush();
      return std::cout ? 0 : 1;
    });
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
