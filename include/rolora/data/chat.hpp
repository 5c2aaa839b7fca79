// Chat data for decoders: a conversation (a JSON list of {"role", "content", ...} messages)
// rendered with the model's own chat template and tokenized as transformers'
// apply_chat_template(tokenize=True) does (the template writes the special tokens itself, so the
// post-processor adds none), with the loss on the assistant's responses only.
//
//   const auto tpl = rolora::data::chat_template_of("models/SmolLM2-135M-Instruct");
//   const auto vars = rolora::data::chat_variables("models/SmolLM2-135M-Instruct");
//   auto ex = rolora::data::encode_chat(tok, tpl, messages, vars);   // ex.ids, ex.targets
//
// Which tokens are the responses:
//  - a template with {% generation %} blocks (transformers' return_assistant_tokens_mask): the
//    text rendered inside them;
//  - any other template: for each assistant message i, the text between
//      P = render(messages[:i], add_generation_prompt=true)    (the prompt it answers) and
//      E = render(messages[:i+1], add_generation_prompt=false) (the conversation up to its end),
//    which takes in what the template writes around the content (Qwen3's empty think block, the
//    end-of-turn token). This needs a template that writes a generation prompt, P a prefix of E
//    and E a prefix of the whole rendering: a template that ignores add_generation_prompt (as
//    Llama 3 base's, which always ends with the assistant's header) or renders a turn
//    differently once later turns follow (Qwen3's think block) is refused, naming the turn,
//    rather than guessed at.
// The rendering is tokenized piece by piece at those boundaries; a boundary that would change
// the tokens of the whole rendering (a merge across it) is refused too.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <rolora/core/error.hpp>
#include <rolora/io/file.hpp>
#include <rolora/io/json.hpp>
#include <rolora/tokenizers/chat_template.hpp>
#include <rolora/tokenizers/tokenizer.hpp>
#include <string>
#include <utility>
#include <vector>

namespace rolora::data {

namespace detail {
inline nlohmann::ordered_json read_json_file(const std::filesystem::path& path) {
  const auto bytes = rolora::read_file_bytes(path, std::uint64_t{64} << 20);
  const auto fail = [&](rolora::detail::json_io::fault, const std::string& why) -> void {
    rolora::detail::fail<config_error>("tokenizer", path.string(), ": ", why);
  };
  return rolora::detail::json_io::parse_json<nlohmann::ordered_json>(bytes, fail);
}
}  // namespace detail

// A chat template in a file of its own (a .jinja file).
inline tokenizers::chat_template chat_template_from_file(const std::filesystem::path& file) {
  const auto bytes = rolora::read_file_bytes(file, std::uint64_t{16} << 20);
  return tokenizers::chat_template(std::string(bytes.begin(), bytes.end()), file.string());
}

// The chat template of a model directory, as transformers finds it: dir/chat_template.jinja,
// else tokenizer_config.json's "chat_template" (a string, or a list of {"name", "template"} of
// which "default" is taken). None of these: a config_error saying so.
inline tokenizers::chat_template chat_template_of(const std::filesystem::path& dir) {
  if (const auto jinja = dir / "chat_template.jinja"; std::filesystem::exists(jinja))
    return chat_template_from_file(jinja);
  const auto config_path = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(config_path)) {
    rolora::detail::fail<config_error>("tokenizer", dir.string(),
                                       ": no chat_template.jinja and no tokenizer_config.json");
  }
  const auto config = detail::read_json_file(config_path);
  const std::string name = config_path.string() + ": chat_template";
  if (!config.is_object() || !config.contains("chat_template")) {
    rolora::detail::fail<config_error>("tokenizer", config_path.string(),
                                       ": the model has no chat template (no \"chat_template\" "
                                       "and no chat_template.jinja); give one with "
                                       "--chat-template FILE");
  }
  const auto& t = config.at("chat_template");
  if (t.is_string()) return tokenizers::chat_template(t.get<std::string>(), name);
  if (t.is_array()) {
    for (const auto& entry : t) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry.at("template").is_string())
        return tokenizers::chat_template(entry.at("template").get<std::string>(), name);
    }
  }
  rolora::detail::fail<config_error>(
      "tokenizer", name,
      ": expected a string or a list of {\"name\", \"template\"} with a \"default\", got ",
      rolora::detail::json_io::json_excerpt(t, 80));
}

