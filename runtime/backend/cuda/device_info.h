// What the CUDA runtime sees on this node. Compiled only when nvcc is present (STRATA_CUDA); free of CUDA headers
// so launch/ can call it without them.
#pragma once
#include <string>
#include <vector>

namespace strata {

struct CudaDevice {
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  std::size_t memory_bytes = 0;
};

// The devices visible to this process (after CUDA_VISIBLE_DEVICES); empty when there is no driver or no GPU.
std::vector<CudaDevice> cuda_devices();

}  // namespace strata
