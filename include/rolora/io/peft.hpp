// Hugging Face PEFT adapter directories: save an adapter_set as `adapter_config.json` +
// `adapter_model.safetensors` that peft.PeftModel.from_pretrained loads onto a matching model, and
// load such a directory back with every key, rank and shape checked.
//
// Tensor keys are PEFT's (peft/utils/save_and_load.py, get_peft_model_state_dict, adapter name
// removed):
//   base_model.model.<module path>.lora_A.weight   [r, in]
//   base_model.model.<module path>.lora_B.weight   [out, r]
//   base_model.model.<module path>.<param>         modules_to_save, e.g. "classifier.weight"
//                                                  [out, in]; a one-column matrix (a bias, a
//                                                  layer-norm weight) is written 1-D as torch has
//                                                  it
// <module path> is the rolora module name, or what peft_options::module_path makes of it so the
// keys match the user's model (e.g. "layers.0.attention.q" ->
// "encoder.layer.0.attention.self.query"). Needs nlohmann-json (an optional dependency of rolora).
#pragma once
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/config.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/io/file.hpp>
#include <rolora/io/json.hpp>
#include <rolora/io/safetensors.hpp>
#include <set>
#include <string>
#include <vector>

namespace rolora {

inline constexpr std::string_view peft_config_file = "adapter_config.json";
inline constexpr std::string_view peft_weights_file = "adapter_model.safetensors";

// The ranges load_peft_adapter accepts for r (and rank_pattern values; a module's shape bounds
// them further) and lora_alpha (and alpha_pattern values, finite and positive).
inline constexpr std::uint64_t max_peft_rank = std::uint64_t(1) << 30;
inline constexpr double max_peft_alpha = 1e6;

struct peft_options {
  // rolora module name -> the module's path in the user's model (PEFT's target name, without
  // "base_model.model."). Must be one-to-one over the modules saved. Identity when empty.
  std::function<std::string(const std::string&)> module_path;
  // Element type of the saved weights: F32 (PEFT's usual), F64, F16 or BF16 (round to nearest
  // even).
  tensor_dtype dtype = tensor_dtype::f32;
  // Written to adapter_config.json (null when empty); read back by load_peft_adapter.
  std::optional<std::string> base_model_name_or_path;
  std::optional<std::string> task_type;  // PEFT's TaskType, e.g. "SEQ_CLS"
  // The largest adapter_config.json and adapter_model.safetensors load_peft_adapter reads.
  std::uint64_t max_config_bytes = std::uint64_t(16) << 20;
  std::uint64_t max_weights_bytes = default_max_file_bytes;
};

// A module_path that puts `prefix` before every rolora name ("model." + "layers.0.attention.q").
inline std::function<std::string(const std::string&)> peft_prefix(std::string prefix) {
  return [prefix = std::move(prefix)](const std::string& name) { return prefix + name; };
}

// What a PEFT directory holds: the adapters (modules_to_save included) and the configuration
// they were trained with, with rank_pattern / alpha_pattern resolved to rolora module names.
template <backend Backend>
struct peft_adapter {
  lora_config config;
  adapter_set<Backend> adapters;
  std::optional<std::string> base_model_name_or_path;
  std::optional<std::string> task_type;
};

namespace detail::peft {

inline constexpr std::string_view key_prefix = "base_model.model.";

inline std::string map_path(const peft_options& o, const std::string& name) {
  std::string path = o.module_path ? o.module_path(name) : name;
  if (path.empty())
    fail<config_error>("peft.module_path", "module_path maps module '", name, "' to an empty path");
  return path;
}

// "classifier.weight" -> {"classifier", "weight"}: modules_to_save hold parameters of modules.
inline std::pair<std::string, std::string> split_parameter(const std::string& name) {
  const auto dot = name.rfind('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == name.size()) {
    fail<config_error>("peft.module_path", "module to save '", name,
                       "' must be a parameter name '<module>.<param>' such as 'classifier.weight'");
  }
  return {name.substr(0, dot), name.substr(dot + 1)};
}

inline std::string lora_key(const std::string& path, char factor) {
  return std::string(key_prefix) + path + ".lora_" + factor + ".weight";
}

// lora_alpha as PEFT writes it: an integer when it is one.
inline nlohmann::json number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 9.0e15)
    return nlohmann::json(static_cast<std::int64_t>(v));
  return nlohmann::json(v);
}

