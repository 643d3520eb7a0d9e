// RAII owners for HDF5 identifiers and the STRATA_H5_CHECK macro. HDF5's own error printing is switched off;
// a failed call throws strata::Error carrying the innermost messages of HDF5's error stack.
// Private to io/: HDF5 headers do not leak to other parts.
#pragma once
#include <hdf5.h>

#include <string>
#include <utility>

#include "runtime/base/error.h"

namespace strata::h5 {

// The innermost descriptions on HDF5's error stack, e.g. "Fletcher32 checksum failed; can't read data".
std::string error_stack_text(long long status);
// Call once before using HDF5 (idempotent): turns off HDF5's automatic error printing.
void silence_library_errors();

#define STRATA_H5_CHECK(statement) \
  STRATA_LIBRARY_CHECK(            \
      "HDF5", Checkpoint, statement, long long, [](long long s) { return s >= 0; }, ::strata::h5::error_stack_text)

// Owns one hid_t and closes it with the matching H5*close. Move-only; never throws on close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      closer_ = other.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  hid_t get() const { return id_; }
  // Gives up ownership: the caller closes the id.
  hid_t release() { return std::exchange(id_, H5I_INVALID_HID); }
  bool valid() const { return id_ >= 0; }

 private:
  void reset() noexcept {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// Checked constructors: each throws with the HDF5 message and `what` when the call fails.
Handle checked(hid_t id, Handle::Closer closer, const std::string& what);
inline Handle file(hid_t id, const std::string& what) { return checked(id, H5Fclose, what); }
inline Handle dataset(hid_t id, const std::string& what) { return checked(id, H5Dclose, what); }
inline Handle dataspace(hid_t id, const std::string& what) { return checked(id, H5Sclose, what); }
inline Handle datatype(hid_t id, const std::string& what) { return checked(id, H5Tclose, what); }
inline Handle plist(hid_t id, const std::string& what) { return checked(id, H5Pclose, what); }
inline Handle attribute(hid_t id, const std::string& what) { return checked(id, H5Aclose, what); }

}  // namespace strata::h5
