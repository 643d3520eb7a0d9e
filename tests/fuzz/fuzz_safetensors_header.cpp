// libFuzzer target: the safetensors header parser must turn any bytes into either entries that fit the data
// section or a strata::Error, never a crash, hang or out-of-bounds access (run under ASan and UBSan).
// Input: 8 bytes of data-section size, then the header text.
#include <cstdint>
#include <cstring>
#include <string>

#include "io/safetensors.h"
#include "runtime/base/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 8) return 0;
  std::uint64_t data_size = 0;
  std::memcpy(&data_size, data, 8);
  const std::string header(reinterpret_cast<const char*>(data) + 8, size - 8);
  try {
    const auto tensors = strata::parse_safetensors_header(header, data_size % (1ull << 32), "fuzz");
    for (const auto& [name, e] : tensors)
      if (e.end > data_size % (1ull << 32) || e.begin > e.end) __builtin_trap();  // a broken promise
  } catch (const strata::Error&) {
  }
  return 0;
}
