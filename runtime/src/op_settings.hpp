// The settings one operation runs with: the Buffer's Config, or a per-call Config (DeepEP's `config`
// argument) that may change num_sms (up to the Buffer's), rdma_chunk and nvl_chunk but nothing that sizes the
// buffer. Every rank must run an operation with the same settings: a fingerprint of them travels with every
// message and is checked on arrival, and Buffers compare their whole Configs when they are built.
#pragma once

#include <cstdint>
#include <string>

#include "ferry/config.hpp"
#include "ferry/kernels/host/engine.hpp"

namespace ferry {

// Throws Errc::invalid_argument naming the field when `call` cannot be used on a Buffer built with `buffer`.
void check_call_config(const Config& buffer, const Config& call);

// The engine's settings for one operation (call: nullptr for the Buffer's own Config; channels: 0 lets the
// engine choose, as a cached dispatch or a combine does from its dispatch).
kernels::host::OpSettings op_settings(const Config& buffer, const Config* call, int channels = 0);

// "" when two ranks' Configs agree on everything every rank must share, else which field differs and how.
std::string config_mismatch(const Config& mine, int my_rank, const Config& theirs, int their_rank);

}  // namespace ferry
