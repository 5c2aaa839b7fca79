// The cryptographic core of secure aggregation, all of it (rolora::secagg, target rolora::secagg,
// needs libsodium): crypto.hpp (keys, key derivation, mask streams), shamir.hpp (secret sharing
// over GF(2^61 - 1)), encoding.hpp (fixed point in Z_{2^64}), graph.hpp (who masks with whom),
// masking.hpp (double masking and unmasking). The rounds that use it: round.hpp (needs the
// federation and nlohmann-json, so it is not included here).
#pragma once
#include <rolora/secagg/crypto.hpp>
#include <rolora/secagg/encoding.hpp>
#include <rolora/secagg/graph.hpp>
#include <rolora/secagg/masking.hpp>
#include <rolora/secagg/shamir.hpp>
