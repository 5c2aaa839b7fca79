// NumPy .npy files: read and write matrices and N-d arrays for numpy users, on xtensor.
//
// Format (numpy/lib/format.py, NEP 1):
//   6 bytes   magic "\x93NUMPY"
//   2 bytes   version major, minor: 1.0 (header length u16), 2.0 or 3.0 (u32), little-endian
//   2|4 bytes HEADER_LEN
//   HEADER_LEN bytes: a Python dict literal, e.g.
//             {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
//             padded with spaces and ended by '\n' so the data starts 64-byte aligned
//   the rest  prod(shape) elements, C order (last index fastest) or Fortran order (first fastest)
//
// The header is parsed here, not by xtensor: xtensor's reader trusts the header (it allocates
// whatever the shape asks for and does not check that the data is there), so parse_npy_header()
// validates everything first and throws rolora::value_error "[rolora.npy.<what>] ..." naming what
// it expected and what came; xtensor then holds the data (xt::adapt with the file's layout, its
// writer xt::dump_npy for saving). Element types read: float32 and float64 in either byte order,
// and uint8 ('|u1', e.g. images); any of them converts to the float type asked for.
//
// Needs xtensor (Debian libxtensor-dev), an optional dependency: rolora.hpp does not include this.
#pragma once
#include <Eigen/Core>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/error.hpp>
#include <rolora/io/file.hpp>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xnpy.hpp>

namespace rolora {

// What a .npy header says, validated.
struct npy_header {
  char kind = 'f';             // 'f' (IEEE float) or 'u' (unsigned integer)
  std::size_t word_size = 4;   // bytes per element: 4 or 8 for 'f', 1 for 'u'
  bool big_endian = false;     // '>' in descr
  bool fortran_order = false;  // first index fastest
  std::vector<std::size_t> shape;
  std::size_t data_offset = 0;  // bytes before the first element

  std::size_t element_count() const {
    std::size_t n = 1;
    for (auto d : shape) n *= d;  // checked for overflow by parse_npy_header
    return n;
  }
  std::string descr() const {
    return std::string(1, big_endian ? '>' : (word_size == 1 ? '|' : '<')) + kind +
           std::to_string(word_size);
  }
};

namespace detail::npy {

[[noreturn]] inline void bad(const char* what, const std::string& message) {
  fail<value_error>(concat("npy.", what).c_str(), message);
}

// A recursive-descent reader of the header's dict literal. Accepts what Python's literal_eval
// accepts for the three keys numpy writes ('descr': str, 'fortran_order': bool, 'shape': tuple of
// ints, with an optional trailing comma and Python 2's "L" suffix), in any order, no other key.
class dict_reader {
 public:
  explicit dict_reader(std::string_view text) : text_(text) {}

  npy_header read() {
    npy_header h;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = string_literal();
      expect(':');
      if (key == "descr") {
        once(seen_descr, key);
        descr(string_literal(), h);
      } else if (key == "fortran_order") {
        once(seen_order, key);
        h.fortran_order = boolean();
      } else if (key == "shape") {
        once(seen_shape, key);
        h.shape = shape();
      } else {
        bad("header", concat("unexpected key '", key,
                             "' in the header dict (expected descr, fortran_order, shape)"));
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}')
        bad("header",
            concat("expected ',' or '}' at byte ", pos_, " of the header, got ", shown(peek())));
    }
    ++pos_;  // '}'
    for (; pos_ < text_.size(); ++pos_) {
      if (text_[pos_] != ' ' && text_[pos_] != '\n' && text_[pos_] != '\t' && text_[pos_] != '\r') {
        bad("header",
            concat("unexpected ", shown(text_[pos_]), " after the header dict at byte ", pos_));
      }
    }
    if (!seen_descr || !seen_order || !seen_shape) {
      bad("header", concat("the header dict lacks '",
                           !seen_descr   ? "descr"
                           : !seen_order ? "fortran_order"
                                         : "shape",
                           "' (numpy writes descr, fortran_order and shape)"));
    }
    return h;
  }

 private:
  std::string_view text_;
  std::size_t pos_ = 0;

