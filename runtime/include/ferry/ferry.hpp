// ferry — Mixture-of-Experts dispatch/combine over RDMA between nodes and NVLink inside a node.
// The umbrella header: include this one.
#pragma once

#include "ferry/buffer.hpp"
#include "ferry/config.hpp"
#include "ferry/core/error.hpp"
#include "ferry/devices.hpp"
#include "ferry/gate.hpp"
#include "ferry/group.hpp"
#include "ferry/layout.hpp"
#include "ferry/low_latency.hpp"
#include "ferry/peer_channel.hpp"
#include "ferry/tensor.hpp"
#include "ferry/version.hpp"
