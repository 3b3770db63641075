// gemv_tc.cu: the entry points of the tensor-core skinny GEMM (gemv_tc.cuh) that serves the
// LM head of decode steps of 3..16 rows: f32 logits from bf16 / f16 (backend.rs
// `gemv_tc_shape`). KW = 8 warps a block, U = 4 steps of loads in flight: the sweep's best on
// the LM-head shapes (gemv_sweep.cu third table). In the decode step it reads the 1B head at
// 89% of copy at batch 8 (140 us, against 337 for gemv.cu's CUDA-core tier); on the
// projections it measured 1.5x slower than cuBLAS in the step, so those stay on cuBLAS
// (crates/cuda/dev/NOTES.md, session 5).
//
// `gemv_tc_<in>_f32_n<NT>`: NT = 1 for M <= 8, 2 for M <= 16 (kernels.rs GEMV_TC).
#include "gemv_tc.cuh"

namespace gemv_tc {
constexpr int KW = 8;
constexpr int U = 4;

}  // namespace gemv_tc

#define GEMV_TC(NAME, T, O, NT)                                                                                   \
    extern "C" __global__ void __launch_bounds__(gemv_tc::KW * 32)                                                \
        NAME(const T* __restrict__ x, const T* __restrict__ w, O* __restrict__ y, uint32_t M, uint32_t N,        \
             uint32_t K, uint32_t ldx, uint32_t ldy, uint32_t accumulate) {                                      \
        ENCORE_PDL_ENTRY();                                                                                       \
        gemv_tc::tc_gemv_impl<T, O, NT, gemv_tc::KW, gemv_tc::U>(x, w, y, M, N, K, ldx, ldy, accumulate);         \
    }
GEMV_TC(gemv_tc_bf16_f32_n1, __nv_bfloat16, float, 1)
GEMV_TC(gemv_tc_bf16_f32_n2, __nv_bfloat16, float, 2)
GEMV_TC(gemv_tc_f16_f32_n1, __half, float, 1)
GEMV_TC(gemv_tc_f16_f32_n2, __half, float, 2)
#undef GEMV_TC
