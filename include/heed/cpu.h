/* heed/cpu.h - CPU feature detection and instruction-set levels.
 *
 * Detection runs at run time only (CPUID and XGETBV on x86-64, HWCAP on
 * arm64); a feature counts only when the OS also saves its register state.
 * The decoders are pure functions of the raw register values so that recorded
 * CPUs can be replayed in tests on any machine.
 */
#ifndef HEED_CPU_H
#define HEED_CPU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, "name as printed"). Bit i of heed_cpu_features is the i-th entry. */
#define HEED_CPU_FEATURE_LIST(X)  \
  X(AVX, "avx")                  \
  X(AVX2, "avx2")                \
  X(FMA, "fma")                  \
  X(F16C, "f16c")                \
  X(AVX512F, "avx512f")          \
  X(AVX512BW, "avx512bw")        \
  X(AVX512VL, "avx512vl")        \
  X(AVX512_VNNI, "avx512_vnni")  \
  X(AVX512_BF16, "avx512_bf16")  \
  X(AVX_VNNI, "avx_vnni")        \
  X(NEON, "neon")                \
  X(FP16, "fp16")                \
  X(DOTPROD, "dotprod")          \
  X(I8MM, "i8mm")

enum {
#define HEED_X_(N, s) HEED_CPU_BIT_##N,
  HEED_CPU_FEATURE_LIST(HEED_X_)
#undef HEED_X_
  HEED_CPU_FEATURE_COUNT
};
#define HEED_CPU_HAS(features, N) (((features) >> HEED_CPU_BIT_##N) & 1u)
#define HEED_CPU_FLAG(N) ((uint64_t)1 << HEED_CPU_BIT_##N)

typedef uint64_t heed_cpu_features; /* bitmask of HEED_CPU_FLAG(...) */

/* Kernel instruction-set levels, in the order a configuration builds on them
 * (BLIS-style: avx512 starts from avx2's table, which starts from scalar). */
#define HEED_ISA_LIST(X) \
  X(SCALAR, "scalar")   \
  X(AVX2, "avx2")       \
  X(AVX512, "avx512")   \
  X(NEON, "neon")

typedef enum heed_isa {
#define HEED_X_(N, s) HEED_ISA_##N,
  HEED_ISA_LIST(HEED_X_)
#undef HEED_X_
  HEED_ISA_COUNT
} heed_isa;

/* Raw x86 CPUID/XGETBV words the decoder reads. */
typedef struct heed_x86_cpuid {
  uint32_t max_leaf;     /* leaf 0 eax */
  uint32_t l1_ecx;       /* leaf 1 ecx: fma(12) osxsave(27) avx(28) f16c(29) */
  uint32_t l7_ebx;       /* leaf 7.0 ebx: avx2(5) avx512f(16) avx512bw(30) avx512vl(31) */
  uint32_t l7_ecx;       /* leaf 7.0 ecx: avx512_vnni(11) */
  uint32_t l7_1_eax;     /* leaf 7.1 eax: avx_vnni(4) avx512_bf16(5) */
  uint64_t xcr0;         /* XGETBV(0); 0 when osxsave is clear */
} heed_x86_cpuid;

heed_cpu_features heed_cpu_features_decode_x86(const heed_x86_cpuid *raw);
/* hwcap/hwcap2 as getauxval(AT_HWCAP/AT_HWCAP2) gives them on Linux arm64. */
heed_cpu_features heed_cpu_features_decode_arm64(uint64_t hwcap, uint64_t hwcap2);
/* The features of the CPU this runs on (computed once, then cached). */
heed_cpu_features heed_cpu_features_detect(void);

const char *heed_cpu_feature_name(int bit); /* "avx2"; NULL out of range */
/* Writes "avx2 fma f16c" (space separated) into buf; returns buf. */
char *heed_cpu_features_str(heed_cpu_features f, char *buf, unsigned len);

const char *heed_isa_name(heed_isa isa); /* "avx512"; NULL for an unknown value */
/* Parses "scalar", "avx2", "avx512", "neon". 0, or HEED_E_INVALID. */
int heed_isa_parse(const char *name, heed_isa *out);
/* The features an ISA level's kernels need. */
heed_cpu_features heed_isa_requires(heed_isa isa);
/* 1 when every feature the level needs is in f. */
int heed_isa_runs_on(heed_isa isa, heed_cpu_features f);

#ifdef __cplusplus
}
#endif
#endif
