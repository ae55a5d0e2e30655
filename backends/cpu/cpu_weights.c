/* backends/cpu/cpu_weights.c - heed/weights.h: the weight formats, and the
 * matrix products on the runtime's pool with the weight-kernel table of its
 * ISA level. The tables are built once per level (reference entries first,
 * then each configuration on the way to the level) and only read after. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "backends/cpu/weights_kernels.h"
#include "heed/weights.h"
#include "runtime/backend.h"
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

/* ---------- the tables ---------- */

enum { T_SCALAR, T_AVX2, T_AVX512, T_AVX512_VNNI, T_NEON, T_NEON_DOT, T_COUNT };
static heed_weights_table tables[T_COUNT];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void build(heed_weights_table *t, heed_isa isa, int dot) {
  memset(t, 0, sizeof *t);
  t->isa = isa;
  t->dot = dot;
  heed_weights_register_ref(t);
#if HEED_HAVE_ISA_AVX2
  if (isa == HEED_ISA_AVX2 || isa == HEED_ISA_AVX512) heed_weights_register_avx2(t);
#endif
#if HEED_HAVE_ISA_AVX512
  if (isa == HEED_ISA_AVX512) heed_weights_register_avx512(t);
  if (isa == HEED_ISA_AVX512 && dot) heed_weights_register_avx512vnni(t);
#endif
#if HEED_HAVE_ISA_NEON
  if (isa == HEED_ISA_NEON) heed_weights_register_neon(t);
  if (isa == HEED_ISA_NEON && dot) heed_weights_register_neon_dotprod(t);
#endif
}

static void build_all(void) {
  build(&tables[T_SCALAR], HEED_ISA_SCALAR, 0);
  build(&tables[T_AVX2], HEED_ISA_AVX2, 0);
  build(&tables[T_AVX512], HEED_ISA_AVX512, 0);
  build(&tables[T_AVX512_VNNI], HEED_ISA_AVX512, 1);
  build(&tables[T_NEON], HEED_ISA_NEON, 0);
  build(&tables[T_NEON_DOT], HEED_ISA_NEON, 1);
}

const heed_weights_table *heed_weights_table_get(heed_isa isa, heed_cpu_features f) {
  if (!heed_kernels_compiled(isa)) return NULL;
  pthread_once(&tables_once, build_all);
  switch (isa) {
    case HEED_ISA_SCALAR: return &tables[T_SCALAR];
    case HEED_ISA_AVX2: return &tables[T_AVX2];
    case HEED_ISA_AVX512: return &tables[HEED_CPU_HAS(f, AVX512_VNNI) ? T_AVX512_VNNI : T_AVX512];
    case HEED_ISA_NEON: return &tables[HEED_CPU_HAS(f, DOTPROD) ? T_NEON_DOT : T_NEON];
    default: return NULL;
  }
}

heed_probe_fma_fn heed_cpu_probe_bf16(heed_isa isa, heed_cpu_features f) {
#if HEED_HAVE_ISA_AVX512
  if (isa == HEED_ISA_AVX512 && heed_kernels_compiled(isa) && HEED_CPU_HAS(f, AVX512_BF16)) return heed_probe_bf16_avx512;
#endif
  (void)isa, (void)f;
  return NULL;
}

/* ---------- formats ---------- */

int heed_weights_supported(int type) { return type >= 0 && type < HEED_WTYPE_SLOTS && heed_weights_ref_dequant(type); }

size_t heed_weights_row_bytes(int type, size_t n) {
  uint32_t be, bb;
  if (!heed_weights_supported(type) || !heed_wtype_block(type, &be, &bb) || n % be) return 0;
  return n / be * bb;
}

static const char *type_name(int type) {
  const char *s = heed_ggml_type_name(type);
  return s ? s : "(not a ggml type)";
}

