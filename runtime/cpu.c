/* runtime/cpu.c - CPU features: pure decoders of raw register values, and the
 * one place that reads them from this CPU. Architecture checks live here (and
 * in backends/cpu); kernels never test features themselves. */
#include <stdio.h>
#include <string.h>

#include "heed/cpu.h"
#include "heed/status.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define HEED_ARCH_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define HEED_ARCH_ARM64 1
#endif

static const char *feature_names[] = {
#define HEED_X_(N, s) s,
    HEED_CPU_FEATURE_LIST(HEED_X_)
#undef HEED_X_
};

static const char *isa_names[] = {
#define HEED_X_(N, s) s,
    HEED_ISA_LIST(HEED_X_)
#undef HEED_X_
};

#define BIT(w, b) (((w) >> (b)) & 1u)

heed_cpu_features heed_cpu_features_decode_x86(const heed_x86_cpuid *r) {
  if (!r) return 0;
  heed_cpu_features f = 0;
  int osxsave = BIT(r->l1_ecx, 27);
  uint64_t xcr0 = osxsave ? r->xcr0 : 0;
  int ymm = (xcr0 & 0x6) == 0x6;          /* SSE and AVX state saved by the OS */
  int zmm = ymm && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM_Hi256, Hi16_ZMM */
  if (ymm && BIT(r->l1_ecx, 28)) f |= HEED_CPU_FLAG(AVX);
  if (ymm && BIT(r->l1_ecx, 12)) f |= HEED_CPU_FLAG(FMA);
  if (ymm && BIT(r->l1_ecx, 29)) f |= HEED_CPU_FLAG(F16C);
  if (r->max_leaf >= 7) {
    if (ymm && BIT(r->l7_ebx, 5)) f |= HEED_CPU_FLAG(AVX2);
    if (zmm && BIT(r->l7_ebx, 16)) f |= HEED_CPU_FLAG(AVX512F);
    if (zmm && BIT(r->l7_ebx, 30)) f |= HEED_CPU_FLAG(AVX512BW);
    if (zmm && BIT(r->l7_ebx, 31)) f |= HEED_CPU_FLAG(AVX512VL);
    if (zmm && BIT(r->l7_ecx, 11)) f |= HEED_CPU_FLAG(AVX512_VNNI);
    if (zmm && BIT(r->l7_1_eax, 5)) f |= HEED_CPU_FLAG(AVX512_BF16);
    if (ymm && BIT(r->l7_1_eax, 4)) f |= HEED_CPU_FLAG(AVX_VNNI);
  }
  return f;
}

/* Linux arm64 hwcap bits (asm/hwcap.h), spelled out so this decodes anywhere. */
#define HWCAP_ASIMD_BIT 1
#define HWCAP_ASIMDHP_BIT 10
#define HWCAP_ASIMDDP_BIT 20
#define HWCAP2_I8MM_BIT 13

heed_cpu_features heed_cpu_features_decode_arm64(uint64_t hwcap, uint64_t hwcap2) {
  heed_cpu_features f = 0;
  if (BIT(hwcap, HWCAP_ASIMD_BIT)) f |= HEED_CPU_FLAG(NEON);
  if (BIT(hwcap, HWCAP_ASIMDHP_BIT)) f |= HEED_CPU_FLAG(FP16);
  if (BIT(hwcap, HWCAP_ASIMDDP_BIT)) f |= HEED_CPU_FLAG(DOTPROD);
  if (BIT(hwcap2, HWCAP2_I8MM_BIT)) f |= HEED_CPU_FLAG(I8MM);
  return f;
}

#if defined(HEED_ARCH_X86)
static uint64_t read_xcr0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}
#endif

