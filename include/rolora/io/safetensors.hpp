// safetensors files (Hugging Face): read, validate and write, with F32/F64/F16/BF16 conversions.
//
// Layout (https://github.com/huggingface/safetensors, safetensors/src/tensor.rs):
//   8 bytes   N, little-endian u64: the header length
//   N bytes   UTF-8 JSON object {"<name>": {"dtype": "F32", "shape": [d0, d1, ...],
//             "data_offsets": [begin, end]}, ..., optional "__metadata__": {str: str}}
//   the rest  the byte buffer; offsets are relative to its start; tensors are row-major (C order),
//             little-endian, and together cover the buffer exactly (no hole, no overlap, no tail).
// The writer produces byte-identical files to the reference serializer: tensors ordered by
// descending dtype (the reference's alignment order) then by name, "__metadata__" first, the header
// padded with spaces to a multiple of 8 bytes so every tensor starts 8-byte aligned.
//
// Every check of a hostile file throws rolora::value_error "[rolora.safetensors.<what>] ..."
// before any out-of-range read; a tensor whose dtype or shape differs from what the caller expects
// throws shape_error naming it. Needs nlohmann-json (an optional dependency of rolora).
#pragma once
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/shape.hpp>
#include <rolora/io/file.hpp>
#include <rolora/io/json.hpp>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace rolora {

// The element types of the safetensors format, in the reference's order (increasing alignment,
// which is also the order the writer sorts by, descending).
enum class tensor_dtype : std::uint8_t {
  boolean,
  u8,
  i8,
  f8_e5m2,
  f8_e4m3,
  i16,
  u16,
  f16,
  bf16,
  i32,
  u32,
  f32,
  f64,
  i64,
  u64
};