heed_status heed_weights_dequant(int type, const void *src, size_t n, float *dst, heed_error *err) {
  uint32_t be, bb;
  if (!heed_weights_supported(type) || !heed_wtype_block(type, &be, &bb))
    return heed_err_set(err, HEED_E_UNSUPPORTED,
                        "weights: type %d (%s) has no kernels in heed; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, "
                        "Q5_1, Q8_0, Q4_K, Q5_K, Q6_K",
                        type, type_name(type));
  if (n % be)
    return heed_err_set(err, HEED_E_INVALID, "weights: %zu %s weights are not whole blocks of %u", n, type_name(type),
                        be);
  if (n && (!src || !dst)) return heed_err_set(err, HEED_E_INVALID, "weights: src or dst is NULL");
  const heed_wdequant_fn deq = heed_weights_ref_dequant(type);
  for (size_t b = 0; b < n / be; b++) deq((const uint8_t *)src + b * bb, dst + b * be);
  return HEED_OK;
}

heed_status heed_matrix_from_tensor(const heed_gguf_tensor *t, heed_matrix *m, heed_error *err) {
  if (!t || !m) return heed_err_set(err, HEED_E_INVALID, "matrix: tensor or matrix is NULL");
  if (!heed_weights_supported((int)t->type))
    return heed_err_set(err, HEED_E_UNSUPPORTED, "matrix: tensor '%s' is %s; heed has no kernels for that type", t->name,
                        type_name((int)t->type));
  if (t->n_dims != 2)
    return heed_err_set(err, HEED_E_INVALID, "matrix: tensor '%s' has %u dimensions; a matrix has 2", t->name,
                        t->n_dims);
  const size_t rb = heed_weights_row_bytes((int)t->type, (size_t)t->ne[0]);
  if (!rb)
    return heed_err_set(err, HEED_E_INVALID, "matrix: tensor '%s': %llu columns are not whole %s blocks", t->name,
                        (unsigned long long)t->ne[0], type_name((int)t->type));
  m->type = (int)t->type;
  m->data = t->data;
  m->rows = (size_t)t->ne[1];
  m->cols = (size_t)t->ne[0];
  m->row_bytes = rb;
  return HEED_OK;
}

/* ---------- products ---------- */

static int is_quant(int type) {
  uint32_t be, bb;
  return heed_wtype_block(type, &be, &bb) && be > 1;
}

/* Bytes of one token's quantized activations, rounded to 64 so each starts aligned. */
static size_t act_stride(size_t cols) { return heed_qa_layout_of(cols).stride; }

/* The orders of the packed codes (heed_weights_table.kperm). */
typedef enum pack_order { PK_NATURAL, PK_KP, PK_KP6, PK_KP2, PK_KP2_Q6 } pack_order;

static pack_order pack_order_of(const heed_weights_table *t, int type) {
  const int k4 = type == HEED_GGML_Q4_K || type == HEED_GGML_Q5_K, k6 = type == HEED_GGML_Q6_K;
  if (t->kperm == 1) return k4 ? PK_KP : k6 ? PK_KP6 : PK_NATURAL;
  const int small = type == HEED_GGML_Q4_0 || type == HEED_GGML_Q5_0; /* in groups of 8 blocks on AVX2 */
  if (t->kperm == 2) return k4 || small ? PK_KP2 : k6 ? PK_KP2_Q6 : PK_NATURAL;
  return PK_NATURAL;
}

/* The packed copy after the blocks (heed_qa_layout), zero padded, its codes
 * of each 256 in the order o (the padding of a partial last group included).
 * PK_KP2 also moves the scales: dh of group g holds at 8h + 2j + {0, 1} the d
 * of its block 2j + h, and ds at 0..7 the d * code sum of its blocks 0..7
 * (8..15 zero; so are those of blocks past the last). */
