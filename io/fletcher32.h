// Fletcher32 exactly as HDF5's checksum filter (H5Z_FILTER_FLETCHER32) computes and stores it, so that the
// checkpoint reader can verify chunks it reads itself (the parallel read path in io/checkpoint.cpp) bit for bit
// as the library would.
#pragma once
#include <cstddef>
#include <cstdint>

namespace strata {

// The checksum of `bytes` bytes: 16-bit big-endian words, summed in blocks of 360 words with end-around carry.
// AVX2 where the CPU has it, else a portable loop the compiler vectorises.
std::uint32_t fletcher32(const void* data, std::size_t bytes);
// The portable loop alone (tests compare the two).
std::uint32_t fletcher32_portable(const void* data, std::size_t bytes);

// True when `stored` (the 4 bytes HDF5 appends to a filtered chunk, read little-endian) is the checksum of `data`,
// exactly or with the two bytes of each 16-bit half swapped (HDF5 accepts that form from files of old versions).
bool fletcher32_matches(const void* data, std::size_t bytes, std::uint32_t stored);

// The same sum over data given in pieces (each of an even number of bytes), e.g. a chunk whose rows went straight
// into a tensor and whose edge padding and checksum went elsewhere.
class Fletcher32 {
 public:
  void update(const void* data, std::size_t bytes);
  std::uint32_t value() const;
  bool matches(std::uint32_t stored) const;  // as fletcher32_matches

 private:
  std::uint32_t sum1_ = 0, sum2_ = 0;
  std::size_t block_words_ = 0;  // words summed since the last end-of-block reduction
};

}  // namespace strata