  static std::string shown(int c) {
    if (c < 0) return "the end of the header";
    if (c >= 0x20 && c < 0x7f) return concat('\'', char(c), '\'');
    return concat("byte 0x", "0123456789abcdef"[(c >> 4) & 15], "0123456789abcdef"[c & 15]);
  }
  int peek() const { return pos_ < text_.size() ? static_cast<unsigned char>(text_[pos_]) : -1; }
  void skip_space() {
    while (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r') ++pos_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c)
      bad("header",
          concat("expected '", c, "' at byte ", pos_, " of the header, got ", shown(peek())));
    ++pos_;
  }
  static void once(bool& seen, const std::string& key) {
    if (seen) bad("header", concat("key '", key, "' appears twice in the header dict"));
    seen = true;
  }
  std::string string_literal() {
    skip_space();
    const int quote = peek();
    if (quote != '\'' && quote != '"')
      bad("header", concat("expected a quoted string at byte ", pos_, ", got ", shown(quote)));
    const std::size_t start = ++pos_;
    while (peek() != quote) {
      if (peek() < 0x20 || peek() == '\\')
        bad("header",
            concat("unsupported character ", shown(peek()), " in a string of the header"));
      ++pos_;
    }
    return std::string(text_.substr(start, pos_++ - start));
  }
  bool boolean() {
    skip_space();
    for (const auto& [word, value] :
         {std::pair<std::string_view, bool>{"True", true}, {"False", false}}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return value;
      }
    }
    bad("header",
        concat("'fortran_order' must be True or False, got ", shown(peek()), " at byte ", pos_));
  }
  std::size_t integer() {
    skip_space();
    if (peek() < '0' || peek() > '9')
      bad("header", concat("expected a dimension (a non-negative integer) at byte ", pos_, ", got ",
                           shown(peek())));
    std::size_t value = 0;
    while (peek() >= '0' && peek() <= '9') {
      const std::size_t digit = std::size_t(peek() - '0');
      if (value > (std::numeric_limits<std::size_t>::max() - digit) / 10)
        bad("shape", "a dimension does not fit in 64 bits");
      value = value * 10 + digit;
      ++pos_;
    }
    if (peek() == 'L') ++pos_;  // Python 2 long
    return value;
  }
  std::vector<std::size_t> shape() {
    expect('(');
    std::vector<std::size_t> dims;
    for (;;) {
      skip_space();
      if (peek() == ')') break;
      if (dims.size() == 32) bad("shape", "more than 32 dimensions (numpy's limit)");
      dims.push_back(integer());
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != ')')
        bad("shape",
            concat("expected ',' or ')' in the shape at byte ", pos_, ", got ", shown(peek())));
    }
    ++pos_;
    return dims;
  }
  static void descr(const std::string& d, npy_header& h) {
    const bool ok = d == "<f4" || d == "<f8" || d == ">f4" || d == ">f8" || d == "|u1" ||
                    d == "<u1" || d == ">u1" || d == "=f4" || d == "=f8";
    if (!ok) {
      bad("dtype",
          concat("unsupported dtype '", d,
                 "': expected float32 or float64 ('<f4', '<f8', '>f4', '>f8') or uint8 ('|u1')"));
    }
    h.kind = d[1];
    h.word_size = std::size_t(d[2] - '0');
    h.big_endian = d[0] == '>' || (d[0] == '=' && std::endian::native == std::endian::big);
    if (h.word_size == 1) h.big_endian = false;
  }
};

inline std::uint32_t little_endian(std::string_view bytes, std::size_t at, std::size_t n) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < n; ++i)
    v |= std::uint32_t(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
  return v;
}

template <class T>
T element(const char* p, const npy_header& h) {
  unsigned char raw[8];
  std::memcpy(raw, p, h.word_size);
  if (h.big_endian != (std::endian::native == std::endian::big)) {
    for (std::size_t i = 0; i < h.word_size / 2; ++i) std::swap(raw[i], raw[h.word_size - 1 - i]);
  }
  if (h.kind == 'u') return T(raw[0]);
  if (h.word_size == 4) {
    float f;
    std::memcpy(&f, raw, 4);
    return T(f);
  }
  double d;
  std::memcpy(&d, raw, 8);
  return T(d);
}

}  // namespace detail::npy

// Parses and validates the header at the start of `bytes` (the file's first bytes, or all of it).
// Checks the magic, the version (1.0, 2.0, 3.0), that the header fits in `bytes`, the dict, the
// dtype and that prod(shape) * word size does not overflow. Does NOT check that the data is all
// there (read_npy does); needs no more than the header's own bytes. Throws value_error. Safe on
// any input: the entry point of the fuzz target.
inline npy_header parse_npy_header(std::string_view bytes) {
  using detail::npy::bad;
  constexpr std::string_view magic = "\x93NUMPY";
  if (bytes.size() < magic.size() + 2 || bytes.substr(0, magic.size()) != magic) {
    bad("magic",
        detail::concat(
            "not a .npy file: expected the magic \\x93NUMPY and a version in the first 8 bytes (",
            bytes.size(), " bytes given)"));
  }
  const int major = static_cast<unsigned char>(bytes[6]),
            minor = static_cast<unsigned char>(bytes[7]);
  if (minor != 0 || major < 1 || major > 3)
    bad("version", detail::concat("unsupported format version ", major, '.', minor,
                                  " (expected 1.0, 2.0 or 3.0)"));
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + length_bytes)
    bad("truncated",
        detail::concat("the file ends inside the header length (", bytes.size(), " bytes)"));
  const std::size_t header_len = detail::npy::little_endian(bytes, 8, length_bytes);
  const std::size_t offset = 8 + length_bytes;
  if (bytes.size() - offset < header_len) {
    bad("truncated", detail::concat("the header says it is ", header_len, " bytes but only ",
                                    bytes.size() - offset, " follow"));
  }
  npy_header h = detail::npy::dict_reader(bytes.substr(offset, header_len)).read();
  h.data_offset = offset + header_len;
  // Every dimension, and the product of the non-zero ones times the word size, must fit in 63 bits
  // (an empty array's other dimensions still become Eigen / xtensor indices).
  std::size_t bytes_needed = h.word_size;
  constexpr auto limit = std::size_t(std::numeric_limits<std::int64_t>::max());
  for (const auto d : h.shape) {
    if (d != 0 && bytes_needed > limit / d)
      bad("shape", "the shape's byte count overflows 63 bits");
    if (d != 0) bytes_needed *= d;
  }
  return h;
}