static heed_cpu_features detect_uncached(void) {
#if defined(HEED_ARCH_X86)
  heed_x86_cpuid r;
  memset(&r, 0, sizeof r);
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
  r.max_leaf = a;
  __cpuid(1, a, b, c, d);
  r.l1_ecx = c;
  if (r.max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    unsigned max_sub = a;
    r.l7_ebx = b;
    r.l7_ecx = c;
    if (max_sub >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      r.l7_1_eax = a;
    }
  }
  if (BIT(r.l1_ecx, 27)) r.xcr0 = read_xcr0();
  heed_cpu_features f = heed_cpu_features_decode_x86(&r);
#if HEED_AVX512_SIMDE
  /* A build whose AVX-512 kernels are SIMDe's portable code (make test-simde):
   * they run wherever the AVX2 level they build on does. */
  if (HEED_CPU_HAS(f, AVX2) && HEED_CPU_HAS(f, FMA) && HEED_CPU_HAS(f, F16C))
    f |= HEED_CPU_FLAG(AVX512F) | HEED_CPU_FLAG(AVX512BW) | HEED_CPU_FLAG(AVX512VL) | HEED_CPU_FLAG(AVX512_VNNI) |
         HEED_CPU_FLAG(AVX512_BF16);
#endif
  return f;
#elif defined(HEED_ARCH_ARM64)
  return heed_cpu_features_decode_arm64(getauxval(AT_HWCAP), getauxval(AT_HWCAP2));
#else
  return 0;
#endif
}

heed_cpu_features heed_cpu_features_detect(void) {
  /* Reading CPUID twice gives the same answer, so a racy first call is harmless. */
  static _Atomic(unsigned long long) cached = 0; /* bit 63: filled */
  unsigned long long v = cached;
  if (!(v >> 63)) {
    v = (unsigned long long)detect_uncached() | (1ull << 63);
    cached = v;
  }
  return (heed_cpu_features)(v & ~(1ull << 63));
}

const char *heed_cpu_feature_name(int bit) {
  return bit >= 0 && bit < HEED_CPU_FEATURE_COUNT ? feature_names[bit] : NULL;
}

char *heed_cpu_features_str(heed_cpu_features f, char *buf, unsigned len) {
  if (!buf || !len) return buf;
  buf[0] = '\0';
  size_t used = 0;
  for (int i = 0; i < HEED_CPU_FEATURE_COUNT; i++) {
    if (!((f >> i) & 1u)) continue;
    int w = snprintf(buf + used, len - used, "%s%s", used ? " " : "", feature_names[i]);
    if (w < 0 || (size_t)w >= len - used) break;
    used += (size_t)w;
  }
  return buf;
}

const char *heed_isa_name(heed_isa isa) { return (unsigned)isa < HEED_ISA_COUNT ? isa_names[isa] : NULL; }

int heed_isa_parse(const char *name, heed_isa *out) {
  if (!name || !out) return HEED_E_INVALID;
  for (int i = 0; i < HEED_ISA_COUNT; i++)
    if (strcmp(name, isa_names[i]) == 0) {
      *out = (heed_isa)i;
      return HEED_OK;
    }
  return HEED_E_INVALID;
}

heed_cpu_features heed_isa_requires(heed_isa isa) {
  const heed_cpu_features avx2 =
      HEED_CPU_FLAG(AVX) | HEED_CPU_FLAG(AVX2) | HEED_CPU_FLAG(FMA) | HEED_CPU_FLAG(F16C);
  switch (isa) {
    case HEED_ISA_SCALAR: return 0;
    case HEED_ISA_AVX2: return avx2;
    case HEED_ISA_AVX512:
      return avx2 | HEED_CPU_FLAG(AVX512F) | HEED_CPU_FLAG(AVX512BW) | HEED_CPU_FLAG(AVX512VL);
    case HEED_ISA_NEON: return HEED_CPU_FLAG(NEON);
    default: return ~(heed_cpu_features)0; /* nothing runs an unknown level */
  }
}

int heed_isa_runs_on(heed_isa isa, heed_cpu_features f) {
  if ((unsigned)isa >= HEED_ISA_COUNT) return 0;
  heed_cpu_features need = heed_isa_requires(isa);
  return (f & need) == need;
}