namespace detail::st {

struct dtype_entry {
  tensor_dtype dtype;
  std::string_view name;
  std::size_t size;
};
inline constexpr std::array<dtype_entry, 15> dtype_table{{
    {tensor_dtype::boolean, "BOOL", 1},
    {tensor_dtype::u8, "U8", 1},
    {tensor_dtype::i8, "I8", 1},
    {tensor_dtype::f8_e5m2, "F8_E5M2", 1},
    {tensor_dtype::f8_e4m3, "F8_E4M3", 1},
    {tensor_dtype::i16, "I16", 2},
    {tensor_dtype::u16, "U16", 2},
    {tensor_dtype::f16, "F16", 2},
    {tensor_dtype::bf16, "BF16", 2},
    {tensor_dtype::i32, "I32", 4},
    {tensor_dtype::u32, "U32", 4},
    {tensor_dtype::f32, "F32", 4},
    {tensor_dtype::f64, "F64", 8},
    {tensor_dtype::i64, "I64", 8},
    {tensor_dtype::u64, "U64", 8},
}};

inline std::optional<tensor_dtype> parse_dtype(std::string_view s) {
  for (const auto& d : dtype_table) {
    if (d.name == s) return d.dtype;
  }
  return std::nullopt;
}

// The largest header the reference accepts (100 MB).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

inline std::uint64_t load_le(const std::uint8_t* p, std::size_t n) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t(p[i]) << (8 * i);
  return v;
}
inline void store_le(std::uint64_t v, std::size_t n, std::vector<std::uint8_t>& out) {
  for (std::size_t i = 0; i < n; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

}  // namespace detail::st

inline std::string_view dtype_name(tensor_dtype d) {
  return detail::st::dtype_table[static_cast<std::size_t>(d)].name;
}
// Bytes per element.
inline std::size_t dtype_size(tensor_dtype d) {
  return detail::st::dtype_table[static_cast<std::size_t>(d)].size;
}
inline bool is_floating(tensor_dtype d) {
  return d == tensor_dtype::f16 || d == tensor_dtype::bf16 || d == tensor_dtype::f32 ||
         d == tensor_dtype::f64;
}

// ---------------------------------------------------------------------------------------------
// Half-precision conversions. Decoding is exact (every F16 and BF16 value is a float). Encoding
// rounds to nearest, ties to even, in one step from the double value (no double rounding through
// float); values at or beyond the halfway point above the largest finite value become infinity;
// NaN stays NaN (quiet, sign and the leading payload bits kept).
// ---------------------------------------------------------------------------------------------

inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline float bf16_to_float(std::uint16_t b) { return std::bit_cast<float>(std::uint32_t(b) << 16); }

namespace detail::st {

// Rounds v to the nearest binary format with E exponent bits and M mantissa bits (IEEE layout,
// 1 + E + M = 16), ties to even, from the exact double value.
template <int E, int M>
std::uint16_t encode_half(double v) {
  static_assert(1 + E + M == 16);
  constexpr std::int64_t bias = (std::int64_t(1) << (E - 1)) - 1;
  constexpr std::uint64_t max_exponent = (std::uint64_t(1) << E) - 1;  // all ones: inf / NaN
  const std::uint64_t x = std::bit_cast<std::uint64_t>(v);
  const auto sign = static_cast<std::uint16_t>((x >> 63) << (E + M));
  const std::uint64_t biased = (x >> 52) & 0x7FFu;
  const std::uint64_t fraction = x & ((std::uint64_t(1) << 52) - 1);
  if (biased == 0x7FF) {
    if (fraction == 0) return static_cast<std::uint16_t>(sign | (max_exponent << M));  // +-inf
    const std::uint64_t payload = (fraction >> (52 - M)) | (std::uint64_t(1) << (M - 1));
    return static_cast<std::uint16_t>(sign | (max_exponent << M) | payload);
  }
  if (biased == 0)
    return sign;  // double zero or subnormal (< 2^-1022): far below half a target ulp
  const std::uint64_t m = fraction | (std::uint64_t(1) << 52);  // value = m * 2^(e - 52)
  const std::int64_t te = std::int64_t(biased) - 1023 + bias;   // target biased exponent
  // Normal: q = ((te - 1) << M) + m >> (52 - M), the implicit bit lands in the exponent field.
  // Subnormal (te <= 0): q = m >> (53 - M - te), a count of the smallest subnormal.
  const std::int64_t shift = te >= 1 ? 52 - M : 53 - M - te;
  if (shift >= 54) return sign;  // below half the smallest subnormal
  std::uint64_t q = m >> shift;
  const std::uint64_t rest = m & ((std::uint64_t(1) << shift) - 1);
  const std::uint64_t half = std::uint64_t(1) << (shift - 1);
  if (rest > half || (rest == half && (q & 1))) ++q;  // a carry into the exponent is correct
  if (te >= 1) {
    if (te >= std::int64_t(max_exponent))
      return static_cast<std::uint16_t>(sign | (max_exponent << M));
    q += std::uint64_t(te - 1) << M;
  }
  if (q >= (max_exponent << M)) return static_cast<std::uint16_t>(sign | (max_exponent << M));
  return static_cast<std::uint16_t>(sign | q);
}

}  // namespace detail::st

inline std::uint16_t double_to_f16(double v) { return detail::st::encode_half<5, 10>(v); }
inline std::uint16_t double_to_bf16(double v) { return detail::st::encode_half<8, 7>(v); }

namespace detail::st {

// Little-endian loads and stores of one element (a plain copy on little-endian hosts).
template <class Bits>
Bits load_bits(const std::uint8_t* p) {
  if constexpr (std::endian::native == std::endian::little) {
    Bits b;
    std::memcpy(&b, p, sizeof(Bits));
    return b;
  } else {
    return static_cast<Bits>(load_le(p, sizeof(Bits)));
  }
}
template <class Bits>
void store_bits(Bits v, std::uint8_t* p) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, sizeof(Bits));
  } else {
    for (std::size_t i = 0; i < sizeof(Bits); ++i)
      p[i] = static_cast<std::uint8_t>(std::uint64_t(v) >> (8 * i));
  }
}

// n elements of floating dtype d at p -> out[0, n).
template <class T>
void decode(tensor_dtype d, const std::uint8_t* p, std::size_t n, T* out) {
  switch (d) {
    case tensor_dtype::f16:
      for (std::size_t i = 0; i < n; ++i)
        out[i] = static_cast<T>(f16_to_float(load_bits<std::uint16_t>(p + 2 * i)));
      break;
    case tensor_dtype::bf16:
      for (std::size_t i = 0; i < n; ++i)
        out[i] = static_cast<T>(bf16_to_float(load_bits<std::uint16_t>(p + 2 * i)));
      break;
    case tensor_dtype::f32:
      for (std::size_t i = 0; i < n; ++i)
        out[i] = static_cast<T>(std::bit_cast<float>(load_bits<std::uint32_t>(p + 4 * i)));
      break;
    default:  // f64
      for (std::size_t i = 0; i < n; ++i)
        out[i] = static_cast<T>(std::bit_cast<double>(load_bits<std::uint64_t>(p + 8 * i)));
      break;
  }
}

