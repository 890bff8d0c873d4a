#include "cli/output_paths.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ferry/core/error.hpp"

namespace ferry::tools::cli {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void refuse(const std::string& flag, const std::string& path, const std::string& why) {
  fail(Errc::invalid_argument, flag + ": cannot write '" + path + "': " + why);
}

// The directory `path` would be created in ("." for a bare name).
fs::path parent_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

void require_writable_dir(const std::string& flag, const std::string& path, const fs::path& dir) {
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  if (!fs::exists(status)) refuse(flag, path, "directory " + dir.string() + " does not exist");
  if (!fs::is_directory(status)) refuse(flag, path, dir.string() + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    refuse(flag, path, "directory " + dir.string() + ": " + std::strerror(errno));
}

}  // namespace

void check_output_file(const std::string& flag, const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (fs::exists(status)) {
    if (fs::is_directory(status)) refuse(flag, path, "it is a directory");
    if (::access(path.c_str(), W_OK) != 0) refuse(flag, path, std::strerror(errno));
    return;
  }
  if (fs::path(path).filename().empty()) refuse(flag, path, "no file name");
  require_writable_dir(flag, path, parent_of(path));
}

void check_output_dir(const std::string& flag, const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  if (fs::exists(fs::status(path, ec)) && !fs::is_directory(fs::status(path, ec)))
    refuse(flag, path, "it exists and is not a directory");
  if (fs::create_directories(path, ec); ec) refuse(flag, path, ec.message());
  require_writable_dir(flag, path, path);
}

}  // namespace ferry::tools::cli
