// io/npy.hpp: .npy files against numpy's format (numpy/lib/format.py): bytes exactly as np.save
// writes them, round trips, dtype and order variants, and hostile headers.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <rolora/io/npy.hpp>
#include <rolora/theory/npy_data.hpp>
#include <string>

#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;

namespace {

using namespace std::string_literals;

// np.save("a.npy", np.array([[1., 2., 3.], [4., 5., 6.]])) with numpy: magic, version 1.0,
// HEADER_LEN 118 (0x76 0x00), the dict padded with spaces to byte 127, '\n', then six
// little-endian float64.
const std::string numpy_2x3_f8 =
    "\x93NUMPY\x01\x00\x76\x00"s + "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }" +
    std::string(58, ' ') + "\n" + "\x00\x00\x00\x00\x00\x00\xf0\x3f"s +
    "\x00\x00\x00\x00\x00\x00\x00\x40"s + "\x00\x00\x00\x00\x00\x00\x08\x40"s +
    "\x00\x00\x00\x00\x00\x00\x10\x40"s + "\x00\x00\x00\x00\x00\x00\x14\x40"s +
    "\x00\x00\x00\x00\x00\x00\x18\x40"s;

// A version 1.0 file with the given header dict (padded as numpy pads) and data bytes.
// A whole file as bytes and back (io/file.hpp), for headers written by hand.
std::string file_bytes(const std::filesystem::path& path) {
  const auto raw = read_file_bytes(path);
  return std::string(raw.begin(), raw.end());
}
void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  write_file_bytes(path,
                   std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

std::string npy_file(const std::string& dict, const std::string& data) {
  std::string header = dict;
  header += std::string(63 - (10 + header.size()) % 64, ' ') + "\n";
  const auto len = header.size();
  return "\x93NUMPY\x01\x00"s + char(len & 0xff) + char(len >> 8) + header + data;
}

std::string f4_bytes(std::initializer_list<float> values, bool big_endian = false) {
  std::string out;
  for (float v : values) {
    std::uint32_t u;
    std::memcpy(&u, &v, 4);
    for (int i = 0; i < 4; ++i)
      out += char(big_endian ? (u >> (24 - 8 * i)) & 0xff : (u >> (8 * i)) & 0xff);
  }
  return out;
}

std::string npy_error(const std::string& bytes) {
  return message_of<value_error>([&] { read_npy<double>(bytes); });
}

}  // namespace

TEST_CASE("npy: reads the bytes numpy writes and writes the same bytes") {
  REQUIRE(numpy_2x3_f8.size() == 128 + 48);
  const auto h = parse_npy_header(numpy_2x3_f8);
  CHECK(h.data_offset == 128);
  CHECK(h.shape == std::vector<std::size_t>{2, 3});
  CHECK(h.descr() == "<f8");
  CHECK_FALSE(h.fortran_order);
  Eigen::MatrixXd expected(2, 3);
  expected << 1, 2, 3, 4, 5, 6;
  CHECK(to_matrix(read_npy<double>(numpy_2x3_f8), "x") == expected);
  CHECK(npy_bytes(expected) ==
        numpy_2x3_f8);  // column-major Eigen, written in C order as numpy does
}

TEST_CASE("npy: round trips through files, float and double, matrices and N-d arrays") {
  const auto dir = std::filesystem::temp_directory_path() / "rolora_test_npy";
  std::filesystem::create_directories(dir);
  const auto m = test::random_matrix<double>(7, 3, 1);
  save_npy(dir / "m.npy", m);
  CHECK(load_npy_matrix<double>(dir / "m.npy") == m);
  const Eigen::MatrixXf mf = m.cast<float>();
  save_npy(dir / "mf.npy", mf);
  CHECK(parse_npy_header(file_bytes(dir / "mf.npy")).descr() == "<f4");
  CHECK(load_npy_matrix<float>(dir / "mf.npy") == mf);
  CHECK(load_npy_matrix<double>(dir / "mf.npy") == mf.cast<double>());  // f4 -> double exactly

  xt::xarray<float> cube = xt::zeros<float>({2, 3, 4});
  for (std::size_t i = 0; i < cube.size(); ++i) cube.data()[i] = float(i) * 0.5f;
  save_npy(dir / "cube.npy", cube);
  const auto back = load_npy<float>(dir / "cube.npy");
  CHECK(back.shape() == cube.shape());
  CHECK(back == cube);
  CHECK(back(1, 2, 3) == 11.5f);
  CHECK_THROWS_AS(load_npy_matrix<float>(dir / "cube.npy"), shape_error);

  adapter_set<eigen_backend<float>> adapters;
  adapters.insert("layers.0.q", make_lora<eigen_backend<float>>("layers.0.q", 5, 4, 2, 2.0,
                                                                lora_init::gaussian, 1, 0));
  adapters.at("layers.0.q").B = test::random_matrix<float>(5, 2, 3);
  adapters.add_module_to_save("classifier.weight", test::random_matrix<float>(3, 4, 4));
  save_adapters_npy(dir / "adapter", adapters);
  CHECK(load_npy_matrix<float>(dir / "adapter" / "layers.0.q.lora_A.npy") ==
        adapters.at("layers.0.q").A);
  CHECK(load_npy_matrix<float>(dir / "adapter" / "layers.0.q.lora_B.npy") ==
        adapters.at("layers.0.q").B);
  CHECK(load_npy_matrix<float>(dir / "adapter" / "classifier.weight.npy") ==
        adapters.modules_to_save().at("classifier.weight"));

  const auto missing = message_of<error>([&] { load_npy<float>(dir / "absent.npy"); });
  CHECK(missing.find("absent.npy") != std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST_CASE("npy: dtype and order variants give the same matrix") {
  Eigen::MatrixXd expected(2, 3);
  expected << 1, 2, 3, 4, 5, 6;
  const auto c_order = npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                f4_bytes({1, 2, 3, 4, 5, 6}));
  const auto f_order = npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                                f4_bytes({1, 4, 2, 5, 3, 6}));
  const auto big = npy_file("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
                            f4_bytes({1, 2, 3, 4, 5, 6}, true));
  // Keys in another order, double quotes, no trailing comma, Python 2 longs: still numpy's format.
  const auto loose = npy_file("{\"shape\": (2L, 3L), \"fortran_order\": True, \"descr\": \"<f4\"}",
                              f4_bytes({1, 4, 2, 5, 3, 6}));
  std::string u1_data = "\x01\x02\x03\x04\x05\x06";
  const auto bytes =
      npy_file("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }", u1_data);
  for (const auto& file : {c_order, f_order, big, loose, bytes, numpy_2x3_f8}) {
    CHECK(to_matrix(read_npy<double>(file), "x") == expected);
    CHECK(to_matrix(read_npy<float>(file), "x") == expected.cast<float>());
  }
  // 1-d -> a column; 0-d -> one element; an empty array.
  const auto vec =
      npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", f4_bytes({1, 2, 3}));
  CHECK(to_matrix(read_npy<double>(vec), "x") == Eigen::Vector3d(1, 2, 3));
  const auto scalar = read_npy<double>(
      npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", f4_bytes({7})));
  CHECK(scalar.size() == 1);
  CHECK(scalar() == 7.0);
  CHECK(
      read_npy<double>(npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 5), }", ""))
          .size() == 0);
}

TEST_CASE("npy: hostile files throw value_error saying what was expected") {
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string data = f4_bytes({1, 2, 3, 4, 5, 6});
  CHECK(npy_error("").find("magic") != std::string::npos);
  CHECK(npy_error("\x93NUMPX\x01\x00"s).find("not a .npy file") != std::string::npos);
  CHECK(npy_error("\x93NUMPY\x02\x01\x00\x00\x00\x00"s).find("version 2.1") != std::string::npos);
  CHECK(npy_error("\x93NUMPY\x01\x00\x76"s).find("inside the header length") != std::string::npos);
  CHECK(npy_error("\x93NUMPY\x01\x00\xff\xff{}"s).find("only 2 follow") != std::string::npos);
  CHECK(npy_error("\x93NUMPY\x02\x00\xff\xff\xff\xff{}"s).find("4294967295 bytes") !=
        std::string::npos);
  CHECK(npy_error(npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }", data))
            .find("unsupported dtype '<i8'") != std::string::npos);
  CHECK(npy_error(npy_file("{'descr': '<f4', 'shape': (2, 3), }", data))
            .find("lacks 'fortran_order'") != std::string::npos);
  CHECK(npy_error(
            npy_file("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",
                     data))
            .find("twice") != std::string::npos);
  CHECK(
      npy_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", data))
          .find("unexpected key 'x'") != std::string::npos);
  CHECK(npy_error(npy_file("{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}", data))
            .find("True or False") != std::string::npos);
  CHECK(npy_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}", data))
            .find("non-negative") != std::string::npos);
  CHECK(npy_error(
            npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
                     data))
            .find("64 bits") != std::string::npos);
  // 2^31 x 2^31 x 4 bytes = 2^64: rejected before any allocation.
  CHECK(npy_error(
            npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2147483648, 2147483648)}",
                     data))
            .find("overflows") != std::string::npos);
  // A plausible but absent 2^40-element array: the data check, not an allocation, says so.
  CHECK(npy_error(
            npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576)}", data))
            .find("the file has 24") != std::string::npos);
  CHECK(npy_error(npy_file(ok_dict, data.substr(0, 20)))
            .find("needs 24 data bytes, the file has 20") != std::string::npos);
  CHECK(npy_error(npy_file(ok_dict, data + "xx")).find("the file has 26") != std::string::npos);
  CHECK(npy_error(npy_file("{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3)}", data))
            .find("expected") != std::string::npos);
  CHECK(npy_error(npy_file(ok_dict + " junk", data)).find("after the header dict") !=
        std::string::npos);
  std::string many_dims = "(";
  for (int i = 0; i < 33; ++i) many_dims += "1,";
  CHECK(npy_error(
            npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': " + many_dims + ")}", data))
            .find("32 dimensions") != std::string::npos);
  CHECK(npy_error(npy_file("{'descr': '<f4\0', 'fortran_order': False, 'shape': (2, 3)}"s, data))
            .find("unsupported character byte 0x00") != std::string::npos);
}

