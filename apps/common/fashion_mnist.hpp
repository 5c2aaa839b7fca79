// Fashion-MNIST (Xiao et al. 2017) from Debian's dataset-fashion-mnist: gzipped IDX files in
// /usr/share/datasets/fashion-mnist, decoded once and cached as .npy (uint8, numpy's layout:
// images [n, 28, 28], labels [n]) so later runs and numpy users skip the decoding.
//
// IDX (http://yann.lecun.com/exdb/mnist/): 2 zero bytes, a type byte (0x08: unsigned byte), the
// number of dimensions, each dimension as a big-endian u32, then the data in C order.
#pragma once
#include <zlib.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <rolora/core/error.hpp>
#include <rolora/io/npy.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace rolora::apps {

// A file that is not the IDX data it should be (or cannot be read): "[rolora.idx_error] ...".
class idx_error : public value_error {
 public:
  using value_error::value_error;
  static constexpr std::string_view id = "idx_error";
};

inline constexpr const char* fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";
inline constexpr std::array<const char*, 10> fashion_mnist_classes{
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

// The decompressed bytes of a gzip file, refusing more than `limit` (a decompression bomb).
inline std::string read_gzip(const std::filesystem::path& path, std::size_t limit = std::size_t(1)
                                                                                    << 28) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) raise<idx_error>("cannot open ", path.string());
  std::string out;
  char buffer[1 << 16];
  for (;;) {
    const int n = gzread(f, buffer, sizeof buffer);
    if (n < 0) {
      int code = 0;
      const std::string why = gzerror(f, &code);
      gzclose(f);
      raise<idx_error>(path.string(), ": ", why);
    }
    if (n == 0) break;
    out.append(buffer, std::size_t(n));
    if (out.size() > limit) {
      gzclose(f);
      raise<idx_error>(path.string(), " decompresses to more than ", limit, " bytes");
    }
  }
  gzclose(f);
  return out;
}

// An IDX array of unsigned bytes: its shape and data (C order).
struct idx_array {
  std::vector<std::size_t> shape;
  std::vector<std::uint8_t> data;
};

inline idx_array parse_idx(const std::string& bytes, const std::string& what) {
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0 ||
      static_cast<unsigned char>(bytes[2]) != 0x08) {
    raise<idx_error>(what, ": expected an IDX file of unsigned bytes (00 00 08 ..)");
  }
  const std::size_t dims = static_cast<unsigned char>(bytes[3]);
  if (dims < 1 || dims > 4 || bytes.size() < 4 + 4 * dims) {
    raise<idx_error>(what, ": expected 1..4 dimensions and their sizes, got ", dims);
  }
  idx_array out;
  std::size_t count = 1;
  for (std::size_t d = 0; d < dims; ++d) {
    std::uint32_t n = 0;
    for (std::size_t k = 0; k < 4; ++k)
      n = (n << 8) | static_cast<unsigned char>(bytes[4 + 4 * d + k]);
    out.shape.push_back(n);
    if (n != 0 && count > bytes.size() / n) {
      raise<idx_error>(what, ": the shape asks for more bytes than the file holds");
    }
    count *= n;
  }
  const std::size_t offset = 4 + 4 * dims;
  if (bytes.size() - offset != count) {
    raise<idx_error>(what, ": the shape needs ", count, " data bytes, the file has ",
                     bytes.size() - offset);
  }
  out.data.assign(bytes.begin() + std::ptrdiff_t(offset), bytes.end());
  return out;
}

// One split: images [784, n] scaled to [0, 1], one column per image (row-major pixels), labels.
struct image_set {
  host_matrix<float> x;
  std::vector<std::int32_t> labels;
};

// "train" or "t10k" from `dir`, through the .npy cache in `cache_dir` (made on first use).
inline image_set load_fashion_mnist(const std::string& split, const std::filesystem::path& dir,
                                    const std::filesystem::path& cache_dir) {
  const auto images_npy = cache_dir / (split + "_images.npy"),
             labels_npy = cache_dir / (split + "_labels.npy");
  xt::xarray<float> images, labels;
  if (std::filesystem::exists(images_npy) && std::filesystem::exists(labels_npy)) {
    images = load_npy<float>(images_npy);
    labels = load_npy<float>(labels_npy);
  } else {
    const auto gz = [&](const char* kind) {
      return dir / (split + "-" + kind + "-idx" + (kind[0] == 'i' ? "3" : "1") + "-ubyte.gz");
    };
    const auto img = parse_idx(read_gzip(gz("images")), gz("images").string());
    const auto lab = parse_idx(read_gzip(gz("labels")), gz("labels").string());
    if (img.shape.size() != 3 || lab.shape.size() != 1 || img.shape[0] != lab.shape[0]) {
      raise<idx_error>(split, ": expected images [n, rows, cols] and labels [n] with the same n");
    }
    xt::xarray<std::uint8_t> img_u8 = xt::adapt(img.data, img.shape),
                             lab_u8 = xt::adapt(lab.data, lab.shape);
    std::filesystem::create_directories(cache_dir);
    save_npy(images_npy, img_u8);
    save_npy(labels_npy, lab_u8);
    images = xt::cast<float>(img_u8);
    labels = xt::cast<float>(lab_u8);
  }
  if (images.dimension() != 3 || labels.dimension() != 1 ||
      images.shape()[0] != labels.shape()[0]) {
    raise<idx_error>(images_npy.string(), ": expected images [n, rows, cols] and labels [n]");
  }
  const auto n = index_t(images.shape()[0]),
             pixels = index_t(images.shape()[1] * images.shape()[2]);
  image_set out{host_matrix<float>(pixels, n), {}};
  for (index_t i = 0; i < n; ++i) {
    for (index_t p = 0; p < pixels; ++p)
      out.x(p, i) = images.data()[std::size_t(i * pixels + p)] / 255.0f;
    const float y = labels(std::size_t(i));
    if (!(y >= 0 && y <= 9)) raise<idx_error>(split, ": label ", y, " outside 0..9");
    out.labels.push_back(std::int32_t(y));
  }
  return out;
}

// Each 28 x 28 image turned a quarter clockwise: pixel (r, c) of the result is (27 - c, r).
inline host_matrix<float> rotate_quarter(const host_matrix<float>& x, index_t side = 28) {
  host_matrix<float> out(x.rows(), x.cols());
  for (index_t i = 0; i < x.cols(); ++i) {
    for (index_t r = 0; r < side; ++r) {
      for (index_t c = 0; c < side; ++c) out(r * side + c, i) = x((side - 1 - c) * side + r, i);
    }
  }
  return out;
}

}  // namespace rolora::apps
