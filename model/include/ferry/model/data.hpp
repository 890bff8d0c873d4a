// Training data: a byte string (a synthetic corpus or a text file) cut into batches of random windows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ferry/model/config.hpp"
#include "ferry/model/rng.hpp"

namespace ferry::model {

// A corpus with structure a small model can learn, a pure function of (seed, bytes). Lines of three kinds:
//   grammar: sentences of a small probabilistic grammar ("the quick fox chases a red hen."), where the verb
//            depends on the subject noun and the object on the verb;
//   copy:    "copy <3-8 random letters> = <the same letters>" (the second half is predictable only by
//            attending back);
//   count:   "count 3 4 5 6 7" (each digit follows from the one before).
std::vector<std::uint8_t> synthetic_corpus(std::uint64_t seed, std::size_t bytes);

class DataSource {
 public:
  DataSource(std::vector<std::uint8_t> bytes, std::string name);
  static DataSource synthetic(std::uint64_t seed, std::size_t bytes);
  // The file's bytes; throws invalid_argument naming the file when it cannot be opened, is empty or holds
  // more than max_bytes (read no further than that), system when reading fails.
  static DataSource from_file(const std::string& path, std::uint64_t max_bytes = kMaxDataFileBytes);
  static DataSource from_config(const DataConfig& config);

  // Throws invalid_argument naming the source when it is shorter than one window of seq + 2 bytes.
  void check_window(int seq) const;
  // Fills out [batch, seq + 2] with windows starting at uniformly random offsets drawn from rng. Throws
  // invalid_argument when the data is shorter than one window.
  void sample(std::uint8_t* out, Rng& rng, int batch, int seq) const;
  std::vector<std::uint8_t> sample(Rng& rng, int batch, int seq) const;

  const std::vector<std::uint8_t>& bytes() const { return bytes_; }
  const std::string& name() const { return name_; }
  // Entropy of the byte frequencies, nats per byte: what the best context-free predictor achieves.
  double unigram_entropy() const;

 private:
  std::vector<std::uint8_t> bytes_;
  std::string name_;
};

}  // namespace ferry::model
