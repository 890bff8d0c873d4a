// Output files and directories named on the command line are checked before any work: a run of minutes or
// hours must not end in "cannot write". No file is created or truncated by the check.
#pragma once

#include <string>

namespace ferry::tools::cli {

// `path` (given with `flag`, e.g. "--json") can be written: it is a writable file, or it does not exist and
// its directory exists and is writable. Throws Errc::invalid_argument naming the flag, the path and why
// not. An empty path (the flag not given) passes.
void check_output_file(const std::string& flag, const std::string& path);

// `path` can hold files: it is a writable directory, made here (with its parents) when missing, as the run
// would make it. Throws like check_output_file.
void check_output_dir(const std::string& flag, const std::string& path);

}  // namespace ferry::tools::cli
