// HDF5 error-stack capture and the checked handle constructor.
#include "io/hdf5_handle.h"

#include <vector>

namespace strata::h5 {
namespace {
herr_t collect(unsigned depth, const H5E_error2_t* error, void* data) {
  auto* messages = static_cast<std::vector<std::string>*>(data);
  if (error->desc && *error->desc) messages->push_back(error->desc);
  return 0;
}
}  // namespace

void silence_library_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

std::string error_stack_text(long long status) {
  std::vector<std::string> messages;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &messages);
  H5Eclear2(H5E_DEFAULT);
  if (messages.empty()) return cat("HDF5 status ", status);
  // Outermost first ("can't read data; ...; data pipeline read failed; Fletcher32 checksum failed"), repeats dropped.
  std::string text;
  for (std::size_t i = 0; i < messages.size(); ++i)
    if (i == 0 || messages[i] != messages[i - 1]) text += (text.empty() ? "" : "; ") + messages[i];
  return text;
}

Handle checked(hid_t id, Handle::Closer closer, const std::string& what) {
  if (id < 0) throw Error(ErrorKind::Checkpoint, cat(what, ": ", error_stack_text(id)));
  return Handle(id, closer);
}

}  // namespace strata::h5
