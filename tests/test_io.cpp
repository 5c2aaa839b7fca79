// io/: safetensors (byte layout against the reference serializer's vectors, round trips, F16/BF16
// conversions, hostile files) and PEFT adapter directories (layout, key names, round trips,
// mismatch errors); hostile input of every class (non-regular files, deep JSON, duplicate keys,
// regex keys, numbers out of range).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <random>
#include <rolora/io/peft.hpp>
#include <rolora/io/safetensors.hpp>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;

namespace {

using bytes_t = std::vector<std::uint8_t>;

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("rolora_test_io_" + std::to_string(std::random_device{}()) + "_" +
             std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// 8-byte little-endian length + header text + buffer, built by hand (independent of the writer).
bytes_t raw_file(const std::string& header, const bytes_t& buffer = {}) {
  bytes_t out;
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), buffer.begin(), buffer.end());
  return out;
}

bytes_t with_length(std::uint64_t n, const std::string& rest) {
  bytes_t out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(n >> (8 * i)));
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

// The id in "[rolora.<id>] ..." of the value_error that parsing `file` throws.
std::string parse_error_id(const bytes_t& file) {
  const std::string msg = message_of<value_error>([&] { parse_safetensors(file); });
  const auto close = msg.find(']');
  return msg.substr(std::string("[rolora.").size(), close - std::string("[rolora.").size());
}

std::uint32_t bits_of(float f) { return std::bit_cast<std::uint32_t>(f); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// safetensors: byte layout
// ---------------------------------------------------------------------------------------------

TEST_CASE("safetensors: the writer reproduces the reference serializer's bytes") {
  // The vectors of huggingface/safetensors tensor.rs (test_serialization,
  // test_serialization_forced_alignement, test_empty): F32 values 0..5.
  const bytes_t values = {0, 0, 0,  0,  0, 0, 128, 63, 0, 0, 0,   64,
                          0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
  const std::vector<float> v = {0, 1, 2, 3, 4, 5};

  SUBCASE("64-byte header: no padding needed") {
    const auto out = serialize_safetensors(
        {{"attn.0", make_tensor<float>(std::span<const float>(v), {1, 2, 3})}});
    bytes_t expected = {64, 0, 0, 0, 0, 0, 0, 0};
    const std::string header =
        R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
    REQUIRE(header.size() == 64);
    expected.insert(expected.end(), header.begin(), header.end());
    expected.insert(expected.end(), values.begin(), values.end());
    CHECK(out == expected);
  }
  SUBCASE("65-byte header: padded with 7 spaces to 72, so the data starts 8-byte aligned") {
    const auto out = serialize_safetensors(
        {{"attn0", make_tensor<float>(std::span<const float>(v), {1, 1, 2, 3})}});
    bytes_t expected = {72, 0, 0, 0, 0, 0, 0, 0};
    const std::string header =
        R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})"
        "       ";
    REQUIRE(header.size() == 72);
    expected.insert(expected.end(), header.begin(), header.end());
    expected.insert(expected.end(), values.begin(), values.end());
    CHECK(out == expected);
    CHECK((out.size() - values.size()) % 8 == 0);
  }
  SUBCASE("no tensors, with and without metadata") {
    CHECK(serialize_safetensors({}) ==
          bytes_t{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '});
    const auto out = serialize_safetensors({}, {{"framework", "pt"}});
    CHECK(out == raw_file(R"({"__metadata__":{"framework":"pt"}})"
                          "     "));
    const auto file = parse_safetensors(out);
    CHECK(file.size() == 0);
    CHECK(file.metadata().at("framework") == "pt");
  }
}

TEST_CASE("safetensors: header order is dtype (descending) then name; metadata first") {
  const std::vector<float> one = {1.0f};
  std::map<std::string, tensor_data> t;
  t["b"] = make_tensor<float>(std::span<const float>(one), {1}, tensor_dtype::f16);
  t["a"] = make_tensor<float>(std::span<const float>(one), {1}, tensor_dtype::f16);
  t["z"] = make_tensor<float>(std::span<const float>(one), {1}, tensor_dtype::f32);
  const auto out = serialize_safetensors(t, {{"format", "pt"}});
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("a":{"dtype":"F16","shape":[1],"data_offsets":[4,6]},"b":{"dtype":"F16","shape":[1],"data_offsets":[6,8]}})";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  CHECK(out == raw_file(padded, {0, 0, 0x80, 0x3F, 0x00, 0x3C, 0x00, 0x3C}));
}

TEST_CASE("safetensors: a matrix is written row-major as torch's [rows, cols]") {
  host_matrix<float> m(2, 3);  // m(i, j) = 10 i + j
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 3; ++j) m(i, j) = float(10 * i + j);
  const auto out = serialize_safetensors({{"w", make_tensor(m)}});
  const auto file = parse_safetensors(out);
  const auto t = file.tensor("w");
  CHECK(t.shape == std::vector<std::uint64_t>{2, 3});
  CHECK(t.dtype == tensor_dtype::f32);
  const std::vector<float> expected = {0, 1, 2, 10, 11, 12};
  REQUIRE(t.bytes.size() == 24);
  for (std::size_t k = 0; k < 6; ++k) {
    float f;
    std::memcpy(&f, t.bytes.data() + 4 * k, 4);  // the test host is little-endian like the format
    CHECK(f == expected[k]);
  }
  // And a hand-built file is read back into the same column-major matrix.
  const auto back = to_host_matrix<double>(t);
  CHECK(back.rows() == 2);
  CHECK(back.cols() == 3);
  CHECK(back(1, 2) == 12.0);
  CHECK(back(0, 1) == 1.0);
}

