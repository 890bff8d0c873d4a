#include "ferry/core/error.hpp"

#include <cstring>

namespace ferry {

std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_argument:
      return "invalid argument";
    case Errc::timeout:
      return "timeout";
    case Errc::peer_failure:
      return "peer failure";
    case Errc::protocol:
      return "protocol error";
    case Errc::system:
      return "system error";
    case Errc::unsupported:
      return "unsupported";
    case Errc::internal:
      return "internal error";
  }
  return "unknown error";
}

Error::Error(Errc code, const std::string& message)
    : std::runtime_error("ferry: " + std::string(to_string(code)) + ": " + message), code_(code) {}

Error Error::detached_copy(const Error& other) {
  return Error(other.code_, std::string(other.what()), Verbatim{});
}

std::string Error::message() const {
  const std::string prefix = "ferry: " + std::string(to_string(code_)) + ": ";
  const std::string text = what();
  return text.rfind(prefix, 0) == 0 ? text.substr(prefix.size()) : text;
}

std::string_view without_ferry_prefix(std::string_view what) noexcept {
  constexpr std::string_view kPrefix = "ferry: ";
  return what.substr(0, kPrefix.size()) == kPrefix ? what.substr(kPrefix.size()) : what;
}

void fail(Errc code, const std::string& message) {
  throw Error(code, message);
}

void fail_errno(const std::string& what, int err) {
  fail(Errc::system, what + ": " + std::strerror(err));
}

}  // namespace ferry
