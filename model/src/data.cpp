#include "ferry/model/data.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <string_view>

#include "ferry/core/error.hpp"
#include "ferry/core/file_read.hpp"

namespace ferry::model {

namespace {

constexpr std::array<std::string_view, 8> kNouns = {"cat", "dog", "fox", "owl", "hen", "cow", "bee", "ant"};
constexpr std::array<std::string_view, 8> kAdjectives = {"red",   "big",  "small", "old",
                                                         "quick", "lazy", "happy", "green"};
constexpr std::array<std::string_view, 6> kVerbs = {"sees", "chases", "likes", "finds", "eats", "follows"};

class CorpusWriter {
 public:
  CorpusWriter(std::uint64_t seed, std::size_t bytes) : rng_(seed), limit_(bytes) {
    out_.reserve(bytes + 64);
  }

  std::vector<std::uint8_t> run() {
    while (out_.size() < limit_) {
      const double kind = rng_.uniform();
      if (kind < 0.6) {
        grammar_line();
      } else if (kind < 0.85) {
        copy_line();
      } else {
        count_line();
      }
    }
    out_.resize(limit_);
    return std::move(out_);
  }

 private:
  void put(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }
  void put(char c) { out_.push_back(static_cast<std::uint8_t>(c)); }
  std::size_t pick(std::size_t n) { return static_cast<std::size_t>(rng_.below(n)); }

  void noun_phrase(std::size_t noun) {
    put(rng_.uniform() < 0.5 ? "the " : "a ");
    if (rng_.uniform() < 0.4) {
      put(kAdjectives[pick(kAdjectives.size())]);
      put(' ');
    }
    put(kNouns[noun]);
  }

  void grammar_line() {
    const std::size_t sentences = 1 + pick(2);
    for (std::size_t s = 0; s < sentences; ++s) {
      if (s > 0) put(' ');
      const std::size_t subject = pick(kNouns.size());
      noun_phrase(subject);
      put(' ');
      // The subject mostly picks "its" verb, and the verb mostly its object: context a model can learn.
      const std::size_t verb = rng_.uniform() < 0.8 ? subject % kVerbs.size() : pick(kVerbs.size());
      put(kVerbs[verb]);
      put(' ');
      const std::size_t object = rng_.uniform() < 0.7 ? (verb * 3 + 1) % kNouns.size() : pick(kNouns.size());
      noun_phrase(object);
      put('.');
    }
    put('\n');
  }

  void copy_line() {
    put("copy ");
    std::string word(3 + pick(6), ' ');
    for (char& c : word) c = static_cast<char>('a' + pick(26));
    put(word);
    put(" = ");
    put(word);
    put('\n');
  }

  void count_line() {
    put("count");
    std::size_t digit = pick(10);
    const std::size_t length = 3 + pick(5);
    for (std::size_t i = 0; i < length; ++i) {
      put(' ');
      put(static_cast<char>('0' + digit));
      digit = (digit + 1) % 10;
    }
    put('\n');
  }

  Rng rng_;
  std::size_t limit_;
  std::vector<std::uint8_t> out_;
};

}  // namespace

std::vector<std::uint8_t> synthetic_corpus(std::uint64_t seed, std::size_t bytes) {
  return CorpusWriter(seed, bytes).run();
}

DataSource::DataSource(std::vector<std::uint8_t> bytes, std::string name)
    : bytes_(std::move(bytes)), name_(std::move(name)) {
  if (bytes_.empty()) fail(Errc::invalid_argument, "data source " + name_ + " is empty");
}

DataSource DataSource::synthetic(std::uint64_t seed, std::size_t bytes) {
  return DataSource(synthetic_corpus(seed, bytes),
                    "synthetic(seed=" + std::to_string(seed) + ", bytes=" + std::to_string(bytes) + ")");
}

DataSource DataSource::from_file(const std::string& path, std::uint64_t max_bytes) {
  std::vector<std::uint8_t> bytes = read_file_bounded(path, max_bytes, "data file");
  if (bytes.empty()) fail(Errc::invalid_argument, "data file " + path + " is empty");
  return DataSource(std::move(bytes), path);
}

DataSource DataSource::from_config(const DataConfig& config) {
  config.validate();
  if (!config.path.empty()) return from_file(config.path, config.max_file_bytes);
  return synthetic(config.synthetic_seed, config.synthetic_bytes);
}

void DataSource::check_window(int seq) const {
  const std::size_t window = static_cast<std::size_t>(seq) + 2;
  if (bytes_.size() < window)
    fail(Errc::invalid_argument, "data source " + name_ + " has " + std::to_string(bytes_.size()) +
                                     " bytes, fewer than one window of seq + 2 = " + std::to_string(window));
}

void DataSource::sample(std::uint8_t* out, Rng& rng, int batch, int seq) const {
  check_window(seq);
  const std::size_t window = static_cast<std::size_t>(seq) + 2;
  const std::uint64_t starts = bytes_.size() - window + 1;
  for (int b = 0; b < batch; ++b) {
    const std::size_t start = static_cast<std::size_t>(rng.below(starts));
    std::copy_n(bytes_.begin() + static_cast<std::ptrdiff_t>(start), window,
                out + static_cast<std::size_t>(b) * window);
  }
}

std::vector<std::uint8_t> DataSource::sample(Rng& rng, int batch, int seq) const {
  std::vector<std::uint8_t> out(static_cast<std::size_t>(batch) * (seq + 2));
  sample(out.data(), rng, batch, seq);
  return out;
}

double DataSource::unigram_entropy() const {
  std::array<double, 256> count{};
  for (std::uint8_t b : bytes_) count[b] += 1;
  double h = 0;
  const double total = static_cast<double>(bytes_.size());
  for (double c : count)
    if (c > 0) h -= c / total * std::log(c / total);
  return h;
}

}  // namespace ferry::model