static void pack_act(uint8_t *tok, size_t cols, pack_order o) {
  const heed_qa_layout l = heed_qa_layout_of(cols);
  const heed_qa_block *a = (const heed_qa_block *)tok;
  int8_t *q = (int8_t *)(tok + l.off_q);
  float *dh = (float *)(tok + l.off_dh), *ds = (float *)(tok + l.off_ds);
  const size_t nb = cols / HEED_QA_BLOCK;
  for (size_t b = 0; b < nb; b++) memcpy(q + b * HEED_QA_BLOCK, a[b].q, HEED_QA_BLOCK);
  if (o == PK_KP2) {
    for (size_t g = 0; g < l.colsp / HEED_QA_GROUP; g++)
      for (size_t sb = 0; sb < 8; sb++) {
        const heed_qa_block *x = 8 * g + sb < nb ? a + 8 * g + sb : NULL;
        const float d = x ? x->d : 0.0f;
        dh[16 * g + 8 * (sb & 1) + (sb & ~(size_t)1)] = dh[16 * g + 8 * (sb & 1) + (sb & ~(size_t)1) + 1] = d;
        ds[16 * g + sb] = x ? x->d * (float)(x->s[0] + x->s[1]) : 0.0f;
        ds[16 * g + 8 + sb] = 0;
      }
  } else {
    for (size_t b = 0; b < nb; b++) {
      dh[2 * b] = dh[2 * b + 1] = a[b].d;
      ds[2 * b] = a[b].d * (float)a[b].s[0], ds[2 * b + 1] = a[b].d * (float)a[b].s[1];
    }
    for (size_t h = 2 * nb; h < l.colsp / 16; h++) dh[h] = ds[h] = 0;
  }
  memset(q + cols, 0, l.colsp - cols);
  if (o != PK_NATURAL)
    for (size_t g = 0; g < cols; g += HEED_QA_GROUP) {
      int8_t tmp[HEED_QA_GROUP];
      memcpy(tmp, q + g, HEED_QA_GROUP);
      for (unsigned i = 0; i < HEED_QA_GROUP; i++)
        q[g + i] = tmp[o == PK_KP    ? heed_qa_kperm(i)
                       : o == PK_KP6 ? heed_qa_kperm6(i)
                                     : heed_qa_kp2(i, o == PK_KP2_Q6)];
    }
}

size_t heed_matmul_workspace(const heed_matrix *w, size_t n_tok) {
  if (!w || !is_quant(w->type) || w->cols % HEED_QA_BLOCK) return 0;
  return n_tok * act_stride(w->cols);
}

/* Prefill tiles: RB weight rows (a few KiB, kept in L1/L2) by TB tokens. */
#define MM_RB 16
#define MM_TB 64
/* Decode: rows handed out in groups this big (a static split streams each worker's part once). */
#define MV_RG 8

typedef struct mm_ctx {
  const heed_weights_table *t;
  const heed_matrix *w;
  size_t n_tok;
  const float *x;
  size_t ldx;
  float *y;
  size_t ldy;
  const void *act; /* quantized activations, or x */
  size_t astride;  /* bytes between tokens in act */
  size_t n_tb;     /* token tiles */
} mm_ctx;

static void quant_task(void *vc, size_t begin, size_t end, int worker) {
  (void)worker;
  const mm_ctx *c = (const mm_ctx *)vc;
  for (size_t t = begin; t < end; t++) {
    uint8_t *tok = (uint8_t *)c->act + t * c->astride;
    c->t->quant(c->x + t * c->ldx, c->w->cols, (heed_qa_block *)tok);
    if (c->t->pack) pack_act(tok, c->w->cols, pack_order_of(c->t, c->w->type));
  }
}

static void mv_task(void *vc, size_t begin, size_t end, int worker) {
  (void)worker;
  const mm_ctx *c = (const mm_ctx *)vc;
  const size_t r0 = begin * MV_RG, r1 = end * MV_RG < c->w->rows ? end * MV_RG : c->w->rows;
  c->t->k[c->w->type].vec((const uint8_t *)c->w->data + r0 * c->w->row_bytes, c->w->row_bytes, r1 - r0, c->w->cols,
                          c->act, c->astride, 1, c->y + r0, c->ldy);
}

