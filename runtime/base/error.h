// strata::Error and the one family of check macros. Every failure in library code throws a typed Error that
// names the statement and the place; launch/ catches it, prints one line with the rank, and aborts the job.
// Library code never calls exit().
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace strata {

enum class ErrorKind { Usage, Config, Io, Checkpoint, Communication, Memory, Internal, Cuda };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message, const char* file = nullptr, int line = 0)
      : std::runtime_error(message), kind_(kind), file_(file), line_(line) {}
  ErrorKind kind() const { return kind_; }
  // Where the check failed in strata's sources ("io/results.cpp:57"), or "" when the thrower did not say.
  std::string where() const;

 private:
  ErrorKind kind_;
  const char* file_;
  int line_;
};

const char* error_kind_name(ErrorKind kind);

// Builds a message with stream syntax: throw Error(ErrorKind::Config, cat("n=", n, " is odd")).
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

namespace detail {
[[noreturn]] void throw_check_failure(ErrorKind kind, const char* library, const char* statement,
                                      const std::string& why, const char* function, const char* file, int line);
}  // namespace detail

}  // namespace strata

// STRATA_CHECK(cond, kind, message...): an always-on precondition check (never inside assert). The Error carries the
// file and line of the check; launch/ prints them after the message.
#define STRATA_CHECK(cond, kind, ...)                                                                              \
  do {                                                                                                             \
    if (!(cond)) throw ::strata::Error(::strata::ErrorKind::kind, ::strata::cat(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)

// The generic library-call check used by STRATA_MPI_CHECK, STRATA_H5_CHECK, STRATA_CUDA_CHECK, ...:
// `ok` says whether `status` means success, `describe(status)` turns a failure into text.
#define STRATA_LIBRARY_CHECK(library, kind, statement, status_type, ok, describe)                                     \
  do {                                                                                                                \
    status_type strata_status_ = (statement);                                                                         \
    if (!(ok(strata_status_)))                                                                                        \
      ::strata::detail::throw_check_failure(::strata::ErrorKind::kind, library, #statement, describe(strata_status_), \
                                            __func__, __FILE__, __LINE__);                                            \
  } while (0)
