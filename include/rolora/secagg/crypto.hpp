// The cryptography of secure aggregation (Bonawitz et al., CCS 2017, "Practical Secure
// Aggregation for Privacy-Preserving Machine Learning"), all of it libsodium's: X25519 key pairs
// and key agreement, BLAKE2b key derivation, the ChaCha20 mask stream, the system's randomness.
// Nothing here is home-made cryptography; this header only fixes the bytes that go in.
//
// A pair key, of clients i and j for one round and one purpose (eq. of s_{i,j} in §4 of the
// paper, with the round and the purpose bound in as SecAgg+ does):
//   s   = X25519(sk_i, pk_j)                                   (32 bytes, = X25519(sk_j, pk_i))
//   key = BLAKE2b-256(key = s, message = "rolora.secagg.v1" || round || min(i,j) || max(i,j)
//                     || purpose || pk_min(i,j) || pk_max(i,j))
// with round, ids as 8 bytes little-endian and purpose 1 byte. A different round, a different
// pair or a different purpose gives an unrelated key.
//
// A mask stream: L words of 64 bits from ChaCha20 (IETF, crypto_stream_chacha20_ietf) under a
// 256-bit key and the 96-bit nonce round (8 bytes LE) || domain (4 bytes LE), each word the
// little-endian reading of 8 output bytes. The round is in the nonce of every stream, so a stream
// of one round is never the stream of another, whatever the key.
#pragma once
#include <sodium.h>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <rolora/core/error.hpp>
#include <span>
#include <vector>

