// ferry — Mixture-of-Experts dispatch/combine over RDMA between nodes and NVLink inside a node.
// The umbrella header: include this one.
#pragma once

#include "ferry/core/error.hpp"
#include "ferry/devices.hpp"
#include "ferry/group.hpp"
#include "ferry/version.hpp"
