// A batch of byte sequences [rows, seq + 2] split into what the model reads at each position i:
// inputs t_i, main targets t_{i+1} and MTP targets t_{i+2}, for i in [0, seq).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ferry::model {

struct TokenRows {
  int rows = 0, seq = 0;
  std::vector<int> inputs, targets, mtp_targets;  // [rows · seq] each

  // Throws invalid_argument naming the row and position of the first token outside [0, vocab).
  void read(const std::uint8_t* tokens, int rows, int seq, int vocab);
  std::size_t bytes() const;
};

}  // namespace ferry::model
