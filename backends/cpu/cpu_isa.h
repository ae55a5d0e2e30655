/* backends/cpu/cpu_isa.h - how each ISA configuration fills the kernel table.
 * Internal to backends/cpu. */
#ifndef HEED_CPU_ISA_H
#define HEED_CPU_ISA_H

#include "heed/kernels.h"

#define HEED_SLOT_SET(t, op, dt, f, level)                         \
  do {                                                             \
    (t)->slot[HEED_OP_##op][HEED_DTYPE_##dt].fn = (heed_kernel_fn)(f); \
    (t)->slot[HEED_OP_##op][HEED_DTYPE_##dt].isa = (level);        \
    (t)->slot[HEED_OP_##op][HEED_DTYPE_##dt].name = #f;            \
  } while (0)

/* The vocabulary-row kernels of one ISA, named vocab_<op>_<suf>. */
#define HEED_VOCAB_REGISTER(t, suf, level)                              \
  do {                                                                  \
    HEED_SLOT_SET(t, VOCAB_MAX, F32, vocab_max_##suf, level);           \
    HEED_SLOT_SET(t, VOCAB_SUMEXP, F32, vocab_sumexp_##suf, level);     \
    HEED_SLOT_SET(t, VOCAB_SUMEXP_BOUND, F32, vocab_sumexp_bound_##suf, level); \
    HEED_SLOT_SET(t, VOCAB_MAXSUM_BOUND, F32, vocab_maxsum_bound_##suf, level); \
    HEED_SLOT_SET(t, VOCAB_WEIGHTS, F32, vocab_weights_##suf, level);   \
    HEED_SLOT_SET(t, VOCAB_RESIDUAL, F32, vocab_residual_##suf, level); \
    HEED_SLOT_SET(t, VOCAB_COLLECT, F32, vocab_collect_##suf, level);   \
  } while (0)

/* Each fills every slot it has a kernel for, over what is already there. */
void heed_cpu_register_ref(heed_kernel_table *t);
void heed_cpu_register_avx2(heed_kernel_table *t);
void heed_cpu_register_avx512(heed_kernel_table *t);
void heed_cpu_register_neon(heed_kernel_table *t);
void heed_cpu_register_attn_avx2(heed_kernel_table *t);
void heed_cpu_register_attn_avx512(heed_kernel_table *t);
void heed_cpu_register_attn_neon(heed_kernel_table *t);
void heed_cpu_register_vocab_ref(heed_kernel_table *t);
void heed_cpu_register_vocab_avx2(heed_kernel_table *t);
void heed_cpu_register_vocab_avx512(heed_kernel_table *t);
void heed_cpu_register_vocab_neon(heed_kernel_table *t);

#endif
