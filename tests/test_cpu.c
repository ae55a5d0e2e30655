#include <criterion/criterion.h>
#include <string.h>

#include "heed/cpu.h"
#include "heed/status.h"

#define F(N) HEED_CPU_FLAG(N)

/* Raw CPUID words of real CPUs (the bits heed reads). */
static heed_x86_cpuid zen1(void) {
  heed_x86_cpuid r = {0};
  r.max_leaf = 0xd;
  r.l1_ecx = (1u << 12) | (1u << 27) | (1u << 28) | (1u << 29); /* fma osxsave avx f16c */
  r.l7_ebx = 1u << 5;                                           /* avx2 */
  r.xcr0 = 0x7;
  return r;
}

static heed_x86_cpuid sapphire_rapids(void) {
  heed_x86_cpuid r = zen1();
  r.max_leaf = 0x20;
  r.l7_ebx |= (1u << 16) | (1u << 30) | (1u << 31); /* avx512 f bw vl */
  r.l7_ecx |= 1u << 11;                             /* avx512_vnni */
  r.l7_1_eax = (1u << 4) | (1u << 5);               /* avx_vnni avx512_bf16 */
  r.xcr0 = 0xe7;
  return r;
}

Test(cpu, decodes_an_avx2_cpu) {
  heed_x86_cpuid r = zen1();
  heed_cpu_features f = heed_cpu_features_decode_x86(&r);
  cr_assert_eq(f, F(AVX) | F(AVX2) | F(FMA) | F(F16C));
  cr_assert(heed_isa_runs_on(HEED_ISA_AVX2, f));
  cr_assert_not(heed_isa_runs_on(HEED_ISA_AVX512, f));
  cr_assert(heed_isa_runs_on(HEED_ISA_SCALAR, f));
}

Test(cpu, decodes_every_avx512_extension) {
  heed_x86_cpuid r = sapphire_rapids();
  heed_cpu_features f = heed_cpu_features_decode_x86(&r);
  heed_cpu_features want = F(AVX) | F(AVX2) | F(FMA) | F(F16C) | F(AVX512F) | F(AVX512BW) | F(AVX512VL) |
                           F(AVX512_VNNI) | F(AVX512_BF16) | F(AVX_VNNI);
  cr_assert_eq(f, want);
  cr_assert(heed_isa_runs_on(HEED_ISA_AVX512, f));
}

Test(cpu, avx512_needs_the_os_to_save_zmm_state) {
  heed_x86_cpuid r = sapphire_rapids();
  r.xcr0 = 0x7; /* the OS saves YMM but not opmask/ZMM: AVX-512 would fault */
  heed_cpu_features f = heed_cpu_features_decode_x86(&r);
  cr_assert_not(HEED_CPU_HAS(f, AVX512F));
  cr_assert_not(HEED_CPU_HAS(f, AVX512_BF16));
  cr_assert(HEED_CPU_HAS(f, AVX2));
  cr_assert(HEED_CPU_HAS(f, AVX_VNNI));
  cr_assert_not(heed_isa_runs_on(HEED_ISA_AVX512, f));
}

Test(cpu, nothing_without_osxsave_or_leaf_7) {
  heed_x86_cpuid r = sapphire_rapids();
  r.l1_ecx &= ~(1u << 27);
  cr_assert_eq(heed_cpu_features_decode_x86(&r), 0);
  r = zen1();
  r.max_leaf = 6;
  cr_assert_eq(heed_cpu_features_decode_x86(&r), F(AVX) | F(FMA) | F(F16C));
  cr_assert_eq(heed_cpu_features_decode_x86(NULL), 0);
}

Test(cpu, decodes_arm64_hwcaps) {
  /* Cortex-A72: fp asimd; Neoverse N2: + asimdhp, asimddp, i8mm */
  cr_assert_eq(heed_cpu_features_decode_arm64((1u << 0) | (1u << 1), 0), F(NEON));
  heed_cpu_features f = heed_cpu_features_decode_arm64((1u << 1) | (1u << 10) | (1u << 20), 1u << 13);
  cr_assert_eq(f, F(NEON) | F(FP16) | F(DOTPROD) | F(I8MM));
  cr_assert(heed_isa_runs_on(HEED_ISA_NEON, f));
  cr_assert_not(heed_isa_runs_on(HEED_ISA_AVX2, f));
}

Test(cpu, detection_agrees_with_the_compiler_runtime) {
  heed_cpu_features f = heed_cpu_features_detect();
  cr_assert_eq(f, heed_cpu_features_detect(), "cached result differs");
#if defined(__x86_64__)
  __builtin_cpu_init();
  cr_assert_eq(!!HEED_CPU_HAS(f, AVX2), !!__builtin_cpu_supports("avx2"));
  cr_assert_eq(!!HEED_CPU_HAS(f, FMA), !!__builtin_cpu_supports("fma"));
  cr_assert_eq(!!HEED_CPU_HAS(f, AVX512F), !!__builtin_cpu_supports("avx512f"));
  cr_assert_eq(!!HEED_CPU_HAS(f, AVX512BW), !!__builtin_cpu_supports("avx512bw"));
  cr_assert_not(HEED_CPU_HAS(f, NEON));
#elif defined(__aarch64__)
  cr_assert(HEED_CPU_HAS(f, NEON), "every arm64 CPU has Advanced SIMD");
  cr_assert_not(HEED_CPU_HAS(f, AVX2));
#endif
}

Test(cpu, names_parse_and_print) {
  heed_isa isa;
  cr_assert_eq(heed_isa_parse("avx512", &isa), HEED_OK);
  cr_assert_eq(isa, HEED_ISA_AVX512);
  cr_assert_eq(heed_isa_parse("neon", &isa), HEED_OK);
  cr_assert_eq(heed_isa_parse("sse2", &isa), HEED_E_INVALID);
  cr_assert_str_eq(heed_isa_name(HEED_ISA_AVX2), "avx2");
  cr_assert_null(heed_isa_name((heed_isa)42));
  cr_assert_str_eq(heed_cpu_feature_name(HEED_CPU_BIT_AVX512_VNNI), "avx512_vnni");
  cr_assert_null(heed_cpu_feature_name(-1));
  char buf[128];
  cr_assert_str_eq(heed_cpu_features_str(F(AVX2) | F(FMA), buf, sizeof buf), "avx2 fma");
  cr_assert_str_eq(heed_cpu_features_str(0, buf, sizeof buf), "");
  cr_assert_eq(heed_isa_requires(HEED_ISA_AVX512) & F(AVX2), F(AVX2), "avx512 level builds on avx2");
  cr_assert_not(heed_isa_runs_on((heed_isa)42, ~(heed_cpu_features)0));
}
