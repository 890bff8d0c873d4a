// Message-size lists for benchmarks: "4K..64M" (every power of two in the range), "4K,1M,3M" or "512".
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace ferry::tools {

// Parses one size: a whole number with an optional binary suffix K, M or G (KiB, MiB, GiB; "B" allowed
// after). Throws ferry::Error(invalid_argument) naming the text.
std::size_t parse_size(const std::string& text);
// Parses a list as above; the range form needs both ends and a start <= end. Sizes come out ascending as
// given.
std::vector<std::size_t> parse_size_list(const std::string& text);
// "4 KiB", "64 MiB", "512 B".
std::string format_size(std::size_t bytes);

}  // namespace ferry::tools