// Limits on rank_pattern / alpha_pattern keys. Real keys are module paths
// ("model.layers.0.self_attn.q_proj") or short regexes over them; the limits keep compiling and
// matching a hostile key bounded in time and stack (the regex engines recurse per pattern element).
inline constexpr std::size_t max_pattern_length = 256;
inline constexpr int max_pattern_nesting = 8;  // groups inside groups
inline constexpr int max_pattern_repeat = 16;  // m and n of the one {m,n} allowed

// Checks that `pattern` (a key of `field`) stays within the subset of Python's `re` syntax that
// ECMAScript shares and within the limits above; config_error naming the key and the rule broken.
inline void check_pattern(const std::string& pattern, const char* field) {
  const auto refuse = [&](const auto&... why) {
    fail<config_error>("peft.pattern", peft_config_file, ": ", field, " key '",
                       json_io::bounded_text(pattern, 60), "' ", why...);
  };
  if (pattern.empty()) refuse("is empty");
  if (pattern.size() > max_pattern_length) {
    refuse("has ", pattern.size(), " characters, more than the ", max_pattern_length, " allowed");
  }
  int depth = 0, counted = 0;
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      if (++i == pattern.size()) refuse("ends with a lone backslash");
      if ((pattern[i] >= '1' && pattern[i] <= '9') || pattern[i] == 'k') {
        refuse("has a backreference (\\", pattern[i], "), which is not supported");
      }
    } else if (in_class) {
      in_class = c != ']';
    } else if (c == '[') {
      in_class = true;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') ++i;
      if (i + 1 < pattern.size() && pattern[i + 1] == ']')
        ++i;  // "[]...]" and "[^]...]": ']' is literal
    } else if (c == '(') {
      if (i + 1 < pattern.size() && pattern[i + 1] == '?' &&
          (i + 2 >= pattern.size() || pattern[i + 2] != ':')) {
        refuse("has a lookaround, named group or inline flag '(?",
               i + 2 < pattern.size() ? pattern[i + 2] : ' ',
               "', which is not supported (only '(?:' is)");
      }
      if (++depth > max_pattern_nesting)
        refuse("nests groups deeper than ", max_pattern_nesting, " levels");
    } else if (c == ')') {
      if (--depth < 0) refuse("has an unbalanced ')' at character ", i);
    } else if (c == '{') {
      std::size_t j = i + 1;
      int m = -1, n = -1, *value = &m;
      for (; j < pattern.size() &&
             (std::isdigit(static_cast<unsigned char>(pattern[j])) || pattern[j] == ',');
           ++j) {
        if (pattern[j] == ',') {
          if (value == &n) break;
          value = &n;
          n = -2;  // "{m,}" until a digit comes: unbounded
        } else {
          *value = std::min(1000, std::max(*value, 0) * 10 + (pattern[j] - '0'));
        }
      }
      if (j == pattern.size() || pattern[j] != '}' || m < 0)
        continue;  // a literal '{' as in Python
      if (n == -2) refuse("has an unbounded repetition {", m, ",}; use * or +");
      if (++counted > 1 || m > max_pattern_repeat || n > max_pattern_repeat) {
        refuse("may have one counted repetition {m,n} with m, n <= ", max_pattern_repeat);
      }
      i = j;
    }
  }
  if (in_class) refuse("has an unclosed '['");
  if (depth != 0) refuse("has ", depth, " unclosed '('");
}

