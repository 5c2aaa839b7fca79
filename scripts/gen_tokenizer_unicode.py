#!/usr/bin/env python3
"""Writes include/rolora/tokenizers/unicode_tables.hpp: the Unicode data rolora's tokenizers need.

    python3 scripts/gen_tokenizer_unicode.py    # rewrites the header in place

The tables come from this Python's unicodedata (its version is written into the header):
  - general categories, coarsened to what the tokenizers ask (letter, number, punctuation,
    non-spacing mark, other marks, symbols, separators, and the "other" C* kinds), as runs;
  - canonical combining classes (non-zero), as runs;
  - canonical decompositions, one level (Hangul syllables are algorithmic, not listed);
  - canonical compositions (the primary composites NFC produces);
  - simple lowercase mappings (U+0130's two-code-point lowercase is written out in unicode.hpp).
  - the classes of the reference's BERT normalizer, pre-tokenizer and StripAccents, which come
    from older Unicode versions (the exceptions are listed below; docs/tokenizers.md).
White_Space is not in unicodedata; it is a fixed list in unicode.hpp.
"""
import os
import sys
import unicodedata

MAX = 0x110000
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out_path = os.path.join(root, "include", "rolora", "tokenizers", "unicode_tables.hpp")

# Coarse classes: the order is the enum's in unicode.hpp.
CLASSES = ["unassigned", "letter", "mark_nonspacing", "mark_other", "number", "punctuation",
           "symbol", "separator", "control", "format", "private_use", "surrogate"]


def coarse(cp):
    gc = unicodedata.category(chr(cp))
    if gc == "Cn":
        return 0
    if gc[0] == "L":
        return 1
    if gc == "Mn":
        return 2
    if gc[0] == "M":
        return 3
    if gc[0] == "N":
        return 4
    if gc[0] == "P":
        return 5
    if gc[0] == "S":
        return 6
    if gc[0] == "Z":
        return 7
    return {"Cc": 8, "Cf": 9, "Co": 10, "Cs": 11}[gc]


