// Whole-file reads and atomic writes for the io/ readers and writers.
//
// Only regular files are read: a FIFO, a device (/dev/zero, /dev/stdin), a socket or a directory
// is refused before a byte is read, so a hostile path can neither block the reader forever nor
// make it allocate what a device claims to hold. On POSIX the file is opened non-blocking and
// checked with fstat on the open descriptor (no window between the check and the read); the size
// is capped by a limit the caller can raise. Errors are rolora::error "[rolora.io] ...".
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#define ROLORA_IO_POSIX 1
#else
#define ROLORA_IO_POSIX 0
#endif

#include <rolora/core/error.hpp>

namespace rolora {

// The largest file read_file_bytes reads unless told otherwise (16 GiB: a 7B-parameter model in
// F16 is 14 GB). It bounds the memory a hostile file can make the reader allocate.
inline constexpr std::uint64_t default_max_file_bytes = std::uint64_t(16) << 30;

namespace detail::io {

inline std::string kind_of(std::filesystem::file_type t) {
  using ft = std::filesystem::file_type;
  switch (t) {
    case ft::directory:
      return "a directory";
    case ft::fifo:
      return "a FIFO (named pipe)";
    case ft::character:
      return "a character device";
    case ft::block:
      return "a block device";
    case ft::socket:
      return "a socket";
    case ft::symlink:
      return "a dangling symbolic link";
    case ft::not_found:
      return "missing";
    default:
      return "not a regular file";
  }
}

[[noreturn]] inline void refuse_kind(const std::filesystem::path& path,
                                     std::filesystem::file_type t) {
  fail<error>("io", "cannot read '", path.string(), "': it is ", kind_of(t),
              ", not a regular file");
}

inline void check_size(const std::filesystem::path& path, std::uint64_t size,
                       std::uint64_t max_bytes) {
  if (size > max_bytes) {
    fail<error>("io", "'", path.string(), "' has ", size, " bytes, more than the ", max_bytes,
                "-byte limit (pass a larger max_bytes to read it)");
  }
}

#if ROLORA_IO_POSIX
// Closes the descriptor at scope exit.
struct fd_guard {
  int fd;
  ~fd_guard() { ::close(fd); }
};

inline std::filesystem::file_type file_type_of(mode_t mode) {
  using ft = std::filesystem::file_type;
  if (S_ISDIR(mode)) return ft::directory;
  if (S_ISFIFO(mode)) return ft::fifo;
  if (S_ISCHR(mode)) return ft::character;
  if (S_ISBLK(mode)) return ft::block;
  if (S_ISSOCK(mode)) return ft::socket;
  return ft::unknown;
}
#endif

}  // namespace detail::io

// The whole content of the regular file `path`, at most `max_bytes` long; error "[rolora.io]"
// naming the path when it is missing, not a regular file, larger than the limit, or unreadable.
inline std::vector<std::uint8_t> read_file_bytes(const std::filesystem::path& path,
                                                 std::uint64_t max_bytes = default_max_file_bytes) {
#if ROLORA_IO_POSIX
  // O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    detail::fail<error>("io", "cannot open '", path.string(),
                        "' for reading: ", std::strerror(err));
  }
  const detail::io::fd_guard guard{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) detail::fail<error>("io", "cannot stat '", path.string(), "'");
  if (!S_ISREG(st.st_mode)) detail::io::refuse_kind(path, detail::io::file_type_of(st.st_mode));
  const auto size = static_cast<std::uint64_t>(st.st_size);
  detail::io::check_size(path, size, max_bytes);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ::ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      detail::fail<error>("io", "cannot read '", path.string(), "': ", std::strerror(err));
    }
    if (n == 0) {
      detail::fail<error>("io", "'", path.string(), "' shrank from ", size, " to ", done,
                          " bytes while it was read");
    }
    done += static_cast<std::size_t>(n);
  }
  return bytes;
#else
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || status.type() == std::filesystem::file_type::not_found) {
    detail::fail<error>("io", "cannot open '", path.string(), "' for reading");
  }
  if (status.type() != std::filesystem::file_type::regular)
    detail::io::refuse_kind(path, status.type());
  const std::uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) detail::fail<error>("io", "cannot determine the size of '", path.string(), "'");
  detail::io::check_size(path, size, max_bytes);
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::fail<error>("io", "cannot open '", path.string(), "' for reading");
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  if (size > 0 &&
      !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size))) {
    detail::fail<error>("io", "cannot read '", path.string(), "'");
  }
  return bytes;
#endif
}

// Writes `bytes` to `path` through a temporary file in the same directory renamed over it, so a
// failed write never leaves a truncated file behind.
inline void write_file_bytes(const std::filesystem::path& path,
                             std::span<const std::uint8_t> bytes) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) detail::fail<error>("io", "cannot open '", tmp.string(), "' for writing");
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      detail::fail<error>("io", "cannot write '", tmp.string(), "'");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    detail::fail<error>("io", "cannot rename '", tmp.string(), "' to '", path.string(),
                        "': ", ec.message());
  }
}

}  // namespace rolora