// The keys of rank_pattern or alpha_pattern, compiled as PEFT's get_pattern_key uses them:
// re.match(r"(.*\.)?(p)$", path), in file order, with the value each key maps to.
// Every key is checked first (check_pattern); with libstdc++ the regexes run on its
// polynomial-time (Thompson NFA) executor, whose work and recursion grow with the pattern only.
using compiled_patterns = std::vector<std::pair<std::regex, const nlohmann::ordered_json*>>;

inline compiled_patterns compile_patterns(const nlohmann::ordered_json& patterns,
                                          const char* field) {
#if defined(__GLIBCXX__)
  constexpr auto flags = std::regex::ECMAScript | std::regex_constants::__polynomial;
#else
  constexpr auto flags = std::regex::ECMAScript;
#endif
  compiled_patterns out;
  for (const auto& [pattern, value] : patterns.items()) {
    check_pattern(pattern, field);
    try {
      out.emplace_back(std::regex("(.*\\.)?(" + pattern + ")$", flags), &value);
    } catch (const std::regex_error& e) {
      fail<config_error>("peft.pattern", peft_config_file, ": ", field, " key '",
                         json_io::bounded_text(pattern, 60),
                         "' is not a usable regular expression (", e.what(), ")");
    }
  }
  return out;
}

// The value of the first pattern matching `path`, or nullptr.
inline const nlohmann::ordered_json* match_pattern(const compiled_patterns& patterns,
                                                   const std::string& path) {
  for (const auto& [re, value] : patterns) {
    if (std::regex_match(path, re)) return value;
  }
  return nullptr;
}

}  // namespace detail::peft

