#include "ferry/model/tokens.hpp"

#include <string>

#include "ferry/core/error.hpp"
#include "ferry/model/activations.hpp"

namespace ferry::model {

void TokenRows::read(const std::uint8_t* tokens, int rows_in, int seq_in, int vocab) {
  rows = rows_in;
  seq = seq_in;
  const std::size_t n = static_cast<std::size_t>(rows) * seq;
  inputs.resize(n);
  targets.resize(n);
  mtp_targets.resize(n);
  for (int b = 0; b < rows; ++b) {
    const std::uint8_t* row = tokens + static_cast<std::size_t>(b) * (seq + 2);
    for (int j = 0; j < seq + 2; ++j) {
      if (row[j] >= vocab)
        fail(Errc::invalid_argument, "token " + std::to_string(row[j]) + " at batch row " +
                                         std::to_string(b) + ", position " + std::to_string(j) +
                                         " is outside the vocabulary of " + std::to_string(vocab));
    }
    for (int t = 0; t < seq; ++t) {
      const std::size_t i = static_cast<std::size_t>(b) * seq + t;
      inputs[i] = row[t];
      targets[i] = row[t + 1];
      mtp_targets[i] = row[t + 2];
    }
  }
}

std::size_t TokenRows::bytes() const {
  return bytes_held(inputs, targets, mtp_targets);
}

}  // namespace ferry::model