TEST_CASE("safetensors: F32 and F64 round trips are bit-exact for every shape") {
  temp_dir dir;
  const float specials[] = {
      -0.0f, std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(),
      -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  std::map<std::string, tensor_data> t;
  std::map<std::string, host_matrix<float>> mats;
  const std::pair<index_t, index_t> shapes[] = {{3, 7}, {7, 3}, {1, 1}, {0, 4}, {4, 0}, {16, 5}};
  std::uint32_t tag = 0;
  for (const auto& [r, c] : shapes) {
    host_matrix<float> m = test::random_matrix<float>(r, c, tag++);
    for (index_t k = 0; k < std::min<index_t>(m.size(), 5); ++k) m.data()[k] = specials[k];
    const std::string name = "m." + std::to_string(r) + "x" + std::to_string(c);
    t[name] = make_tensor(m);
    mats[name] = m;
  }
  const std::vector<float> vec = {1.5f, -2.25f, 3e-40f, 7.0f, 1e30f};
  t["bias"] = make_tensor<float>(std::span<const float>(vec), {5});
  t["empty"] = make_tensor<float>(std::span<const float>(vec.data(), 0), {0});
  const host_matrix<double> md = test::random_matrix<double>(5, 3, 99);
  t["double"] = make_tensor(md, tensor_dtype::f64);

  write_safetensors(dir.path() / "x.safetensors", t, {{"note", "round trip"}});
  const auto file = read_safetensors(dir.path() / "x.safetensors");
  CHECK(file.size() == t.size());
  CHECK(file.metadata().at("note") == "round trip");
  for (const auto& [name, m] : mats) {
    const auto back = file.expect_matrix<float>(name, m.rows(), m.cols());
    REQUIRE(back.rows() == m.rows());
    REQUIRE(back.cols() == m.cols());
    for (index_t k = 0; k < m.size(); ++k) CHECK(bits_of(back.data()[k]) == bits_of(m.data()[k]));
  }
  const auto b = file.expect_vector<float>("bias", 5);
  for (index_t k = 0; k < 5; ++k) CHECK(bits_of(b(k, 0)) == bits_of(vec[std::size_t(k)]));
  CHECK(file.expect_vector<float>("empty", 0).size() == 0);
  const auto d = file.expect_matrix<double>("double", 5, 3);
  CHECK((d.array() == md.array()).all());
  // The writer is deterministic: writing what was read gives the same bytes.
  std::map<std::string, tensor_data> again;
  for (const auto& name : file.names()) {
    const auto v = file.tensor(name);
    again[name] = {v.dtype, v.shape, bytes_t(v.bytes.begin(), v.bytes.end())};
  }
  CHECK(serialize_safetensors(again, file.metadata()) ==
        read_file_bytes(dir.path() / "x.safetensors"));
}

// ---------------------------------------------------------------------------------------------
// F16 / BF16
// ---------------------------------------------------------------------------------------------

TEST_CASE("F16 and BF16 decode known bit patterns exactly") {
  CHECK(f16_to_float(0x3C00) == 1.0f);
  CHECK(f16_to_float(0xC100) == -2.5f);
  CHECK(f16_to_float(0x7BFF) == 65504.0f);
  CHECK(f16_to_float(0x0400) == std::ldexp(1.0f, -14));     // smallest normal
  CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));     // smallest subnormal
  CHECK(f16_to_float(0x03FF) == std::ldexp(1023.0f, -24));  // largest subnormal
  CHECK(std::signbit(f16_to_float(0x8000)));
  CHECK(f16_to_float(0x8000) == 0.0f);
  CHECK(f16_to_float(0x7C00) == std::numeric_limits<float>::infinity());
  CHECK(f16_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(f16_to_float(0x7E00)));
  CHECK(std::isnan(f16_to_float(0x7C01)));  // signalling NaN decodes to NaN too
  CHECK(bf16_to_float(0x3F80) == 1.0f);
  CHECK(bf16_to_float(0xC020) == -2.5f);
  CHECK(bf16_to_float(0x0001) == std::ldexp(1.0f, -133));
  CHECK(bf16_to_float(0x7F7F) == std::ldexp(255.0f, 120));  // largest finite, (2 - 2^-7) 2^127
  CHECK(bf16_to_float(0xFF80) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(bf16_to_float(0x7FC0)));
}

TEST_CASE("F16 and BF16 encode with round-to-nearest-even") {
  CHECK(double_to_f16(1.0) == 0x3C00);
  CHECK(double_to_f16(-2.5) == 0xC100);
  CHECK(double_to_f16(-0.0) == 0x8000);
  CHECK(double_to_f16(1.0 + std::ldexp(1.0, -11)) == 0x3C00);      // tie -> even (down)
  CHECK(double_to_f16(1.0 + 3 * std::ldexp(1.0, -11)) == 0x3C02);  // tie -> even (up)
  CHECK(double_to_f16(1.0 + std::ldexp(1.0, -11) + 1e-12) == 0x3C01);
  CHECK(double_to_f16(65504.0) == 0x7BFF);
  CHECK(double_to_f16(65519.99) == 0x7BFF);
  CHECK(double_to_f16(65520.0) == 0x7C00);  // the halfway point to 2^16 rounds to infinity
  CHECK(double_to_f16(1e300) == 0x7C00);
  CHECK(double_to_f16(std::ldexp(1.0, -24)) == 0x0001);
  CHECK(double_to_f16(std::ldexp(1.0, -25)) == 0x0000);  // tie with 0 -> 0
  CHECK(double_to_f16(std::ldexp(3.0, -26)) == 0x0001);  // 1.5 * 2^-25 -> 2^-24
  CHECK(double_to_f16(std::ldexp(3.0, -25)) == 0x0002);  // 1.5 ulp tie -> even 2
  CHECK(double_to_f16(std::ldexp(1023.5, -24)) ==
        0x0400);  // subnormal carries into the normal range
  CHECK(double_to_f16(1e-300) == 0x0000);
  CHECK(double_to_f16(-std::numeric_limits<double>::infinity()) == 0xFC00);
  CHECK(double_to_f16(std::numeric_limits<double>::quiet_NaN()) == 0x7E00);
  CHECK(double_to_bf16(1.0) == 0x3F80);
  CHECK(double_to_bf16(-2.5) == 0xC020);
  CHECK(double_to_bf16(1.0 + std::ldexp(1.0, -8)) == 0x3F80);  // tie -> even
  CHECK(double_to_bf16(1.0 + 3 * std::ldexp(1.0, -8)) == 0x3F82);
  CHECK(double_to_bf16(std::ldexp(1.0, -133)) == 0x0001);
  CHECK(double_to_bf16(3.4e38) == 0x7F80);  // past (2 - 2^-8) 2^127 -> inf
  CHECK(double_to_bf16(std::ldexp(255.0, 120)) == 0x7F7F);
  CHECK(double_to_bf16(std::numeric_limits<double>::quiet_NaN()) == 0x7FC0);
  CHECK(double_to_bf16(-std::numeric_limits<double>::quiet_NaN()) == 0xFFC0);
}