static void mm_task(void *vc, size_t begin, size_t end, int worker) {
  (void)worker;
  const mm_ctx *c = (const mm_ctx *)vc;
  for (size_t i = begin; i < end; i++) {
    const size_t r0 = i / c->n_tb * MM_RB, t0 = i % c->n_tb * MM_TB;
    const size_t nr = c->w->rows - r0 < MM_RB ? c->w->rows - r0 : MM_RB;
    const size_t nt = c->n_tok - t0 < MM_TB ? c->n_tok - t0 : MM_TB;
    const heed_wkernel *k = &c->t->k[c->w->type];
    (nt == 1 ? k->vec : k->mat)((const uint8_t *)c->w->data + r0 * c->w->row_bytes, c->w->row_bytes, nr, c->w->cols,
                                (const uint8_t *)c->act + t0 * c->astride, c->astride, nt, c->y + t0 * c->ldy + r0,
                                c->ldy);
  }
}

static heed_status matmul_check(heed_runtime *rt, const heed_matrix *w, size_t n_tok, const float *x, size_t ldx,
                                float *y, size_t ldy, void *work, size_t work_bytes, heed_error *e) {
  if (!rt) return heed_err_set(e, HEED_E_INVALID, "matmul: runtime is NULL");
  if (!w) return heed_err_set(e, HEED_E_INVALID, "matmul: matrix is NULL");
  if (!heed_weights_supported(w->type))
    return heed_err_set(e, HEED_E_UNSUPPORTED, "matmul: weights of type %d (%s); heed has no kernels for it", w->type,
                        type_name(w->type));
  const size_t rb = heed_weights_row_bytes(w->type, w->cols);
  if (!rb || w->cols == 0)
    return heed_err_set(e, HEED_E_INVALID, "matmul: cols=%zu is not a positive multiple of the %s block", w->cols,
                        type_name(w->type));
  if (w->row_bytes != rb)
    return heed_err_set(e, HEED_E_INVALID, "matmul: row_bytes=%zu; %zu %s weights take %zu", w->row_bytes, w->cols,
                        type_name(w->type), rb);
  if (n_tok == 0 || w->rows == 0) return HEED_OK;
  if (!w->data || !x || !y) return heed_err_set(e, HEED_E_INVALID, "matmul: weights, x or y is NULL");
  if (ldx < w->cols) return heed_err_set(e, HEED_E_INVALID, "matmul: ldx=%zu < cols=%zu", ldx, w->cols);
  if (ldy < w->rows) return heed_err_set(e, HEED_E_INVALID, "matmul: ldy=%zu < rows=%zu", ldy, w->rows);
  const size_t need = heed_matmul_workspace(w, n_tok);
  if (need && (!work || work_bytes < need))
    return heed_err_set(e, HEED_E_TOO_SMALL, "matmul: work space of %zu bytes; %zu tokens of %zu columns need %zu",
                        work ? work_bytes : 0, n_tok, w->cols, need);
  if (need && ((uintptr_t)work & 63))
    return heed_err_set(e, HEED_E_INVALID, "matmul: work space at %p is not 64-byte aligned", work);
  for (size_t t = 0; t < n_tok; t++)
    for (size_t c = 0; c < w->cols; c++)
      if (!isfinite(x[t * ldx + c]))
        return heed_err_set(e, HEED_E_INVALID, "matmul: activation of token %zu, column %zu is %g; accepted: finite", t,
                            c, x[t * ldx + c]);
  return HEED_OK;
}

