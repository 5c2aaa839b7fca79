// Text datasets as users have them: a table of string columns read from
//
//   .csv           RFC 4180: a header row, comma-separated, fields in double quotes may hold
//                  commas, newlines and "" for a quote
//   .tsv           tab-separated with a header row and no quoting (GLUE's files as distributed,
//                  read as the Hugging Face datasets library reads them: csv.QUOTE_NONE)
//   .jsonl, .json  JSON Lines: one object per line; its keys are the columns (the first line's
//                  keys, in order; later lines may not lack one); strings as they are, numbers,
//                  booleans and nested values as their JSON text
//
// Every row has every column. A ragged row, a missing column, a line that is not a JSON object
// or a file that is not UTF-8 where it must be is a value_error naming the file and line.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <rolora/core/error.hpp>
#include <rolora/io/file.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace rolora::data {

struct text_table {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;  // rows[i][j]: row i, column j

  std::size_t size() const { return rows.size(); }
  // The index of column `name`; value_error listing the columns there are when it is missing.
  std::size_t column(std::string_view name) const {
    for (std::size_t j = 0; j < columns.size(); ++j) {
      if (columns[j] == name) return j;
    }
    std::string have;
    for (const auto& c : columns) have += (have.empty() ? "" : ", ") + c;
    rolora::detail::raise<value_error>("no column '", name, "' (the columns are: ", have, ")");
  }
  bool has_column(std::string_view name) const {
    for (const auto& c : columns) {
      if (c == name) return true;
    }
    return false;
  }
};

namespace detail::table {

// Splits delimited text into records of fields; `quoted`: RFC 4180 quotes.
inline std::vector<std::vector<std::string>> split_records(std::string_view text, char delimiter,
                                                           bool quoted,
                                                           const std::filesystem::path& file) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> record;
  std::string field;
  std::size_t line = 1, i = 0;
  bool in_quotes = false, field_started = false;
  auto end_field = [&] {
    record.push_back(std::move(field));
    field.clear();
    field_started = false;
  };
  auto end_record = [&] {
    end_field();
    if (!(record.size() == 1 && record[0].empty())) records.push_back(std::move(record));
    record.clear();
  };
  if (text.substr(0, 3) == "\xEF\xBB\xBF") i = 3;  // a UTF-8 byte order mark
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (quoted && c == '"' && !field_started) {
      in_quotes = field_started = true;
    } else if (c == delimiter) {
      end_field();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_record();
      ++line;
    } else {
      field += c;
      field_started = true;
    }
  }
  if (in_quotes) {
    rolora::detail::raise<value_error>(file.string(), ": a quoted field opened before line ", line,
                                       " is not closed");
  }
  if (!field.empty() || !record.empty()) end_record();
  return records;
}

inline text_table delimited(std::string_view text, char delimiter, bool quoted,
                            const std::filesystem::path& file) {
  auto records = split_records(text, delimiter, quoted, file);
  if (records.empty()) rolora::detail::raise<value_error>(file.string(), ": no header row");
  text_table t;
  t.columns = std::move(records[0]);
  for (std::size_t r = 1; r < records.size(); ++r) {
    if (records[r].size() != t.columns.size()) {
      rolora::detail::raise<value_error>(file.string(), ": record ", r, " (after the header) has ",
                                         records[r].size(), " fields, the header ",
                                         t.columns.size());
    }
    t.rows.push_back(std::move(records[r]));
  }
  return t;
}

inline text_table json_lines(std::string_view text, const std::filesystem::path& file) {
  text_table t;
  std::size_t line = 0, start = 0;
  while (start < text.size()) {
    const std::size_t end = std::min(text.find('\n', start), text.size());
    const std::string_view body = text.substr(start, end - start);
    start = end + 1;
    ++line;
    if (body.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(body);
    } catch (const nlohmann::json::exception& e) {
      rolora::detail::raise<value_error>(file.string(), ": line ", line,
                                         " is not JSON: ", e.what());
    }
    if (!j.is_object())
      rolora::detail::raise<value_error>(file.string(), ": line ", line, " is not an object");
    if (t.columns.empty()) {
      for (const auto& [key, value] : j.items()) t.columns.push_back(key);
    }
    std::vector<std::string> row;
    for (const auto& c : t.columns) {
      const auto it = j.find(c);
      if (it == j.end())
        rolora::detail::raise<value_error>(file.string(), ": line ", line, " has no '", c, "'");
      row.push_back(it->is_string() ? it->get<std::string>() : it->dump());
    }
    t.rows.push_back(std::move(row));
  }
  if (t.columns.empty())
    rolora::detail::raise<value_error>(file.string(), ": no JSON object in the file");
  return t;
}

}  // namespace detail::table

// Reads `file` by its extension (.csv, .tsv, .jsonl or .json).
inline text_table read_text_table(const std::filesystem::path& file,
                                  std::uint64_t max_bytes = std::uint64_t(4) << 30) {
  const auto ext = file.extension().string();
  if (ext != ".csv" && ext != ".tsv" && ext != ".jsonl" && ext != ".json") {
    rolora::detail::raise<config_error>(
        file.string(), ": unknown table format (expected .csv, .tsv, .jsonl or .json)");
  }
  const auto bytes = read_file_bytes(file, max_bytes);
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (ext == ".csv") return detail::table::delimited(text, ',', true, file);
  if (ext == ".tsv") return detail::table::delimited(text, '\t', false, file);
  return detail::table::json_lines(text, file);
}

}  // namespace rolora::data