TEST_CASE("F16 and BF16: every non-NaN pattern survives decode -> encode; NaN stays NaN") {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto p = static_cast<std::uint16_t>(h);
    const float f = f16_to_float(p), b = bf16_to_float(p);
    if (std::isnan(f)) {
      CHECK(std::isnan(f16_to_float(double_to_f16(f))));
    } else if (double_to_f16(f) != p) {
      FAIL_CHECK("F16 pattern " << h << " does not round trip");
    }
    if (std::isnan(b)) {
      CHECK(std::isnan(bf16_to_float(double_to_bf16(b))));
    } else if (double_to_bf16(b) != p) {
      FAIL_CHECK("BF16 pattern " << h << " does not round trip");
    }
  }
}

TEST_CASE("F16 and BF16: the encoding is the nearest value, ties to even, for random doubles") {
  const random_stream rs(7, stream::data, 3, 1);
  // Nearest among the neighbours: |x - dec(q)| <= |x - dec(q +- 1)|, equality only if q is even.
  // `overflow` is the halfway point above the largest finite value, where infinity begins.
  auto check_nearest = [](double x, std::uint16_t q, float (*dec)(std::uint16_t), double overflow,
                          const std::string& what) {
    if (std::isinf(dec(q))) {
      if (std::abs(x) < overflow) FAIL_CHECK(what << " of " << x << " overflowed");
      return;
    }
    const double here = std::abs(x - double(dec(q)));
    for (int step : {-1, 1}) {
      const auto n = static_cast<std::uint16_t>((q & 0x7FFF) + step) | (q & 0x8000);
      if ((q & 0x7FFF) == 0 && step < 0) continue;
      const double there = double(dec(static_cast<std::uint16_t>(n)));
      if (std::isinf(there) || std::isnan(there)) continue;
      const double d = std::abs(x - there);
      if (d < here || (d == here && (q & 1)))
        FAIL_CHECK(what << " of " << x << " is not the nearest-even");
    }
  };
  for (std::uint64_t k = 0; k < 20000; ++k) {
    // Values spread over the subnormal, normal and near-overflow ranges of both formats.
    const double mag =
        std::ldexp(1.0 + rs.uniform(2 * k), int(std::floor(rs.uniform(2 * k + 1) * 60)) - 30);
    const double x = (k & 1) ? -mag : mag;
    const double small = x * std::ldexp(1.0, -10);
    const double f16_overflow = 65520.0,
                 bf16_overflow = std::ldexp(511.0, 119);  // (2 - 2^-8) 2^127
    check_nearest(x, double_to_f16(x), f16_to_float, f16_overflow, "F16");
    check_nearest(small, double_to_f16(small), f16_to_float, f16_overflow, "F16");
    check_nearest(x, double_to_bf16(x), bf16_to_float, bf16_overflow, "BF16");
    check_nearest(x * 1e-30, double_to_bf16(x * 1e-30), bf16_to_float, bf16_overflow, "BF16");
#if defined(__FLT16_MANT_DIG__)
    // The compiler's own correctly rounded conversion agrees where it exists.
    CHECK(std::bit_cast<std::uint16_t>(static_cast<_Float16>(small)) == double_to_f16(small));
#endif
  }
}

TEST_CASE("safetensors: F16 and BF16 tensors read as float and double") {
  const std::vector<double> v = {1.0, -2.5, std::ldexp(1.0, -24), 65504.0};
  const auto f16 = make_tensor<double>(std::span<const double>(v), {2, 2}, tensor_dtype::f16);
  CHECK(f16.bytes == bytes_t{0x00, 0x3C, 0x00, 0xC1, 0x01, 0x00, 0xFF, 0x7B});
  const auto bf = make_tensor<double>(std::span<const double>(v), {4}, tensor_dtype::bf16);
  CHECK(bf.bytes == bytes_t{0x80, 0x3F, 0x20, 0xC0, 0x80, 0x33, 0x80, 0x47});
  const auto file = parse_safetensors(serialize_safetensors({{"h", f16}, {"b", bf}}));
  const auto h = file.expect_matrix<double>("h", 2, 2);
  CHECK(h(0, 0) == 1.0);
  CHECK(h(0, 1) == -2.5);
  CHECK(h(1, 0) == std::ldexp(1.0, -24));
  CHECK(h(1, 1) == 65504.0);
  const auto b = file.expect_vector<float>("b", 4);
  CHECK(b(0, 0) == 1.0f);
  CHECK(b(1, 0) == -2.5f);
  CHECK(b(2, 0) == std::ldexp(1.0f, -24));
  CHECK(b(3, 0) == 65536.0f);  // 65504 is not a BF16 value: rounds to 2^16
}

// ---------------------------------------------------------------------------------------------
// safetensors: hostile files
// ---------------------------------------------------------------------------------------------

