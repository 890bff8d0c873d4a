#include "ferry/model/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>

#include "ferry/core/error.hpp"
#include "ferry/core/file_read.hpp"
#include "ferry/model/json.hpp"

namespace ferry::model {

static_assert(std::endian::native == std::endian::little, "checkpoints are little-endian");

namespace {

constexpr char kMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'C', 'K', 'P'};
constexpr std::uint32_t kByteOrderProbe = 0x01020304;

std::uint64_t fnv1a(const std::uint8_t* data, std::size_t size) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (std::size_t i = 0; i < size; ++i) {
    h ^= data[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

class Writer {
 public:
  template <typename V>
  void pod(const V& v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof v);
  }
  void floats(const std::vector<float>& v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(v.data());
    bytes.insert(bytes.end(), p, p + v.size() * sizeof(float));
  }
  void string(const std::string& s) {
    pod(static_cast<std::uint64_t>(s.size()));
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  std::vector<std::uint8_t> bytes;
};

class Reader {
 public:
  Reader(const std::vector<std::uint8_t>& bytes, std::size_t end, const std::string& path)
      : bytes_(bytes), end_(end), path_(path) {}

  template <typename V>
  V pod(const char* what) {
    V v;
    std::memcpy(&v, take(sizeof v, what), sizeof v);
    return v;
  }
  std::vector<float> floats(std::uint64_t count, const char* what) {
    if (count > (end_ - pos_) / sizeof(float)) truncated(what);
    if (count == 0) return {};  // memcpy into an empty vector's null data() is undefined, even of 0 bytes
    std::vector<float> v(count);
    std::memcpy(v.data(), take(count * sizeof(float), what), count * sizeof(float));
    return v;
  }
  std::string string(const char* what) {
    const auto size = pod<std::uint64_t>(what);
    if (size > end_ - pos_) truncated(what);
    const auto* p = take(size, what);
    return std::string(reinterpret_cast<const char*>(p), size);
  }
  bool at_end() const { return pos_ == end_; }

 private:
  const std::uint8_t* take(std::size_t size, const char* what) {
    if (size > end_ - pos_) truncated(what);
    const std::uint8_t* p = bytes_.data() + pos_;
    pos_ += size;
    return p;
  }
  [[noreturn]] void truncated(const char* what) const {
    fail(Errc::invalid_argument, "checkpoint " + path_ + " is malformed: " + what + " runs past the end");
  }

  const std::vector<std::uint8_t>& bytes_;
  std::size_t end_;
  std::size_t pos_ = 0;
  const std::string& path_;
};

// Owns a file descriptor.
class File {
 public:
  File(const std::string& path, int flags, mode_t mode = 0)
      : fd_(::open(path.c_str(), flags | O_CLOEXEC, mode)) {
    if (fd_ < 0) fail_errno("cannot open " + path, errno);
  }
  ~File() {
    if (fd_ >= 0) ::close(fd_);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  void write_all(const std::vector<std::uint8_t>& bytes, const std::string& path) {
    for (std::size_t at = 0; at < bytes.size();) {
      const ssize_t n = ::write(fd_, bytes.data() + at, bytes.size() - at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail_errno("cannot write " + path, errno);
      at += static_cast<std::size_t>(n);
    }
  }
  void sync(const std::string& path) {
    if (::fsync(fd_) != 0) fail_errno("cannot flush " + path + " to disk", errno);
  }
  // close() reports errors of the last writes that fsync may not have (NFS): check it.
  void close(const std::string& path) {
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) fail_errno("cannot close " + path, errno);
  }

 private:
  int fd_;
};

// Writes bytes to path through "<path>.tmp": written, flushed to disk, renamed over path, and the rename
// flushed with the directory. A crash at any point leaves path as it was or complete.
void write_durably(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  const std::string tmp = path + ".tmp";
  {
    File out(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    out.write_all(bytes, tmp);
    out.sync(tmp);
    out.close(tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_errno("cannot rename " + tmp + " to " + path, errno);
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string directory = parent.empty() ? "." : parent.string();
  File(directory, O_RDONLY | O_DIRECTORY).sync(directory);
}

}  // namespace

void save_checkpoint(const std::string& path, const TrainerState& state) {
  const std::size_t n = state.params.size();
  if (state.adam_m.size() != n || state.adam_v.size() != n || state.ema.size() != n)
    fail(Errc::invalid_argument,
         "save_checkpoint(" + path + "): optimizer state and EMA must match the parameters");
  Writer w;
  w.pod(kMagic);  // the 8 magic bytes, as they are
  w.pod(kCheckpointVersion);
  w.pod(kByteOrderProbe);
  w.string(nlohmann::json(state.model).dump());
  w.string(nlohmann::json(state.train).dump());
  w.string(nlohmann::json(state.job).dump());
  w.pod(state.step);
  w.pod(state.adam_steps);
  for (std::uint64_t word : state.data_rng) w.pod(word);
  w.pod(static_cast<std::uint64_t>(n));
  w.floats(state.params);
  w.floats(state.adam_m);
  w.floats(state.adam_v);
  w.floats(state.ema);
  w.pod(static_cast<std::uint64_t>(state.balance_bias.size()));
  for (const auto& bias : state.balance_bias) {
    w.pod(static_cast<std::uint64_t>(bias.size()));
    w.floats(bias);
  }
  w.pod(fnv1a(w.bytes.data(), w.bytes.size()));

  write_durably(path, w.bytes);
}

TrainerState load_checkpoint(const std::string& path, std::uint64_t max_bytes) {
  const std::vector<std::uint8_t> bytes = read_file_bounded(path, max_bytes, "checkpoint");

  if (bytes.size() < sizeof kMagic || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
    fail(Errc::invalid_argument, path + " is not a ferry checkpoint (bad magic)");
  constexpr std::size_t kHeader = sizeof kMagic + 2 * sizeof(std::uint32_t);
  constexpr std::size_t kTrailer = sizeof(std::uint64_t);
  if (bytes.size() < kHeader + kTrailer) fail(Errc::invalid_argument, "checkpoint " + path + " is truncated");
  std::uint32_t version, probe;
  std::memcpy(&version, bytes.data() + sizeof kMagic, sizeof version);
  std::memcpy(&probe, bytes.data() + sizeof kMagic + sizeof version, sizeof probe);
  if (version != kCheckpointVersion)
    fail(Errc::unsupported, "checkpoint " + path + " has format version " + std::to_string(version) +
                                ", this build reads version " + std::to_string(kCheckpointVersion));
  if (probe != kByteOrderProbe)
    fail(Errc::unsupported, "checkpoint " + path + " was written with another byte order");
  const std::size_t body = bytes.size() - kTrailer;
  std::uint64_t stored;
  std::memcpy(&stored, bytes.data() + body, sizeof stored);
  if (stored != fnv1a(bytes.data(), body))
    fail(Errc::invalid_argument, "checkpoint " + path + " is corrupt (checksum mismatch)");

  Reader r(bytes, body, path);
  r.pod<std::uint64_t>("header");  // magic, already checked
  r.pod<std::uint32_t>("header");
  r.pod<std::uint32_t>("header");
  TrainerState state;
  try {
    state.model = nlohmann::json::parse(r.string("model config")).get<ModelConfig>();
    state.train = nlohmann::json::parse(r.string("train config")).get<TrainConfig>();
    state.job = nlohmann::json::parse(r.string("job fingerprint")).get<JobFingerprint>();
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::invalid_argument, "checkpoint " + path + " has a malformed config: " + e.what());
  }
  state.step = r.pod<std::int64_t>("step");
  state.adam_steps = r.pod<std::int64_t>("adam steps");
  if (state.step < 0 || state.adam_steps < 0)
    fail(Errc::invalid_argument, "checkpoint " + path + " is malformed: step " + std::to_string(state.step) +
                                     ", adam steps " + std::to_string(state.adam_steps) + " (negative)");
  for (auto& word : state.data_rng) word = r.pod<std::uint64_t>("data RNG");
  const auto n = r.pod<std::uint64_t>("parameter count");
  state.params = r.floats(n, "parameters");
  state.adam_m = r.floats(n, "adam m");
  state.adam_v = r.floats(n, "adam v");
  state.ema = r.floats(n, "ema");
  const auto layers = r.pod<std::uint64_t>("MoE layer count");
  if (layers > 1u << 20)
    fail(Errc::invalid_argument, "checkpoint " + path + " claims " + std::to_string(layers) + " MoE layers");
  for (std::uint64_t l = 0; l < layers; ++l) {
    const auto experts = r.pod<std::uint64_t>("expert count");
    state.balance_bias.push_back(r.floats(experts, "balance bias"));
  }
  if (!r.at_end()) fail(Errc::invalid_argument, "checkpoint " + path + " has trailing bytes");
  return state;
}

}  // namespace ferry::model
