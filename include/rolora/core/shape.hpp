// Index type and transposition flags shared by every backend.
#pragma once
#include <cstddef>

namespace rolora {

using index_t = std::ptrdiff_t;

// How a GEMM operand is read: as stored, or transposed.
enum class op { none, transpose };

}  // namespace rolora