TEST_CASE("safetensors: every kind of broken file is rejected with its own error id") {
  const bytes_t four = {0, 0, 128, 63};
  const bytes_t eight = {0, 0, 128, 63, 0, 0, 0, 64};
  const std::string f32_2 = R"("dtype":"F32","shape":[2])";

  CHECK(parse_error_id({1, 2, 3}) == "safetensors.truncated");
  CHECK(parse_error_id({}) == "safetensors.truncated");
  CHECK(parse_error_id(with_length(100'000'001, "{}")) == "safetensors.header_length");
  CHECK(parse_error_id(with_length(std::numeric_limits<std::uint64_t>::max(), "{}")) ==
        "safetensors.header_length");
  CHECK(parse_error_id(with_length(100, "{}      ")) == "safetensors.header_length");
  CHECK(parse_error_id(with_length(0, "")) == "safetensors.header_json");
  CHECK(parse_error_id(raw_file("{\"a\":")) == "safetensors.header_json");
  CHECK(parse_error_id(raw_file("{\"\xff\":1}")) == "safetensors.header_json");  // not UTF-8
  CHECK(parse_error_id(raw_file("[1, 2]")) == "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"a":3})")) == "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":[1]}})", four)) ==
        "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", four)) ==
        "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}})", four)) ==
        "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})",
                                four)) == "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", four)) ==
        "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"__metadata__":{"k":1}})")) == "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"__metadata__":[]})")) == "safetensors.header_schema");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,4]}})",
                                four)) == "safetensors.dtype");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,4]}})",
                                four)) == "safetensors.shape");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})",
                                four)) == "safetensors.shape");
  CHECK(parse_error_id(raw_file(
            R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})")) ==
        "safetensors.shape");
  CHECK(parse_error_id(raw_file(
            R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})")) ==
        "safetensors.shape");  // 2^62 elements * 4 bytes overflows
  {  // An empty tensor of extent 2^62 is legal; it converts at once, without walking its columns.
    const auto empty = parse_safetensors(
        raw_file(R"({"a":{"dtype":"F32","shape":[0,4611686018427387904],"data_offsets":[0,0]}})"));
    const auto m = to_host_matrix<float>(empty.tensor("a"));
    CHECK(m.rows() == 0);
    CHECK(m.cols() == index_t(1) << 62);
  }
  CHECK(parse_error_id(raw_file(R"({"a":{)" + f32_2 + R"(,"data_offsets":[0,4]}})", four)) ==
        "safetensors.offsets");
  CHECK(parse_error_id(raw_file(R"({"a":{)" + f32_2 + R"(,"data_offsets":[8,0]}})", eight)) ==
        "safetensors.offsets");
  const auto past = message_of<value_error>([&] {
    parse_safetensors(raw_file(R"({"a":{)" + f32_2 + R"(,"data_offsets":[0,8]}})", four));
  });
  CHECK(past.find("past the end") != std::string::npos);
  CHECK(past.find("'a'") != std::string::npos);
  const bytes_t twelve(12, 0);
  CHECK(parse_error_id(raw_file(R"({"a":{)" + f32_2 + R"(,"data_offsets":[0,8]},"b":{)" + f32_2 +
                                    R"(,"data_offsets":[4,12]}})",
                                twelve)) == "safetensors.overlap");
  CHECK(parse_error_id(
            raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32",)"
                     R"("shape":[1],"data_offsets":[8,12]}})",
                     twelve)) == "safetensors.hole");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                eight)) == "safetensors.hole");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                eight)) == "safetensors.trailing_bytes");
  CHECK(parse_error_id(raw_file("{}", four)) == "safetensors.trailing_bytes");
  CHECK(parse_error_id(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                eight)) == "safetensors.duplicate_key");
  CHECK(parse_error_id(raw_file(
            R"({"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})", four)) ==
        "safetensors.duplicate_key");

  // What a well-formed file may contain: zero-size tensors anywhere, header padding, F64 and
  // integer dtypes (readable structurally; only floating dtypes convert), unknown extra fields.
  const auto ok = parse_safetensors(raw_file(
      R"({"e":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]},"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},)"
      R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4],"note":"x"}}   )",
      four));
  CHECK(ok.names() == std::vector<std::string>{"a", "e", "z"});
  CHECK(ok.expect_matrix<float>("e", 2, 0).size() == 0);
  CHECK(parse_safetensors(raw_file(R"({"__metadata__":null})")).metadata().empty());
  const auto scalar =
      parse_safetensors(raw_file(R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", four));
  CHECK(to_vector<double>(scalar.tensor("s")) == std::vector<double>{1.0});
}

TEST_CASE("safetensors: a tensor that is not what the caller expects is a shape_error naming it") {
  const host_matrix<float> m = test::random_matrix<float>(3, 4, 5);
  const std::vector<std::int32_t> ints = {1, 2};
  tensor_data int_tensor{tensor_dtype::i32, {2}, bytes_t(8, 0)};
  const bytes_t cube(8 * 4, 0);
  const auto file = parse_safetensors(
      serialize_safetensors({{"layer.w", make_tensor(m)},
                             {"ids", int_tensor},
                             {"cube", tensor_data{tensor_dtype::f32, {2, 2, 2}, cube}}}));
  auto msg = message_of<shape_error>([&] { file.expect_matrix<float>("layer.w", 4, 3); });
  CHECK(msg.find("'layer.w'") != std::string::npos);
  CHECK(msg.find("[4, 3]") != std::string::npos);
  CHECK(msg.find("[3, 4]") != std::string::npos);
  msg = message_of<shape_error>([&] { file.expect_vector<float>("layer.w", 12); });
  CHECK(msg.find("'layer.w'") != std::string::npos);
  msg = message_of<shape_error>([&] { file.expect_vector<double>("ids", 2); });
  CHECK(msg.find("I32") != std::string::npos);
  msg = message_of<shape_error>([&] { to_host_matrix<float>(file.tensor("cube")); });
  CHECK(msg.find("[2, 2, 2]") != std::string::npos);
  msg = message_of<shape_error>([&] { file.tensor("missing"); });
  CHECK(msg.find("'missing'") != std::string::npos);
  CHECK(file.expect_matrix<float>("layer.w", 3, 4) == m);
}

TEST_CASE(
    "safetensors: writing refuses inconsistent tensors and reading a missing file is an io error") {
  CHECK_THROWS_AS(
      serialize_safetensors({{"a", tensor_data{tensor_dtype::f32, {3}, bytes_t(8, 0)}}}),
      shape_error);
  CHECK_THROWS_AS(
      serialize_safetensors({{"__metadata__", tensor_data{tensor_dtype::f32, {0}, {}}}}),
      config_error);
  CHECK_THROWS_AS(serialize_safetensors({{"bad\xff", tensor_data{tensor_dtype::f32, {0}, {}}}}),
                  value_error);
  temp_dir dir;
  const auto msg = message_of<error>([&] { read_safetensors(dir.path() / "nope.safetensors"); });
  CHECK(msg.find("[rolora.io]") == 0);
  CHECK(msg.find("nope.safetensors") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// PEFT adapter directories
// ---------------------------------------------------------------------------------------------

namespace {

// Two adapted linears with different ranks and alphas, B made non-zero, and a classifier head
// (weight and one-column bias) as modules_to_save.
lora_config peft_test_config() {
  lora_config c;
  c.r = 4;
  c.lora_alpha = 8;
  c.lora_dropout = 0.1;
  c.rank_pattern["layers.0.attention.v"] = 2;
  c.alpha_pattern["layers.0.attention.v"] = 3.5;
  return c;
}

const std::vector<module_shape> peft_test_modules = {{"layers.0.attention.q", 16, 8},
                                                     {"layers.0.attention.v", 12, 8}};
const std::vector<module_shape> peft_test_saved = {{"classifier.weight", 3, 8},
                                                   {"classifier.bias", 3, 1}};

template <class Backend>
adapter_set<Backend> peft_test_set(const lora_config& c) {
  adapter_set<Backend> set(peft_test_modules, c, 21);
  std::uint32_t tag = 40;
  for (auto& [name, a] : set)
    a.B = test::random_backend_matrix<Backend>(a.out_features(), a.rank(), tag++);
  for (const auto& s : peft_test_saved) {
    set.add_module_to_save(
        s.name, test::random_backend_matrix<Backend>(s.out_features, s.in_features, tag++));
  }
  return set;
}

nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}
void write_json(const std::filesystem::path& p, const nlohmann::json& j) {
  std::ofstream(p) << j.dump(2);
}

}  // namespace

TEST_CASE("peft: directory layout, adapter_config.json fields and tensor keys") {
  using B = eigen_backend<float>;
  temp_dir tmp;
  const auto dir = tmp.path() / "adapter";
  const lora_config c = peft_test_config();
  const auto set = peft_test_set<B>(c);
  peft_options o;
  o.module_path = peft_prefix("encoder.");
  o.base_model_name_or_path = "tiny-encoder";
  o.task_type = "SEQ_CLS";
  save_peft_adapter(dir, set, c, o);

  std::set<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    files.insert(e.path().filename().string());
  CHECK(files == std::set<std::string>{"adapter_config.json", "adapter_model.safetensors"});

  const auto cfg = read_json(dir / "adapter_config.json");
  CHECK(cfg["peft_type"] == "LORA");
  CHECK(cfg["r"] == 4);
  CHECK(cfg["lora_alpha"].is_number_integer());
  CHECK(cfg["lora_alpha"] == 8);
  CHECK(cfg["lora_dropout"] == 0.1);
  CHECK(cfg["target_modules"] ==
        nlohmann::json({"encoder.layers.0.attention.q", "encoder.layers.0.attention.v"}));
  CHECK(cfg["rank_pattern"] == nlohmann::json({{"encoder.layers.0.attention.v", 2}}));
  CHECK(cfg["alpha_pattern"] == nlohmann::json({{"encoder.layers.0.attention.v", 3.5}}));
  CHECK(cfg["modules_to_save"] == nlohmann::json({"encoder.classifier"}));
  CHECK(cfg["bias"] == "none");
  CHECK(cfg["fan_in_fan_out"] == false);
  CHECK(cfg["inference_mode"] == true);
  CHECK(cfg["init_lora_weights"] == true);
  CHECK(cfg["use_rslora"] == false);
  CHECK(cfg["use_dora"] == false);
  CHECK(cfg["layers_to_transform"].is_null());
  CHECK(cfg["task_type"] == "SEQ_CLS");
  CHECK(cfg["base_model_name_or_path"] == "tiny-encoder");

  const auto file = read_safetensors(dir / "adapter_model.safetensors");
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  const std::string q = "base_model.model.encoder.layers.0.attention.q",
                    v = "base_model.model.encoder.layers.0.attention.v";
  CHECK(file.names() == std::vector<std::string>{"base_model.model.encoder.classifier.bias",
                                                 "base_model.model.encoder.classifier.weight",
                                                 q + ".lora_A.weight", q + ".lora_B.weight",
                                                 v + ".lora_A.weight", v + ".lora_B.weight"});
  auto shape = [&](const std::string& k) { return file.tensor(k).shape; };
  using s = std::vector<std::uint64_t>;
  CHECK(shape(q + ".lora_A.weight") == s{4, 8});   // [r, in]
  CHECK(shape(q + ".lora_B.weight") == s{16, 4});  // [out, r]
  CHECK(shape(v + ".lora_A.weight") == s{2, 8});
  CHECK(shape(v + ".lora_B.weight") == s{12, 2});
  CHECK(shape("base_model.model.encoder.classifier.weight") == s{3, 8});
  CHECK(shape("base_model.model.encoder.classifier.bias") == s{3});  // torch's 1-D bias
  CHECK(file.tensor(q + ".lora_A.weight").dtype == tensor_dtype::f32);
  CHECK(file.expect_matrix<float>(q + ".lora_B.weight", 16, 4) == set.at("layers.0.attention.q").B);
  CHECK(file.expect_matrix<float>(v + ".lora_A.weight", 2, 8) == set.at("layers.0.attention.v").A);
}

TEST_CASE_TEMPLATE("peft: save -> load round trip is bit-exact and restores the configuration",
                   Backend, ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  temp_dir tmp;
  for (const bool rslora : {false, true}) {
    CAPTURE(rslora);
    lora_config c = peft_test_config();
    c.use_rslora = rslora;
    c.init_lora_weights = rslora ? lora_init::gaussian : lora_init::kaiming_uniform;
    c.target_modules = {"q", "v"};
    const auto set = peft_test_set<Backend>(c);
    peft_options o;
    o.dtype = std::is_same_v<T, float> ? tensor_dtype::f32 : tensor_dtype::f64;
    o.task_type = "SEQ_CLS";
    const auto dir = tmp.path() / (rslora ? "rs" : "plain");
    save_peft_adapter(dir, set, c, o);

    const auto loaded = load_peft_adapter<Backend>(dir, peft_test_modules, peft_test_saved, o);
    CHECK(test::bit_equal(set, loaded.adapters));
    CHECK(loaded.config.r == 4);
    CHECK(loaded.config.lora_alpha == 8.0);
    CHECK(loaded.config.lora_dropout == 0.1);
    CHECK(loaded.config.use_rslora == rslora);
    CHECK(loaded.config.init_lora_weights == c.init_lora_weights);
    CHECK(loaded.config.rank_pattern == c.rank_pattern);
    CHECK(loaded.config.alpha_pattern == c.alpha_pattern);
    for (const auto& m : peft_test_modules)
      CHECK(loaded.config.scaling_for(m.name) == c.scaling_for(m.name));
    // target_modules are written as the exact module paths.
    CHECK(loaded.config.target_modules ==
          std::vector<std::string>{"layers.0.attention.q", "layers.0.attention.v"});
    CHECK(loaded.task_type == "SEQ_CLS");
    CHECK_FALSE(loaded.base_model_name_or_path.has_value());
    // The same through the shapes of an existing set.
    CHECK(test::bit_equal(set, load_peft_adapter<Backend>(dir, set, o).adapters));
  }
  // F16 weights load within half-precision rounding.
  const lora_config c = peft_test_config();
  const auto set = peft_test_set<Backend>(c);
  peft_options half;
  half.dtype = tensor_dtype::f16;
  save_peft_adapter(tmp.path() / "half", set, c, half);
  const auto loaded = load_peft_adapter<Backend>(tmp.path() / "half", set);
  for (const auto& [name, a] : set) {
    const host_matrix<double> h = Backend::to_host(a.B).template cast<double>();
    CHECK((Backend::to_host(loaded.adapters.at(name).B).template cast<double>() - h)
              .cwiseAbs()
              .maxCoeff() <= std::ldexp(1.0, -11) * h.cwiseAbs().maxCoeff());
  }
}

TEST_CASE(
    "peft: rank_pattern keys are matched as PEFT does (suffix regex, first match in file order)") {
  using B = eigen_backend<float>;
  temp_dir tmp;
  const lora_config c = peft_test_config();
  const auto set = peft_test_set<B>(c);
  save_peft_adapter(tmp.path(), set, c);
  auto cfg = read_json(tmp.path() / "adapter_config.json");
  nlohmann::ordered_json patterns = nlohmann::ordered_json::object();
  patterns["attention\\.v"] = 2;  // suffix of "layers.0.attention.v"
  patterns["v"] = 3;              // also matches, but comes second
  cfg.erase("rank_pattern");
  std::string text = cfg.dump(2);
  text.insert(text.rfind('}'), ",\"rank_pattern\": " + patterns.dump());
  std::ofstream(tmp.path() / "adapter_config.json") << text;
  const auto loaded = load_peft_adapter<B>(tmp.path(), set);
  CHECK(loaded.config.rank_for("layers.0.attention.v") == 2);
  CHECK(loaded.config.rank_for("layers.0.attention.q") == 4);
  CHECK(test::bit_equal(set, loaded.adapters));
}

TEST_CASE("peft: mismatches between the directory and the model are clear errors") {
  using B = eigen_backend<float>;
  temp_dir tmp;
  const lora_config c = peft_test_config();
  const auto set = peft_test_set<B>(c);
  const auto dir = tmp.path() / "a";
  save_peft_adapter(dir, set, c);

  auto modules = peft_test_modules;
  modules.push_back({"layers.1.attention.q", 16, 8});
  auto msg = message_of<config_error>([&] { load_peft_adapter<B>(dir, modules, peft_test_saved); });
  CHECK(msg.find("[rolora.peft.missing_key]") == 0);
  CHECK(msg.find("base_model.model.layers.1.attention.q.lora_A.weight") != std::string::npos);

  msg = message_of<config_error>(
      [&] { load_peft_adapter<B>(dir, {peft_test_modules[0]}, peft_test_saved); });
  CHECK(msg.find("[rolora.peft.unexpected_key]") == 0);
  CHECK(msg.find("layers.0.attention.v.lora_A.weight") != std::string::npos);
  msg = message_of<config_error>([&] { load_peft_adapter<B>(dir, peft_test_modules); });
  CHECK(msg.find("classifier.weight") != std::string::npos);

  msg = message_of<shape_error>([&] {
    load_peft_adapter<B>(dir, {{"layers.0.attention.q", 16, 9}, peft_test_modules[1]},
                         peft_test_saved);
  });
  CHECK(msg.find("[rolora.peft.shape]") == 0);
  CHECK(msg.find("layers.0.attention.q") != std::string::npos);
  CHECK(msg.find("[4, 9]") != std::string::npos);
  msg = message_of<shape_error>([&] {
    load_peft_adapter<B>(dir, peft_test_modules,
                         {{"classifier.weight", 3, 8}, {"classifier.bias", 4, 1}});
  });
  CHECK(msg.find("classifier.bias") != std::string::npos);

  // The config's rank disagrees with the saved factors.
  auto cfg = read_json(dir / "adapter_config.json");
  cfg["r"] = 3;
  write_json(dir / "adapter_config.json", cfg);
  msg = message_of<shape_error>([&] { load_peft_adapter<B>(dir, set); });
  CHECK(msg.find("[rolora.peft.rank]") == 0);
  CHECK(msg.find("has rank 4") != std::string::npos);
  CHECK(msg.find("r = 3") != std::string::npos);

  // Configurations rolora cannot honour.
  cfg["r"] = 4;
  for (const auto& [field, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"peft_type", "IA3"},
           {"use_dora", true},
           {"fan_in_fan_out", true},
           {"bias", "all"},
           {"init_lora_weights", "pissa"},
           {"r", -1},
           {"lora_alpha", "big"},
           {"rank_pattern", nlohmann::json::array()}}) {
    CAPTURE(field);
    auto broken = cfg;
    broken[field] = value;
    write_json(dir / "adapter_config.json", broken);
    msg = message_of<config_error>([&] { load_peft_adapter<B>(dir, set); });
    CHECK(msg.find("[rolora.peft.config]") == 0);
    CHECK(msg.find(field) != std::string::npos);
  }
  std::ofstream(dir / "adapter_config.json") << "{not json";
  CHECK_THROWS_AS(load_peft_adapter<B>(dir, set), config_error);
  CHECK_THROWS_AS(load_peft_adapter<B>(tmp.path() / "missing", set), error);
}

TEST_CASE("peft: saving checks ranks, scalings and paths before writing anything") {
  using B = eigen_backend<float>;
  temp_dir tmp;
  const lora_config c = peft_test_config();
  const auto set = peft_test_set<B>(c);
  const auto dir = tmp.path() / "never";

  lora_config wrong_rank = c;
  wrong_rank.rank_pattern.clear();
  auto msg = message_of<config_error>([&] { save_peft_adapter(dir, set, wrong_rank); });
  CHECK(msg.find("layers.0.attention.v") != std::string::npos);
  CHECK(msg.find("rank 2") != std::string::npos);

  lora_config wrong_alpha = c;
  wrong_alpha.lora_alpha = 16;
  msg = message_of<config_error>([&] { save_peft_adapter(dir, set, wrong_alpha); });
  CHECK(msg.find("scaling") != std::string::npos);

  peft_options collide;
  collide.module_path = [](const std::string&) { return std::string("same"); };
  msg = message_of<config_error>([&] { save_peft_adapter(dir, set, c, collide); });
  CHECK(msg.find("[rolora.peft.module_path]") == 0);
  CHECK(msg.find("'same'") != std::string::npos);

  auto bad_saved = set;
  bad_saved.add_module_to_save("head", test::random_backend_matrix<B>(2, 2, 1));
  CHECK_THROWS_AS(save_peft_adapter(dir, bad_saved, c), config_error);
  CHECK_FALSE(std::filesystem::exists(dir));
}

// ---------------------------------------------------------------------------------------------
// Hostile input (issue 12): each class that once crashed or hung the readers, by construction
// ---------------------------------------------------------------------------------------------

namespace {

// `read` run on its own thread; false when it has not returned within `seconds` (a hang), in
// which case `unblock` runs so the thread can finish and be joined.
template <class Read, class Unblock>
bool returns_within(double seconds, Read read, Unblock unblock) {
  std::promise<void> done;
  auto finished = done.get_future();
  std::thread t([&] {
    read();
    done.set_value();
  });
  const bool in_time =
      finished.wait_for(std::chrono::duration<double>(seconds)) == std::future_status::ready;
  if (!in_time) unblock();
  t.join();
  return in_time;
}

// The message of the rolora::error that load_peft_adapter throws for `dir` after its
// adapter_config.json is replaced by `config_text`.
std::string peft_load_error(const std::filesystem::path& dir, const std::string& config_text) {
  std::ofstream(dir / "adapter_config.json", std::ios::trunc) << config_text;
  return message_of<error>(
      [&] { load_peft_adapter<eigen_backend<float>>(dir, peft_test_modules, peft_test_saved); });
}

std::string nested(std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

}  // namespace

TEST_CASE(
    "io: only regular files are read; a FIFO, a device or a directory is a clear error, never a "
    "hang") {
  temp_dir tmp;
  const auto fifo = tmp.path() / "fifo.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::string msg;
  const bool returned = returns_within(
      10.0, [&] { msg = message_of<error>([&] { read_safetensors(fifo); }); },
      [&] {  // a writer lets a blocked open/read return
        const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
        if (fd >= 0) ::close(fd);
      });
  REQUIRE(returned);
  CHECK(msg.find("[rolora.io]") == 0);
  CHECK(msg.find("FIFO") != std::string::npos);
  CHECK(msg.find("fifo.safetensors") != std::string::npos);

  CHECK(message_of<error>([] {
          read_file_bytes("/dev/zero");
        }).find("a character device, not a regular file") != std::string::npos);
  CHECK(message_of<error>([&] {
          read_safetensors(tmp.path());
        }).find("a directory, not a regular file") != std::string::npos);
  std::filesystem::create_symlink("/dev/zero", tmp.path() / "zero.safetensors");
  CHECK(message_of<error>([&] {
          read_safetensors(tmp.path() / "zero.safetensors");
        }).find("character device") != std::string::npos);

  // The size limit: at the limit the file is read, one byte over it is refused, naming both.
  const bytes_t small =
      serialize_safetensors({{"w", make_tensor(test::random_matrix<float>(2, 3, 1))}});
  write_file_bytes(tmp.path() / "small.safetensors", small);
  CHECK(read_safetensors(tmp.path() / "small.safetensors", small.size()).size() == 1);
  msg = message_of<error>(
      [&] { read_safetensors(tmp.path() / "small.safetensors", small.size() - 1); });
  CHECK(msg.find(std::to_string(small.size()) + " bytes, more than the " +
                 std::to_string(small.size() - 1)) != std::string::npos);

  // A PEFT directory whose config is a FIFO or a directory, and a config over the caller's limit.
  using B = eigen_backend<float>;
  const lora_config c = peft_test_config();
  const auto set = peft_test_set<B>(c);
  const auto dir = tmp.path() / "adapter";
  save_peft_adapter(dir, set, c);
  peft_options tight;
  tight.max_config_bytes = 10;
  CHECK(message_of<error>([&] { load_peft_adapter<B>(dir, set, tight); }).find("-byte limit") !=
        std::string::npos);
  std::filesystem::remove(dir / "adapter_config.json");
  REQUIRE(::mkfifo((dir / "adapter_config.json").c_str(), 0600) == 0);
  REQUIRE(returns_within(
      10.0, [&] { msg = message_of<error>([&] { load_peft_adapter<B>(dir, set); }); },
      [&] {
        const int fd = ::open((dir / "adapter_config.json").c_str(), O_WRONLY | O_NONBLOCK);
        if (fd >= 0) ::close(fd);
      }));
  CHECK(msg.find("FIFO") != std::string::npos);
  std::filesystem::remove(dir / "adapter_config.json");
  std::filesystem::create_directory(dir / "adapter_config.json");
  CHECK(message_of<error>([&] { load_peft_adapter<B>(dir, set); }).find("a directory") !=
        std::string::npos);
}

TEST_CASE("io: deeply nested JSON is refused before parsing, and messages quote a bounded prefix") {
  // A million levels: the header, a tensor's field, and adapter_config.json.
  CHECK(parse_error_id(raw_file(nested(1'000'000))) == "safetensors.header_json");
  const auto msg = message_of<value_error>([] {
    parse_safetensors(raw_file(R"({"a":{"dtype":"F32","shape":)" + nested(1'000'000) +
                               R"(,"data_offsets":[0,0]}})"));
  });
  CAPTURE(msg);
  CHECK(msg.find("deeper than 64 levels (at byte 90)") !=
        std::string::npos);  // the 63rd '[' of the shape
  CHECK(msg.size() < 300);
  // 64 levels are fine for the parser (the schema check then refuses them, quoting a prefix).
  const auto schema = message_of<value_error>([] {
    parse_safetensors(
        raw_file(R"({"a":{"dtype":"F32","shape":[)" + nested(61) + R"(],"data_offsets":[0,0]}})"));
  });
  CHECK(schema.find("[rolora.safetensors.shape]") == 0);
  CHECK(schema.size() < 400);
  // Brackets inside strings do not count; an escaped quote does not end the string.
  CHECK(parse_safetensors(
            raw_file(R"({"__metadata__":{"k":")" + std::string(1000, '[') + R"(\"{"}})"))
            .metadata()
            .at("k")
            .size() == 1002);

  // Long names and values are cut in messages.
  const std::string long_name(1'000'000, 'n');
  const auto cut = message_of<value_error>([&] {
    parse_safetensors(raw_file(R"({")" + long_name + R"(":{"dtype":")" + long_name +
                                   R"(","shape":[1],"data_offsets":[0,4]}})",
                               {0, 0, 0, 0}));
  });
  CHECK(cut.find("[rolora.safetensors.dtype]") == 0);
  CHECK(cut.size() < 400);

  temp_dir tmp;
  using B = eigen_backend<float>;
  const lora_config c = peft_test_config();
  save_peft_adapter(tmp.path(), peft_test_set<B>(c), c);
  auto peft = peft_load_error(tmp.path(), R"({"peft_type":"LORA","r":)" + nested(1'000'000) + "}");
  CHECK(peft.find(
            "[rolora.peft.config] adapter_config.json: arrays and objects nest deeper than 64") ==
        0);
  peft = peft_load_error(tmp.path(), R"({"peft_type":"LORA","target_modules":")" +
                                         std::string(1'000'000, 'x') +
                                         R"(",)"
                                         R"("bias":[")" +
                                         std::string(1'000'000, 'y') + R"("]})");
  CHECK(peft.find("bias") != std::string::npos);
  CHECK(peft.size() < 400);
}