namespace rolora::secagg {

using key256 = std::array<std::uint8_t, 32>;      // a symmetric key or a seed
using public_key = std::array<std::uint8_t, 32>;  // X25519
using secret_key = std::array<std::uint8_t, 32>;  // X25519

struct keypair {
  public_key pk{};
  secret_key sk{};
};

// What a pair key is for. Only the pairwise mask: shares are sealed with crypto_box under a
// second key pair (seal below), never under a key derived from the mask key pair.
enum class key_purpose : std::uint8_t { pairwise_mask = 1 };

// The domain of a mask stream (the last 4 bytes of its nonce).
enum class stream_domain : std::uint32_t { self_mask = 1, pairwise_mask = 2, graph = 3 };

namespace detail {

// sodium_init() once per process (it is thread-safe and idempotent); refuses when it fails.
inline void ensure_sodium() {
  static const int status = sodium_init();  // 0: initialised now, 1: already, -1: failed
  if (status < 0) {
    rolora::detail::raise<config_error>("secagg: sodium_init() failed (returned ", status,
                                        "); libsodium cannot be used");
  }
}

inline void put_le64(std::uint8_t* out, std::uint64_t v) {
  for (int b = 0; b < 8; ++b) out[b] = std::uint8_t(v >> (8 * b));
}
inline std::uint64_t get_le64(const std::uint8_t* in) {
  std::uint64_t v = 0;
  for (int b = 7; b >= 0; --b) v = (v << 8) | in[b];
  return v;
}

}  // namespace detail

// A fresh X25519 key pair from the system's randomness.
inline keypair generate_keypair() {
  detail::ensure_sodium();
  keypair kp;
  crypto_box_keypair(kp.pk.data(), kp.sk.data());
  return kp;
}

// The public key of a secret key (used by the server to check a reconstructed secret key).
inline public_key public_of(const secret_key& sk) {
  detail::ensure_sodium();
  public_key pk{};
  crypto_scalarmult_base(pk.data(), sk.data());
  return pk;
}

// 32 random bytes: a self-mask seed.
inline key256 random_seed() {
  detail::ensure_sodium();
  key256 s{};
  randombytes_buf(s.data(), s.size());
  return s;
}

// The key of clients `mine` and `theirs` for `round` and `purpose` (the formula at the top).
// Either side computes it: pair_key(sk_i, pk_i, i, pk_j, j, ...) == pair_key(sk_j, pk_j, j, pk_i,
// i, ...). Refuses i == j and a peer key that gives the all-zero shared secret (a low-order point).
inline key256 pair_key(const secret_key& my_sk, const public_key& my_pk, std::uint64_t mine,
                       const public_key& their_pk, std::uint64_t theirs, std::uint64_t round,
                       key_purpose purpose) {
  detail::ensure_sodium();
  if (mine == theirs) {
    rolora::detail::raise<config_error>("secagg: a pair key needs two clients, got client ", mine,
                                        " twice");
  }
  std::array<std::uint8_t, crypto_scalarmult_BYTES> shared{};
  if (crypto_scalarmult(shared.data(), my_sk.data(), their_pk.data()) != 0) {
    rolora::detail::raise<value_error>("secagg: the public key of client ", theirs,
                                       " is a low-order point (shared secret all zero)");
  }
  static constexpr char label[] = "rolora.secagg.v1";
  constexpr std::size_t label_bytes = sizeof(label) - 1;
  std::array<std::uint8_t, label_bytes + 8 * 3 + 1 + 64> context{};
  std::uint8_t* p = context.data();
  std::memcpy(p, label, label_bytes);
  p += label_bytes;
  const bool i_first = mine < theirs;
  detail::put_le64(p, round);
  detail::put_le64(p + 8, i_first ? mine : theirs);
  detail::put_le64(p + 16, i_first ? theirs : mine);
  p[24] = std::uint8_t(purpose);
  std::memcpy(p + 25, (i_first ? my_pk : their_pk).data(), 32);
  std::memcpy(p + 57, (i_first ? their_pk : my_pk).data(), 32);
  key256 key{};
  crypto_generichash(key.data(), key.size(), context.data(), context.size(), shared.data(),
                     shared.size());
  sodium_memzero(shared.data(), shared.size());
  return key;
}

// Shares travel through the server sealed to their recipient (Bonawitz et al.'s authenticated
// encryption under KA.agree(c_u^SK, c_v^PK)): libsodium's crypto_box_easy (X25519 key agreement,
// XSalsa20-Poly1305) with each client's SECOND key pair, its encryption key pair. Not the mask key
// pair: the server rebuilds a dropped client's mask secret key from shares, and with it could
// open every share that client exchanged, the survivors' self-mask seeds among them.
// Sealed bytes: a fresh random 24-byte nonce, then the box (plaintext and its 16-byte tag).
inline std::vector<std::uint8_t> seal(std::span<const std::uint8_t> plaintext, const public_key& to,
                                      const secret_key& mine) {
  detail::ensure_sodium();
  std::vector<std::uint8_t> out(crypto_box_NONCEBYTES + crypto_box_MACBYTES + plaintext.size());
  randombytes_buf(out.data(), crypto_box_NONCEBYTES);
  if (crypto_box_easy(out.data() + crypto_box_NONCEBYTES, plaintext.data(), plaintext.size(),
                      out.data(), to.data(), mine.data()) != 0) {
    rolora::detail::raise<value_error>("secagg: the recipient's encryption key is unusable");
  }
  return out;
}
// The plaintext of `sealed` from the holder of `from`'s secret key to `mine`'s; refuses a
// truncated, forged or misaddressed box (its tag does not verify).
inline std::vector<std::uint8_t> open_sealed(std::span<const std::uint8_t> sealed,
                                             const public_key& from, const secret_key& mine) {
  detail::ensure_sodium();
  if (sealed.size() < crypto_box_NONCEBYTES + crypto_box_MACBYTES) {
    rolora::detail::raise<value_error>("secagg: a sealed message of ", sealed.size(),
                                       " bytes, shorter than its nonce and tag (",
                                       crypto_box_NONCEBYTES + crypto_box_MACBYTES, ")");
  }
  std::vector<std::uint8_t> out(sealed.size() - crypto_box_NONCEBYTES - crypto_box_MACBYTES);
  if (crypto_box_open_easy(out.data(), sealed.data() + crypto_box_NONCEBYTES,
                           sealed.size() - crypto_box_NONCEBYTES, sealed.data(), from.data(),
                           mine.data()) != 0) {
    rolora::detail::raise<value_error>(
        "secagg: a sealed message does not open (forged, altered, or not from that sender to "
        "this recipient)");
  }
  return out;
}

// L 64-bit words of the ChaCha20 stream of `key` for `round` and `domain` (the layout at the top).
inline std::vector<std::uint64_t> mask_words(const key256& key, std::uint64_t round,
                                             stream_domain domain, std::size_t length) {
  detail::ensure_sodium();
  if (length > crypto_stream_chacha20_ietf_MESSAGEBYTES_MAX / 8) {
    rolora::detail::raise<config_error>("secagg: a mask stream of at most ",
                                        crypto_stream_chacha20_ietf_MESSAGEBYTES_MAX / 8,
                                        " words, asked for ", length);
  }
  std::array<std::uint8_t, crypto_stream_chacha20_ietf_NONCEBYTES> nonce{};
  static_assert(crypto_stream_chacha20_ietf_NONCEBYTES == 12);
  detail::put_le64(nonce.data(), round);
  const auto d = std::uint32_t(domain);
  for (int b = 0; b < 4; ++b) nonce[8 + b] = std::uint8_t(d >> (8 * b));
  // The stream written straight into the words; each word is the little-endian reading of its 8
  // bytes, which on a little-endian host is the bytes as they are.
  std::vector<std::uint64_t> words(length);
  if (length > 0) {
    auto* bytes = reinterpret_cast<unsigned char*>(words.data());
    crypto_stream_chacha20_ietf(bytes, length * 8, nonce.data(), key.data());
    if constexpr (std::endian::native != std::endian::little) {
      for (std::size_t w = 0; w < length; ++w) words[w] = detail::get_le64(bytes + 8 * w);
    }
  }
  return words;
}

}  // namespace rolora::secagg
