/* backends/cpu/cpu_backend.c - the CPU backend: the host's kernel table and
 * its pool of pinned workers. Its operation slots arrive with the attention
 * issue; today it runs the runtime's kernels and the bench probes. */
#include <stdio.h>
#include <stdlib.h>

#include "runtime/backend.h"
#include "runtime/internal.h"

typedef heed_cpu_ctx cpu_ctx; /* kernels and pool, both borrowed from the runtime */

static heed_status cpu_open(const heed_backend_open_args *a, void **ctx, heed_error *err) {
  if (!a->cpu_kernels || !a->pool) return heed_err_set(err, HEED_E_INTERNAL, "cpu backend: no kernel table or pool");
  cpu_ctx *c = calloc(1, sizeof *c);
  if (!c) return heed_err_set(err, HEED_E_NOMEM, "no memory for the cpu backend");
  c->kernels = a->cpu_kernels;
  c->pool = a->pool;
#if HEED_HAVE_ISA_AVX2
  /* q8 K and V on vpmaddwd: an int16 query and P (heed_attn_qk_q8_fn, heed_attn_pv_q8_fn) */
  if (a->cpu_kernels->isa == HEED_ISA_AVX2 || a->cpu_kernels->isa == HEED_ISA_AVX512)
    c->qk_q8 = heed_attn_qk_q8_avx2, c->pv_q8 = heed_attn_pv_q8_avx2;
#endif
#if HEED_HAVE_ISA_AVX512
  /* q8 K scores on vpdpbusd: an int8 query (heed_attn_qk_q8_fn) */
  if (a->cpu_kernels->isa == HEED_ISA_AVX512 && HEED_CPU_HAS(a->features, AVX512_VNNI)) c->qk_q8 = heed_attn_qk_q8_vnni;
#endif
#if HEED_HAVE_ISA_NEON
  /* q8 K scores on sdot: an int8 query, as vpdpbusd's (heed_attn_qk_q8_fn) */
  if (a->cpu_kernels->isa == HEED_ISA_NEON && HEED_CPU_HAS(a->features, DOTPROD)) c->qk_q8 = heed_attn_qk_q8_sdot;
#endif
  *ctx = c;
  return HEED_OK;
}

static void cpu_close(void *ctx) { free(ctx); }

static int cpu_describe(void *ctx, char *buf, size_t cap) {
  cpu_ctx *c = ctx;
  int n = heed_pool_n_workers(c->pool);
  return snprintf(buf, cap, "%s kernels on %d worker%s (the caller and %d pool thread%s, %d pinned)",
           heed_isa_name(c->kernels->isa), n, n == 1 ? "" : "s", n - 1, n == 2 ? "" : "s", heed_pool_n_pinned(c->pool));
}

const heed_backend_iface heed_backend_cpu_iface = {
    .kind = HEED_BACKEND_CPU,
    .name = "cpu",
    .open = cpu_open,
    .close = cpu_close,
    .describe = cpu_describe,
    .attn_prefill = heed_cpu_attn_prefill,
    .attn_decode = heed_cpu_attn_decode,
};
