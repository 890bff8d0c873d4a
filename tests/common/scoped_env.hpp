// An environment variable set for one scope of a test and put back as it was (value or absence) after it. Set
// it before starting threads that read the environment, and let it go after joining them: setenv is not
// thread-safe.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

namespace ferry::test {

class ScopedEnv {
 public:
  // value == nullptr: the variable is unset for the scope.
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) saved_ = old;
    set(value);
  }
  ~ScopedEnv() { set(saved_ ? saved_->c_str() : nullptr); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

  void set(const char* value) {
    if (value != nullptr) {
      ::setenv(name_.c_str(), value, 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::optional<std::string> saved_;
};

}  // namespace ferry::test