// The array in `bytes` (a whole .npy file), converted to T, as an xtensor array in C order
// whatever the file's order. Throws value_error if the data is shorter or longer than the shape.
template <class T>
xt::xarray<T> read_npy(std::string_view bytes) {
  const npy_header h = parse_npy_header(bytes);
  const std::size_t n = h.element_count(), have = bytes.size() - h.data_offset;
  if (have != n * h.word_size) {
    detail::npy::bad(
        "truncated",
        detail::concat("the shape ", h.shape.size(), "-d with ", n, " elements of ", h.descr(),
                       " needs ", n * h.word_size, " data bytes, the file has ", have));
  }
  std::vector<T> values(n);  // file order
  const char* data = bytes.data() + h.data_offset;
  for (std::size_t i = 0; i < n; ++i)
    values[i] = detail::npy::element<T>(data + i * h.word_size, h);
  const auto layout = h.fortran_order ? xt::layout_type::column_major : xt::layout_type::row_major;
  return xt::xarray<T>(
      xt::adapt<xt::layout_type::dynamic>(values, h.shape, layout));  // copied into C order
}

template <class T>
xt::xarray<T> load_npy(const std::filesystem::path& path) {
  // Regular files only, at most default_max_file_bytes (io/file.hpp): a FIFO or a device is
  // refused.
  const auto raw = read_file_bytes(path);
  const std::string bytes(raw.begin(), raw.end());
  try {
    return read_npy<T>(bytes);
  } catch (const value_error& e) {
    throw value_error(detail::concat(e.what(), " (", path.string(), ")"));
  }
}

// A matrix from a 2-d array, or a column from a 1-d one ([n] -> [n, 1]); other ranks throw
// shape_error.
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> to_matrix(const xt::xarray<Scalar>& a,
                                                                const std::string& what) {
  if (a.dimension() != 1 && a.dimension() != 2) {
    detail::fail<shape_error>("npy.shape", what, ": expected a 1-d or 2-d array, got ",
                              a.dimension(), " dimensions");
  }
  const auto rows = Eigen::Index(a.shape()[0]),
             cols = a.dimension() == 2 ? Eigen::Index(a.shape()[1]) : 1;
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> m(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i) {
    for (Eigen::Index j = 0; j < cols; ++j)
      m(i, j) = a.data()[std::size_t(i * cols + j)];  // C order
  }
  return m;
}

template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> load_npy_matrix(
    const std::filesystem::path& path) {
  return to_matrix(load_npy<Scalar>(path), path.string());
}

// The bytes of a .npy file holding `a` (C order, the element type's native descr), exactly as
// numpy's np.save writes the same array: xtensor's writer, version 1.0, header padded to 64.
template <class E>
std::string npy_bytes(const xt::xexpression<E>& a) {
  return xt::dump_npy(
      xt::xarray<typename E::value_type, xt::layout_type::row_major>(a.derived_cast()));
}

template <class Derived>
std::string npy_bytes(const Eigen::MatrixBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  xt::xarray<Scalar> a = xt::zeros<Scalar>({std::size_t(m.rows()), std::size_t(m.cols())});
  for (Eigen::Index i = 0; i < m.rows(); ++i) {
    for (Eigen::Index j = 0; j < m.cols(); ++j) a(std::size_t(i), std::size_t(j)) = m(i, j);
  }
  return npy_bytes(a);
}

template <class A>
void save_npy(const std::filesystem::path& path, const A& a) {
  const std::string bytes = npy_bytes(a);
  write_file_bytes(path,
                   std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

// An adapter set as .npy files in `dir`, PEFT's tensor names: <module>.lora_A.npy [r, in],
// <module>.lora_B.npy [out, r] and <name>.npy per module to save (float32 or float64, as the
// backend holds them). Residuals (FedEx-LoRA, FLoRA) go to <module>.residual.npy.
template <backend Backend>
void save_adapters_npy(const std::filesystem::path& dir, const adapter_set<Backend>& adapters) {
  std::filesystem::create_directories(dir);
  for (const auto& [name, a] : adapters) {
    save_npy(dir / (name + ".lora_A.npy"), Backend::to_host(a.A));
    save_npy(dir / (name + ".lora_B.npy"), Backend::to_host(a.B));
    if (a.has_residual()) save_npy(dir / (name + ".residual.npy"), Backend::to_host(a.residual));
  }
  for (const auto& [name, w] : adapters.modules_to_save())
    save_npy(dir / (name + ".npy"), Backend::to_host(w));
}

}  // namespace rolora
