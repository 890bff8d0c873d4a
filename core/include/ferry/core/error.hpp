// ferry::Error — the one exception type every layer throws.
//
// Every failure a user can cause or meet (bad input, a peer that died, a wait that timed out, a malformed
// message) surfaces as ferry::Error with a category and a message that names the offender. Nothing in ferry
// aborts the process on bad input.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace ferry {

enum class Errc {
  invalid_argument,  // the caller passed something ferry cannot accept (names the argument)
  timeout,           // a wait passed its deadline (names what was awaited and who is missing)
  peer_failure,      // a peer closed its connection or died
  protocol,          // a malformed, oversized or unauthenticated message arrived
  system,            // an OS call failed (carries errno text)
  unsupported,       // the feature is not available on this machine or build
  internal,          // a broken invariant inside ferry: a bug, please report it
};

std::string_view to_string(Errc code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message);
  Errc code() const noexcept { return code_; }
  // What this error says, without the "ferry: <category>: " prefix what() adds: for quoting it in another.
  std::string message() const;

  // A copy that shares no storage with `other` (std::runtime_error's message is reference-counted, and a copy
  // shares it): for rethrowing, on a waiting thread, an error another thread stored and may release.
  static Error detached_copy(const Error& other);

 private:
  struct Verbatim {};
  Error(Errc code, const std::string& what, Verbatim) : std::runtime_error(what), code_(code) {}
  Errc code_;
};

// `what` without its leading "ferry: ", for quoting an error's what() (category included) inside another.
std::string_view without_ferry_prefix(std::string_view what) noexcept;

// Throws Error(code, message). Kept out of line so call sites stay small.
[[noreturn]] void fail(Errc code, const std::string& message);

// Throws Errc::system with "<what>: <strerror(err)>".
[[noreturn]] void fail_errno(const std::string& what, int err);

}  // namespace ferry