// in[0, n) -> n elements of floating dtype d at p.
template <class T>
void encode(tensor_dtype d, const T* in, std::size_t n, std::uint8_t* p) {
  switch (d) {
    case tensor_dtype::f16:
      for (std::size_t i = 0; i < n; ++i) store_bits(double_to_f16(double(in[i])), p + 2 * i);
      break;
    case tensor_dtype::bf16:
      for (std::size_t i = 0; i < n; ++i) store_bits(double_to_bf16(double(in[i])), p + 2 * i);
      break;
    case tensor_dtype::f32:
      for (std::size_t i = 0; i < n; ++i)
        store_bits(std::bit_cast<std::uint32_t>(static_cast<float>(in[i])), p + 4 * i);
      break;
    default:  // f64
      for (std::size_t i = 0; i < n; ++i)
        store_bits(std::bit_cast<std::uint64_t>(static_cast<double>(in[i])), p + 8 * i);
      break;
  }
}

template <class T>
using row_major_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace detail::st

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

// One tensor of a parsed file; `bytes` points into the file's buffer (valid while it lives).
struct tensor_view {
  std::string name;
  tensor_dtype dtype;
  std::vector<std::uint64_t> shape;  // PyTorch order: [d0, d1, ...], row-major data
  std::span<const std::uint8_t> bytes;

  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (auto d : shape) n *= d;  // validated not to overflow when the file was parsed
    return n;
  }
  std::string shape_string() const {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

namespace detail::st {
inline void require_floating(const tensor_view& t) {
  if (!is_floating(t.dtype)) {
    raise<shape_error>("tensor '", t.name,
                       "': expected a floating-point dtype (F16, BF16, F32, F64), got ",
                       dtype_name(t.dtype));
  }
}
}  // namespace detail::st

// All values of a floating-point tensor, converted to T, in the file's row-major order.
template <class T>
std::vector<T> to_vector(const tensor_view& t) {
  static_assert(std::is_floating_point_v<T>);
  detail::st::require_floating(t);
  std::vector<T> out(t.bytes.size() / dtype_size(t.dtype));
  detail::st::decode(t.dtype, t.bytes.data(), out.size(), out.data());
  return out;
}

// A 1-D [n] or 2-D [rows, cols] floating-point tensor as a (column-major) host matrix with the
// PyTorch shape kept: [rows, cols] -> host_matrix(rows, cols) with m(i, j) = data[i * cols + j],
// so a torch Linear weight [out, in] becomes host_matrix(out, in); [n] -> host_matrix(n, 1).
template <class T>
host_matrix<T> to_host_matrix(const tensor_view& t) {
  if (t.shape.size() != 1 && t.shape.size() != 2) {
    detail::raise<shape_error>("tensor '", t.name, "': expected a 1-D or 2-D tensor, got shape ",
                               t.shape_string());
  }
  constexpr auto index_max = static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
  for (auto d : t.shape) {
    if (d > index_max) {
      detail::raise<shape_error>("tensor '", t.name, "': extent ", d, " does not fit an index");
    }
  }
  detail::st::require_floating(t);
  const auto rows = static_cast<index_t>(t.shape[0]);
  const auto cols = t.shape.size() == 2 ? static_cast<index_t>(t.shape[1]) : index_t(1);
  // An empty tensor is legal at any extent ([0, 2^62]); the transposing copy below would walk
  // its 2^62 empty columns, so it is returned without one.
  if (rows == 0 || cols == 0) return host_matrix<T>(rows, cols);
  detail::st::row_major_matrix<T> values(rows, cols);  // the file's layout
  detail::st::decode(t.dtype, t.bytes.data(), static_cast<std::size_t>(values.size()),
                     values.data());
  return host_matrix<T>(values);  // Eigen transposes the storage, the logical shape stays
}

// A parsed, validated safetensors file holding its bytes.
class safetensors_file {
 public:
  // Parses and validates `bytes` (a whole file); throws value_error on any malformed content.
  explicit safetensors_file(std::vector<std::uint8_t> bytes) : bytes_(std::move(bytes)) { parse(); }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::size_t size() const { return entries_.size(); }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // Tensor names in sorted order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
  }

  tensor_view tensor(const std::string& name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) {
      detail::raise<shape_error>("tensor '", name, "' is not in the file (it has ", entries_.size(),
                                 " tensors)");
    }
    const entry& e = it->second;
    return {name, e.dtype, e.shape,
            std::span<const std::uint8_t>(bytes_.data() + data_start_ + e.begin, e.end - e.begin)};
  }

  // The 2-D tensor `name` as host_matrix<T>(rows, cols); shape_error naming it when it is missing,
  // not floating point, or not [rows, cols].
  template <class T>
  host_matrix<T> expect_matrix(const std::string& name, index_t rows, index_t cols) const {
    const tensor_view t = tensor(name);
    if (t.shape.size() != 2 || t.shape[0] != std::uint64_t(rows) ||
        t.shape[1] != std::uint64_t(cols)) {
      detail::raise<shape_error>("tensor '", name, "': expected shape ",
                                 detail::shape_string(rows, cols), ", got ", t.shape_string());
    }
    return to_host_matrix<T>(t);
  }
  // The 1-D tensor `name` of length n as host_matrix<T>(n, 1).
  template <class T>
  host_matrix<T> expect_vector(const std::string& name, index_t n) const {
    const tensor_view t = tensor(name);
    if (t.shape.size() != 1 || t.shape[0] != std::uint64_t(n)) {
      detail::raise<shape_error>("tensor '", name, "': expected shape [", n, "], got ",
                                 t.shape_string());
    }
    return to_host_matrix<T>(t);
  }

 private:
  struct entry {
    tensor_dtype dtype;
    std::vector<std::uint64_t> shape;
    std::uint64_t begin, end;  // relative to the buffer start
  };

  template <class... Parts>
  [[noreturn]] static void bad(const char* id, Parts&&... parts) {
    detail::fail<value_error>(id, "safetensors: ", std::forward<Parts>(parts)...);
  }

  void parse() {
    using json = nlohmann::json;
    const std::uint64_t file_size = bytes_.size();
    if (file_size < 8)
      bad("safetensors.truncated", "the file has ", file_size,
          " bytes, fewer than the 8-byte header length");
    const std::uint64_t n = detail::st::load_le(bytes_.data(), 8);
    if (n > detail::st::max_header_bytes) {
      bad("safetensors.header_length", "header length ", n, " exceeds the ",
          detail::st::max_header_bytes, "-byte limit");
    }
    if (n > file_size - 8) {
      bad("safetensors.header_length", "header length ", n, " runs past the end of the file (",
          file_size - 8, " bytes after the length field)");
    }
    data_start_ = 8 + n;
    const std::uint64_t buffer_size = file_size - data_start_;

    const json header = detail::json_io::parse_json<json>(
        std::span<const std::uint8_t>(bytes_.data() + 8, n),
        [](detail::json_io::fault f, const std::string& why) {
          bad(f == detail::json_io::fault::duplicate_key ? "safetensors.duplicate_key"
                                                         : "safetensors.header_json",
              "the header: ", why);
        });
    if (!header.is_object())
      bad("safetensors.header_schema", "the header must be a JSON object, got ",
          header.type_name());

    for (auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        if (value.is_null()) continue;  // the reference reads null as "no metadata"
        if (!value.is_object())
          bad("safetensors.header_schema", "__metadata__ must be an object of strings, got ",
              value.type_name());
        for (auto& [mk, mv] : value.items()) {
          if (!mv.is_string()) {
            bad("safetensors.header_schema", "__metadata__['", detail::json_io::bounded_text(mk),
                "'] must be a string, got ", mv.type_name());
          }
          metadata_.emplace(mk, mv.template get<std::string>());
        }
        continue;
      }
      entries_.emplace(key, parse_entry(key, value, buffer_size));
    }

    // The tensors must tile the buffer: sorted by offsets, each begins where the previous ended,
    // the first at 0 and the last at the end of the file.
    std::vector<std::pair<const std::string*, const entry*>> order;
    for (const auto& [name, e] : entries_) order.emplace_back(&name, &e);
    std::sort(order.begin(), order.end(), [](const auto& l, const auto& r) {
      return std::pair(l.second->begin, l.second->end) < std::pair(r.second->begin, r.second->end);
    });
    std::uint64_t covered = 0;
    const std::string* previous = nullptr;
    for (const auto& [name, e] : order) {
      if (e->begin < covered) {
        bad("safetensors.overlap", "tensor '", detail::json_io::bounded_text(*name), "' [",
            e->begin, ", ", e->end, ") overlaps tensor '", detail::json_io::bounded_text(*previous),
            "' which ends at ", covered);
      }
      if (e->begin > covered) {
        bad("safetensors.hole", "bytes [", covered, ", ", e->begin,
            ") of the buffer belong to no tensor (before '", detail::json_io::bounded_text(*name),
            "')");
      }
      covered = e->end;
      previous = name;
    }
    if (covered != buffer_size) {
      bad("safetensors.trailing_bytes", "the tensors cover ", covered, " bytes but the buffer has ",
          buffer_size, " (", buffer_size - covered, " trailing bytes)");
    }
  }

  static entry parse_entry(const std::string& name, const nlohmann::json& value,
                           std::uint64_t buffer_size) {
    const std::string shown = detail::json_io::bounded_text(name);  // names can be megabytes long
    if (!value.is_object())
      bad("safetensors.header_schema", "tensor '", shown, "': expected an object, got ",
          value.type_name());
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(field))
        bad("safetensors.header_schema", "tensor '", shown, "': missing field '", field, "'");
    }
    const auto& dt = value.at("dtype");
    if (!dt.is_string())
      bad("safetensors.header_schema", "tensor '", shown, "': dtype must be a string, got ",
          dt.type_name());
    const auto dtype = detail::st::parse_dtype(dt.get_ref<const std::string&>());
    if (!dtype)
      bad("safetensors.dtype", "tensor '", shown, "': unknown dtype '",
          detail::json_io::bounded_text(dt.get_ref<const std::string&>()), "'");

    entry e{*dtype, {}, 0, 0};
    const auto& sh = value.at("shape");
    if (!sh.is_array())
      bad("safetensors.header_schema", "tensor '", shown, "': shape must be an array, got ",
          sh.type_name());
    std::uint64_t numel = 1;
    for (const auto& d : sh) {
      if (!d.is_number_unsigned()) {
        bad("safetensors.shape", "tensor '", shown,
            "': shape entries must be non-negative integers, got ",
            detail::json_io::json_excerpt(d));
      }
      e.shape.push_back(d.get<std::uint64_t>());
      if (!detail::st::checked_mul(numel, e.shape.back(), numel)) {
        bad("safetensors.shape", "tensor '", shown, "': the element count of shape ",
            detail::json_io::json_excerpt(sh), " overflows 64 bits");
      }
    }
    std::uint64_t nbytes = 0;
    if (!detail::st::checked_mul(numel, dtype_size(*dtype), nbytes)) {
      bad("safetensors.shape", "tensor '", shown, "': the byte size of shape ",
          detail::json_io::json_excerpt(sh), " overflows 64 bits");
    }

    const auto& off = value.at("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      bad("safetensors.header_schema", "tensor '", shown,
          "': data_offsets must be [begin, end] with non-negative integers, got ",
          detail::json_io::json_excerpt(off));
    }
    e.begin = off[0].get<std::uint64_t>();
    e.end = off[1].get<std::uint64_t>();
    if (e.end < e.begin)
      bad("safetensors.offsets", "tensor '", shown, "': data_offsets [", e.begin, ", ", e.end,
          "] end before they begin");
    if (e.end > buffer_size) {
      bad("safetensors.offsets", "tensor '", shown, "': data_offsets [", e.begin, ", ", e.end,
          "] run past the end of the ", buffer_size, "-byte buffer");
    }
    if (e.end - e.begin != nbytes) {
      bad("safetensors.offsets", "tensor '", shown, "': ", dtype_name(*dtype), " ",
          detail::json_io::json_excerpt(sh), " needs ", nbytes, " bytes but data_offsets [",
          e.begin, ", ", e.end, "] span ", e.end - e.begin);
    }
    return e;
  }

  std::vector<std::uint8_t> bytes_;
  std::uint64_t data_start_ = 0;
  std::map<std::string, entry> entries_;
  std::map<std::string, std::string> metadata_;
};