# The reference's BERT normalizer and pre-tokenizer class characters with the unicode_categories
# 0.1.1 crate (Unicode 8.0 tables), its StripAccents normalizer with unicode-normalization-
# alignments' is_combining_mark (another old version). Below: the code points this Python's
# Unicode classes as Mn, P* or Cf (resp. as any mark) that those crates do not know, and the few
# they class differently. Measured with tests/tokenizers/probe_unicode.js: every code point
# through the reference's BertNormalizer, StripAccents and BertPreTokenizer.
UNICODE_CATEGORIES_UNKNOWN = [
    (0x21, 0x23), (0x25, 0x2A), (0x2C, 0x2F), (0x3A, 0x3B), (0x3F, 0x40), (0x5B, 0x5D), (0x5F,
    0x5F), (0x7B, 0x7B), (0x7D, 0x7D), (0x61D, 0x61D), (0x7FD, 0x7FD), (0x890, 0x891), (0x898,
    0x89F), (0x8CA, 0x8E2), (0x9FD, 0x9FE), (0xA76, 0xA76), (0xAFA, 0xAFF), (0xB55, 0xB55),
    (0xC04, 0xC04), (0xC3C, 0xC3C), (0xC77, 0xC77), (0xC84, 0xC84), (0xD00, 0xD00), (0xD3B,
    0xD3C), (0xD81, 0xD81), (0xEBA, 0xEBA), (0x180F, 0x180F), (0x1885, 0x1886), (0x1ABF,
    0x1ACE), (0x1B7D, 0x1B7E), (0x1DF6, 0x1DFB), (0x2E43, 0x2E4F), (0x2E52, 0x2E5D), (0xA82C,
    0xA82C), (0xA8C5, 0xA8C5), (0xA8FF, 0xA8FF), (0xA9BD, 0xA9BD), (0x10D24, 0x10D27), (0x10EAB,
    0x10EAD), (0x10F46, 0x10F50), (0x10F55, 0x10F59), (0x10F82, 0x10F89), (0x11070, 0x11070),
    (0x11073, 0x11074), (0x110C2, 0x110C2), (0x110CD, 0x110CD), (0x111C9, 0x111C9), (0x111CF,
    0x111CF), (0x1123E, 0x1123E), (0x1133B, 0x1133B), (0x11438, 0x1143F), (0x11442, 0x11444),
    (0x11446, 0x11446), (0x1144B, 0x1144F), (0x1145A, 0x1145B), (0x1145D, 0x1145E), (0x11660,
    0x1166C), (0x116B9, 0x116B9), (0x1182F, 0x11837), (0x11839, 0x1183B), (0x1193B, 0x1193C),
    (0x1193E, 0x1193E), (0x11943, 0x11946), (0x119D4, 0x119D7), (0x119DA, 0x119DB), (0x119E0,
    0x119E0), (0x119E2, 0x119E2), (0x11A01, 0x11A0A), (0x11A33, 0x11A38), (0x11A3B, 0x11A47),
    (0x11A51, 0x11A56), (0x11A59, 0x11A5B), (0x11A8A, 0x11A96), (0x11A98, 0x11A9C), (0x11A9E,
    0x11AA2), (0x11C30, 0x11C36), (0x11C38, 0x11C3D), (0x11C3F, 0x11C3F), (0x11C41, 0x11C45),
    (0x11C70, 0x11C71), (0x11C92, 0x11CA7), (0x11CAA, 0x11CB0), (0x11CB2, 0x11CB3), (0x11CB5,
    0x11CB6), (0x11D31, 0x11D36), (0x11D3A, 0x11D3A), (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45),
    (0x11D47, 0x11D47), (0x11D90, 0x11D91), (0x11D95, 0x11D95), (0x11D97, 0x11D97), (0x11EF3,
    0x11EF4), (0x11EF7, 0x11EF8), (0x11FFF, 0x11FFF), (0x12FF1, 0x12FF2), (0x13430, 0x13438),
    (0x16E97, 0x16E9A), (0x16F4F, 0x16F4F), (0x16FE2, 0x16FE2), (0x16FE4, 0x16FE4), (0x1CF00,
    0x1CF2D), (0x1CF30, 0x1CF46), (0x1E000, 0x1E006), (0x1E008, 0x1E018), (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE), (0x1E2EC,
    0x1E2EF), (0x1E944, 0x1E94A), (0x1E95E, 0x1E95F)
]
UNICODE_CATEGORIES_MN_EXTRA = [0x1734]  # Mn in 8.0, Mc since
UNICODE_CATEGORIES_P_EXTRA = [0x166D, 0x111C9]  # punctuation in 8.0
COMBINING_MARK_UNKNOWN = [
    (0x7FD, 0x7FD), (0x898, 0x89F), (0x8CA, 0x8D3), (0x9FE, 0x9FE), (0xAFA, 0xAFF), (0xB55,
    0xB55), (0xC04, 0xC04), (0xC3C, 0xC3C), (0xD00, 0xD00), (0xD3B, 0xD3C), (0xD81, 0xD81),
    (0xEBA, 0xEBA), (0x1715, 0x1715), (0x180F, 0x180F), (0x1ABF, 0x1ACE), (0x1CF7, 0x1CF7),
    (0x1DF6, 0x1DFA), (0xA82C, 0xA82C), (0xA8FF, 0xA8FF), (0x10D24, 0x10D27), (0x10EAB,
    0x10EAC), (0x10F46, 0x10F50), (0x10F82, 0x10F85), (0x11070, 0x11070), (0x11073, 0x11074),
    (0x110C2, 0x110C2), (0x11145, 0x11146), (0x111C9, 0x111C9), (0x111CE, 0x111CF), (0x1133B,
    0x1133B), (0x1145E, 0x1145E), (0x1182C, 0x1183A), (0x11930, 0x11935), (0x11937, 0x11938),
    (0x1193B, 0x1193E), (0x11940, 0x11940), (0x11942, 0x11943), (0x119D1, 0x119D7), (0x119DA,
    0x119E0), (0x119E4, 0x119E4), (0x11A01, 0x11A0A), (0x11A33, 0x11A39), (0x11A3B, 0x11A3E),
    (0x11A47, 0x11A47), (0x11A51, 0x11A5B), (0x11A8A, 0x11A99), (0x11D31, 0x11D36), (0x11D3A,
    0x11D3A), (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45), (0x11D47, 0x11D47), (0x11D8A, 0x11D8E),
    (0x11D90, 0x11D91), (0x11D93, 0x11D97), (0x11EF3, 0x11EF6), (0x16F4F, 0x16F4F), (0x16F7F,
    0x16F87), (0x16FE4, 0x16FE4), (0x16FF0, 0x16FF1), (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46),
    (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF)
]
COMBINING_MARK_EXTRA = [0x1CF2, 0x1CF3]  # marks then, letters since


def expand(pairs):
    out = set()
    for a, b in pairs:
        out.update(range(a, b + 1))
    return out


uc_unknown = expand(UNICODE_CATEGORIES_UNKNOWN)
mark_unknown = expand(COMBINING_MARK_UNKNOWN)


def bert_bits(cp):
    gc = unicodedata.category(chr(cp))
    bits = 0
    if cp not in uc_unknown and gc in ("Cc", "Cf", "Co"):
        bits |= 1  # unicode_categories' is_other
    if cp in UNICODE_CATEGORIES_MN_EXTRA or (cp not in uc_unknown and gc == "Mn"):
        bits |= 2  # unicode_categories' is_mark_nonspacing
    if cp in UNICODE_CATEGORIES_P_EXTRA or (cp not in uc_unknown and gc[0] == "P"):
        bits |= 4  # unicode_categories' is_punctuation
    if cp in COMBINING_MARK_EXTRA or (cp not in mark_unknown and gc[0] == "M"):
        bits |= 8  # unicode-normalization-alignments' is_combining_mark
    return bits


