// Fuzzes ferry::Config's JSON reader and its validation, what `Config::load` does with a tuning file a sweep
// wrote or a user edited: anything wrong must be refused with Errc::invalid_argument (any other exception, a
// crash or a sanitizer report is a bug); a config that is read must write back to the same JSON, and one that
// validates must give a buffer size that is not zero and holds its rings.
//
// Input: byte 0 = nodes, byte 1 = ranks per node (signed, so bad shapes come up), then the JSON text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "ferry/config.hpp"
#include "ferry/core/error.hpp"
#include "fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const int num_nodes = static_cast<std::int8_t>(data[0]);
  const int local_size = static_cast<std::int8_t>(data[1]);
  const std::string text(reinterpret_cast<const char*>(data + 2), size - 2);

  ferry::Config config;
  try {
    config = ferry::Config::from_json(text);
  } catch (const ferry::Error& error) {
    FUZZ_CHECK(error.code() == ferry::Errc::invalid_argument);
    return 0;
  }
  // What was read writes back to JSON that reads as the same config.
  const std::string written = config.to_json();
  FUZZ_CHECK(ferry::Config::from_json(written).to_json() == written);

  try {
    config.validate(num_nodes, local_size);
  } catch (const ferry::Error& error) {
    FUZZ_CHECK(error.code() == ferry::Errc::invalid_argument);
    return 0;
  }
  // Valid: the registered buffer holds at least one slot of every ring.
  FUZZ_CHECK(num_nodes >= 1 && local_size >= 1);
  const std::size_t bytes = ferry::buffer_size_hint(config, num_nodes, local_size);
  FUZZ_CHECK(bytes > 0);
  FUZZ_CHECK(config.buffer_bytes == 0 || config.buffer_bytes >= bytes);
  return 0;
}
