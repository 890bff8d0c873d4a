// The low-latency mode's bulk arithmetic on the host (protocol/low_latency_roles.hpp): fp8 casting of a row
// and the weighted sum of combine, one copy per vector width like reduce_rows, the same bits as the
// protocol's reference forms and the GPU's.
#pragma once

#include "ferry/kernels/protocol/low_latency_roles.hpp"

namespace ferry::kernels::host {

void quantize_row(const protocol::QuantizeRow& job);
void weighted_sum(const protocol::WeightedRows& job);

}  // namespace ferry::kernels::host
