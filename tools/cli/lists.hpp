// Comma lists on the command line ("8,16,24", "10,10,1"), parsed strictly: every item must be a whole
// positive number (or a positive number), with no spaces, empty items or trailing text. Throws
// ferry::Error(invalid_argument) naming the item and the option.
#pragma once

#include <string>
#include <vector>

namespace ferry::tools::cli {

std::vector<int> parse_int_list(const std::string& text, const std::string& what);
std::vector<double> parse_number_list(const std::string& text, const std::string& what);

}  // namespace ferry::tools::cli