def runs(value_of):
    """[(first, last, value)] for the maximal runs of a non-zero value."""
    out, start, cur = [], 0, value_of(0)
    for cp in range(1, MAX + 1):
        v = value_of(cp) if cp < MAX else None
        if v != cur:
            if cur:
                out.append((start, cp - 1, cur))
            start, cur = cp, v
    return out


def is_hangul_syllable(cp):
    return 0xAC00 <= cp <= 0xD7A3


gc_runs = runs(coarse)
ccc_runs = runs(lambda cp: unicodedata.combining(chr(cp)))
bert_runs = runs(bert_bits)

decomp = []
for cp in range(MAX):
    if is_hangul_syllable(cp):
        continue
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
        continue
    parts = [int(x, 16) for x in d.split()]
    assert 1 <= len(parts) <= 2, hex(cp)
    decomp.append((cp, parts[0], parts[1] if len(parts) == 2 else 0))

compose = []
for cp, a, b in decomp:
    # A primary composite: a pair decomposition that NFC recomposes (not excluded).
    if b and unicodedata.normalize("NFC", chr(a) + chr(b)) == chr(cp):
        compose.append((a, b, cp))
compose.sort()

lower = []
for cp in range(MAX):
    if 0xD800 <= cp <= 0xDFFF:
        continue
    l = chr(cp).lower()
    if l == chr(cp):
        continue
    if len(l) != 1:
        assert cp == 0x130, hex(cp)  # 'İ' -> "i̇", the one multi-code-point lowercase
        continue
    lower.append((cp, ord(l)))


def rows(items, per_line):
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + " ".join(items[i:i + per_line]))
    return "\n".join(lines)


with open(out_path, "w", encoding="ascii", newline="\n") as f:
    f.write("""// Generated by scripts/gen_tokenizer_unicode.py from Python {python}'s unicodedata
// (Unicode {unicode_version}). Do not edit: change the script and run it again.
// Read through rolora/tokenizers/unicode.hpp, which says what each table holds.
// clang-format off
#pragma once
#include <cstdint>

namespace rolora::tokenizers::detail::tables {{

inline constexpr const char* unicode_version = "{unicode_version}";

struct class_run {{ std::uint32_t first, last; std::uint8_t value; }};
struct decomposition {{ std::uint32_t code_point, first, second; }};  // second 0: a singleton
struct composition {{ std::uint32_t first, second, composite; }};
struct case_mapping {{ std::uint32_t code_point, lower; }};

// Coarse general category of every assigned code point, as runs (value: unicode.hpp's
// char_class); code points in no run are unassigned (Cn).
inline constexpr class_run general_class[] = {{
{rows}
}};

// Canonical combining class, runs of non-zero classes.
inline constexpr class_run combining_class[] = {{
{crows}
}};

// The reference's own classes (old Unicode versions): value bit 1 "other" (Cc, Cf, Co), 2
// non-spacing mark, 4 punctuation (the unicode_categories crate, Unicode 8.0: BertNormalizer,
// BertPreTokenizer); 8 combining mark (unicode-normalization-alignments: StripAccents).
inline constexpr class_run bert_class[] = {{
{brows}
}};

// Canonical decompositions, one level, by code point.
inline constexpr decomposition canonical_decomposition[] = {{
{drows}
}};

// Primary composites, by (first, second).
inline constexpr composition canonical_composition[] = {{
{comprows}
}};

// Simple lowercase mappings, by code point.
inline constexpr case_mapping lowercase[] = {{
{lrows}
}};

}}  // namespace rolora::tokenizers::detail::tables
""".format(python=sys.version.split()[0], unicode_version=unicodedata.unidata_version,
           rows=rows([f"{{0x{a:X},0x{b:X},{v}}}," for a, b, v in gc_runs], 6),
           brows=rows([f"{{0x{a:X},0x{b:X},{v}}}," for a, b, v in bert_runs], 6),
           crows=rows([f"{{0x{a:X},0x{b:X},{v}}}," for a, b, v in ccc_runs], 6),
           drows=rows([f"{{0x{a:X},0x{b:X},0x{c:X}}}," for a, b, c in decomp], 5),
           comprows=rows([f"{{0x{a:X},0x{b:X},0x{c:X}}}," for a, b, c in compose], 5),
           lrows=rows([f"{{0x{a:X},0x{b:X}}}," for a, b in lower], 7)))
print(f"{out_path}: {len(gc_runs)} class runs, {len(ccc_runs)} combining runs, {len(bert_runs)} BERT runs, "
      f"{len(decomp)} decompositions, {len(compose)} compositions, {len(lower)} lowercase")
