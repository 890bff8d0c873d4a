// Config -> the protocol's buffer layout parameters (one place, so hints and buffers always agree).
#pragma once

#include "ferry/config.hpp"
#include "ferry/kernels/protocol/buffer_layout.hpp"

namespace ferry {

kernels::protocol::LayoutParams layout_params(const Config& config, int num_nodes, int local_size);

// The registered bytes per rank the config asks for: buffer_bytes, or the hint when it is 0. Throws when
// buffer_bytes is set but too small.
std::size_t registered_bytes(const Config& config, const kernels::protocol::BufferLayout& layout);

}  // namespace ferry
