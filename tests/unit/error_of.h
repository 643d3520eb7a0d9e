// The message of the strata::Error a call throws ("" when it throws none), for tests that assert what a refusal
// says. Header-only and free of everything but base, so any unit test can use it.
#pragma once
#include <functional>
#include <string>

#include "runtime/base/error.h"

namespace strata::test {

inline std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace strata::test