TEST_CASE("peft: adapter_config.json with a duplicate key is refused") {
  temp_dir tmp;
  using B = eigen_backend<float>;
  const lora_config c = peft_test_config();
  save_peft_adapter(tmp.path(), peft_test_set<B>(c), c);
  auto msg = peft_load_error(tmp.path(), R"({"peft_type":"LORA","r":4,"r":8})");
  CHECK(msg.find("[rolora.peft.config]") == 0);
  CHECK(msg.find("key \"r\" appears twice") != std::string::npos);
  msg = peft_load_error(tmp.path(), R"({"peft_type":"LORA","r":4,"rank_pattern":{"q":2,"q":3}})");
  CHECK(msg.find("key \"q\" appears twice") != std::string::npos);
}

TEST_CASE("peft: rank_pattern / alpha_pattern keys are checked before a regex engine sees them") {
  temp_dir tmp;
  using B = eigen_backend<float>;
  const lora_config c = peft_test_config();
  const auto set = peft_test_set<B>(c);
  save_peft_adapter(tmp.path(), set, c);
  const std::string head = R"({"peft_type":"LORA","r":4,"lora_alpha":8,)";
  const auto pattern_error = [&](const std::string& field, const std::string& key) {
    return peft_load_error(tmp.path(),
                           head + "\"" + field + "\":" + nlohmann::json{{key, 2}}.dump() + "}");
  };
  struct refused {
    std::string key, why;
  };
  for (const auto& [key, why] : std::vector<refused>{
           {std::string(100'000, 'a'), "100000 characters, more than the 256 allowed"},
           {std::string(9, '(') + "v" + std::string(9, ')'), "nests groups deeper than 8 levels"},
           {"(v)\\1", "backreference"},
           {"(?=v)v", "lookaround"},
           {"(?P<x>v)", "named group"},
           {"v{1000}", "one counted repetition"},
           {"(v{2}){2}", "one counted repetition"},
           {"v{2,}", "unbounded repetition"},
           {"(v", "unclosed '('"},
           {"v)", "unbalanced ')'"},
           {"[v", "unclosed '['"},
           {"v\\", "lone backslash"},
           {"", "is empty"},
           {"*v", "not a usable regular expression"}}) {
    CAPTURE(key.substr(0, 40));
    for (const char* field : {"rank_pattern", "alpha_pattern"}) {
      const auto msg = pattern_error(field, key);
      CHECK(msg.find("[rolora.peft.pattern] adapter_config.json: " + std::string(field) +
                     " key '") == 0);
      CHECK(msg.find(why) != std::string::npos);
      CHECK(msg.size() < 300);
    }
  }
  // What real configs hold still works: suffix paths, classes, (?:...), \d, one bounded count,
  // and a nested quantifier, which the polynomial-time engine runs without backtracking blow-up.
  for (const std::string key :
       {"attention\\.v", "layers\\.\\d+\\.attention\\.[v]", "(?:attention)\\.v",
        "layers.{1,3}attention.v", "(l|a|y|e|r|s|\\.|\\d|t|n|i|o)*v", "(.*)*v"}) {
    CAPTURE(key);
    std::ofstream(tmp.path() / "adapter_config.json", std::ios::trunc)
        << head + R"("rank_pattern":)" + nlohmann::json{{key, 2}}.dump() + R"(,"alpha_pattern":)" +
               nlohmann::json{{key, 3.5}}.dump() + "}";
    const auto loaded = load_peft_adapter<B>(tmp.path(), set);
    CHECK(loaded.config.rank_for("layers.0.attention.v") == 2);
    CHECK(loaded.config.alpha_for("layers.0.attention.v") == 3.5);
    CHECK(loaded.config.rank_for("layers.0.attention.q") == 4);
    CHECK(test::bit_equal(set, loaded.adapters));
  }
}

TEST_CASE("peft: every numeric field is range-checked, naming the field, the value and the range") {
  temp_dir tmp;
  using B = eigen_backend<float>;
  const lora_config c = peft_test_config();
  save_peft_adapter(tmp.path(), peft_test_set<B>(c), c);
  struct bad_number {
    std::string config, field, value, range;
  };
  const std::string lora = R"({"peft_type":"LORA",)";
  for (const auto& [config, field, value, range] : std::vector<bad_number>{
           {R"("lora_alpha":1e308})", "lora_alpha", "1e+308", "(0, 1000000]"},
           {R"("lora_alpha":0})", "lora_alpha", "got 0", "(0, 1000000]"},
           {R"("lora_alpha":-8})", "lora_alpha", "-8", "(0, 1000000]"},
           {R"("lora_alpha":"8"})", "lora_alpha", "\"8\"", "(0, 1000000]"},
           {R"("r":0})", "r", "got 0", "[1, 1073741824]"},
           {R"("r":4.5})", "r", "4.5", "[1, 1073741824]"},
           {R"("r":2147483648})", "r", "2147483648", "[1, 1073741824]"},
           {R"("r":9})", "r", "= 9", "[1, 8] for module 'layers.0.attention.q' of shape [16, 8]"},
           {R"("r":4,"rank_pattern":{"attention\\.v":100}})",
            "rank_pattern['layers.0.attention.v']", "= 100",
            "[1, 8] for module 'layers.0.attention.v' of shape [12, 8]"},
           {R"("r":4,"rank_pattern":{"v":-2}})", "rank_pattern['layers.0.attention.v']", "-2",
            "[1, 1073741824]"},
           {R"("r":4,"alpha_pattern":{"v":-3.5}})", "alpha_pattern['layers.0.attention.v']", "-3.5",
            "(0, 1000000]"},
           {R"("lora_dropout":1.5})", "lora_dropout", "1.5", "[0, 1)"},
           {R"("lora_dropout":-0.1})", "lora_dropout", "-0.1", "[0, 1)"}}) {
    CAPTURE(config);
    const auto msg = peft_load_error(tmp.path(), lora + config);
    CAPTURE(msg);
    CHECK(msg.find("[rolora.peft.config] adapter_config.json: " + field + " ") == 0);
    CHECK(msg.find(value) != std::string::npos);
    CHECK(msg.find(range) != std::string::npos);
  }
  // A number beyond double's range is refused by the parser, quoting it.
  const auto msg = peft_load_error(tmp.path(), lora + R"("lora_alpha":1e400})");
  CHECK(msg.find("[rolora.peft.config] adapter_config.json: not valid UTF-8 JSON") == 0);
  CHECK(msg.find("1e400") != std::string::npos);
}
