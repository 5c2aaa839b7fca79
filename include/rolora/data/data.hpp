// Umbrella header of the data side (docs/data.md): the byte tokenizer, the e-mail cleaner and the
// SpamAssassin reader, the seeded corpus split, the pretraining windows and masked-byte batches.
// Needs only the standard library and rolora's core (no Eigen).
#pragma once

#include <rolora/data/email.hpp>
#include <rolora/data/pretrain.hpp>
#include <rolora/data/spam_assassin.hpp>
#include <rolora/data/split.hpp>
#include <rolora/data/tokenizer.hpp>