// The variables transformers gives every chat template from tokenizer_config.json: bos_token,
// eos_token, unk_token, pad_token, sep_token, cls_token, mask_token as strings (the file may
// write a token as a string or as {"content": ...}). Empty when the directory has no such file.
inline nlohmann::ordered_json chat_variables(const std::filesystem::path& dir) {
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  const auto config_path = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(config_path)) return vars;
  const auto config = detail::read_json_file(config_path);
  if (!config.is_object()) return vars;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                          "cls_token", "mask_token"}) {
    if (!config.contains(key)) continue;
    const auto& v = config.at(key);
    if (v.is_string())
      vars[key] = v;
    else if (v.is_object() && v.contains("content") && v.at("content").is_string())
      vars[key] = v.at("content");
  }
  return vars;
}

// One conversation as a training sequence. targets[t] = ids[t] on the responses, -100 elsewhere
// (the next-token loss shifts them itself).
struct chat_example {
  std::vector<std::int32_t> ids, targets;
};

// `messages` rendered with `tpl` and `variables` (e.g. chat_variables(dir), plus "tools"), with
// the loss on the assistant's responses (see the top of this file). Errors (value_error):
// `messages` not a list of objects with a string "role", no assistant message, a turn the
// template does not render as a prefix, a boundary that splits a token.
inline chat_example encode_chat(const tokenizers::tokenizer& tok,
                                const tokenizers::chat_template& tpl,
                                const nlohmann::ordered_json& messages,
                                const nlohmann::ordered_json& variables) {
  using rolora::detail::raise;
  if (!messages.is_array()) {
    raise<value_error>("chat: messages must be a list, got ",
                       rolora::detail::json_io::json_excerpt(messages, 60));
  }
  std::vector<std::size_t> assistant_turns;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m.at("role").is_string()) {
      raise<value_error>("chat: message ", i, " must be an object with a string \"role\", got ",
                         rolora::detail::json_io::json_excerpt(m, 60));
    }
    if (m.at("role") == "assistant") assistant_turns.push_back(i);
  }
  if (assistant_turns.empty())
    raise<value_error>("chat: the conversation has no assistant message");

  const auto render = [&](std::size_t count, bool generation_prompt) {
    auto ctx = variables;
    ctx["messages"] = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < count; ++i) ctx["messages"].push_back(messages[i]);
    ctx["add_generation_prompt"] = generation_prompt;
    return tpl.render(ctx);
  };
  const auto whole = render(messages.size(), false);
  std::vector<std::pair<std::size_t, std::size_t>> spans;  // byte ranges of whole.text
  if (tpl.has_generation_blocks()) {
    spans = whole.generation_spans;
    if (spans.empty())
      raise<value_error>("chat: the template's {% generation %} blocks rendered nothing");
  } else {
    for (const auto i : assistant_turns) {
      const auto prompt = render(i, true).text, upto = render(i + 1, false).text;
      if (prompt == render(i, false).text) {
        raise<value_error>("chat: the template ignores add_generation_prompt (message ", i,
                           ", assistant): where its response begins is unknown; mark the "
                           "response with {% generation %} blocks or give another template");
      }
      if (!upto.starts_with(prompt)) {
        raise<value_error>("chat: the template does not render message ", i,
                           " (assistant) as a continuation of its generation prompt; mark the "
                           "response with {% generation %} blocks");
      }
      if (!whole.text.starts_with(upto)) {
        raise<value_error>("chat: the template renders message ", i,
                           " (assistant) differently once later messages follow (as Qwen3's "
                           "think block does); split the conversation there or mark the "
                           "response with {% generation %} blocks");
      }
      spans.emplace_back(prompt.size(), upto.size());
    }
  }

  chat_example ex;
  std::size_t at = 0;
  const auto append = [&](std::size_t end, bool learn) {
    if (end <= at) return;
    const auto ids = tok.encode(std::string_view(whole.text).substr(at, end - at), false);
    ex.ids.insert(ex.ids.end(), ids.begin(), ids.end());
    ex.targets.insert(ex.targets.end(), ids.begin(), ids.end());
    if (!learn) std::fill(ex.targets.end() - std::ptrdiff_t(ids.size()), ex.targets.end(), -100);
    at = end;
  };
  for (const auto& [begin, end] : spans) {
    if (begin < at || end > whole.text.size()) {
      raise<value_error>("chat: response spans overlap or run past the rendering");
    }
    append(begin, false);
    append(end, true);
  }
  append(whole.text.size(), false);
  if (ex.ids != tok.encode(whole.text, false)) {
    raise<value_error>(
        "chat: a response boundary of the rendering splits what the tokenizer "
        "reads as one token; the template's turns must end at token boundaries");
  }
  return ex;
}

}  // namespace rolora::data
