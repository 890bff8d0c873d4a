#include "secret_handoff.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <sstream>
#include <string>
#include <thread>

#include "ferry/core/error.hpp"

namespace ferry::detail {
namespace {

using namespace std::chrono_literals;

constexpr std::size_t kSecretBytes = 16;
constexpr std::size_t kMaxFileBytes = 256;

std::string to_hex(const unsigned char* bytes, std::size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (std::size_t i = 0; i < size; ++i) {
    hex += kDigits[bytes[i] >> 4];
    hex += kDigits[bytes[i] & 0xf];
  }
  return hex;
}

// FNV-1a: spreads the job id over a short, file-name-safe token.
std::string id_token(const std::string& text) {
  std::uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(hash >> (8 * i));
  return to_hex(bytes, sizeof(bytes));
}

std::string private_directory() {
  return "/tmp/ferry-" + std::to_string(::geteuid());
}

std::string octal_mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

// Creates the directory when missing and refuses one that someone else could read, write or replace.
void ensure_private_directory(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) fail_errno("cannot create " + dir, errno);
  struct stat info {};
  if (::lstat(dir.c_str(), &info) != 0) fail_errno("cannot inspect " + dir, errno);
  const std::string advice = "; remove it, or set FERRY_SECRET on every rank instead";
  if (!S_ISDIR(info.st_mode)) fail(Errc::invalid_argument, dir + " is not a directory" + advice);
  if (info.st_uid != ::geteuid()) {
    fail(Errc::invalid_argument, dir + " belongs to uid " + std::to_string(info.st_uid) +
                                     ", not to this user (" + std::to_string(::geteuid()) + ")" + advice);
  }
  if ((info.st_mode & 077) != 0) {
    fail(Errc::invalid_argument,
         dir + " has mode " + octal_mode(info.st_mode) + ": others could read the job's secret" + advice);
  }
}

// What `path` holds, or an empty secret when it is not there (yet) or its writer is gone. Refuses a file that
// is not private to this user.
Handoff read_handoff(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return {};
    fail_errno("cannot open " + path, errno);
  }
  struct stat info {};
  std::string text(kMaxFileBytes, '\0');
  ssize_t got = -1;
  if (::fstat(fd, &info) == 0) got = ::read(fd, text.data(), text.size());
  const int error = errno;
  ::close(fd);
  if (got < 0) fail_errno("cannot read " + path, error);
  if (!S_ISREG(info.st_mode) || info.st_uid != ::geteuid() || (info.st_mode & 077) != 0) {
    fail(Errc::invalid_argument, path + " is not a private file of this user (mode " +
                                     octal_mode(info.st_mode) + ", uid " + std::to_string(info.st_uid) +
                                     "); remove it, or set FERRY_SECRET on every rank instead");
  }
  text.resize(static_cast<std::size_t>(got));
  if (text.empty() || text.back() != '\n') return {};  // cannot happen with rename(), but never half a secret
  std::istringstream fields(text);
  Handoff handoff;
  unsigned port = 0;
  long pid = 0;
  if (!(fields >> handoff.secret >> port >> pid) || port > 65535) return {};  // not ours: wait for rank 0's
  // A file whose rank 0 is gone (a crashed job of the same name) holds nothing worth trying.
  if (pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) return {};
  handoff.port = static_cast<std::uint16_t>(port);
  return handoff;
}

}  // namespace

std::string make_secret() {
  unsigned char bytes[kSecretBytes];
  std::size_t have = 0;
  while (have < sizeof(bytes)) {
    ssize_t got = ::getrandom(bytes + have, sizeof(bytes) - have, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) fail_errno("getrandom for the store secret", got < 0 ? errno : EIO);
    have += static_cast<std::size_t>(got);
  }
  return to_hex(bytes, sizeof(bytes));
}

std::string handoff_path(const JobEnv& job) {
  const std::string port = job.port_handoff ? std::string("any") : std::to_string(job.store_port);
  return private_directory() + "/store-" + port + "-" + id_token(job.job_id) + ".secret";
}

SecretHandoff::SecretHandoff(const JobEnv& job, const std::string& secret, std::uint16_t port)
    : path_(handoff_path(job)) {
  ensure_private_directory(private_directory());
  const std::string temporary = path_ + "." + std::to_string(::getpid()) + ".tmp";
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) fail_errno("cannot create " + temporary, errno);
  const std::string text = secret + " " + std::to_string(port) + " " + std::to_string(::getpid()) + "\n";
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const int error = errno;
  ::close(fd);
  if (!written || ::rename(temporary.c_str(), path_.c_str()) != 0) {
    const int failure = written ? errno : error;
    ::unlink(temporary.c_str());
    fail_errno("cannot publish the store secret at " + path_, failure);
  }
}

SecretHandoff::~SecretHandoff() {
  withdraw();
}

void SecretHandoff::withdraw() noexcept {
  if (path_.empty()) return;
  ::unlink(path_.c_str());
  path_.clear();
}

Handoff await_handoff(const JobEnv& job, const Deadline& deadline, const std::string& rejected) {
  const std::string path = handoff_path(job);
  auto pause = 2ms;
  for (;;) {
    Handoff handoff = read_handoff(path);
    if (!handoff.secret.empty() && handoff.secret != rejected) return handoff;
    if (deadline.expired()) {
      const std::string what = job.port_handoff ? "the store's port" : "the store secret";
      const std::string avoid =
          job.port_handoff ? "Setting MASTER_ADDR and MASTER_PORT (or FERRY_STORE)" : "Setting FERRY_SECRET";
      fail(Errc::timeout,
           "rank " + std::to_string(job.rank) + " waited in vain for rank 0 to hand over " + what + " at " +
               path + (handoff.secret.empty() ? "" : " (it still holds a secret the store refused)") +
               ": is rank 0 running on this host, as the job's layout (" + std::to_string(job.local_size) +
               " ranks per node, one node) says? " + avoid + " on every rank avoids the hand-over");
    }
    std::this_thread::sleep_for(std::min<Duration>(pause, deadline.remaining()));
    pause = std::min(pause * 2, std::chrono::milliseconds(100));
  }
}

}  // namespace ferry::detail