// Writes `adapters` (LoRA factors and modules_to_save) as a PEFT adapter directory `dir` (created
// if needed). Each adapter's rank and scaling must be what `config` gives its module
// (config_error otherwise: PEFT recomputes the scaling from the config when it loads). All
// checks run before anything is written; each file is replaced atomically.
template <backend Backend>
void save_peft_adapter(const std::filesystem::path& dir, const adapter_set<Backend>& adapters,
                       const lora_config& config, const peft_options& options = {}) {
  using json = nlohmann::json;
  using T = typename Backend::scalar;
  if (!is_floating(options.dtype)) {
    detail::raise<config_error>("save_peft_adapter: dtype must be F32, F64, F16 or BF16, got ",
                                dtype_name(options.dtype));
  }
  std::map<std::string, tensor_data> tensors;
  std::map<std::string, std::string> path_owner;  // model path -> rolora name, to catch collisions
  auto claim = [&](const std::string& path, const std::string& name) {
    const auto [it, fresh] = path_owner.emplace(path, name);
    if (!fresh) {
      detail::fail<config_error>("peft.module_path", "modules '", it->second, "' and '", name,
                                 "' both map to '", path, "'");
    }
  };

  json target_modules = json::array();
  for (const auto& [name, a] : adapters) {
    if (a.rank() != config.rank_for(name)) {
      detail::raise<config_error>("module '", name, "': adapter rank ", a.rank(),
                                  " but the config gives r = ", config.rank_for(name),
                                  " (set rank_pattern)");
    }
    const double s = config.scaling_for(name);
    if (std::abs(double(a.scaling) - s) > 1e-6 * std::abs(s)) {
      detail::raise<config_error>("module '", name, "': adapter scaling ", double(a.scaling),
                                  " but the config gives ", s, " (lora_alpha / ",
                                  config.use_rslora ? "sqrt(r)" : "r",
                                  "); PEFT would load a different model");
    }
    const std::string path = detail::peft::map_path(options, name);
    claim(path, name);
    target_modules.push_back(path);
    tensors[detail::peft::lora_key(path, 'A')] =
        make_tensor(Backend::to_host(a.A), options.dtype);  // [r, in]
    tensors[detail::peft::lora_key(path, 'B')] =
        make_tensor(Backend::to_host(a.B), options.dtype);  // [out, r]
  }
  std::set<std::string> saved_modules;
  for (const auto& [name, w] : adapters.modules_to_save()) {
    const auto [module, param] = detail::peft::split_parameter(name);
    const std::string path = detail::peft::map_path(options, module);
    if (const auto it = path_owner.find(path); it != path_owner.end()) {
      detail::fail<config_error>("peft.module_path", "module to save '", name, "' maps to '", path,
                                 "', the path of LoRA module '", it->second, "'");
    }
    const std::string key = std::string(detail::peft::key_prefix) + path + "." + param;
    if (tensors.count(key)) {
      detail::fail<config_error>("peft.module_path", "module to save '", name, "' maps to key '",
                                 key, "' which another module to save already has");
    }
    saved_modules.insert(path);
    const host_matrix<T> h = Backend::to_host(w);
    tensor_data t = make_tensor(h, options.dtype);
    if (h.cols() == 1) t.shape = {static_cast<std::uint64_t>(h.rows())};  // torch vectors are 1-D
    tensors[key] = std::move(t);
  }

  auto mapped_pattern = [&](const auto& pattern, auto value_of) {
    json out = json::object();
    for (const auto& [name, v] : pattern) out[detail::peft::map_path(options, name)] = value_of(v);
    return out;
  };
  json cfg = json::object();
  cfg["alpha_pattern"] =
      mapped_pattern(config.alpha_pattern, [](double v) { return detail::peft::number(v); });
  cfg["auto_mapping"] = nullptr;
  cfg["base_model_name_or_path"] =
      options.base_model_name_or_path ? json(*options.base_model_name_or_path) : json();
  cfg["bias"] = "none";
  cfg["fan_in_fan_out"] = false;
  cfg["inference_mode"] = true;
  cfg["init_lora_weights"] =
      config.init_lora_weights == lora_init::gaussian ? json("gaussian") : json(true);
  cfg["layers_pattern"] = nullptr;
  cfg["layers_to_transform"] = nullptr;
  cfg["lora_alpha"] = detail::peft::number(config.lora_alpha);
  cfg["lora_dropout"] = config.lora_dropout;
  cfg["modules_to_save"] = saved_modules.empty() ? json() : json(saved_modules);
  cfg["peft_type"] = "LORA";
  cfg["r"] = config.r;
  cfg["rank_pattern"] = mapped_pattern(config.rank_pattern, [](index_t v) { return json(v); });
  cfg["revision"] = nullptr;
  cfg["target_modules"] =
      std::move(target_modules);  // exact paths: PEFT matches a key equal to the name
  cfg["task_type"] = options.task_type ? json(*options.task_type) : json();
  cfg["use_dora"] = false;
  cfg["use_rslora"] = config.use_rslora;

  std::string config_text;
  try {
    config_text = cfg.dump(2) + "\n";  // keys sorted, as PEFT's json.dumps(..., sort_keys=True)
  } catch (const json::exception& e) {
    detail::raise<value_error>("save_peft_adapter: names must be valid UTF-8: ", e.what());
  }
  const auto weights = serialize_safetensors(tensors, {{"format", "pt"}});

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) detail::fail<error>("io", "cannot create directory '", dir.string(), "': ", ec.message());
  write_file_bytes(dir / peft_weights_file, weights);
  write_file_bytes(
      dir / peft_config_file,
      std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(config_text.data()),
                                    config_text.size()));
}