inline safetensors_file parse_safetensors(std::vector<std::uint8_t> bytes) {
  return safetensors_file(std::move(bytes));
}
// Reads and parses the regular file `path` (error "[rolora.io]" when it is not one, or is larger
// than max_bytes).
inline safetensors_file read_safetensors(const std::filesystem::path& path,
                                         std::uint64_t max_bytes = default_max_file_bytes) {
  return safetensors_file(read_file_bytes(path, max_bytes));
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

// A tensor to write: dtype, PyTorch shape and its row-major little-endian bytes.
struct tensor_data {
  tensor_dtype dtype = tensor_dtype::f32;
  std::vector<std::uint64_t> shape;
  std::vector<std::uint8_t> bytes;
};

// Row-major values -> tensor_data of a floating dtype (F32, F64, F16 or BF16; F16/BF16 round to
// nearest even). values.size() must equal the product of `shape`.
template <class T>
tensor_data make_tensor(std::span<const T> values, std::vector<std::uint64_t> shape,
                        tensor_dtype dtype = tensor_dtype::f32) {
  static_assert(std::is_floating_point_v<T>);
  if (!is_floating(dtype)) {
    detail::raise<config_error>("make_tensor: dtype must be F32, F64, F16 or BF16, got ",
                                dtype_name(dtype));
  }
  std::uint64_t numel = 1;
  for (auto d : shape) {
    if (!detail::st::checked_mul(numel, d, numel))
      detail::raise<shape_error>("make_tensor: shape overflows");
  }
  if (numel != values.size()) {
    detail::raise<shape_error>("make_tensor: shape holds ", numel, " elements but ", values.size(),
                               " values were given");
  }
  tensor_data t{dtype, std::move(shape),
                std::vector<std::uint8_t>(values.size() * dtype_size(dtype))};
  detail::st::encode(dtype, values.data(), values.size(), t.bytes.data());
  return t;
}

// A host matrix (rows, cols) -> a 2-D tensor [rows, cols] in row-major order (the transpose of
// Eigen's storage), so a Linear weight (out, in) is written as torch's [out, in].
template <class T>
tensor_data make_tensor(const host_matrix<T>& m, tensor_dtype dtype = tensor_dtype::f32) {
  const detail::st::row_major_matrix<T> row_major = m;
  return make_tensor<T>(
      std::span<const T>(row_major.data(), static_cast<std::size_t>(row_major.size())),
      {static_cast<std::uint64_t>(m.rows()), static_cast<std::uint64_t>(m.cols())}, dtype);
}

// The bytes of a safetensors file holding `tensors` (names are unique by construction) and, when
// not empty, `metadata` as "__metadata__".
inline std::vector<std::uint8_t> serialize_safetensors(
    const std::map<std::string, tensor_data>& tensors,
    const std::map<std::string, std::string>& metadata = {}) {
  using json = nlohmann::json;
  std::vector<std::pair<const std::string*, const tensor_data*>> order;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__")
      detail::raise<config_error>("a tensor cannot be named '__metadata__'");
    std::uint64_t numel = 1;
    for (auto d : t.shape) {
      if (!detail::st::checked_mul(numel, d, numel))
        detail::raise<shape_error>("tensor '", name, "': shape overflows");
    }
    std::uint64_t nbytes = 0;
    if (!detail::st::checked_mul(numel, dtype_size(t.dtype), nbytes) || nbytes != t.bytes.size()) {
      detail::raise<shape_error>("tensor '", name, "': ", dtype_name(t.dtype), " of ", numel,
                                 " elements needs ", numel * dtype_size(t.dtype), " bytes, got ",
                                 t.bytes.size());
    }
    order.emplace_back(&name, &t);
  }
  // The reference serializer's order: descending dtype, then name.
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& l, const auto& r) { return l.second->dtype > r.second->dtype; });

  // Written by hand (not through a JSON object, which would sort "__metadata__" among the names)
  // so that the layout is the reference's: "__metadata__" first, then the tensors in buffer order.
  std::string header = "{";
  try {
    if (!metadata.empty()) header += "\"__metadata__\":" + json(metadata).dump();
    std::uint64_t offset = 0;
    for (const auto& [name, t] : order) {
      if (header.size() > 1) header += ',';
      header += json(*name).dump() + ":{\"dtype\":\"" + std::string(dtype_name(t->dtype)) +
                "\",\"shape\":" + json(t->shape).dump() + ",\"data_offsets\":[" +
                std::to_string(offset) + ',' + std::to_string(offset + t->bytes.size()) + "]}";
      offset += t->bytes.size();
    }
  } catch (const json::exception& e) {  // a name or metadata string that is not valid UTF-8
    detail::raise<value_error>("safetensors: names and metadata must be valid UTF-8: ", e.what());
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');

  std::vector<std::uint8_t> out;
  std::size_t total = 8 + header.size();
  for (const auto& [name, t] : order) total += t->bytes.size();
  out.reserve(total);
  detail::st::store_le(header.size(), 8, out);
  out.insert(out.end(), header.begin(), header.end());
  for (const auto& [name, t] : order) out.insert(out.end(), t->bytes.begin(), t->bytes.end());
  return out;
}

inline void write_safetensors(const std::filesystem::path& path,
                              const std::map<std::string, tensor_data>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  const auto bytes = serialize_safetensors(tensors, metadata);
  write_file_bytes(path, bytes);
}

}  // namespace rolora