TEST_CASE("npy: every prefix and every one-byte corruption of a file is read or refused cleanly") {
  const auto file = npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                             f4_bytes({1, 4, 2, 5, 3, 6}));
  for (std::size_t n = 0; n < file.size(); ++n)
    CHECK_THROWS_AS(read_npy<double>(file.substr(0, n)), value_error);
  std::size_t refused = 0;
  for (std::size_t at = 0; at < file.size(); ++at) {
    for (const int byte : {0x00, 0x20, 0x27, 0x28, 0x29, 0x2c, 0x31, 0x39, 0x7b, 0x7d, 0xff}) {
      std::string bad = file;
      bad[at] = char(byte);
      try {
        const auto a = read_npy<double>(bad);
        CHECK(a.size() ==
              6);  // a corruption that still parses (data bytes, padding) keeps the shape's size
      } catch (const value_error&) {
        ++refused;
      }
    }
  }
  CHECK(refused > 0);
}

TEST_CASE("npy: theory client data from the project's writer and from numpy's bytes") {
  const auto dir = std::filesystem::temp_directory_path() / "rolora_test_npy_clients";
  std::filesystem::remove_all(dir);
  theory::linear_problem_config c;
  c.dim = 3;
  c.out_dim = 1;
  c.clients = 2;
  c.samples = 20;
  const auto problem = theory::make_linear_problem<eigen_backend<double>>(c);
  theory::write_client_arrays(dir, problem);
  // A third client as numpy writes it: X the 2x3 float64 array above, Y a float32 vector in
  // Fortran order (1-d: the same bytes), the loader accepts both.
  write_bytes(dir / "client_2_X.npy", numpy_2x3_f8);
  write_bytes(dir / "client_2_Y.npy",
              npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",
                       f4_bytes({0.5f, -1.5f})));
  const auto arrays = theory::read_client_arrays(dir);
  REQUIRE(arrays.inputs.size() == 3);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(arrays.inputs[i] == eigen_backend<double>::to_host(problem.clients[i].inputs()));
    CHECK(arrays.targets[i] == eigen_backend<double>::to_host(problem.clients[i].targets()));
  }
  theory::host x2(3, 2), y2(1, 2);
  x2 << 1, 4, 2, 5, 3, 6;
  y2 << 0.5, -1.5;
  CHECK(arrays.inputs[2] == x2);
  CHECK(arrays.targets[2] == y2);
  const auto p =
      theory::linear_problem_from_data<eigen_backend<double>>(arrays.inputs, arrays.targets, 1);
  CHECK(p.clients.size() == 3);
  CHECK(p.config.samples == 2);

  // Mismatched files say which and how.
  write_bytes(
      dir / "client_2_Y.npy",
      npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", f4_bytes({1, 2, 3})));
  CHECK(message_of<shape_error>([&] {
          theory::read_client_arrays(dir);
        }).find("has 2 rows (samples) but") != std::string::npos);
  std::filesystem::remove(dir / "client_2_Y.npy");
  CHECK(message_of<config_error>([&] { theory::read_client_arrays(dir); }).find("client_2_Y.npy") !=
        std::string::npos);
  std::filesystem::remove_all(dir);
  CHECK(message_of<config_error>([&] { theory::read_client_arrays(dir); }).find("no client data") !=
        std::string::npos);
}