// Reads the PEFT adapter directory `dir` for a model with LoRA on `modules` and, optionally, the
// dense `saved` modules (module_shape{name, rows, cols} with parameter names such as
// "classifier.weight"; a one-column entry also accepts torch's 1-D tensor). Every expected key
// must be present and no other key may be; every tensor must have the shape the config implies
// (lora_A [r, in], lora_B [out, r], with r from r / rank_pattern). Scaling is recomputed from
// lora_alpha / alpha_pattern and r (sqrt(r) with use_rslora), as PEFT does. Errors:
// config_error for unusable configurations and missing or unexpected keys, shape_error for shapes.
template <backend Backend>
peft_adapter<Backend> load_peft_adapter(const std::filesystem::path& dir,
                                        const std::vector<module_shape>& modules,
                                        const std::vector<module_shape>& saved = {},
                                        const peft_options& options = {}) {
  using ojson =
      nlohmann::ordered_json;  // keeps rank_pattern's order, which decides PEFT's matching
  using T = typename Backend::scalar;
  namespace fs = std::filesystem;
  if (!fs::exists(dir / peft_weights_file) && fs::exists(dir / "adapter_model.bin")) {
    detail::fail<error>("io", "'", dir.string(), "' holds adapter_model.bin (pickle); only ",
                        peft_weights_file, " can be read: re-save it with safe_serialization=True");
  }

  // --- adapter_config.json ---
  const auto text = read_file_bytes(dir / peft_config_file, options.max_config_bytes);
  const auto cfg =
      detail::json_io::parse_json<ojson>(text, [](detail::json_io::fault, const std::string& why) {
        detail::fail<config_error>("peft.config", peft_config_file, ": ", why);
      });
  auto bad = [](const std::string& field, const auto&... why) {
    detail::fail<config_error>("peft.config", peft_config_file, ": ", field, " ", why...);
  };
  const auto excerpt = [](const ojson& v) { return detail::json_io::json_excerpt(v); };
  if (!cfg.is_object()) bad("the file", "must hold a JSON object, got ", excerpt(cfg));
  auto field = [&](const char* name) -> const ojson* {
    const auto it = cfg.find(name);
    return it == cfg.end() || it->is_null() ? nullptr : &*it;
  };
  const ojson* peft_type = field("peft_type");
  if (!peft_type || !peft_type->is_string() || peft_type->get<std::string>() != "LORA") {
    bad("peft_type", "must be \"LORA\", got ", peft_type ? excerpt(*peft_type) : "nothing");
  }
  auto flag = [&](const char* name, bool fallback) {
    const ojson* v = field(name);
    if (!v) return fallback;
    if (!v->is_boolean()) bad(name, "must be true or false, got ", excerpt(*v));
    return v->get<bool>();
  };
  // A rank: an integer in [1, max_peft_rank] (the module's shape bounds it further below).
  auto rank = [&](const std::string& name, const ojson& v) {
    if (!v.is_number_unsigned() || v.get<std::uint64_t>() < 1 ||
        v.get<std::uint64_t>() > max_peft_rank) {
      bad(name, "must be an integer in [1, ", max_peft_rank, "], got ", excerpt(v));
    }
    return static_cast<index_t>(v.get<std::uint64_t>());
  };
  // A lora_alpha: a finite number in (0, max_peft_alpha].
  auto alpha = [&](const std::string& name, const ojson& v) {
    const double a = v.is_number() ? v.get<double>() : 0.0;
    if (!v.is_number() || !(a > 0.0 && a <= max_peft_alpha)) {
      bad(name, "must be a finite number in (0, ", static_cast<std::int64_t>(max_peft_alpha),
          "], got ", excerpt(v));
    }
    return a;
  };
  if (flag("use_dora", false)) bad("use_dora", "is true: DoRA adapters are not supported");
  if (flag("fan_in_fan_out", false))
    bad("fan_in_fan_out", "is true: transposed (Conv1D) weights are not supported");
  if (flag("lora_bias", false)) bad("lora_bias", "is true: lora_B biases are not supported");
  if (const ojson* b = field("bias"); b && (!b->is_string() || b->get<std::string>() != "none")) {
    bad("bias", "must be \"none\" (rolora adapters train no biases), got ", excerpt(*b));
  }

  lora_config config;  // PEFT's defaults where a field is absent: r = 8, lora_alpha = 8
  config.r = field("r") ? rank("r", *field("r")) : 8;
  config.lora_alpha = field("lora_alpha") ? alpha("lora_alpha", *field("lora_alpha")) : 8.0;
  if (const ojson* d = field("lora_dropout")) {
    config.lora_dropout = d->is_number() ? d->get<double>() : -1.0;
    if (!(config.lora_dropout >= 0.0 && config.lora_dropout < 1.0)) {
      bad("lora_dropout", "must be a number in [0, 1), got ", excerpt(*d));
    }
  }
  config.use_rslora = flag("use_rslora", false);
  if (const ojson* init = field("init_lora_weights")) {
    if (init->is_string() && init->get<std::string>() == "gaussian") {
      config.init_lora_weights = lora_init::gaussian;
    } else if (!init->is_boolean()) {
      // pissa, olora, loftq, eva, corda, ...: the saved factors go with a modified base model.
      bad("init_lora_weights", "must be true, false or \"gaussian\", got ", excerpt(*init),
          " (initialisations that change the base weights are not supported)");
    }
  }
  if (const ojson* t = field("target_modules")) {
    if (t->is_string()) {
      config.target_modules = {t->get<std::string>()};
    } else if (t->is_array()) {
      for (const auto& m : *t) {
        if (!m.is_string()) bad("target_modules", "must hold strings, got ", excerpt(m));
        config.target_modules.push_back(m.get<std::string>());
      }
    } else {
      bad("target_modules", "must be a string or a list of strings, got ", excerpt(*t));
    }
  }
  const ojson empty = ojson::object();
  const ojson* rank_pattern = field("rank_pattern") ? field("rank_pattern") : &empty;
  const ojson* alpha_pattern = field("alpha_pattern") ? field("alpha_pattern") : &empty;
  if (!rank_pattern->is_object())
    bad("rank_pattern", "must be an object, got ", excerpt(*rank_pattern));
  if (!alpha_pattern->is_object())
    bad("alpha_pattern", "must be an object, got ", excerpt(*alpha_pattern));
  const auto rank_patterns = detail::peft::compile_patterns(*rank_pattern, "rank_pattern");
  const auto alpha_patterns = detail::peft::compile_patterns(*alpha_pattern, "alpha_pattern");

  peft_adapter<Backend> out;
  for (const char* name : {"base_model_name_or_path", "task_type"}) {
    if (const ojson* v = field(name)) {
      if (!v->is_string()) bad(name, "must be a string or null, got ", excerpt(*v));
      (std::string_view(name) == "task_type" ? out.task_type : out.base_model_name_or_path) =
          v->get<std::string>();
    }
  }

  // --- adapter_model.safetensors ---
  const safetensors_file file =
      read_safetensors(dir / peft_weights_file, options.max_weights_bytes);
  std::set<std::string> unused;
  for (const auto& k : file.names()) unused.insert(k);
  auto take = [&](const std::string& key, const std::string& what) {
    if (!unused.erase(key)) {
      detail::fail<config_error>("peft.missing_key", peft_weights_file, " has no tensor '", key,
                                 "' (", what, ")");
    }
    return file.tensor(key);
  };
  auto expect_2d = [&](const tensor_view& t, const std::string& module, const char* factor,
                       index_t rows, index_t cols, bool rank_in_rows) {
    const bool two_d = t.shape.size() == 2;
    const bool rank_ok = two_d && (rank_in_rows ? t.shape[0] : t.shape[1]) ==
                                      std::uint64_t(rank_in_rows ? rows : cols);
    const bool other_ok = two_d && (rank_in_rows ? t.shape[1] : t.shape[0]) ==
                                       std::uint64_t(rank_in_rows ? cols : rows);
    if (two_d && other_ok && !rank_ok) {
      detail::fail<shape_error>("peft.rank", "module '", module, "': ", factor, " '", t.name,
                                "' has rank ", rank_in_rows ? t.shape[0] : t.shape[1], " but ",
                                peft_config_file, " gives r = ", rank_in_rows ? rows : cols,
                                " (r / rank_pattern)");
    }
    if (!two_d || !other_ok) {
      detail::fail<shape_error>("peft.shape", "module '", module, "': ", factor, " '", t.name,
                                "' expected ", detail::shape_string(rows, cols), ", got ",
                                t.shape_string());
    }
    return Backend::from_host(to_host_matrix<T>(t));
  };

  std::map<std::string, std::string> path_owner;
  for (const auto& m : modules) {
    const std::string path = detail::peft::map_path(options, m.name);
    if (const auto [it, fresh] = path_owner.emplace(path, m.name); !fresh) {
      detail::fail<config_error>("peft.module_path", "modules '", it->second, "' and '", m.name,
                                 "' both map to '", path, "'");
    }
    std::string rank_field = "r";
    if (const ojson* v = detail::peft::match_pattern(rank_patterns, path)) {
      rank_field = "rank_pattern['" + path + "']";
      const index_t r = rank(rank_field, *v);
      if (r != config.r) config.rank_pattern[m.name] = r;
    }
    if (const ojson* v = detail::peft::match_pattern(alpha_patterns, path)) {
      const double a = alpha("alpha_pattern['" + path + "']", *v);
      if (a != config.lora_alpha) config.alpha_pattern[m.name] = a;
    }
    const index_t r = config.rank_for(m.name);
    if (const index_t max_r = std::min(m.out_features, m.in_features); max_r >= 1 && r > max_r) {
      bad(rank_field, "= ", r, " is outside [1, min(out, in)] = [1, ", max_r, "] for module '",
          m.name, "' of shape ", detail::shape_string(m.out_features, m.in_features));
    }
    check_rank(m.name, m.out_features, m.in_features, r);
    lora_adapter<Backend> a;
    a.A = expect_2d(take(detail::peft::lora_key(path, 'A'), "lora_A of module '" + m.name + "'"),
                    m.name, "lora_A", r, m.in_features, true);  // [r, in]
    a.B = expect_2d(take(detail::peft::lora_key(path, 'B'), "lora_B of module '" + m.name + "'"),
                    m.name, "lora_B", m.out_features, r, false);  // [out, r]
    a.scaling = static_cast<T>(config.scaling_for(m.name));
    out.adapters.insert(m.name, std::move(a));
  }
  for (const auto& s : saved) {
    const auto [module, param] = detail::peft::split_parameter(s.name);
    const std::string key = std::string(detail::peft::key_prefix) +
                            detail::peft::map_path(options, module) + "." + param;
    const tensor_view t = take(key, "module to save '" + s.name + "'");
    const bool as_vector =
        s.in_features == 1 && t.shape.size() == 1 && t.shape[0] == std::uint64_t(s.out_features);
    const bool as_matrix = t.shape.size() == 2 && t.shape[0] == std::uint64_t(s.out_features) &&
                           t.shape[1] == std::uint64_t(s.in_features);
    if (!as_vector && !as_matrix) {
      detail::fail<shape_error>(
          "peft.shape", "module to save '", s.name, "': '", key, "' expected ",
          s.in_features == 1 ? "[" + std::to_string(s.out_features) + "] or " : std::string(),
          detail::shape_string(s.out_features, s.in_features), ", got ", t.shape_string());
    }
    out.adapters.add_module_to_save(s.name, Backend::from_host(to_host_matrix<T>(t)));
  }
  if (!unused.empty()) {
    std::string list;
    std::size_t shown = 0;
    for (const auto& k : unused) {
      if (shown++ == 3) {
        list += ", ...";
        break;
      }
      list += (list.empty() ? "'" : ", '") + k + "'";
    }
    detail::fail<config_error>("peft.unexpected_key", peft_weights_file, " has ", unused.size(),
                               " tensor(s) for no expected module: ", list);
  }
  out.config = std::move(config);
  return out;
}

// Loads `dir` for the modules (and modules_to_save) of `like`, e.g. a freshly initialised set.
template <backend Backend>
peft_adapter<Backend> load_peft_adapter(const std::filesystem::path& dir,
                                        const adapter_set<Backend>& like,
                                        const peft_options& options = {}) {
  std::vector<module_shape> modules, saved;
  for (const auto& [name, a] : like) modules.push_back({name, a.out_features(), a.in_features()});
  for (const auto& [name, w] : like.modules_to_save())
    saved.push_back({name, Backend::rows(w), Backend::cols(w)});
  return load_peft_adapter<Backend>(dir, modules, saved, options);
}

}  // namespace rolora
