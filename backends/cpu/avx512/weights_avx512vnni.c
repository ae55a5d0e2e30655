/* backends/cpu/avx512/weights_avx512vnni.c - the quantized weight kernels on
 * vpdpbusd (AVX512-VNNI, 256-bit form, AVX512VL): 32 unsigned codes by 32
 * signed activation codes into 8 int32 sums of 4 in one instruction, no
 * int16 saturation step. Compiled with -mavx512vnni in a file of its own and
 * registered only when the CPU has avx512_vnni (cpu_weights.c); Q6_K keeps
 * vpmaddubsw + vpmaddwd, whose vpmaddwd applies its two scales per 32. */
#include <immintrin.h>

#define WX_DOT(u, a) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (a))
#define WX_DOT_M16(u, a, m16) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (a)), (m16))
#include "backends/cpu/avx2/weights_x86.h"

WX_KERNELS(q4_0, WF_Q4_0, vnni)
WX_KERNELS(q4_1, WF_Q4_1, vnni)
WX_KERNELS(q5_0, WF_Q5_0, vnni)
WX_KERNELS(q5_1, WF_Q5_1, vnni)
WX_KERNELS(q8_0, WF_Q8_0, vnni)
WX_KERNELS(q4_k, WF_Q4_K, vnni)
WX_KERNELS(q5_k, WF_Q5_K, vnni)

void heed_weights_register_avx512vnni(heed_weights_table *t) {
  HEED_WSLOT_SET(t, Q4_0, wmm_q4_0_vec_vnni, wmm_q4_0_mat_vnni);
  HEED_WSLOT_SET(t, Q4_1, wmm_q4_1_vec_vnni, wmm_q4_1_mat_vnni);
  HEED_WSLOT_SET(t, Q5_0, wmm_q5_0_vec_vnni, wmm_q5_0_mat_vnni);
  HEED_WSLOT_SET(t, Q5_1, wmm_q5_1_vec_vnni, wmm_q5_1_mat_vnni);
  HEED_WSLOT_SET(t, Q8_0, wmm_q8_0_vec_vnni, wmm_q8_0_mat_vnni);
  HEED_WSLOT_SET(t, Q4_K, wmm_q4_k_vec_vnni, wmm_q4_k_mat_vnni);
  HEED_WSLOT_SET(t, Q5_K, wmm_q5_k_vec_vnni, wmm_q5_k_mat_vnni);
}
