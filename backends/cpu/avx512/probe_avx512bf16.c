/* backends/cpu/avx512/probe_avx512bf16.c - the bf16_dot_peak probe on
 * vdpbf16ps (AVX512_BF16), compiled with -mavx512bf16 in a file of its own
 * and called only when the CPU has avx512_bf16 (heed_cpu_probe_bf16). A bf16
 * kernel's ceiling: each vdpbf16ps does 32 bf16 products summed in pairs into
 * 16 f32 lanes, 64 flops, where an f32 FMA does 32. */
#include <stdint.h>

#include "backends/cpu/x86_intrin.h"
#include "backends/cpu/weights_kernels.h"

/* 12 independent chains (the instruction's latency times its throughput on
 * the cores that have it, with room to spare). */
double heed_probe_bf16_avx512(uint64_t iters, float *sink) {
  const __m512bh u = (__m512bh)_mm512_set1_epi16((short)(0x3f80 + (iters & 1))); /* ~1.0 */
  __m512 a[12];
  __m512bh w[12];
  for (int i = 0; i < 12; i++)
    a[i] = _mm512_setzero_ps(), w[i] = (__m512bh)_mm512_set1_epi16((short)(0x3c00 + 16 * i)); /* small */
  for (uint64_t it = 0; it < iters; it++)
    for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], u, w[i]);
  __m512 s = a[0];
  for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
  *sink += _mm_cvtss_f32(_mm512_castps512_ps128(s));
  return (double)iters * 12 * 32 * 2;
}
