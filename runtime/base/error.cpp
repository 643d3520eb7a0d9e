// Formatting of check failures: "<library> call `stmt` failed in fn (file:line): why".
#include "runtime/base/error.h"

#include <cstring>

namespace strata {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Usage:
      return "usage";
    case ErrorKind::Config:
      return "config";
    case ErrorKind::Io:
      return "io";
    case ErrorKind::Checkpoint:
      return "checkpoint";
    case ErrorKind::Communication:
      return "communication";
    case ErrorKind::Memory:
      return "memory";
    case ErrorKind::Internal:
      return "internal";
    case ErrorKind::Cuda:
      return "cuda";
  }
  return "error";
}

std::string Error::where() const {
  if (!file_) return "";
  // Paths as the compiler saw them: relative to the source root where the build maps it away
  // (-fmacro-prefix-map), else cut after the last "strata/"-style root we can recognise: keep the last two parts.
  std::string path = file_;
  if (path.front() == '/') {
    const auto last = path.rfind('/');
    const auto before = last == std::string::npos || last == 0 ? std::string::npos : path.rfind('/', last - 1);
    if (before != std::string::npos) path = path.substr(before + 1);
  }
  return cat(path, ":", line_);
}

namespace detail {
void throw_check_failure(ErrorKind kind, const char* library, const char* statement, const std::string& why,
                         const char* function, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  throw Error(kind, cat(library, " call `", statement, "` failed in ", function, " (", base ? base + 1 : file, ":",
                        line, "): ", why));
}
}  // namespace detail

}  // namespace strata
