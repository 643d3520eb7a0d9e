// The x86 instruction-set levels the CPU backend's kernels are written for (kernels.cpp, quant.cpp), as this CPU
// reports them: one place decides which kernel a CPU may run. All false off x86-64 (the scalar kernels run there).
// And the size of a core's L2, which the kernels' tiles and requests are sized to.
#pragma once

#include <cstdint>

namespace strata::cpu {

bool has_avx2_fma();     // AVX2, FMA and F16C
bool has_avx512();       // has_avx2_fma() and AVX-512 F, BW, DQ and VL
bool has_avx512_vnni();  // has_avx512() and AVX-512 VNNI
bool has_avx512_bf16();  // has_avx512() and AVX512_BF16

std::int64_t l2_bytes();  // bytes of this core's L2 (sysconf; 1 MiB where it does not say)

}  // namespace strata::cpu
