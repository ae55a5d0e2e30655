/* backends/cpu/cpu_kernels.c - builds a kernel table for one ISA level,
 * BLIS-style: reference kernels in every slot, then each configuration on the
 * way to the level overrides the slots it has. Which levels are compiled in
 * comes from the build (HEED_HAVE_ISA_*), never from this file's own flags. */
#include <string.h>

#include "backends/cpu/cpu_isa.h"
#include "heed/kernels.h"
#include "runtime/internal.h"

#ifndef HEED_HAVE_ISA_AVX2
#define HEED_HAVE_ISA_AVX2 0
#endif
#ifndef HEED_HAVE_ISA_AVX512
#define HEED_HAVE_ISA_AVX512 0
#endif
#ifndef HEED_HAVE_ISA_NEON
#define HEED_HAVE_ISA_NEON 0
#endif

static const char *op_names[] = {
#define HEED_X_(N, s) s,
    HEED_OP_LIST(HEED_X_)
#undef HEED_X_
};

const char *heed_op_name(heed_op op) { return (unsigned)op < HEED_OP_COUNT ? op_names[op] : NULL; }

int heed_kernels_compiled(heed_isa isa) {
  switch (isa) {
    case HEED_ISA_SCALAR: return 1;
    case HEED_ISA_AVX2: return HEED_HAVE_ISA_AVX2;
    case HEED_ISA_AVX512: return HEED_HAVE_ISA_AVX512;
    case HEED_ISA_NEON: return HEED_HAVE_ISA_NEON;
    default: return 0;
  }
}

heed_status heed_kernels_build(heed_isa isa, heed_kernel_table *t, heed_error *err) {
  if (!t) return heed_err_set(err, HEED_E_INVALID, "heed_kernels_build: table is NULL");
  if ((unsigned)isa >= HEED_ISA_COUNT)
    return heed_err_set(err, HEED_E_INVALID, "heed_kernels_build: isa %d is not a heed_isa (0..%d)",
                        (int)isa, HEED_ISA_COUNT - 1);
  if (!heed_kernels_compiled(isa)) {
    char have[64] = "";
    for (int i = 0; i < HEED_ISA_COUNT; i++)
      if (heed_kernels_compiled((heed_isa)i)) {
        if (have[0]) strncat(have, ", ", sizeof have - strlen(have) - 1);
        strncat(have, heed_isa_name((heed_isa)i), sizeof have - strlen(have) - 1);
      }
    return heed_err_set(err, HEED_E_UNSUPPORTED,
                        "isa %s is not compiled into this libheed (it has: %s)", heed_isa_name(isa),
                        have);
  }
  memset(t, 0, sizeof *t);
  t->isa = isa;
  heed_cpu_register_ref(t);
  heed_cpu_register_vocab_ref(t);
#if HEED_HAVE_ISA_AVX2
  if (isa == HEED_ISA_AVX2 || isa == HEED_ISA_AVX512) {
    heed_cpu_register_avx2(t);
    heed_cpu_register_attn_avx2(t);
    heed_cpu_register_vocab_avx2(t);
  }
#endif
#if HEED_HAVE_ISA_AVX512
  if (isa == HEED_ISA_AVX512) {
    heed_cpu_register_avx512(t);
    heed_cpu_register_attn_avx512(t);
    heed_cpu_register_vocab_avx512(t);
  }
#endif
#if HEED_HAVE_ISA_NEON
  if (isa == HEED_ISA_NEON) {
    heed_cpu_register_neon(t);
    heed_cpu_register_attn_neon(t);
    heed_cpu_register_vocab_neon(t);
  }
#endif
  return HEED_OK;
}
