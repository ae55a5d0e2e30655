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
