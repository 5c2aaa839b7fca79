// rolora version, as a macro for the preprocessor and a constant for code.
#pragma once
#include <string_view>

#define ROLORA_VERSION_MAJOR 0
#define ROLORA_VERSION_MINOR 1
#define ROLORA_VERSION_PATCH 0

namespace rolora {
inline constexpr std::string_view version = "0.1.0";
}  // namespace rolora
