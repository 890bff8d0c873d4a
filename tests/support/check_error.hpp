// Checks that a call throws ferry::Error with a given code and a message naming what it should.
#pragma once

#include <catch2/catch.hpp>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::test {

template <typename Call>
void check_error(Call call, Errc code, const std::string& text) {
  try {
    call();
    FAIL("no error thrown; expected one containing '" << text << "'");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == code);
    CHECK_THAT(e.what(), Catch::Contains(text));
  }
}

}  // namespace ferry::test