heed_status heed_matmul(heed_runtime *rt, const heed_matrix *w, size_t n_tok, const float *x, size_t ldx, float *y,
                        size_t ldy, void *work, size_t work_bytes) {
  heed_error e = {0};
  heed_status st = matmul_check(rt, w, n_tok, x, ldx, y, ldy, work, work_bytes, &e);
  if (st != HEED_OK || n_tok == 0 || w->rows == 0) {
    if (st != HEED_OK) heed_runtime_set_error(rt, &e);
    return st;
  }
  const heed_weights_table *t = heed_weights_table_get(heed_runtime_isa(rt), heed_runtime_cpu_features(rt));
  if (!t) {
    st = heed_err_set(&e, HEED_E_UNSUPPORTED, "matmul: isa %s is not compiled into this libheed",
                      heed_isa_name(heed_runtime_isa(rt)));
    heed_runtime_set_error(rt, &e);
    return st;
  }
  heed_pool *pool = heed_runtime_pool(rt);
  mm_ctx c = {.t = t, .w = w, .n_tok = n_tok, .x = x, .ldx = ldx, .y = y, .ldy = ldy};
  if (is_quant(w->type)) {
    c.act = work;
    c.astride = act_stride(w->cols);
    if (n_tok >= 8) st = heed_pool_parallel_for(pool, n_tok, HEED_SCHEDULE_STATIC, 0, quant_task, &c);
    else quant_task(&c, 0, n_tok, 0);
  } else {
    c.act = x;
    c.astride = ldx * sizeof(float);
  }
  if (st == HEED_OK) {
    if (n_tok == 1) {
      st = heed_pool_parallel_for(pool, (w->rows + MV_RG - 1) / MV_RG, HEED_SCHEDULE_STATIC, 0, mv_task, &c);
    } else {
      c.n_tb = (n_tok + MM_TB - 1) / MM_TB;
      st = heed_pool_parallel_for(pool, (w->rows + MM_RB - 1) / MM_RB * c.n_tb, HEED_SCHEDULE_DYNAMIC, 1, mm_task, &c);
    }
  }
  if (st == HEED_E_BUSY) {
    heed_err_set(&e, st, "matmul: the runtime's pool is running another call");
    heed_runtime_set_error(rt, &e);
  } else if (st != HEED_OK) {
    heed_err_set(&e, st, "matmul: %s", heed_pool_last_error(pool));
    heed_runtime_set_error(rt, &e);
  }
  return st;
}

/* ---------- the gated activation ---------- */

typedef struct glu_ctx {
  heed_glu_fn fn;
  float *gate;
  const float *up;
  size_t n;
  int gelu;
} glu_ctx;

#define GLU_CHUNK 4096 /* elements per task: below it the pool's hand-off costs more than it saves */

static void glu_task(void *vc, size_t begin, size_t end, int worker) {
  (void)worker;
  const glu_ctx *c = (const glu_ctx *)vc;
  const size_t i0 = begin * GLU_CHUNK, i1 = end * GLU_CHUNK < c->n ? end * GLU_CHUNK : c->n;
  c->fn(c->gate + i0, c->up + i0, i1 - i0, c->gelu);
}

heed_status heed_glu(heed_runtime *rt, heed_glu_act act, float *gate, const float *up, size_t n) {
  heed_error e = {0};
  heed_status st = HEED_OK;
  if (!rt) return HEED_E_INVALID;
  if (act != HEED_GLU_SILU && act != HEED_GLU_GELU_TANH)
    st = heed_err_set(&e, HEED_E_INVALID, "glu: activation %d; accepted: HEED_GLU_SILU, HEED_GLU_GELU_TANH", (int)act);
  else if (n && (!gate || !up))
    st = heed_err_set(&e, HEED_E_INVALID, "glu: %s is NULL for %zu elements", !gate ? "gate" : "up", n);
  const heed_weights_table *t = st ? NULL : heed_weights_table_get(heed_runtime_isa(rt), heed_runtime_cpu_features(rt));
  if (!st && !t)
    st = heed_err_set(&e, HEED_E_UNSUPPORTED, "glu: isa %s is not compiled into this libheed",
                      heed_isa_name(heed_runtime_isa(rt)));
  if (st) {
    heed_runtime_set_error(rt, &e);
    return st;
  }
  glu_ctx c = {t->glu, gate, up, n, act == HEED_GLU_GELU_TANH};
  const size_t chunks = (n + GLU_CHUNK - 1) / GLU_CHUNK;
  heed_pool *pool = heed_runtime_pool(rt);
  /* the pool fails (busy, say) before it runs any task: then all of it runs here */
  if (!pool || chunks < 2 || heed_pool_parallel_for(pool, chunks, HEED_SCHEDULE_STATIC, 0, glu_task, &c) != HEED_OK)
    glu_task(&c, 0, chunks, 0);
  return HEED_OK;
}
